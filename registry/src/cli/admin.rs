//! `slipway admin …`: the admin API from the command line. Human tables by
//! default, the API's JSON with `--json`. Arguments are parsed by clap;
//! [`run`] finds the credentials and hands each command to a function of
//! its own.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reqwest::Method as M;
use serde_json::{Map, Value, json};
use slipway_registry::api::audit::AuditPage;
use slipway_registry::api::projects::ProjectView;
use slipway_registry::api::robots::{RobotSecret, RobotView};
use slipway_registry::api::storage::UsageView;
use slipway_registry::api::triggers::{
    DeliveryView, SecretView, TriggerSecret, TriggerUpdated, TriggerView,
};
use slipway_registry::rebase::{FleetReport, report_text};
use slipway_storage::error::human_bytes;

use super::client::{Client, ServerArgs, admin_password, segment};
use super::output::{print_or, rows_table, say, table};
use super::stack::{self, StackCommand};

#[derive(Args)]
pub struct AdminArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// User name (the admin).
    #[arg(long, env = "SLIPWAY_USER", default_value = "admin", global = true)]
    user: String,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Projects: one per tool (`tool-<name>`), plus `platform`.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Robot accounts `robot$<project>+<name>`.
    #[command(subcommand)]
    Robot(RobotCommand),
    /// Storage usage per project (or one project's), or `usage recompute`.
    #[command(args_conflicts_with_subcommands = true)]
    Usage {
        project: Option<String>,
        #[command(subcommand)]
        action: Option<UsageAction>,
    },
    /// Quotas.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Garbage collection (with retention): what nothing references goes.
    Gc {
        /// Only list what would go.
        #[arg(long)]
        dry_run: bool,
        /// Apply retention to this project only.
        #[arg(long)]
        project: Option<String>,
        /// Collect blobs only; keep every manifest.
        #[arg(long)]
        no_retention: bool,
    },
    /// Back the running server up into DIR (on the server's machine; absent
    /// or empty): a consistent copy of the database, then the blobs it
    /// records (hard links on the same file system) and the keys. Pushes go
    /// on meanwhile. `slipway restore DIR --data-dir NEW` makes a data
    /// directory of it.
    Backup { dir: std::path::PathBuf },
    /// Integrity check: every recorded blob in the store with its size and
    /// digest, every stored blob recorded, every manifest's references
    /// resolved, usage equal to a recount. Exits 1 when something is wrong
    /// (and was not repaired).
    Fsck {
        /// Quarantine damaged blobs (the manifests using them are deleted
        /// and answer 404), remove stored blobs recorded nowhere, correct
        /// usage.
        #[arg(long)]
        repair: bool,
        /// Compare sizes only; do not re-hash.
        #[arg(long)]
        sizes_only: bool,
        /// Read at most this much a second while hashing, such as 50MiB
        /// (default: no limit).
        #[arg(long)]
        rate: Option<String>,
    },
    /// Stack rebase: move every image built on a run image onto its
    /// current digest (no rebuild, no layer copied), and print a report.
    Rebase {
        /// The run image, e.g. platform/run:bookworm.
        #[arg(long)]
        run_image: String,
        /// Only report what would be rebased.
        #[arg(long)]
        dry_run: bool,
        /// Also rebase images that do not list this run image's name (the
        /// other checks still apply).
        #[arg(long)]
        force: bool,
    },
    /// Build tokens: what `slipway build` and the build API take, one
    /// project each.
    #[command(subcommand, name = "build-token")]
    BuildToken(BuildTokenCommand),
    /// The builders builds may use (images in the registry, usually in the
    /// `platform` project).
    #[command(subcommand)]
    Builder(BuilderCommand),
    /// The platform's own stacks: build and run images and a builder.
    #[command(subcommand)]
    Stack(StackCommand),
    /// Push to deploy: what builds a project when its repository changes
    /// (a forge's webhook, or polling).
    #[command(subcommand)]
    Trigger(TriggerCommand),
    /// A project's secrets, given to its builds by name (values are taken,
    /// never shown).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// The audit log, newest first.
    Audit {
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        action: Option<String>,
        /// Only entries at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum BuildTokenCommand {
    /// Create a build token for a project; its secret is printed once.
    Create {
        project: String,
        #[arg(long, default_value = "default")]
        name: String,
    },
    List {
        project: String,
    },
    Delete {
        project: String,
        name: String,
    },
}

#[derive(Subcommand)]
enum TriggerCommand {
    /// Create a trigger; its webhook secret is printed once.
    Create {
        project: String,
        /// The git repository (https://, http:// or git://).
        #[arg(long)]
        source: String,
        /// Tag pushes build too (those matching --tag-pattern, default all).
        #[arg(long)]
        tags: bool,
        #[command(flatten)]
        settings: TriggerSettings,
    },
    /// The project's triggers (every project's without one).
    List {
        project: Option<String>,
    },
    Show {
        id: String,
    },
    /// Change a trigger; what is not given stays.
    Update {
        id: String,
        /// The git repository.
        #[arg(long)]
        source: Option<String>,
        /// Tag pushes build too.
        #[arg(long, conflicts_with = "no_tags")]
        tags: bool,
        /// Tag pushes build nothing.
        #[arg(long, conflicts_with = "tag_pattern")]
        no_tags: bool,
        /// Stop polling (webhooks only).
        #[arg(long, conflicts_with = "poll_interval")]
        no_poll: bool,
        /// Remove every build variable.
        #[arg(long, conflicts_with = "env")]
        no_env: bool,
        /// Give builds no secrets.
        #[arg(long, conflicts_with = "secrets")]
        no_secrets: bool,
        /// Replace the webhook secret; the new one is printed once.
        #[arg(long)]
        rotate_secret: bool,
        #[command(flatten)]
        settings: TriggerSettings,
    },
    Delete {
        id: String,
    },
    /// What the forge sent, and what each poll saw, newest first.
    Deliveries {
        id: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// A trigger's settings, as `trigger create` and `trigger update` take them.
#[derive(Args)]
struct TriggerSettings {
    /// The branches that build: a name or a glob such as 'release/*'
    /// (default on create: main).
    #[arg(long = "ref", value_name = "PATTERN")]
    ref_pattern: Option<String>,
    /// The tags that build, a glob such as 'v*' (implies --tags).
    #[arg(long, value_name = "GLOB")]
    tag_pattern: Option<String>,
    /// The image name (default on create: the project's name).
    #[arg(long)]
    image: Option<String>,
    /// The builder (default: the server's; on update, '' goes back to it).
    #[arg(long)]
    builder: Option<String>,
    /// A build-time variable (repeatable; on update, replaces them all).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// A project secret given to builds as /platform/env/NAME (repeatable;
    /// on update, replaces them all).
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,
    /// A project secret holding the source's git credentials, user:token
    /// or a token (on update, '' for none).
    #[arg(long, value_name = "SECRET_NAME")]
    git_credentials: Option<String>,
    /// Poll the branch every this many seconds, for forges that cannot send
    /// webhooks.
    #[arg(long, value_name = "SECS")]
    poll_interval: Option<u64>,
    /// Make it the project's default trigger (what `slipway build start`
    /// without --source builds; a project's first trigger is).
    #[arg(long)]
    default: bool,
}

impl TriggerSettings {
    /// The API's fields for what was given (`NewTrigger`, `TriggerUpdate`).
    fn to_json(&self) -> anyhow::Result<Map<String, Value>> {
        let mut out = Map::new();
        for (k, v) in [
            ("ref", &self.ref_pattern),
            ("image_name", &self.image),
            ("builder", &self.builder),
            ("git_credentials", &self.git_credentials),
        ] {
            if let Some(v) = v {
                out.insert(k.into(), json!(v));
            }
        }
        if let Some(p) = &self.tag_pattern {
            out.insert("tag_pattern".into(), json!(p));
            out.insert("tags".into(), json!(true));
        }
        if !self.env.is_empty() {
            out.insert("env".into(), Value::Object(env_vars(&self.env)?));
        }
        if !self.secrets.is_empty() {
            out.insert("secrets".into(), json!(self.secrets));
        }
        if let Some(p) = self.poll_interval {
            out.insert("poll_interval_secs".into(), json!(p));
        }
        if self.default {
            out.insert("default".into(), json!(true));
        }
        Ok(out)
    }
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Set a secret to what standard input holds (one trailing newline
    /// dropped), e.g. `printf %s "$TOKEN" | slipway admin secret set P NAME`.
    Set {
        project: String,
        name: String,
    },
    List {
        project: String,
    },
    Delete {
        project: String,
        name: String,
    },
}

#[derive(Subcommand)]
enum BuilderCommand {
    /// Allow builds to use a builder image, e.g. platform/builder:bookworm.
    Approve {
        image: String,
    },
    List,
    /// Stop builds from using a builder (running builds finish).
    Revoke {
        image: String,
    },
}

#[derive(Subcommand)]
enum UsageAction {
    /// Recompute every project's usage from its manifests, report any drift
    /// from the running count, and fix it (unless --dry-run).
    Recompute {
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum QuotaCommand {
    /// Set a project's quota: a size such as 5GiB, 500MB, 1024, or `none`.
    Set { project: String, size: String },
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// Create a project (public unless --private).
    Create {
        name: String,
        /// Anyone may pull (the default; for scripts that say so).
        #[arg(long, conflicts_with = "private")]
        public: bool,
        /// Only its robots, build tokens and the admin may pull.
        #[arg(long)]
        private: bool,
        /// Storage quota, such as 2GiB (default: unlimited).
        #[arg(long)]
        quota: Option<String>,
    },
    List,
    /// A project and its repositories.
    Show {
        name: String,
    },
    /// Change a project's visibility or retention.
    Set {
        name: String,
        #[arg(long, conflicts_with = "private")]
        public: bool,
        #[arg(long)]
        private: bool,
        /// Tagged images kept per repository (`default`: the server's).
        #[arg(long)]
        retention: Option<String>,
        #[command(flatten)]
        limits: BuildLimitArgs,
    },
    /// Delete a project that holds no images.
    Delete {
        name: String,
    },
}

/// A project's own build limits; each takes `default` for the server's.
#[derive(Args)]
struct BuildLimitArgs {
    /// Memory a build may use, such as 4GiB.
    #[arg(long)]
    build_memory: Option<String>,
    /// Processes and threads a build may run at once.
    #[arg(long)]
    build_processes: Option<String>,
    /// CPUs a build may use at once, such as 2 or 0.5.
    #[arg(long)]
    build_cpus: Option<String>,
    /// Disk a build may write (workspace, layers, tmp), such as 8GiB.
    #[arg(long)]
    build_disk: Option<String>,
    /// Log a build may print, such as 20MiB.
    #[arg(long)]
    build_log: Option<String>,
}

impl BuildLimitArgs {
    /// The API's `build_limits` object, or `None` when no flag was given.
    fn to_json(&self) -> anyhow::Result<Option<Value>> {
        let mut out = Map::new();
        let size = |flag: &str, v: &str| -> anyhow::Result<Value> {
            if v == "default" {
                return Ok(Value::Null);
            }
            match parse_size(v)? {
                Some(n) => Ok(json!(n)),
                None => bail!("--{flag} takes a size such as 4GiB, or `default`"),
            }
        };
        let number = |flag: &str, v: &str, fractional: bool| -> anyhow::Result<Value> {
            if v == "default" {
                return Ok(Value::Null);
            }
            let n: f64 = v.parse().ok().filter(|n: &f64| *n > 0.0).with_context(|| {
                format!("--{flag} takes a number above 0, or `default`; not {v:?}")
            })?;
            if fractional {
                Ok(json!(n))
            } else if n.fract() == 0.0 {
                Ok(json!(n as u64))
            } else {
                bail!("--{flag} takes a whole number, or `default`; not {v:?}")
            }
        };
        if let Some(v) = &self.build_memory {
            out.insert("memory_bytes".into(), size("build-memory", v)?);
        }
        if let Some(v) = &self.build_processes {
            out.insert("processes".into(), number("build-processes", v, false)?);
        }
        if let Some(v) = &self.build_cpus {
            out.insert("cpus".into(), number("build-cpus", v, true)?);
        }
        if let Some(v) = &self.build_disk {
            out.insert("disk_bytes".into(), size("build-disk", v)?);
        }
        if let Some(v) = &self.build_log {
            out.insert("log_bytes".into(), size("build-log", v)?);
        }
        Ok((!out.is_empty()).then_some(Value::Object(out)))
    }
}

#[derive(Subcommand)]
enum RobotCommand {
    /// Create a robot; its secret is printed once.
    Create {
        project: String,
        name: String,
        #[arg(long)]
        pull: bool,
        #[arg(long)]
        push: bool,
        #[arg(long)]
        delete: bool,
        /// Lifetime such as 90d, or `never`.
        #[arg(long, default_value = "never")]
        expires: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    List {
        project: String,
    },
    /// Replace a robot's secret; the new one is printed once.
    Rotate {
        project: String,
        name: String,
    },
    Disable {
        project: String,
        name: String,
    },
    Enable {
        project: String,
        name: String,
    },
    Delete {
        project: String,
        name: String,
    },
}

/// What every command needs: the API client and how to print.
struct Ctx {
    client: Client,
    json: bool,
}

impl Ctx {
    async fn call(&self, method: M, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.client.call(method, path, body).await
    }
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    // Commands that need no server need no password either.
    if let AdminCommand::Stack(cmd) = &args.command
        && stack::is_local(cmd)
    {
        let AdminCommand::Stack(cmd) = args.command else {
            unreachable!("matched above")
        };
        return stack::run(cmd, None, args.json).await;
    }
    let http = args.server.http()?;
    // A password given wins; else `slipway login`'s session; else a local
    // server's admin-password file.
    let session = args
        .server
        .password
        .is_none()
        .then(|| super::login::session_for(&args.server.url))
        .flatten();
    let client = match session {
        Some(token) => Client::with_session(http, args.server.url, token),
        None => {
            let password = admin_password(
                args.server.password,
                &args.server.data_dir,
                "no password: pass --password, set SLIPWAY_PASSWORD, `slipway login`, or run where",
            )?;
            Client::new(http, args.server.url, args.user, password)
        }
    };
    let cx = Ctx {
        client,
        json: args.json,
    };
    match args.command {
        AdminCommand::Project(cmd) => project(&cx, cmd).await,
        AdminCommand::Robot(cmd) => robot(&cx, cmd).await,
        AdminCommand::Usage {
            project: _,
            action: Some(UsageAction::Recompute { dry_run }),
        } => usage_recompute(&cx, dry_run).await,
        AdminCommand::Usage {
            project,
            action: None,
        } => usage(&cx, project).await,
        AdminCommand::Quota(QuotaCommand::Set { project, size }) => {
            quota_set(&cx, &project, &size).await
        }
        AdminCommand::Gc {
            dry_run,
            project,
            no_retention,
        } => gc(&cx, dry_run, project, no_retention).await,
        AdminCommand::Rebase {
            run_image,
            dry_run,
            force,
        } => rebase(&cx, &run_image, dry_run, force).await,
        AdminCommand::Backup { dir } => {
            let dir = std::path::absolute(&dir)
                .map_err(|e| anyhow::anyhow!("cannot make {} absolute: {e}", dir.display()))?;
            let v = cx
                .call(M::POST, "/api/v1/backup", Some(json!({"dir": dir})))
                .await?;
            print_or(cx.json, &v, || {
                Ok(format!(
                    "backed up {} manifests and {} blobs ({}; {} hard-linked, {} copied) and the \
                     keys {} into {}",
                    v["manifests"],
                    v["blobs"],
                    slipway_storage::error::human_bytes(v["bytes"].as_u64().unwrap_or(0)),
                    v["linked"],
                    v["copied"],
                    v["keys"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    v["dir"].as_str().unwrap_or_default()
                ))
            })
        }
        AdminCommand::Fsck {
            repair,
            sizes_only,
            rate,
        } => fsck(&cx, repair, sizes_only, rate.as_deref()).await,
        AdminCommand::BuildToken(cmd) => build_token(&cx, cmd).await,
        AdminCommand::Builder(cmd) => builder(&cx, cmd).await,
        AdminCommand::Stack(cmd) => stack::run(cmd, Some(&cx.client), cx.json).await,
        AdminCommand::Trigger(cmd) => trigger(&cx, cmd).await,
        AdminCommand::Secret(cmd) => match cmd {
            SecretCommand::Set { project, name } => {
                secret_set(&cx.client, cx.json, &project, &name).await
            }
            SecretCommand::List { project } => secret_list(&cx.client, cx.json, &project).await,
            SecretCommand::Delete { project, name } => {
                secret_delete(&cx.client, cx.json, &project, &name).await
            }
        },
        AdminCommand::Audit {
            project,
            principal,
            action,
            since,
            limit,
        } => audit(&cx, project, principal, action, since, limit).await,
    }
}

// ----- projects -----------------------------------------------------------

async fn project(cx: &Ctx, cmd: ProjectCommand) -> anyhow::Result<()> {
    match cmd {
        ProjectCommand::Create {
            name,
            public: _,
            private,
            quota,
        } => project_create(cx, &name, private, quota.as_deref()).await,
        ProjectCommand::List => project_list(cx).await,
        ProjectCommand::Show { name } => project_show(cx, &name).await,
        ProjectCommand::Set {
            name,
            public,
            private,
            retention,
            limits,
        } => project_set(cx, &name, public, private, retention, &limits).await,
        ProjectCommand::Delete { name } => project_delete(cx, &name).await,
    }
}

async fn project_create(
    cx: &Ctx,
    name: &str,
    private: bool,
    quota: Option<&str>,
) -> anyhow::Result<()> {
    let quota = quota.map(parse_size).transpose()?.flatten();
    let v = cx
        .call(
            M::POST,
            "/api/v1/projects",
            Some(json!({"name": name, "public": !private, "quota_bytes": quota})),
        )
        .await?;
    print_or(cx.json, &v, || {
        projects_table(&[serde_json::from_value(v.clone())?])
    })
}

async fn project_list(cx: &Ctx) -> anyhow::Result<()> {
    let v = cx.call(M::GET, "/api/v1/projects", None).await?;
    print_or(cx.json, &v, || {
        projects_table(&serde_json::from_value::<Vec<ProjectView>>(v.clone())?)
    })
}

async fn project_show(cx: &Ctx, name: &str) -> anyhow::Result<()> {
    let v = cx
        .call(M::GET, &format!("/api/v1/projects/{name}"), None)
        .await?;
    print_or(cx.json, &v, || {
        let p: ProjectView = serde_json::from_value(v.clone())?;
        let mut out = projects_table(std::slice::from_ref(&p))?;
        let l = &p.build_limits;
        let own: Vec<String> = [
            l.memory_bytes.map(|v| format!("memory {}", human_bytes(v))),
            l.processes.map(|v| format!("{v} processes")),
            l.cpus.map(|v| format!("{v} CPU")),
            l.disk_bytes.map(|v| format!("disk {}", human_bytes(v))),
            l.log_bytes.map(|v| format!("log {}", human_bytes(v))),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !own.is_empty() {
            out.push_str(&format!("\nBuild limits of its own: {}\n", own.join(", ")));
        }
        let mut t = table(&["repository", "manifests"]);
        for r in p.repositories.unwrap_or_default() {
            t.add_row(vec![r.name, r.manifests.to_string()]);
        }
        out.push('\n');
        out.push_str(&t.to_string());
        Ok(out)
    })
}

async fn project_set(
    cx: &Ctx,
    name: &str,
    public: bool,
    private: bool,
    retention: Option<String>,
    limits: &BuildLimitArgs,
) -> anyhow::Result<()> {
    let mut body = Map::new();
    if let Some(l) = limits.to_json()? {
        body.insert("build_limits".into(), l);
    }
    if public || private {
        body.insert("public".into(), json!(public));
    }
    if let Some(r) = retention {
        let keep = if r == "default" {
            Value::Null
        } else {
            json!(r.parse::<u32>().with_context(|| {
                format!("--retention takes a number of images or `default`, not {r:?}")
            })?)
        };
        body.insert("retention_keep".into(), keep);
    }
    if body.is_empty() {
        bail!("nothing to change: give --public, --private, --retention or a --build-… limit");
    }
    let v = cx
        .call(
            M::PATCH,
            &format!("/api/v1/projects/{name}"),
            Some(Value::Object(body)),
        )
        .await?;
    print_or(cx.json, &v, || {
        projects_table(&[serde_json::from_value(v.clone())?])
    })
}

async fn project_delete(cx: &Ctx, name: &str) -> anyhow::Result<()> {
    cx.call(M::DELETE, &format!("/api/v1/projects/{name}"), None)
        .await?;
    say(cx.json, format!("Deleted project {name}."));
    Ok(())
}

// ----- robots -------------------------------------------------------------

async fn robot(cx: &Ctx, cmd: RobotCommand) -> anyhow::Result<()> {
    match cmd {
        RobotCommand::Create {
            project,
            name,
            pull,
            push,
            delete,
            expires,
            description,
        } => {
            robot_create(
                cx,
                &project,
                &name,
                (pull, push, delete),
                &expires,
                &description,
            )
            .await
        }
        RobotCommand::List { project } => robot_list(cx, &project).await,
        RobotCommand::Rotate { project, name } => robot_rotate(cx, &project, &name).await,
        RobotCommand::Disable { project, name } => robot_enable(cx, &project, &name, false).await,
        RobotCommand::Enable { project, name } => robot_enable(cx, &project, &name, true).await,
        RobotCommand::Delete { project, name } => robot_delete(cx, &project, &name).await,
    }
}

async fn robot_create(
    cx: &Ctx,
    project: &str,
    name: &str,
    (pull, push, delete): (bool, bool, bool),
    expires: &str,
    description: &str,
) -> anyhow::Result<()> {
    let mut perms = Vec::new();
    if pull || !(push || delete) {
        perms.push("pull");
    }
    if push {
        perms.push("push");
    }
    if delete {
        perms.push("delete");
    }
    let days = parse_days(expires)?;
    let v = cx
        .call(
            M::POST,
            &format!("/api/v1/projects/{project}/robots"),
            Some(json!({"name": name, "description": description, "permissions": perms, "expires_in_days": days})),
        )
        .await?;
    print_or(cx.json, &v, || {
        secret_text(serde_json::from_value(v.clone())?)
    })
}

async fn robot_list(cx: &Ctx, project: &str) -> anyhow::Result<()> {
    let v = cx
        .call(M::GET, &format!("/api/v1/projects/{project}/robots"), None)
        .await?;
    print_or(cx.json, &v, || {
        robots_table(&serde_json::from_value::<Vec<RobotView>>(v.clone())?)
    })
}

async fn robot_rotate(cx: &Ctx, project: &str, name: &str) -> anyhow::Result<()> {
    let v = cx
        .call(
            M::POST,
            &format!("/api/v1/projects/{project}/robots/{name}/rotate"),
            None,
        )
        .await?;
    print_or(cx.json, &v, || {
        secret_text(serde_json::from_value(v.clone())?)
    })
}

async fn robot_enable(cx: &Ctx, project: &str, name: &str, enabled: bool) -> anyhow::Result<()> {
    let v = cx
        .call(
            M::PATCH,
            &format!("/api/v1/projects/{project}/robots/{name}"),
            Some(json!({"enabled": enabled})),
        )
        .await?;
    print_or(cx.json, &v, || {
        robots_table(&[serde_json::from_value(v.clone())?])
    })
}

async fn robot_delete(cx: &Ctx, project: &str, name: &str) -> anyhow::Result<()> {
    cx.call(
        M::DELETE,
        &format!("/api/v1/projects/{project}/robots/{name}"),
        None,
    )
    .await?;
    say(cx.json, format!("Deleted robot${project}+{name}."));
    Ok(())
}

// ----- usage, quotas, GC, rebase -----------------------------------------

async fn usage_recompute(cx: &Ctx, dry_run: bool) -> anyhow::Result<()> {
    let v = cx
        .call(
            M::POST,
            &format!("/api/v1/usage/recompute?dry_run={dry_run}"),
            None,
        )
        .await?;
    print_or(cx.json, &v, || {
        let drifts = v["drifts"].as_array().cloned().unwrap_or_default();
        let checked = v["projects"].as_u64().unwrap_or(0);
        if drifts.is_empty() {
            return Ok(format!("Recomputed {checked} projects: no drift."));
        }
        let mut t = table(&[
            "project",
            "missing rows",
            "extra rows",
            "used before",
            "used after",
        ]);
        for d in &drifts {
            t.add_row(vec![
                d["project"].as_str().unwrap_or("").to_owned(),
                d["missing"].as_array().map_or(0, |a| a.len()).to_string(),
                d["extra"].as_array().map_or(0, |a| a.len()).to_string(),
                human_bytes(d["used_before"].as_u64().unwrap_or(0)),
                human_bytes(d["used_after"].as_u64().unwrap_or(0)),
            ]);
        }
        let verb = if dry_run { "would be fixed" } else { "fixed" };
        Ok(format!(
            "{t}\nDrift in {} of {checked} projects ({verb}).",
            drifts.len()
        ))
    })
}

async fn usage(cx: &Ctx, project: Option<String>) -> anyhow::Result<()> {
    let Some(project) = project else {
        let v = cx.call(M::GET, "/api/v1/usage", None).await?;
        return print_or(cx.json, &v, || {
            usage_table(&serde_json::from_value::<Vec<UsageView>>(v.clone())?)
        });
    };
    let v = cx
        .call(M::GET, &format!("/api/v1/projects/{project}/usage"), None)
        .await?;
    print_or(cx.json, &v, || {
        usage_table(&[serde_json::from_value(v.clone())?])
    })
}

async fn quota_set(cx: &Ctx, project: &str, size: &str) -> anyhow::Result<()> {
    let bytes = parse_size(size)?;
    cx.call(
        M::PATCH,
        &format!("/api/v1/projects/{project}"),
        Some(json!({"quota_bytes": bytes})),
    )
    .await?;
    usage(cx, Some(project.to_owned())).await
}

async fn gc(
    cx: &Ctx,
    dry_run: bool,
    project: Option<String>,
    no_retention: bool,
) -> anyhow::Result<()> {
    let v = cx
        .call(
            M::POST,
            "/api/v1/gc",
            Some(json!({"dry_run": dry_run, "project": project, "retention": !no_retention})),
        )
        .await?;
    print_or(cx.json, &v, || gc_text(&v, dry_run))
}

async fn fsck(cx: &Ctx, repair: bool, sizes_only: bool, rate: Option<&str>) -> anyhow::Result<()> {
    let rate = match rate {
        None => 0,
        Some(r) => parse_size(r)?.unwrap_or(0),
    };
    let v = cx
        .call(
            M::POST,
            "/api/v1/fsck",
            Some(json!({"repair": repair, "sizes_only": sizes_only, "rate_bytes_per_sec": rate})),
        )
        .await?;
    let problems = v["problems"].as_array().map(Vec::len).unwrap_or(0);
    print_or(cx.json, &v, || {
        let mut out = format!(
            "checked {} blobs ({} hashed), {} stored",
            v["blobs_checked"],
            slipway_storage::error::human_bytes(v["bytes_hashed"].as_u64().unwrap_or(0)),
            v["stored_blobs"]
        );
        for p in v["problems"].as_array().into_iter().flatten() {
            out.push_str(&format!("\n{}", p.as_str().unwrap_or_default()));
        }
        for q in v["quarantined"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\nquarantined {}; deleted the manifests {}",
                q["digest"].as_str().unwrap_or_default(),
                q["manifests"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for o in v["orphans_removed"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\nremoved {}, recorded nowhere",
                o.as_str().unwrap_or_default()
            ));
        }
        for o in v["leftovers_removed"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\nforgot {}, claimed by an upload that never finished",
                o.as_str().unwrap_or_default()
            ));
        }
        for p in v["usage_fixed"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "\ncorrected the usage of {}",
                p.as_str().unwrap_or_default()
            ));
        }
        if problems == 0 {
            out.push_str("\nno problems found");
        }
        Ok(out)
    })?;
    if problems > 0 && !repair {
        anyhow::bail!(
            "fsck found {problems} problem(s); `slipway admin fsck --repair` repairs what it can"
        );
    }
    Ok(())
}

async fn rebase(cx: &Ctx, run_image: &str, dry_run: bool, force: bool) -> anyhow::Result<()> {
    let v = cx
        .call(
            M::POST,
            "/api/v1/admin/rebase",
            Some(json!({"run_image": run_image, "dry_run": dry_run, "force": force})),
        )
        .await?;
    print_or(cx.json, &v, || {
        let r: FleetReport = serde_json::from_value(v.clone())?;
        Ok(report_text(&r).trim_end().to_owned())
    })
}

// ----- build tokens and builders ------------------------------------------

async fn build_token(cx: &Ctx, cmd: BuildTokenCommand) -> anyhow::Result<()> {
    match cmd {
        BuildTokenCommand::Create { project, name } => {
            build_token_create(cx, &project, &name).await
        }
        BuildTokenCommand::List { project } => build_token_list(cx, &project).await,
        BuildTokenCommand::Delete { project, name } => {
            cx.call(
                M::DELETE,
                &format!("/api/v1/projects/{project}/build-tokens/{name}"),
                None,
            )
            .await?;
            say(
                cx.json,
                format!("Deleted build token build${project}+{name}."),
            );
            Ok(())
        }
    }
}

async fn build_token_create(cx: &Ctx, project: &str, name: &str) -> anyhow::Result<()> {
    let v = cx
        .call(
            M::POST,
            &format!("/api/v1/projects/{project}/build-tokens"),
            Some(json!({"name": name})),
        )
        .await?;
    print_or(cx.json, &v, || {
        let user = v["token"]["username"].as_str().unwrap_or_default();
        let secret = v["secret"].as_str().unwrap_or_default();
        Ok(format!(
            "Created build token {user}.\n\
             Its secret is shown this once; keep it where the project's builds start:\n\n\
             \x20 SLIPWAY_BUILD_TOKEN='{user}:{secret}'\n"
        ))
    })
}

async fn build_token_list(cx: &Ctx, project: &str) -> anyhow::Result<()> {
    let v = cx
        .call(
            M::GET,
            &format!("/api/v1/projects/{project}/build-tokens"),
            None,
        )
        .await?;
    print_or(cx.json, &v, || {
        Ok(rows_table(
            &v,
            &[
                ("user name", "username", ""),
                ("created", "created_at", ""),
                ("last used", "last_used_at", "never"),
            ],
        ))
    })
}

async fn builder(cx: &Ctx, cmd: BuilderCommand) -> anyhow::Result<()> {
    match cmd {
        BuilderCommand::Approve { image } => {
            let v = cx
                .call(M::POST, "/api/v1/builders", Some(json!({"image": image})))
                .await?;
            print_or(cx.json, &v, || {
                Ok(format!(
                    "Approved builder {}.",
                    v["image"].as_str().unwrap_or_default()
                ))
            })
        }
        BuilderCommand::List => {
            let v = cx.call(M::GET, "/api/v1/builders", None).await?;
            print_or(cx.json, &v, || {
                Ok(rows_table(
                    &v,
                    &[
                        ("builder", "image", ""),
                        ("approved by", "approved_by", ""),
                        ("approved at", "approved_at", ""),
                    ],
                ))
            })
        }
        BuilderCommand::Revoke { image } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("image", &image);
            cx.call(M::DELETE, &format!("/api/v1/builders?{}", q.finish()), None)
                .await?;
            say(cx.json, format!("Revoked builder {image}."));
            Ok(())
        }
    }
}

// ----- triggers -----------------------------------------------------------

async fn trigger(cx: &Ctx, cmd: TriggerCommand) -> anyhow::Result<()> {
    match cmd {
        TriggerCommand::Create {
            project,
            source,
            tags,
            settings,
        } => trigger_create(cx, &project, source, tags, &settings).await,
        TriggerCommand::List { project } => trigger_list(cx, project).await,
        TriggerCommand::Show { id } => {
            let v = cx
                .call(M::GET, &format!("/api/v1/triggers/{}", segment(&id)), None)
                .await?;
            print_or(cx.json, &v, || {
                Ok(trigger_text(&serde_json::from_value(v.clone())?))
            })
        }
        TriggerCommand::Update {
            id,
            source,
            tags,
            no_tags,
            no_poll,
            no_env,
            no_secrets,
            rotate_secret,
            settings,
        } => {
            let mut body = settings.to_json()?;
            if let Some(s) = source {
                body.insert("source_url".into(), json!(s));
            }
            if tags || no_tags {
                body.insert("tags".into(), json!(tags));
            }
            if no_poll {
                body.insert("poll_interval_secs".into(), json!(0));
            }
            if no_env {
                body.insert("env".into(), json!({}));
            }
            if no_secrets {
                body.insert("secrets".into(), json!([]));
            }
            if rotate_secret {
                body.insert("rotate_secret".into(), json!(true));
            }
            if body.is_empty() {
                bail!(
                    "nothing to change: give what to change (see `slipway admin trigger update --help`)"
                );
            }
            trigger_update(cx, &id, body).await
        }
        TriggerCommand::Delete { id } => {
            cx.call(
                M::DELETE,
                &format!("/api/v1/triggers/{}", segment(&id)),
                None,
            )
            .await?;
            say(cx.json, format!("Deleted trigger {id}."));
            Ok(())
        }
        TriggerCommand::Deliveries { id, limit } => trigger_deliveries(cx, &id, limit).await,
    }
}

async fn trigger_create(
    cx: &Ctx,
    project: &str,
    source: String,
    tags: bool,
    settings: &TriggerSettings,
) -> anyhow::Result<()> {
    let mut body = settings.to_json()?;
    body.insert("source_url".into(), json!(source));
    if tags {
        body.insert("tags".into(), json!(true));
    }
    let v = cx
        .call(
            M::POST,
            &format!("/api/v1/projects/{project}/triggers"),
            Some(Value::Object(body)),
        )
        .await?;
    print_or(cx.json, &v, || {
        let s: TriggerSecret = serde_json::from_value(v.clone())?;
        Ok(format!(
            "{}\n\n{}",
            trigger_text(&s.trigger),
            hook_secret_text(&s.trigger, &s.secret)
        ))
    })
}

async fn trigger_list(cx: &Ctx, project: Option<String>) -> anyhow::Result<()> {
    let path = match &project {
        Some(p) => format!("/api/v1/projects/{p}/triggers"),
        None => "/api/v1/triggers".to_owned(),
    };
    let v = cx.call(M::GET, &path, None).await?;
    print_or(cx.json, &v, || {
        let triggers: Vec<TriggerView> = serde_json::from_value(v.clone())?;
        let mut t = table(&[
            "trigger", "project", "source", "ref", "image", "poll", "default",
        ]);
        for tr in triggers {
            t.add_row(vec![
                tr.id.clone(),
                tr.project.clone(),
                tr.source_url.clone(),
                refs_text(&tr),
                tr.image_name.clone(),
                tr.poll_interval_secs
                    .map(|s| format!("{s} s"))
                    .unwrap_or_else(|| "no".into()),
                if tr.default { "yes" } else { "" }.to_owned(),
            ]);
        }
        Ok(t.to_string())
    })
}

async fn trigger_update(cx: &Ctx, id: &str, body: Map<String, Value>) -> anyhow::Result<()> {
    let v = cx
        .call(
            M::PATCH,
            &format!("/api/v1/triggers/{}", segment(id)),
            Some(Value::Object(body)),
        )
        .await?;
    print_or(cx.json, &v, || {
        let u: TriggerUpdated = serde_json::from_value(v.clone())?;
        let mut out = trigger_text(&u.trigger);
        if let Some(secret) = &u.secret {
            out.push_str("\n\n");
            out.push_str(&hook_secret_text(&u.trigger, secret));
        }
        Ok(out)
    })
}

async fn trigger_deliveries(cx: &Ctx, id: &str, limit: u32) -> anyhow::Result<()> {
    let v = cx
        .call(
            M::GET,
            &format!("/api/v1/triggers/{}/deliveries?limit={limit}", segment(id)),
            None,
        )
        .await?;
    print_or(cx.json, &v, || {
        let list: Vec<DeliveryView> = serde_json::from_value(v.clone())?;
        let mut t = table(&[
            "time", "provider", "event", "ref", "commit", "result", "build", "detail",
        ]);
        for d in list {
            let commit = d.commit.unwrap_or_default();
            t.add_row(vec![
                d.at,
                d.provider,
                d.event,
                d.git_ref.unwrap_or_default(),
                commit.chars().take(12).collect(),
                d.result,
                d.build.unwrap_or_default(),
                d.detail,
            ]);
        }
        Ok(t.to_string())
    })
}

/// The branches (and tags) a trigger builds.
fn refs_text(t: &TriggerView) -> String {
    if t.tags {
        format!(
            "{}, tags {}",
            t.ref_pattern,
            t.tag_pattern.as_deref().unwrap_or("*")
        )
    } else {
        t.ref_pattern.clone()
    }
}

fn trigger_text(t: &TriggerView) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<12}{v}\n"));
    line("trigger", &t.id);
    line("project", &t.project);
    line("source", &t.source_url);
    line("builds", &refs_text(t));
    line("image", &format!("{}/{}", t.project, t.image_name));
    line(
        "builder",
        t.builder.as_deref().unwrap_or("the server's default"),
    );
    if !t.env.is_empty() {
        line("env", &t.env.join(", "));
    }
    if !t.secrets.is_empty() {
        line("secrets", &t.secrets.join(", "));
    }
    if let Some(c) = &t.git_credentials {
        line("git login", &format!("the secret {c}"));
    }
    let polls = match (t.poll_interval_secs, &t.polled_commit) {
        (None, _) => "no (webhooks only)".to_owned(),
        (Some(s), None) => format!("every {s} s"),
        (Some(s), Some(c)) => format!(
            "every {s} s (last saw {})",
            c.chars().take(12).collect::<String>()
        ),
    };
    line("polls", &polls);
    line("default", if t.default { "yes" } else { "no" });
    line("delivery", &t.delivery_url);
    line("created", &format!("{} by {}", t.created_at, t.created_by));
    out.trim_end().to_owned()
}

/// A webhook secret, and where it goes: shown this once.
fn hook_secret_text(t: &TriggerView, secret: &str) -> String {
    format!(
        "Webhook secret: {secret}\n\n\
         Point the forge's push webhook at {} (content type application/json) with this \
         secret: GitHub's and Gitea's/Forgejo's \"Secret\", GitLab's \"Secret token\".\n\
         The secret is shown only this once; store it now.",
        t.delivery_url
    )
}

// ----- secrets (shared with `slipway build secret`) ------------------------

/// Sets a project secret to what standard input holds.
pub(super) async fn secret_set(
    client: &Client,
    json: bool,
    project: &str,
    name: &str,
) -> anyhow::Result<()> {
    let value = read_secret(name)?;
    let v = client
        .call(
            M::PUT,
            &format!("/api/v1/projects/{project}/secrets/{}", segment(name)),
            Some(json!({ "value": value })),
        )
        .await?;
    print_or(json, &v, || {
        Ok(format!("Secret {name} of project {project} set."))
    })
}

pub(super) async fn secret_list(client: &Client, json: bool, project: &str) -> anyhow::Result<()> {
    let v = client
        .call(M::GET, &format!("/api/v1/projects/{project}/secrets"), None)
        .await?;
    print_or(json, &v, || {
        let secrets: Vec<SecretView> = serde_json::from_value(v.clone())?;
        let mut t = table(&["secret", "created", "updated"]);
        for s in secrets {
            t.add_row(vec![s.name, s.created_at, s.updated_at]);
        }
        Ok(t.to_string())
    })
}

pub(super) async fn secret_delete(
    client: &Client,
    json: bool,
    project: &str,
    name: &str,
) -> anyhow::Result<()> {
    client
        .call(
            M::DELETE,
            &format!("/api/v1/projects/{project}/secrets/{}", segment(name)),
            None,
        )
        .await?;
    say(json, format!("Deleted secret {name} of project {project}."));
    Ok(())
}

/// A secret's value from standard input: all of it, or on a terminal one
/// line (asked for); one trailing newline dropped; never empty.
fn read_secret(name: &str) -> anyhow::Result<String> {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    let mut raw = String::new();
    if stdin.is_terminal() {
        eprint!("Value of {name} (shown as you type; pipe it in to keep it off the screen): ");
        stdin.read_line(&mut raw)
    } else {
        stdin.lock().read_to_string(&mut raw)
    }
    .context("cannot read the secret's value from standard input (it must be UTF-8 text)")?;
    let value = strip_newline(&raw);
    if value.is_empty() {
        bail!(
            "the value of {name} is empty: pipe the value to standard input, for example with \
             printf %s \"$VALUE\" | …"
        );
    }
    Ok(value.to_owned())
}

/// `s` without one trailing `\n` (or `\r\n`).
fn strip_newline(s: &str) -> &str {
    s.strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(s)
}

/// `NAME=VALUE` flags → the API's `env` object.
pub(super) fn env_vars(env: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut vars = Map::new();
    for e in env {
        let (k, v) = e
            .split_once('=')
            .with_context(|| format!("--env takes NAME=VALUE, not {e:?}"))?;
        vars.insert(k.to_owned(), json!(v));
    }
    Ok(vars)
}

// ----- audit --------------------------------------------------------------

async fn audit(
    cx: &Ctx,
    project: Option<String>,
    principal: Option<String>,
    action: Option<String>,
    since: Option<String>,
    limit: u32,
) -> anyhow::Result<()> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("limit", &limit.to_string());
    for (k, v) in [
        ("project", project),
        ("principal", principal),
        ("action", action),
        ("since", since),
    ] {
        if let Some(v) = v {
            query.append_pair(k, &v);
        }
    }
    let v = cx
        .call(M::GET, &format!("/api/v1/audit?{}", query.finish()), None)
        .await?;
    print_or(cx.json, &v, || {
        let page: AuditPage = serde_json::from_value(v.clone())?;
        let mut t = table(&["time", "principal", "action", "target", "from"]);
        for e in page.entries {
            t.add_row(vec![
                e.at,
                e.principal,
                e.action,
                e.target.unwrap_or_default(),
                e.remote_addr.unwrap_or_default(),
            ]);
        }
        Ok(t.to_string())
    })
}

// ----- tables and parsing --------------------------------------------------

fn projects_table(projects: &[ProjectView]) -> anyhow::Result<String> {
    let mut t = table(&["project", "visibility", "quota", "retention", "created"]);
    for p in projects {
        t.add_row(vec![
            if p.base {
                format!("{} (base)", p.name)
            } else {
                p.name.clone()
            },
            if p.public { "public" } else { "private" }.to_owned(),
            p.quota_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "unlimited".into()),
            p.retention_keep
                .map(|k| format!("{k} images"))
                .unwrap_or_else(|| "default".into()),
            p.created_at.clone(),
        ]);
    }
    Ok(t.to_string())
}

fn gc_text(v: &Value, dry_run: bool) -> anyhow::Result<String> {
    let mut out = String::new();
    let manifests = v["manifests"].as_array().cloned().unwrap_or_default();
    if !manifests.is_empty() {
        let mut t = table(&["repository", "manifest", "tags", "why"]);
        for m in &manifests {
            let tags: Vec<&str> = m["tags"]
                .as_array()
                .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
                .unwrap_or_default();
            t.add_row(vec![
                m["repository"].as_str().unwrap_or("").to_owned(),
                m["digest"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(19)
                    .collect(),
                tags.join(","),
                m["reason"].as_str().unwrap_or("").to_owned(),
            ]);
        }
        out.push_str(&t.to_string());
        out.push('\n');
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    out.push_str(&format!(
        "GC {verb} {} manifests and {} blobs ({}).",
        manifests.len(),
        v["blobs"].as_u64().unwrap_or(0),
        human_bytes(v["bytes_freed"].as_u64().unwrap_or(0))
    ));
    for s in v["manifests_skipped"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        out.push_str(&format!("\nKept {}", s.as_str().unwrap_or("")));
    }
    Ok(out)
}

fn usage_table(usages: &[UsageView]) -> anyhow::Result<String> {
    let mut t = table(&[
        "project",
        "used",
        "quota",
        "use",
        "reserved",
        "uploading",
        "blobs",
        "warnings",
    ]);
    for u in usages {
        t.add_row(vec![
            if u.base {
                format!("{} (base)", u.project)
            } else {
                u.project.clone()
            },
            human_bytes(u.used_bytes),
            u.quota_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "unlimited".into()),
            u.percent.map(|p| format!("{p:.1} %")).unwrap_or_default(),
            human_bytes(u.reserved_bytes),
            human_bytes(u.uploading_bytes),
            u.blob_count.to_string(),
            u.warnings
                .iter()
                .map(|w| format!("≥{w} %"))
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    Ok(t.to_string())
}

/// `5GiB`, `500MiB`, `1.5G`, `500MB` (powers of 1000), `1024`, or `none`
/// (no quota) → bytes.
pub fn parse_size(s: &str) -> anyhow::Result<Option<u64>> {
    slipway_registry::sizes::parse_size(s).map_err(anyhow::Error::msg)
}

fn robots_table(robots: &[RobotView]) -> anyhow::Result<String> {
    let mut t = table(&["user name", "permissions", "state", "expires", "last used"]);
    for r in robots {
        let state = if !r.enabled {
            "disabled"
        } else if r.expired {
            "expired"
        } else {
            "enabled"
        };
        t.add_row(vec![
            r.username.clone(),
            r.effective_permissions.join(","),
            state.to_owned(),
            r.expires_at.clone().unwrap_or_else(|| "never".into()),
            r.last_used_at.clone().unwrap_or_else(|| "never".into()),
        ]);
    }
    Ok(t.to_string())
}

fn secret_text(s: RobotSecret) -> anyhow::Result<String> {
    Ok(format!(
        "{}\n\nUser name: {}\nSecret:    {}\n\nThe secret is shown only this once; store it now.",
        robots_table(std::slice::from_ref(&s.robot))?,
        s.robot.username,
        s.secret
    ))
}

/// `90d`, `90`, `never` → days (0 = never).
fn parse_days(s: &str) -> anyhow::Result<u32> {
    if s == "never" {
        return Ok(0);
    }
    s.trim_end_matches('d')
        .parse::<u32>()
        .ok()
        .filter(|d| *d > 0)
        .with_context(|| {
            format!("--expires takes a number of days such as 90d, or never; not {s:?}")
        })
}

#[cfg(test)]
mod tests {
    use super::{parse_size, strip_newline};

    #[test]
    fn secret_values_lose_one_newline() {
        let cases = [
            ("s3cret", "s3cret"),
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret\n\n", "s3cret\n"),
            ("two\nlines\n", "two\nlines"),
            ("\n", ""),
            ("", ""),
        ];
        for (given, want) in cases {
            assert_eq!(strip_newline(given), want, "{given:?}");
        }
    }

    #[test]
    fn sizes() {
        let cases: &[(&str, Option<u64>)] = &[
            ("2GiB", Some(2 << 30)),
            ("2 GiB", Some(2 << 30)),
            ("300MiB", Some(300 << 20)),
            ("1.5G", Some(3 << 29)),
            ("500MB", Some(500_000_000)),
            ("1024", Some(1024)),
            ("none", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_size(s).unwrap(), *want, "{s}");
        }
        for bad in ["", "GiB", "2 parsecs", "-1", "1.2.3G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
