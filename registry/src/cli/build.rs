//! `slipway build …`: start builds and follow them, see what the project's
//! images cost and clean them away, and keep the project's secrets — from
//! the command line. Arguments are parsed by clap; [`run`] finds the
//! credentials and the project and hands each command to a function of its
//! own.
//!
//! Credentials: a build token (`SLIPWAY_BUILD_TOKEN='build$<project>+<name>:<secret>'`,
//! as `slipway admin build-token create` prints it) — its project is then
//! the default — or the admin's.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method as M;
use serde_json::{Value, json};
use slipway_registry::api::builds::{BuildView, LogLineView};
use slipway_registry::api::storage::UsageView;
use slipway_storage::error::human_bytes;

use super::admin::{env_vars, secret_delete, secret_list, secret_set};
use super::client::{Client, ServerArgs, admin_password, segment};
use super::output::{print_or, say, table};

#[derive(Args)]
pub struct BuildArgs {
    /// Which server; without a token, the admin's password.
    #[command(flatten)]
    server: ServerArgs,
    /// A build token, `build$<project>+<name>:<secret>`.
    #[arg(
        long,
        env = "SLIPWAY_BUILD_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// The project (default: the build token's).
    #[arg(long, global = true)]
    project: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: BuildCommand,
}

#[derive(Subcommand)]
enum BuildCommand {
    /// Build a git repository into `<project>/<image>:latest`.
    Start(StartArgs),
    /// The project's builds, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One build (or `latest`).
    Show { id: String },
    /// A build's log (`--follow` until it ends).
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Stop a build.
    Cancel { id: String },
    /// Build the same commit again.
    Retry {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Forget a finished build and its log (its image stays).
    Delete { id: String },
    /// The project's images: what each holds and costs against the quota.
    Quota,
    /// Delete the project's images (every manifest; the layers go at the
    /// next garbage collection).
    Clean {
        /// Only this image (default: all of the project's).
        #[arg(long)]
        image: Option<String>,
        /// Do not ask first (needed when standard input is not a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// The project's secrets, given to its builds by name.
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(Args)]
struct StartArgs {
    /// The git repository (https://, http:// or git://); without it, the
    /// project's default trigger's (see `slipway admin trigger`).
    #[arg(long)]
    source: Option<String>,
    /// Build this trigger's repository, with its settings, instead of the
    /// default trigger's.
    #[arg(long, conflicts_with = "source")]
    trigger: Option<String>,
    /// A branch, tag or commit (default: the default branch, or the
    /// trigger's branch).
    #[arg(long = "ref")]
    git_ref: Option<String>,
    /// The image name (default: the project's name, or the trigger's).
    #[arg(long)]
    image: Option<String>,
    /// The builder (default: the server's, or the trigger's).
    #[arg(long)]
    builder: Option<String>,
    /// A build-time variable, NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// A project secret given to the build as /platform/env/NAME
    /// (repeatable).
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,
    /// A project secret holding the source's git credentials, user:token
    /// or a token.
    #[arg(long, value_name = "SECRET_NAME")]
    git_credentials: Option<String>,
    /// Build even when an equal build's image is current (else that image
    /// is used again and nothing runs).
    #[arg(long)]
    force: bool,
    /// Print the log as the build runs, and wait for its end.
    #[arg(long, short)]
    follow: bool,
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Set a secret to what standard input holds (one trailing newline
    /// dropped), e.g. `printf %s "$TOKEN" | slipway build secret set NAME`.
    Set {
        name: String,
    },
    List,
    Delete {
        name: String,
    },
}

/// What every command needs: the API client, the project's builds path
/// and how to print.
struct Ctx {
    client: Client,
    project: String,
    /// `/api/v1/projects/<project>/builds`.
    base: String,
    json: bool,
}

pub async fn run(args: BuildArgs) -> anyhow::Result<()> {
    let http = args.server.http()?;
    let session = (args.token.is_none() && args.server.password.is_none())
        .then(|| super::login::session_for(&args.server.url))
        .flatten();
    let (user, password, token_project) = match &args.token {
        Some(t) => {
            let (user, secret) = t.split_once(':').context(
                "SLIPWAY_BUILD_TOKEN is build$<project>+<name>:<secret>, as `slipway admin build-token create` prints it",
            )?;
            let project = user
                .strip_prefix("build$")
                .and_then(|r| r.rsplit_once('+'))
                .map(|(p, _)| p.to_owned());
            (user.to_owned(), secret.to_owned(), project)
        }
        None if session.is_some() => (String::new(), String::new(), None),
        None => {
            let password = admin_password(
                args.server.password,
                &args.server.data_dir,
                "no credentials: set SLIPWAY_BUILD_TOKEN (or pass --token), `slipway login`, or \
                 give the admin's password with SLIPWAY_PASSWORD, or run where",
            )?;
            ("admin".to_owned(), password, None)
        }
    };
    let project = args
        .project
        .or(token_project)
        .context("which project? pass --project (a build token names its own project)")?;
    let cx = Ctx {
        client: match session {
            Some(token) => Client::with_session(http, args.server.url, token),
            None => Client::new(http, args.server.url, user, password),
        },
        base: format!("/api/v1/projects/{project}/builds"),
        project,
        json: args.json,
    };
    match args.command {
        BuildCommand::Start(a) => start(&cx, a).await,
        BuildCommand::List { limit } => list(&cx, limit).await,
        BuildCommand::Show { id } => show(&cx, &id).await,
        BuildCommand::Logs { id, follow } => logs(&cx, &id, follow).await,
        BuildCommand::Cancel { id } => cancel(&cx, &id).await,
        BuildCommand::Retry { id, follow } => retry(&cx, &id, follow).await,
        BuildCommand::Delete { id } => delete(&cx, &id).await,
        BuildCommand::Quota => quota(&cx).await,
        BuildCommand::Clean { image, yes } => clean(&cx, image, yes).await,
        BuildCommand::Secret(cmd) => match cmd {
            SecretCommand::Set { name } => {
                secret_set(&cx.client, cx.json, &cx.project, &name).await
            }
            SecretCommand::List => secret_list(&cx.client, cx.json, &cx.project).await,
            SecretCommand::Delete { name } => {
                secret_delete(&cx.client, cx.json, &cx.project, &name).await
            }
        },
    }
}

async fn start(cx: &Ctx, a: StartArgs) -> anyhow::Result<()> {
    let mut body = json!({
        "env": env_vars(&a.env)?,
        "secrets": a.secrets,
        "force": a.force,
    });
    for (k, v) in [
        ("source_url", a.source),
        ("trigger", a.trigger),
        ("ref", a.git_ref),
        ("image_name", a.image),
        ("builder", a.builder),
        ("git_credentials", a.git_credentials),
    ] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    let v = cx.client.call(M::POST, &cx.base, Some(body)).await?;
    let b: BuildView = serde_json::from_value(v.clone())?;
    // Nothing runs: there is no log to follow.
    if b.state == "reused" {
        return print_or(cx.json, &v, || Ok(reused_text(&b)));
    }
    if a.follow {
        if !cx.json {
            eprintln!(
                "Build {} of {} at {} ({}) queued.",
                b.id,
                b.source_url,
                b.git_ref,
                short(&b.commit)
            );
        }
        return follow_build(cx, &b.id).await;
    }
    print_or(cx.json, &v, || {
        Ok(format!(
            "Build {} queued: {} at {} ({}).\nFollow it with: slipway build logs --project {} --follow {}",
            b.id,
            b.source_url,
            b.git_ref,
            short(&b.commit),
            cx.project,
            b.id
        ))
    })
}

async fn list(cx: &Ctx, limit: u32) -> anyhow::Result<()> {
    let v = cx
        .client
        .call(M::GET, &format!("{}?limit={limit}", cx.base), None)
        .await?;
    print_or(cx.json, &v, || {
        let builds: Vec<BuildView> = serde_json::from_value(v.clone())?;
        let mut t = table(&[
            "build", "state", "image", "ref", "commit", "created", "duration",
        ]);
        for b in builds {
            t.add_row(vec![
                b.id,
                b.state,
                b.image_name,
                b.git_ref,
                short(&b.commit).to_owned(),
                b.created_at,
                b.duration_secs
                    .map(|d| format!("{d:.1} s"))
                    .unwrap_or_default(),
            ]);
        }
        Ok(t.to_string())
    })
}

async fn show(cx: &Ctx, id: &str) -> anyhow::Result<()> {
    let v = cx
        .client
        .call(M::GET, &format!("{}/{id}", cx.base), None)
        .await?;
    print_or(cx.json, &v, || {
        Ok(build_text(&serde_json::from_value(v.clone())?))
    })
}

async fn logs(cx: &Ctx, id: &str, follow: bool) -> anyhow::Result<()> {
    let id = resolve(cx, id).await?;
    if follow {
        return follow_build(cx, &id).await;
    }
    let fmt = if cx.json { "json" } else { "text" };
    let text = cx
        .client
        .get(&format!("{}/{id}/logs?format={fmt}", cx.base))
        .await?
        .text()
        .await?;
    print!("{text}");
    Ok(())
}

async fn cancel(cx: &Ctx, id: &str) -> anyhow::Result<()> {
    let v = cx
        .client
        .call(M::POST, &format!("{}/{id}/cancel", cx.base), None)
        .await?;
    print_or(cx.json, &v, || {
        let b: BuildView = serde_json::from_value(v.clone())?;
        Ok(if b.state == "cancelled" {
            format!("Build {} cancelled.", b.id)
        } else {
            format!("Build {} is asked to stop; it stops within seconds.", b.id)
        })
    })
}

async fn retry(cx: &Ctx, id: &str, follow: bool) -> anyhow::Result<()> {
    let v = cx
        .client
        .call(M::POST, &format!("{}/{id}/retry", cx.base), None)
        .await?;
    let b: BuildView = serde_json::from_value(v.clone())?;
    if b.state == "reused" {
        return print_or(cx.json, &v, || Ok(reused_text(&b)));
    }
    if follow {
        return follow_build(cx, &b.id).await;
    }
    print_or(cx.json, &v, || {
        Ok(format!("Build {} queued (a retry of {id}).", b.id))
    })
}

async fn delete(cx: &Ctx, id: &str) -> anyhow::Result<()> {
    cx.client
        .call(M::DELETE, &format!("{}/{id}", cx.base), None)
        .await?;
    say(cx.json, format!("Deleted build {id}."));
    Ok(())
}

async fn quota(cx: &Ctx) -> anyhow::Result<()> {
    let v = images(cx).await?;
    print_or(cx.json, &v, || {
        let usage: UsageView = serde_json::from_value(v["usage"].clone())?;
        let mut out = format!("Project {} uses {}.", cx.project, usage.summary);
        if let Some(w) = usage.warnings.last() {
            out.push_str(&format!(" It is past {w} % of its quota."));
        }
        let list = v["images"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            out.push_str("\nIt holds no images.");
            return Ok(out);
        }
        let mut t = table(&["image", "manifests", "tags", "size", "last push"]);
        for i in &list {
            t.add_row(vec![
                i["name"].as_str().unwrap_or_default().to_owned(),
                i["manifests"].as_u64().unwrap_or(0).to_string(),
                i["tags"].as_array().map_or(0, Vec::len).to_string(),
                i["size"].as_str().unwrap_or_default().to_owned(),
                i["last_push"]
                    .as_i64()
                    .map(slipway_registry::api::time)
                    .unwrap_or_else(|| "never".into()),
            ]);
        }
        out.push('\n');
        out.push_str(&t.to_string());
        out.push_str("\nImages share layers: their sizes may add up to more than the usage.");
        Ok(out)
    })
}

/// The project's images and usage (`ImagesView`).
async fn images(cx: &Ctx) -> anyhow::Result<Value> {
    cx.client
        .call(
            M::GET,
            &format!("/api/v1/projects/{}/images", cx.project),
            None,
        )
        .await
}

async fn clean(cx: &Ctx, image: Option<String>, yes: bool) -> anyhow::Result<()> {
    if !yes && !ask_clean(cx, image.as_deref()).await? {
        say(cx.json, "Nothing was deleted.");
        return Ok(());
    }
    let mut path = format!("/api/v1/projects/{}/images", cx.project);
    if let Some(name) = &image {
        path.push('/');
        path.push_str(&segment(name));
    }
    let v = cx.client.call(M::DELETE, &path, None).await?;
    print_or(cx.json, &v, || {
        let usage: UsageView = serde_json::from_value(v["usage"].clone())?;
        let names: Vec<&str> = v["images"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let done = match v["deleted_manifests"].as_u64().unwrap_or(0) {
            0 => format!("Nothing to delete: project {} holds no images.", cx.project),
            n => format!(
                "Deleted {n} manifest{} of project {}: {}.",
                if n == 1 { "" } else { "s" },
                cx.project,
                names.join(", ")
            ),
        };
        Ok(format!(
            "{done}\nProject {} now uses {}.",
            cx.project, usage.summary
        ))
    })
}

/// Asks before `clean` deletes; refuses when no one can answer. `false`:
/// the answer was no (or there is nothing to delete).
async fn ask_clean(cx: &Ctx, image: Option<&str>) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "not deleting without asking, and standard input is not a terminal: pass --yes to \
             delete {}",
            match image {
                Some(name) => format!("the image {name} of project {}", cx.project),
                None => format!("every image of project {}", cx.project),
            }
        );
    }
    let v = images(cx).await?;
    let usage: UsageView = serde_json::from_value(v["usage"].clone())?;
    // Names whose manifests are all gone already hold nothing to delete.
    let list: Vec<Value> = v["images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["manifests"].as_u64().unwrap_or(0) > 0)
        .cloned()
        .collect();
    let question = match image {
        None if list.is_empty() => {
            eprintln!("Project {} holds no images.", cx.project);
            return Ok(false);
        }
        None if list.len() == 1 => format!(
            "Delete {}, the only image of project {} ({})?",
            list[0]["name"].as_str().unwrap_or_default(),
            cx.project,
            human_bytes(usage.used_bytes)
        ),
        None => format!(
            "Delete all {} images of project {} ({})?",
            list.len(),
            cx.project,
            human_bytes(usage.used_bytes)
        ),
        Some(name) => match list.iter().find(|i| i["name"] == name) {
            Some(i) => format!(
                "Delete the image {name} of project {} ({})?",
                cx.project,
                i["size"].as_str().unwrap_or_default()
            ),
            // Absent or empty: nothing to lose, and the answer says so.
            None => return Ok(true),
        },
    };
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// A build that did not run: an equal build's image was used again.
fn reused_text(b: &BuildView) -> String {
    format!(
        "Build {} reused {}: {}.\nPass --force to build it again anyway.",
        b.id,
        b.image_digest.as_deref().unwrap_or("an image"),
        b.reason
            .as_deref()
            .unwrap_or("an equal build's image is current")
    )
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

fn build_text(b: &BuildView) -> String {
    let mut out = format!(
        "build     {}\nstate     {}\nimage     {}\nsource    {} at {} ({})\nbuilder   {}\ncreated   {} by {}\n",
        b.id,
        b.state,
        b.image,
        b.source_url,
        b.git_ref,
        b.commit,
        b.builder,
        b.created_at,
        b.requested_by
    );
    if let Some(s) = &b.started_at {
        out.push_str(&format!("started   {s}\n"));
    }
    if let Some(f) = &b.finished_at {
        out.push_str(&format!(
            "finished  {f} ({:.1} s)\n",
            b.duration_secs.unwrap_or(0.0)
        ));
    }
    if let Some(d) = &b.image_digest {
        out.push_str(&format!("digest    {d}\n"));
    }
    if let Some(r) = &b.reason {
        out.push_str(&format!("reason    {r}\n"));
    }
    out
}

/// `latest` → the newest build's id.
async fn resolve(cx: &Ctx, id: &str) -> anyhow::Result<String> {
    if id != "latest" {
        return Ok(id.to_owned());
    }
    let v = cx
        .client
        .call(M::GET, &format!("{}/latest", cx.base), None)
        .await?;
    Ok(v["id"].as_str().unwrap_or_default().to_owned())
}

/// Prints the log as it comes — with a spinner per phase on a terminal —
/// then the build's end; an error when it did not succeed.
async fn follow_build(cx: &Ctx, id: &str) -> anyhow::Result<()> {
    let resp = cx
        .client
        .get(&format!("{}/{id}/logs?follow=true&format=json", cx.base))
        .await?;
    let tty = !cx.json && std::io::stderr().is_terminal();
    let mut progress = Phases::new(tty);
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("the log stream broke off")?;
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            if cx.json {
                print!("{}", String::from_utf8_lossy(&line));
                continue;
            }
            let Ok(l) = serde_json::from_slice::<LogLineView>(&line) else {
                continue;
            };
            progress.line(&l);
        }
    }
    let v = cx
        .client
        .call(M::GET, &format!("{}/{id}", cx.base), None)
        .await?;
    let b: BuildView = serde_json::from_value(v)?;
    progress.finish(b.state == "succeeded" || b.state == "reused");
    if b.state == "reused" {
        say(cx.json, reused_text(&b));
        return Ok(());
    }
    if b.state != "succeeded" {
        bail!(
            "build {} {}: {}",
            b.id,
            b.state.replace('_', " "),
            b.reason.as_deref().unwrap_or("no reason given")
        );
    }
    say(
        cx.json,
        format!(
            "Build {} succeeded in {:.1} s: {} ({})",
            b.id,
            b.duration_secs.unwrap_or(0.0),
            b.image,
            b.image_digest.as_deref().unwrap_or("")
        ),
    );
    Ok(())
}

/// A spinner per phase on a terminal; plain lines otherwise.
struct Phases {
    tty: bool,
    bar: Option<(ProgressBar, String, Instant)>,
}

impl Phases {
    fn new(tty: bool) -> Phases {
        Phases { tty, bar: None }
    }

    fn line(&mut self, l: &LogLineView) {
        if !self.tty {
            println!("{}", l.line);
            return;
        }
        let same = self.bar.as_ref().is_some_and(|(_, p, _)| *p == l.phase);
        if !same {
            self.finish(true);
            if l.phase != "done" {
                let bar = ProgressBar::new_spinner();
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(l.phase.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                self.bar = Some((bar, l.phase.clone(), Instant::now()));
            }
        }
        if l.line.starts_with("===> ") {
            return;
        }
        match &self.bar {
            Some((bar, _, _)) => bar.println(&l.line),
            None => eprintln!("{}", l.line),
        }
    }

    fn finish(&mut self, ok: bool) {
        if let Some((bar, phase, at)) = self.bar.take() {
            let mark = if ok { "✓" } else { "✗" };
            bar.finish_and_clear();
            eprintln!("{mark} {phase} ({:.1} s)", at.elapsed().as_secs_f64());
        }
    }
}
