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
enum ProjectCommand {
    /// Create a project (public unless --private).
    Create {
        name: String,
        #[arg(long)]
        private: bool,
    },
    List,
    /// A project and its repositories.
    Show {
        name: String,
    },
    /// Change a project's visibility.
    Set {
        name: String,
        #[arg(long, conflicts_with = "private", required_unless_present = "private")]
        public: bool,
        #[arg(long)]
        private: bool,
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

struct Client {
    http: reqwest::Client,
    url: String,
    user: String,
    password: String,
}

impl Client {
    async fn call(
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
            ProjectCommand::Create { name, private } => {
                let v = client
                    .call(
                        M::POST,
                        "/api/v1/projects",
                        Some(json!({"name": name, "public": !private})),
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
            ProjectCommand::Set { name, public, .. } => {
                let v = client
                    .call(
                        M::PATCH,
                        &format!("/api/v1/projects/{name}"),
                        Some(json!({"public": public})),
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

fn print_or(
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

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

fn projects_table(projects: &[ProjectView]) -> anyhow::Result<String> {
    let mut t = table(&["project", "visibility", "created"]);
    for p in projects {
        t.add_row(vec![
            p.name.clone(),
            if p.public { "public" } else { "private" }.to_owned(),
            p.created_at.clone(),
        ]);
    }
    Ok(t.to_string())
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
