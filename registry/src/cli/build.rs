//! `slipway build …`: start builds and follow them, from the command line.
//! Arguments are parsed by clap; [`run`] finds the credentials and the
//! project and hands each command to a function of its own.
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
use serde_json::json;
use slipway_registry::api::builds::{BuildView, LogLineView};

use super::client::{Client, ServerArgs, admin_password};
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
    Start {
        /// The git repository (https://, http:// or git://).
        #[arg(long)]
        source: String,
        /// A branch, tag or commit (default: the default branch).
        #[arg(long = "ref")]
        git_ref: Option<String>,
        /// The image name (default: the project's name).
        #[arg(long)]
        image: Option<String>,
        /// The builder (default: the server's).
        #[arg(long)]
        builder: Option<String>,
        /// A build-time variable, NAME=VALUE (repeatable).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Print the log as the build runs, and wait for its end.
        #[arg(long, short)]
        follow: bool,
    },
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
        None => {
            let password = admin_password(
                args.server.password,
                &args.server.data_dir,
                "no credentials: set SLIPWAY_BUILD_TOKEN (or pass --token), or give the admin's \
                 password with SLIPWAY_PASSWORD, or run where",
            )?;
            ("admin".to_owned(), password, None)
        }
    };
    let project = args
        .project
        .or(token_project)
        .context("which project? pass --project (a build token names its own project)")?;
    let cx = Ctx {
        client: Client::new(args.server.url, user, password),
        base: format!("/api/v1/projects/{project}/builds"),
        project,
        json: args.json,
    };
    match args.command {
        BuildCommand::Start {
            source,
            git_ref,
            image,
            builder,
            env,
            follow,
        } => start(&cx, source, git_ref, image, builder, env, follow).await,
        BuildCommand::List { limit } => list(&cx, limit).await,
        BuildCommand::Show { id } => show(&cx, &id).await,
        BuildCommand::Logs { id, follow } => logs(&cx, &id, follow).await,
        BuildCommand::Cancel { id } => cancel(&cx, &id).await,
        BuildCommand::Retry { id, follow } => retry(&cx, &id, follow).await,
        BuildCommand::Delete { id } => delete(&cx, &id).await,
    }
}

async fn start(
    cx: &Ctx,
    source: String,
    git_ref: Option<String>,
    image: Option<String>,
    builder: Option<String>,
    env: Vec<String>,
    follow: bool,
) -> anyhow::Result<()> {
    let mut vars = serde_json::Map::new();
    for e in env {
        let (k, v) = e
            .split_once('=')
            .with_context(|| format!("--env takes NAME=VALUE, not {e:?}"))?;
        vars.insert(k.to_owned(), json!(v));
    }
    let mut body = json!({"source_url": source, "env": vars});
    for (k, v) in [
        ("ref", git_ref),
        ("image_name", image),
        ("builder", builder),
    ] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    let v = cx.client.call(M::POST, &cx.base, Some(body)).await?;
    let b: BuildView = serde_json::from_value(v.clone())?;
    if follow {
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
    progress.finish(b.state == "succeeded");
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
