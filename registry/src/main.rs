//! `slipway`: the one binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

mod cli;

use clap::{Parser, Subcommand};
use slipway_registry::config::{Config, Overrides, Secret};
use slipway_registry::{Server, telemetry};

#[derive(Parser)]
#[command(
    name = "slipway",
    version,
    about = "An OCI registry with a quota-aware build front end"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry (defaults: 127.0.0.1:5000, data in ./slipway-data).
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:5000.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Directory for the database and the blobs.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// A TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Administer a running Slipway: projects, robots, build tokens,
    /// builders, quotas, GC, the audit log.
    Admin(cli::admin::AdminArgs),
    /// Build a git repository into an image, and follow builds.
    Build(cli::build::BuildArgs),
    /// Sign in with your directory account; `slipway admin` and `slipway
    /// build` then act as you.
    Login(cli::login::LoginArgs),
    /// Forget the session `slipway login` kept for a server.
    Logout(cli::login::LogoutArgs),
    /// Your personal access tokens for registry clients (after `slipway
    /// login`).
    Token(cli::login::TokenArgs),
    /// Make a data directory of a backup (`slipway admin backup`); then
    /// `slipway serve --data-dir DATA_DIR` serves what it held.
    Restore {
        /// The backup directory.
        backup: PathBuf,
        /// The new data directory (absent or empty).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Copy a stopped registry's metadata and blobs to other stores, e.g.
    /// from the single-node SQLite + filesystem to PostgreSQL + S3. Stop
    /// every server first; the target must be empty.
    Migrate {
        /// Configuration of the source (read from the file alone).
        #[arg(long)]
        from: PathBuf,
        /// Configuration of the target (SLIPWAY_… variables apply, e.g. the
        /// S3 secret key).
        #[arg(long)]
        to: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slipway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Restore { backup, data_dir } => {
            println!("{}", slipway_registry::backup::restore(&backup, &data_dir)?);
            Ok(())
        }
        Command::Serve {
            listen,
            data_dir,
            config,
        } => {
            let overrides = Overrides { listen, data_dir };
            let mut config = Config::load(config.as_deref(), std::env::vars(), &overrides)?;
            config.auth.admin_password = std::env::var("SLIPWAY_ADMIN_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty())
                .map(Secret::new);
            config.auth.secrets_key = std::env::var("SLIPWAY_SECRETS_KEY")
                .ok()
                .filter(|p| !p.is_empty())
                .map(Secret::new);
            telemetry::init_logging(&config.log)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve(config))
        }
        Command::Migrate { from, to } => {
            let from = Config::load(Some(&from), std::iter::empty(), &Overrides::default())?;
            let to = Config::load(Some(&to), std::env::vars(), &Overrides::default())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(slipway_registry::migrate(&from, &to))?;
            for (table, rows) in &report.rows {
                println!("{table:>16}: {rows} rows");
            }
            println!(
                "{:>16}: {} ({} copied)",
                "blobs",
                report.blobs,
                slipway_storage::error::human_bytes(report.bytes)
            );
            if !report.missing.is_empty() {
                println!(
                    "warning: {} blobs recorded in the source were missing from its store: {}",
                    report.missing.len(),
                    report.missing.join(", ")
                );
            }
            println!("Done. Start the servers with the target configuration.");
            Ok(())
        }
        Command::Admin(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(cli::admin::run(args))
        }
        Command::Build(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(cli::build::run(args))
        }
        Command::Login(args) => client_runtime()?.block_on(cli::login::login(args)),
        Command::Logout(args) => client_runtime()?.block_on(cli::login::logout(args)),
        Command::Token(args) => client_runtime()?.block_on(cli::login::token(args)),
    }
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(config = %config.redacted(), "starting");
    let server = Server::bind(config).await?;
    tracing::info!(listen = %server.local_addr(), "serving");
    server.run(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
