//! `slipway admin …`: the admin API from the command line. Human tables by
//! default, the API's JSON with `--json`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::{Value, json};
use slipway_registry::api::audit::AuditPage;
use slipway_registry::api::projects::ProjectView;
use slipway_registry::api::robots::{RobotSecret, RobotView};
use slipway_registry::api::storage::UsageView;
use slipway_registry::rebase::{FleetReport, report_text};
use slipway_storage::error::human_bytes;

#[derive(Args)]
pub struct AdminArgs {
    /// The Slipway server.
    #[arg(
        long,
        env = "SLIPWAY_URL",
        default_value = "http://127.0.0.1:5000",
        global = true
    )]
    url: String,
    /// User name (the admin).
    #[arg(long, env = "SLIPWAY_USER", default_value = "admin", global = true)]
    user: String,
    /// Password; without it, SLIPWAY_PASSWORD, then `<data-dir>/admin-password`.
    #[arg(long, env = "SLIPWAY_PASSWORD", hide_env_values = true, global = true)]
    password: Option<String>,
    /// Where a local server keeps its data (for its admin-password file).
    #[arg(long, default_value = "slipway-data", global = true)]
    data_dir: PathBuf,
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
    Stack(crate::stack_cli::StackCommand),
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
    },
    /// Delete a project that holds no images.
    Delete {
        name: String,
    },
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

pub struct Client {
    pub http: reqwest::Client,
    pub url: String,
    pub user: String,
    pub password: String,
}

impl Client {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url.trim_end_matches('/')))
            .basic_auth(&self.user, Some(&self.password));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach Slipway at {}", self.url))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let sentence = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("the server answered {status}"));
            bail!("{sentence}");
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).context("the server's answer is not JSON")
    }
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    if let AdminCommand::Stack(cmd) = &args.command
        && crate::stack_cli::is_local(cmd)
    {
        let AdminCommand::Stack(cmd) = args.command else {
            unreachable!("matched above")
        };
        return crate::stack_cli::run(cmd, None, args.json).await;
    }
    let password = match args.password {
        Some(p) => p,
        None => {
            let file = args.data_dir.join("admin-password");
            std::fs::read_to_string(&file)
                .map(|s| s.trim().to_owned())
                .with_context(|| {
                    format!(
                        "no password: pass --password, set SLIPWAY_PASSWORD, or run where {} is readable",
                        file.display()
                    )
                })?
        }
    };
    let client = Client {
        http: reqwest::Client::new(),
        url: args.url,
        user: args.user,
        password,
    };
    let json = args.json;
    use reqwest::Method as M;
    match args.command {
        AdminCommand::Project(cmd) => match cmd {
            ProjectCommand::Create {
                name,
                private,
                quota,
            } => {
                let quota = quota.as_deref().map(parse_size).transpose()?.flatten();
                let v = client
                    .call(
                        M::POST,
                        "/api/v1/projects",
                        Some(json!({"name": name, "public": !private, "quota_bytes": quota})),
                    )
                    .await?;
                print_or(json, &v, || {
                    projects_table(&[serde_json::from_value(v.clone())?])
                })?;
            }
            ProjectCommand::List => {
                let v = client.call(M::GET, "/api/v1/projects", None).await?;
                print_or(json, &v, || {
                    projects_table(&serde_json::from_value::<Vec<ProjectView>>(v.clone())?)
                })?;
            }
            ProjectCommand::Show { name } => {
                let v = client
                    .call(M::GET, &format!("/api/v1/projects/{name}"), None)
                    .await?;
                print_or(json, &v, || {
                    let p: ProjectView = serde_json::from_value(v.clone())?;
                    let mut out = projects_table(std::slice::from_ref(&p))?;
                    let mut t = table(&["repository", "manifests"]);
                    for r in p.repositories.unwrap_or_default() {
                        t.add_row(vec![r.name, r.manifests.to_string()]);
                    }
                    out.push('\n');
                    out.push_str(&t.to_string());
                    Ok(out)
                })?;
            }
            ProjectCommand::Set {
                name,
                public,
                private,
                retention,
            } => {
                let mut body = serde_json::Map::new();
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
                    bail!("nothing to change: give --public, --private or --retention");
                }
                let v = client
                    .call(
                        M::PATCH,
                        &format!("/api/v1/projects/{name}"),
                        Some(Value::Object(body)),
                    )
                    .await?;
                print_or(json, &v, || {
                    projects_table(&[serde_json::from_value(v.clone())?])
                })?;
            }
            ProjectCommand::Delete { name } => {
                client
                    .call(M::DELETE, &format!("/api/v1/projects/{name}"), None)
                    .await?;
                if !json {
                    println!("Deleted project {name}.");
                }
            }
        },
        AdminCommand::Robot(cmd) => match cmd {
            RobotCommand::Create {
                project,
                name,
                pull,
                push,
                delete,
                expires,
                description,
            } => {
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
                let days = parse_days(&expires)?;
                let v = client
                    .call(
                        M::POST,
                        &format!("/api/v1/projects/{project}/robots"),
                        Some(json!({"name": name, "description": description, "permissions": perms, "expires_in_days": days})),
                    )
                    .await?;
                print_or(json, &v, || secret_text(serde_json::from_value(v.clone())?))?;
            }
            RobotCommand::List { project } => {
                let v = client
                    .call(M::GET, &format!("/api/v1/projects/{project}/robots"), None)
                    .await?;
                print_or(json, &v, || {
                    robots_table(&serde_json::from_value::<Vec<RobotView>>(v.clone())?)
                })?;
            }
            RobotCommand::Rotate { project, name } => {
                let v = client
                    .call(
                        M::POST,
                        &format!("/api/v1/projects/{project}/robots/{name}/rotate"),
                        None,
                    )
                    .await?;
                print_or(json, &v, || secret_text(serde_json::from_value(v.clone())?))?;
            }
            RobotCommand::Disable { project, name } => {
                let v = client
                    .call(
                        M::PATCH,
                        &format!("/api/v1/projects/{project}/robots/{name}"),
                        Some(json!({"enabled": false})),
                    )
                    .await?;
                print_or(json, &v, || {
                    robots_table(&[serde_json::from_value(v.clone())?])
                })?;
            }
            RobotCommand::Enable { project, name } => {
                let v = client
                    .call(
                        M::PATCH,
                        &format!("/api/v1/projects/{project}/robots/{name}"),
                        Some(json!({"enabled": true})),
                    )
                    .await?;
                print_or(json, &v, || {
                    robots_table(&[serde_json::from_value(v.clone())?])
                })?;
            }
            RobotCommand::Delete { project, name } => {
                client
                    .call(
                        M::DELETE,
                        &format!("/api/v1/projects/{project}/robots/{name}"),
                        None,
                    )
                    .await?;
                if !json {
                    println!("Deleted robot$${project}+{name}.");
                }
            }
        },
        AdminCommand::Usage { project, action } => match (project, action) {
            (_, Some(UsageAction::Recompute { dry_run })) => {
                let v = client
                    .call(
                        M::POST,
                        &format!("/api/v1/usage/recompute?dry_run={dry_run}"),
                        None,
                    )
                    .await?;
                print_or(json, &v, || {
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
                })?;
            }
            (Some(project), None) => {
                let v = client
                    .call(M::GET, &format!("/api/v1/projects/{project}/usage"), None)
                    .await?;
                print_or(json, &v, || {
                    usage_table(&[serde_json::from_value(v.clone())?])
                })?;
            }
            (None, None) => {
                let v = client.call(M::GET, "/api/v1/usage", None).await?;
                print_or(json, &v, || {
                    usage_table(&serde_json::from_value::<Vec<UsageView>>(v.clone())?)
                })?;
            }
        },
        AdminCommand::Quota(QuotaCommand::Set { project, size }) => {
            let bytes = parse_size(&size)?;
            client
                .call(
                    M::PATCH,
                    &format!("/api/v1/projects/{project}"),
                    Some(json!({"quota_bytes": bytes})),
                )
                .await?;
            let v = client
                .call(M::GET, &format!("/api/v1/projects/{project}/usage"), None)
                .await?;
            print_or(json, &v, || {
                usage_table(&[serde_json::from_value(v.clone())?])
            })?;
        }
        AdminCommand::Gc {
            dry_run,
            project,
            no_retention,
        } => {
            let v = client
                .call(
                    M::POST,
                    "/api/v1/gc",
                    Some(
                        json!({"dry_run": dry_run, "project": project, "retention": !no_retention}),
                    ),
                )
                .await?;
            print_or(json, &v, || gc_text(&v, dry_run))?;
        }
        AdminCommand::Rebase {
            run_image,
            dry_run,
            force,
        } => {
            let v = client
                .call(
                    M::POST,
                    "/api/v1/admin/rebase",
                    Some(json!({"run_image": run_image, "dry_run": dry_run, "force": force})),
                )
                .await?;
            print_or(json, &v, || {
                let r: FleetReport = serde_json::from_value(v.clone())?;
                Ok(report_text(&r).trim_end().to_owned())
            })?;
        }
        AdminCommand::BuildToken(cmd) => match cmd {
            BuildTokenCommand::Create { project, name } => {
                let v = client
                    .call(
                        M::POST,
                        &format!("/api/v1/projects/{project}/build-tokens"),
                        Some(json!({"name": name})),
                    )
                    .await?;
                print_or(json, &v, || {
                    let user = v["token"]["username"].as_str().unwrap_or_default();
                    let secret = v["secret"].as_str().unwrap_or_default();
                    Ok(format!(
                        "Created build token {user}.\n\
                         Its secret is shown this once; keep it where the project's builds start:\n\n\
                         \x20 SLIPWAY_BUILD_TOKEN='{user}:{secret}'\n"
                    ))
                })?;
            }
            BuildTokenCommand::List { project } => {
                let v = client
                    .call(
                        M::GET,
                        &format!("/api/v1/projects/{project}/build-tokens"),
                        None,
                    )
                    .await?;
                print_or(json, &v, || {
                    let mut t = table(&["user name", "created", "last used"]);
                    for tok in v.as_array().cloned().unwrap_or_default() {
                        t.add_row(vec![
                            tok["username"].as_str().unwrap_or("").to_owned(),
                            tok["created_at"].as_str().unwrap_or("").to_owned(),
                            tok["last_used_at"].as_str().unwrap_or("never").to_owned(),
                        ]);
                    }
                    Ok(t.to_string())
                })?;
            }
            BuildTokenCommand::Delete { project, name } => {
                client
                    .call(
                        M::DELETE,
                        &format!("/api/v1/projects/{project}/build-tokens/{name}"),
                        None,
                    )
                    .await?;
                if !json {
                    println!("Deleted build token build${project}+{name}.");
                }
            }
        },
        AdminCommand::Stack(cmd) => crate::stack_cli::run(cmd, Some(&client), json).await?,
        AdminCommand::Builder(cmd) => match cmd {
            BuilderCommand::Approve { image } => {
                let v = client
                    .call(M::POST, "/api/v1/builders", Some(json!({"image": image})))
                    .await?;
                print_or(json, &v, || {
                    Ok(format!(
                        "Approved builder {}.",
                        v["image"].as_str().unwrap_or_default()
                    ))
                })?;
            }
            BuilderCommand::List => {
                let v = client.call(M::GET, "/api/v1/builders", None).await?;
                print_or(json, &v, || {
                    let mut t = table(&["builder", "approved by", "approved at"]);
                    for b in v.as_array().cloned().unwrap_or_default() {
                        t.add_row(vec![
                            b["image"].as_str().unwrap_or("").to_owned(),
                            b["approved_by"].as_str().unwrap_or("").to_owned(),
                            b["approved_at"].as_str().unwrap_or("").to_owned(),
                        ]);
                    }
                    Ok(t.to_string())
                })?;
            }
            BuilderCommand::Revoke { image } => {
                let mut q = form_urlencoded::Serializer::new(String::new());
                q.append_pair("image", &image);
                client
                    .call(M::DELETE, &format!("/api/v1/builders?{}", q.finish()), None)
                    .await?;
                if !json {
                    println!("Revoked builder {image}.");
                }
            }
        },
        AdminCommand::Audit {
            project,
            principal,
            action,
            since,
            limit,
        } => {
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
            let v = client
                .call(M::GET, &format!("/api/v1/audit?{}", query.finish()), None)
                .await?;
            print_or(json, &v, || {
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
            })?;
        }
    }
    Ok(())
}

pub fn print_or(
    json: bool,
    v: &Value,
    human: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        println!("{}", human()?);
    }
    Ok(())
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

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
    let t = s.trim();
    if t.eq_ignore_ascii_case("none") || t.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().with_context(|| {
        format!("{s:?} is not a size: use a number with a unit such as 2GiB, or none")
    })?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0f64.powi(2),
        "g" | "gib" => 1024.0f64.powi(3),
        "t" | "tib" => 1024.0f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => {
            bail!("{other:?} is not a size unit: use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)")
        }
    };
    Ok(Some((number * factor).round() as u64))
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
    use super::parse_size;

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
