//! `slipway login`, `slipway logout` and `slipway token …`: a person signs
//! in with the directory's username and password (asked without echo, or
//! read from standard input), and the session the server answers is kept
//! in `~/.config/slipway/sessions.json` (mode 0600, one per server URL);
//! `slipway admin` and `slipway build` use it when no password is given.
//! Personal access tokens for registry clients are made, listed and
//! revoked with that session.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::client::{Client, ServerArgs, segment};
use super::output::{print_or, rows_table, say};

#[derive(clap::Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Your username in the directory; asked when not given.
    #[arg(long, env = "SLIPWAY_USERNAME")]
    pub username: Option<String>,
    /// Read the password from standard input (for scripts) instead of
    /// asking for it.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Make a personal access token for registry clients (`podman login
    /// -u <you> -p <token>`); shown once.
    Create {
        #[arg(long)]
        name: String,
        /// How long it lasts: 90d, 12h, … (at most 366 days).
        #[arg(long, default_value = "90d")]
        expires: String,
        /// Only this project (else every project you have a role in).
        #[arg(long)]
        project: Option<String>,
        /// Registry pulls only: it cannot use the API.
        #[arg(long)]
        pull_only: bool,
    },
    /// Your tokens, with their last use.
    List,
    /// Revoke one of your tokens (by its id).
    Revoke { id: String },
}

/// The sessions kept, by server URL.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Sessions {
    #[serde(flatten)]
    by_url: BTreeMap<String, Session>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    person: String,
    token: String,
    /// Seconds since the epoch.
    expires_at: i64,
}

/// Where sessions are kept: `$SLIPWAY_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/slipway`, else `~/.config/slipway`.
fn sessions_file() -> anyhow::Result<PathBuf> {
    let dir = if let Some(d) = std::env::var_os("SLIPWAY_CONFIG_DIR") {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        PathBuf::from(d).join("slipway")
    } else {
        let home = std::env::var_os("HOME")
            .context("cannot tell where to keep the session: HOME is not set")?;
        PathBuf::from(home).join(".config/slipway")
    };
    Ok(dir.join("sessions.json"))
}

fn load() -> anyhow::Result<Sessions> {
    let file = sessions_file()?;
    match std::fs::read(&file) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("{} is not a sessions file; remove it", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Sessions::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

/// Writes the sessions whole (a new file, mode 0600, renamed over the old).
fn save(sessions: &Sessions) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = sessions_file()?;
    let dir = file.parent().context("the sessions file has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".sessions.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(sessions)?)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &file).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(())
}

fn key(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

/// The session `slipway login` kept for `url`, if any and not expired.
pub fn session_for(url: &str) -> Option<String> {
    let now = slipway_storage::meta::now_ms() / 1000;
    load()
        .ok()?
        .by_url
        .get(&key(url))
        .filter(|s| s.expires_at > now)
        .map(|s| s.token.clone())
}

/// Asks on the terminal, without echo.
fn ask_secret(prompt: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let echo_off = tty && unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } == 0;
    if echo_off {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if echo_off {
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved) };
        eprintln!();
    }
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let username = match args.username {
        Some(u) => u,
        None => {
            eprint!("Username: ");
            std::io::stderr().flush().ok();
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the username")?;
            line.trim().to_owned()
        }
    };
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        ask_secret(&format!("Password for {username}: "))?
    };
    if password.is_empty() {
        bail!("no password given");
    }
    let http = args.server.http()?;
    let client = Client::with_session(http, args.server.url.clone(), String::new());
    let answer = client
        .call_anonymous(
            reqwest::Method::POST,
            "/api/v1/sign-in",
            json!({"username": username, "password": password}),
        )
        .await?;
    let token = answer["token"]
        .as_str()
        .context("the server's answer holds no session")?
        .to_owned();
    let now = slipway_storage::meta::now_ms() / 1000;
    let mut sessions = load()?;
    sessions.by_url.insert(
        key(&args.server.url),
        Session {
            person: username.clone(),
            token,
            expires_at: now + answer["expires_in"].as_i64().unwrap_or(0),
        },
    );
    save(&sessions)?;
    let me = &answer["me"];
    let roles: Vec<String> = me["memberships"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "{} ({})",
                m["project"].as_str().unwrap_or_default(),
                m["role"].as_str().unwrap_or_default()
            )
        })
        .collect();
    println!(
        "Signed in to {} as {username}{}; {}.",
        args.server.url,
        if me["admin"] == true {
            ", an admin"
        } else {
            ""
        },
        if roles.is_empty() {
            "no projects (public ones can be pulled by anyone)".to_owned()
        } else {
            format!("projects: {}", roles.join(", "))
        }
    );
    Ok(())
}

pub async fn logout(args: LogoutArgs) -> anyhow::Result<()> {
    let mut sessions = load()?;
    if sessions.by_url.remove(&key(&args.server.url)).is_none() {
        println!("Not signed in to {}.", args.server.url);
        return Ok(());
    }
    save(&sessions)?;
    println!("Signed out of {}.", args.server.url);
    Ok(())
}

pub async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let session = session_for(&args.server.url).with_context(|| {
        format!(
            "not signed in to {}: run `slipway login` first",
            args.server.url
        )
    })?;
    let client = Client::with_session(args.server.http()?, args.server.url.clone(), session);
    match args.command {
        TokenCommand::Create {
            name,
            expires,
            project,
            pull_only,
        } => {
            let v = client
                .call(
                    reqwest::Method::POST,
                    "/api/v1/me/tokens",
                    Some(json!({"name": name, "expires": expires, "project": project,
                                "pull_only": pull_only})),
                )
                .await?;
            print_or(args.json, &v, || {
                Ok(format!(
                    "token {} ({}), until {}:\n{}\n\nShown once. Use it with registry clients: \
                     podman login -u {} -p <token> {}",
                    v["token"]["name"].as_str().unwrap_or_default(),
                    v["token"]["id"].as_str().unwrap_or_default(),
                    v["token"]["expires_at"].as_str().unwrap_or("never"),
                    v["secret"].as_str().unwrap_or_default(),
                    v["token"]["person"].as_str().unwrap_or_default(),
                    host_of(&args.server.url),
                ))
            })
        }
        TokenCommand::List => {
            let v = client
                .call(reqwest::Method::GET, "/api/v1/me/tokens", None)
                .await?;
            print_or(args.json, &v, || {
                Ok(rows_table(
                    &v,
                    &[
                        ("ID", "id", "-"),
                        ("NAME", "name", "-"),
                        ("PROJECT", "project", "all of yours"),
                        ("EXPIRES", "expires_at", "never"),
                        ("LAST USED", "last_used_at", "never"),
                    ],
                ))
            })
        }
        TokenCommand::Revoke { id } => {
            client
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/me/tokens/{}", segment(&id)),
                    None,
                )
                .await?;
            say(args.json, format!("revoked token {id}"));
            Ok(())
        }
    }
}

fn host_of(url: &str) -> &str {
    url.split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/')
}
