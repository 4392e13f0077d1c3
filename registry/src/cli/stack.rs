//! `slipway admin stack …`: the platform's own stacks and builders (see
//! `slipway_builder::stack`), made from Debian's packages and pushed into
//! the `platform` project.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use slipway_builder::oci;
use slipway_builder::stack::{self, Options, Stack};

use super::client::Client;

#[derive(Subcommand)]
pub enum StackCommand {
    /// Make a stack's build and run images and its builder, push them as
    /// platform/{build,run,builder}:<stack>, and approve the builder.
    Build {
        /// The stack: bookworm (Debian 12) or tiny (busybox, for tests).
        stack: String,
        /// Where root file systems are kept between runs (default:
        /// $XDG_CACHE_HOME/slipway/stacks or ~/.cache/slipway/stacks).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// The Debian mirror for mmdebstrap.
        #[arg(long)]
        mirror: Option<String>,
        /// Make the root file systems again (say, for security updates),
        /// even if cached.
        #[arg(long)]
        refresh: bool,
        /// Only make the root file systems (no server is contacted).
        #[arg(long)]
        rootfs_only: bool,
        /// Do not approve the builder.
        #[arg(long)]
        no_approve: bool,
    },
    /// The stacks this Slipway can make.
    List,
}

fn default_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("slipway/stacks")
}

/// Whether the command needs no server (and so no password).
pub fn is_local(cmd: &StackCommand) -> bool {
    matches!(
        cmd,
        StackCommand::List
            | StackCommand::Build {
                rootfs_only: true,
                ..
            }
    )
}

pub async fn run(cmd: StackCommand, client: Option<&Client>, json: bool) -> anyhow::Result<()> {
    match cmd {
        StackCommand::List => {
            for name in stack::names() {
                let s = Stack::load(&name)?;
                if json {
                    println!(
                        "{}",
                        json!({"name": name, "description": s.recipe.description})
                    );
                } else {
                    println!("{name}\t{}", s.recipe.description);
                }
            }
            Ok(())
        }
        StackCommand::Build {
            stack: name,
            cache_dir,
            mirror,
            refresh,
            rootfs_only,
            no_approve,
        } => {
            let s = Stack::load(&name)?;
            let opts = Options {
                cache_dir: cache_dir.unwrap_or_else(default_cache),
                mirror,
                refresh,
                offline: false,
                log: Arc::new(|l: &str| eprintln!("{l}")),
            };
            if rootfs_only {
                let o = opts.clone();
                let (build, run) =
                    tokio::task::spawn_blocking(move || stack::rootfs(&s, &o)).await??;
                if json {
                    println!("{}", json!({"build": build, "run": run}));
                } else {
                    println!("build: {}\nrun:   {}", build.display(), run.display());
                }
                return Ok(());
            }
            let client = client.context("a server is needed")?;
            let registry = oci::Client::new(&client.url, &client.user, &client.password);
            let made = stack::make(&registry, &s, &opts)
                .await
                .with_context(|| format!("cannot make the stack {name}"))?;
            if !no_approve {
                client
                    .call(
                        reqwest::Method::POST,
                        "/api/v1/builders",
                        Some(json!({"image": made.builder.image})),
                    )
                    .await?;
            }
            if json {
                println!("{}", serde_json::to_string(&made)?);
            } else {
                for p in [&made.build, &made.run, &made.builder] {
                    println!(
                        "{}@{} ({})",
                        p.image,
                        p.digest,
                        slipway_storage::error::human_bytes(p.size)
                    );
                }
                if !no_approve {
                    println!("Approved builder {}.", made.builder.image);
                }
            }
            Ok(())
        }
    }
}
