//! `slipway login`, `slipway logout` and `slipway token …`: a person signs
//! in through the server's OpenID Connect provider (a browser comes back to
//! a loopback address this command listens on; the server exchanges the
//! code) or with the directory's username and password (asked without
//! echo, or read from standard input), and the session the server answers is kept
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
    /// Sign in with the directory's password even where the server offers
    /// an OpenID Connect provider.
    #[arg(long)]
    pub ldap: bool,
    /// Do not try to open a browser: print the address to open.
    #[arg(long)]
    pub no_browser: bool,
    /// Sign in through a browser on this machine (a loopback redirect) even
    /// where the provider offers the device flow.
    #[arg(long)]
    pub browser: bool,
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
    let http = args.server.http()?;
    let client = Client::with_session(http, args.server.url.clone(), String::new());
    let password_asked = args.ldap || args.username.is_some() || args.password_stdin;
    if !password_asked {
        // What the server offers (a server without the question: LDAP).
        let offers = client.get("/api/v1/sign-in").await.ok();
        let offers = match offers.filter(|r| r.status().is_success()) {
            Some(r) => r.json::<serde_json::Value>().await.unwrap_or_default(),
            None => json!({"ldap": true}),
        };
        if let Some(name) = offers["oidc"].as_str() {
            let answer = if offers["oidc_device"] == true && !args.browser {
                device_login(&client, name).await?
            } else {
                oidc_login(&client, name, args.no_browser).await?
            };
            return signed_in(&args.server.url, &answer);
        }
        if offers["ldap"] != true {
            bail!(
                "{} lets no one but its admin sign in (no [identity] is configured)",
                args.server.url
            );
        }
    }
    ldap_login(&client, args).await
}

async fn ldap_login(client: &Client, args: LoginArgs) -> anyhow::Result<()> {
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
    let answer = client
        .call_anonymous(
            reqwest::Method::POST,
            "/api/v1/sign-in",
            json!({"username": username, "password": password}),
        )
        .await?;
    signed_in(&args.server.url, &answer)
}

/// Keeps the session the server answered, and says who signed in.
fn signed_in(url: &str, answer: &serde_json::Value) -> anyhow::Result<()> {
    let me = &answer["me"];
    let username = me["name"].as_str().unwrap_or_default();
    let token = answer["token"]
        .as_str()
        .context("the server's answer holds no session")?
        .to_owned();
    let now = slipway_storage::meta::now_ms() / 1000;
    let mut sessions = load()?;
    sessions.by_url.insert(
        key(url),
        Session {
            person: username.to_owned(),
            token,
            expires_at: now + answer["expires_in"].as_i64().unwrap_or(0),
        },
    );
    save(&sessions)?;
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
        "Signed in to {url} as {username}{}; {}.",
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

/// Signs in through the provider's device flow (RFC 8628): the person
/// enters a code at the provider on any device; this command polls the
/// server until they have.
async fn device_login(client: &Client, provider: &str) -> anyhow::Result<serde_json::Value> {
    let started = client
        .call_anonymous(
            reqwest::Method::POST,
            "/api/v1/sign-in/oidc/device",
            json!({}),
        )
        .await?;
    let text = |k: &str| started[k].as_str().unwrap_or_default().to_owned();
    let handle = text("handle");
    eprintln!(
        "To sign in with {provider}, open {} on any device and enter the code {}",
        text("verification_uri"),
        text("user_code")
    );
    if let Some(complete) = started["verification_uri_complete"].as_str() {
        eprintln!("(or open {complete})");
    }
    eprintln!("Waiting for the sign-in to finish …");
    let mut interval = started["interval"].as_u64().unwrap_or(5).max(1);
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_secs(started["expires_in"].as_u64().unwrap_or(600));
    loop {
        if std::time::Instant::now() > deadline {
            bail!("the code expired before the sign-in was finished: run `slipway login` again");
        }
        tokio::time::sleep(std::time::Duration::from_secs(interval)).await;
        let answer = client
            .call_anonymous(
                reqwest::Method::POST,
                "/api/v1/sign-in/oidc/device/poll",
                json!({"handle": handle}),
            )
            .await?;
        if answer["pending"] == true {
            if answer["slow_down"] == true {
                interval += 5;
            }
            continue;
        }
        return Ok(answer);
    }
}

/// Signs in through the server's OpenID Connect provider: the browser is
/// sent to the provider and back to a loopback address this command
/// listens on (RFC 8252); the server exchanges the code and answers a
/// session.
async fn oidc_login(
    client: &Client,
    provider: &str,
    no_browser: bool,
) -> anyhow::Result<serde_json::Value> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on a loopback port for the browser's way back")?;
    let port = listener.local_addr()?.port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    // A secret only this process knows: whoever catches the browser's way
    // back (another program on this machine) cannot finish without it.
    let proof = slipway_registry::auth::secrets::generate();
    let proof_hash = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(proof.as_bytes()))
    };
    let started = client
        .call_anonymous(
            reqwest::Method::POST,
            "/api/v1/sign-in/oidc",
            json!({"redirect_uri": redirect_uri, "proof_hash": proof_hash}),
        )
        .await?;
    let url = started["authorization_url"]
        .as_str()
        .context("the server's answer holds no address to sign in at")?
        .to_owned();
    let state = started["state"].as_str().unwrap_or_default().to_owned();
    eprintln!("To sign in with {provider}, open this address in a browser:\n\n  {url}\n");
    let graphical = std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty())
        || std::env::var_os("WAYLAND_DISPLAY").is_some_and(|d| !d.is_empty());
    let web = url.starts_with("https://") || url.starts_with("http://");
    if !no_browser && graphical && web {
        let _ = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    eprintln!("Waiting for the browser to come back to {redirect_uri} …");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<BTreeMap<String, String>>(1);
    let expected = state.clone();
    let app = axum::Router::new().route(
        "/callback",
        axum::routing::get(
            move |axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>| {
                let tx = tx.clone();
                let expected = expected.clone();
                async move {
                    use axum::response::Html;
                    // A provider's refusal may come without the state: it
                    // signs no one in, and is passed on with ours.
                    let refusal = q.contains_key("error") && !q.contains_key("state");
                    if q.get("state") != Some(&expected) && !refusal {
                        return (
                            axum::http::StatusCode::BAD_REQUEST,
                            Html("This is not the sign-in slipway login is waiting for."),
                        );
                    }
                    let declined = q.contains_key("error");
                    let _ = tx.send(q).await;
                    let page = if declined {
                        "The sign-in was declined. Return to the terminal."
                    } else {
                        "Signed in to Slipway: you can close this window and return to the terminal."
                    };
                    (axum::http::StatusCode::OK, Html(page))
                }
            },
        ),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let window = started["expires_in"].as_u64().unwrap_or(600);
    let back = tokio::time::timeout(std::time::Duration::from_secs(window), rx.recv()).await;
    server.abort();
    let Ok(Some(back)) = back else {
        bail!("the browser did not come back within {window} seconds: run `slipway login` again");
    };
    let mut body = json!({"state": state, "proof": proof});
    for k in ["code", "error", "error_description"] {
        if let Some(v) = back.get(k) {
            body[k] = json!(v);
        }
    }
    client
        .call_anonymous(reqwest::Method::POST, "/api/v1/sign-in/oidc/callback", body)
        .await
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
