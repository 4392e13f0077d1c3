//! One build, from a git commit to a tagged app image: fetch and unpack the
//! builder image (cached by digest), check out the source, restore the
//! cache, detect, build, export, save the cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use slipway_launcher::Env;
use slipway_launcher::metadata::escape_id;

use crate::buildpack::{Catalog, GroupEntry, LayerToml, Order, OrderGroup, RunToml, read_toml};
use crate::egress;
use crate::export::{CachedExport, Export, ExportError, Exported, Previous, Restored, RunImage};
use crate::layers::apply_layer;
use crate::lifecycle::{Lifecycle, LifecycleError, Target};
use crate::limits::{BuildLimits, Limits, Mechanism, disk_usage, human};
use crate::oci::{Client, ImageRef, OciError};
use crate::project::{self, Entry};
use crate::sandbox::{self, Sandbox, prepare_root};

/// A build to run. `commit` was resolved from `git_ref` when the build was
/// asked for. (Its `Debug` names the secrets, never their values.)
#[derive(Clone)]
pub struct BuildRequest {
    pub build_id: String,
    pub project: String,
    pub image_name: String,
    pub source_url: String,
    pub git_ref: String,
    pub commit: String,
    /// `platform/builder:bookworm`: a repository in the registry.
    pub builder: String,
    /// Build-time variables for the buildpacks (`<platform>/env/`).
    pub env: BTreeMap<String, String>,
    /// Secrets for the buildpacks: `<platform>/env/<NAME>` files only
    /// (never in the buildpacks' environment, whatever `clear-env` says).
    pub secret_env: BTreeMap<String, String>,
    /// Credentials for Slipway's own fetch of the source (never seen by
    /// the build).
    pub git_credentials: Option<GitCredentials>,
    /// What it may use (the server's limits, or the project's).
    pub limits: Limits,
    /// The tree of the image's last equal build: when the checked-out
    /// tree is this one, the build stops with [`BuildError::Unchanged`]
    /// (that image can be used again).
    pub unchanged_tree: Option<String>,
}

impl std::fmt::Debug for BuildRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildRequest")
            .field("build_id", &self.build_id)
            .field("project", &self.project)
            .field("image_name", &self.image_name)
            .field("source_url", &self.source_url)
            .field("git_ref", &self.git_ref)
            .field("commit", &self.commit)
            .field("builder", &self.builder)
            .field("env", &self.env)
            .field("secret_env", &self.secret_env.keys().collect::<Vec<_>>())
            .field("git_credentials", &self.git_credentials.is_some())
            .field("limits", &self.limits)
            .field("unchanged_tree", &self.unchanged_tree)
            .finish()
    }
}

/// HTTP credentials for a source repository (a forge's access token), sent
/// by Slipway's git as a Basic `Authorization` header to the source's own
/// scheme, host and port only.
#[derive(Clone, PartialEq, Eq)]
pub struct GitCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GitCredentials({}:***)", self.username)
    }
}

impl GitCredentials {
    /// `user:token`, or a token alone (then the user is `x-access-token`,
    /// which GitHub wants and GitLab, Gitea and Forgejo accept with a
    /// personal or project access token).
    pub fn parse(secret: &str) -> GitCredentials {
        let secret = secret.trim_end_matches(['\r', '\n']);
        match secret.split_once(':') {
            Some((u, p)) if !u.is_empty() && !u.contains('/') => GitCredentials {
                username: u.to_owned(),
                password: p.to_owned(),
            },
            _ => GitCredentials {
                username: "x-access-token".into(),
                password: secret.to_owned(),
            },
        }
    }

    /// The `Authorization` header's value.
    pub fn header(&self) -> String {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.username, self.password))
        )
    }
}

impl BuildRequest {
    pub fn repository(&self) -> String {
        format!("{}/{}", self.project, self.image_name)
    }
}

/// Where builds keep things between builds.
#[derive(Clone)]
pub struct Context {
    /// The registry, as the builder identity.
    pub client: Arc<Client>,
    /// Unpacked builder images (by digest) and layer caches (by project
    /// and image).
    pub cache_dir: PathBuf,
    /// Unpacked builder images, by digest (only ever read once unpacked:
    /// several servers on a machine may share the directory).
    pub builders_dir: PathBuf,
    /// Per-build scratch directories.
    pub work_dir: PathBuf,
    /// The launcher binary put in every app image (also the sandbox's
    /// egress forwarder).
    pub launcher: &'static [u8],
    /// What builds' code may reach.
    pub isolation: Arc<Isolation>,
    /// How their limits are enforced on this machine.
    pub mechanism: Mechanism,
}

/// What a build's code, and the fetch of its source, may reach.
#[derive(Debug, Clone, Default)]
pub struct Isolation {
    /// The egress policy, the registry's own addresses included.
    pub policy: egress::Policy,
    pub proxy: egress::Settings,
    /// `[builds.sources] allow_hosts`: empty, any host the policy allows.
    pub source_hosts: Vec<egress::HostPattern>,
    /// Certificate authorities (PEM) trusted besides the stack's (in
    /// builds) and the system's (the source fetch).
    pub ca_certificates: Option<Vec<u8>>,
}

impl Isolation {
    /// The policy for sources: the egress policy, narrowed to
    /// `source_hosts` when there are any.
    pub fn source_policy(&self) -> egress::Policy {
        let mut p = self.policy.clone();
        if !self.source_hosts.is_empty() {
            p.mode = egress::Mode::Allowlist;
            p.allow_hosts = self.source_hosts.clone();
        }
        p
    }
}

/// What a build reports as it goes.
pub trait BuildLog: Send + Sync {
    /// A phase starts: `fetch`, `detect`, `restore`, `build`, `export`.
    fn phase(&self, name: &str);
    fn line(&self, text: &str);
    /// Called when the export starts, before its first write (the
    /// registry releases the build's quota reservation here).
    fn before_export(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// The egress proxy refused a connection (the reason is logged too).
    fn egress_refused(&self, _rule: egress::Rule) {}
}

/// The proxy's events, into the build's log.
struct ProxyEvents<'a>(&'a dyn BuildLog);

impl egress::Events for ProxyEvents<'_> {
    fn line(&self, text: &str) {
        self.0.line(text);
    }
    fn refused(&self, rule: egress::Rule) {
        self.0.egress_refused(rule);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Lifecycle(#[from] LifecycleError),
    #[error("{0}")]
    Export(#[from] ExportError),
    #[error("{0}")]
    Registry(#[from] OciError),
    #[error("{0}")]
    Source(String),
    #[error("{0}")]
    Builder(String),
    /// The app's project.toml cannot be used (the sentence names the key).
    #[error("{0}")]
    Project(String),
    /// A limit stopped the build (the sentence names it).
    #[error("{0}")]
    Limit(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Not a failure: the source's tree is [`BuildRequest::unchanged_tree`],
    /// so nothing was built.
    #[error("the source's tree {0} is the one the last equal build built")]
    Unchanged(String),
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub exported: Exported,
    /// The buildpacks that built it.
    pub buildpacks: Vec<String>,
    /// The git tree it built (the source's, as checked out).
    pub tree: String,
}

/// Resolves `git_ref` (a branch, tag or commit) of `url` to a commit,
/// under the source policy (see [`SourceAccess`]).
pub async fn resolve_ref(
    url: &str,
    git_ref: &str,
    isolation: &Isolation,
    credentials: Option<&GitCredentials>,
) -> Result<String, BuildError> {
    if git_ref.len() == 40 && git_ref.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(git_ref.to_ascii_lowercase());
    }
    let access = SourceAccess::open(url, isolation, credentials).await?;
    let text = access
        .run(&access.git_args(&["ls-remote", "--", url, git_ref]), None)
        .await
        .map_err(|e| match e {
            BuildError::Source(m) => BuildError::Source(format!(
                "the repository {url} cannot be read: {}",
                m.lines().last().unwrap_or("git ls-remote failed")
            )),
            e => e,
        })?;
    // Exact names first: refs/heads/<ref>, refs/tags/<ref>, then <ref>.
    let candidates = [
        format!("refs/heads/{git_ref}"),
        format!("refs/tags/{git_ref}^{{}}"),
        format!("refs/tags/{git_ref}"),
        git_ref.to_owned(),
    ];
    for want in &candidates {
        if let Some(line) = text
            .lines()
            .find(|l| l.split('\t').nth(1) == Some(want.as_str()))
        {
            return Ok(line.split('\t').next().unwrap_or_default().to_owned());
        }
    }
    Err(BuildError::Source(format!(
        "the repository {url} has no branch or tag {git_ref}"
    )))
}

/// How Slipway's own git reaches a source, under the source policy (the
/// egress policy, narrowed to `[builds.sources] allow_hosts`): an
/// `http(s)://` source through an egress proxy on the host's loopback, so
/// the address git connects to is the one the policy judged; a `git://`
/// source after its host's addresses are judged; a `file://` source (only
/// when the server allows local sources) as it is. Its git trusts the
/// site's extra certificate authorities.
pub struct SourceAccess {
    proxy: Option<(
        Arc<egress::Proxy>,
        std::net::SocketAddr,
        tokio::task::JoinHandle<()>,
    )>,
    ca_bundle: Option<tempfile::NamedTempFile>,
    refused: Arc<std::sync::Mutex<Vec<String>>>,
    /// `http.<scheme://host:port/>.extraHeader` and its value, given to git
    /// in its environment (not its arguments, which other users may read).
    auth_header: Option<(String, String)>,
    url: String,
}

impl Drop for SourceAccess {
    fn drop(&mut self) {
        if let Some((_, _, task)) = &self.proxy {
            task.abort();
        }
    }
}

struct Collect(Arc<std::sync::Mutex<Vec<String>>>);

impl egress::Events for Collect {
    fn line(&self, text: &str) {
        self.0
            .lock()
            .expect("source refusals")
            .push(text.to_owned());
    }
}

impl SourceAccess {
    /// Checks `url` against the source policy and prepares the way to it;
    /// a refused host is an error with the policy's sentence.
    pub async fn open(
        url: &str,
        isolation: &Isolation,
        credentials: Option<&GitCredentials>,
    ) -> Result<SourceAccess, BuildError> {
        let policy = isolation.source_policy();
        let refused = Arc::new(std::sync::Mutex::new(Vec::new()));
        let ca_bundle = match &isolation.ca_certificates {
            Some(extra) => Some(host_ca_bundle(extra)?),
            None => None,
        };
        let auth_header = match credentials {
            Some(c) if url.starts_with("https://") || url.starts_with("http://") => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
                let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
                let authority = authority.rsplit('@').next().unwrap_or(authority);
                if scheme == "http" && !loopback_host(authority) {
                    return Err(BuildError::Source(format!(
                        "git credentials are sent only over https:// (or to this machine's \
                         loopback addresses), not in clear text to {url:.200}"
                    )));
                }
                Some((
                    format!("http.{scheme}://{authority}/.extraHeader"),
                    format!("Authorization: {}", c.header()),
                ))
            }
            Some(_) => {
                return Err(BuildError::Source(format!(
                    "git credentials are sent only to https:// sources, not to {url:.200}"
                )));
            }
            None => None,
        };
        let mut access = SourceAccess {
            proxy: None,
            ca_bundle,
            refused: refused.clone(),
            auth_header,
            url: url.to_owned(),
        };
        if url.starts_with("file://") {
            return Ok(access);
        }
        let (host, port) = source_host(url)?;
        let refuse = |sentence: String| {
            BuildError::Source(format!(
                "the source {url} is refused: {sentence} (builds.egress, builds.sources)"
            ))
        };
        if let egress::Decision::Refuse(rule) = policy.decide_name(&host) {
            return Err(refuse(format!("{host}: {rule}")));
        }
        // Judged now, at request and at fetch time; for http(s) also at
        // connect time, by the proxy git goes through.
        let addrs: Vec<std::net::IpAddr> = match host.trim_matches(['[', ']']).parse() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| BuildError::Source(format!("cannot resolve {host}: {e}")))?
                .map(|a| a.ip())
                .collect(),
        };
        for a in &addrs {
            if let egress::Decision::Refuse(rule) = policy.decide(&host, *a) {
                return Err(refuse(format!("{host} resolves to {a}: {rule}")));
            }
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let proxy = Arc::new(egress::Proxy::new(policy, isolation.proxy.clone()));
            let serving = proxy.clone();
            let events = Collect(refused);
            let task = tokio::spawn(async move { serving.serve_tcp(listener, &events).await });
            access.proxy = Some((proxy, addr, task));
        }
        Ok(access)
    }

    /// `git` arguments with the proxy and the certificate bundle set.
    pub fn git_args(&self, args: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((_, addr, _)) = &self.proxy {
            out.push("-c".to_owned());
            out.push(format!("http.proxy=http://{addr}"));
        }
        if let Some(b) = &self.ca_bundle {
            out.push("-c".to_owned());
            out.push(format!("http.sslCAInfo={}", b.path().display()));
        }
        out.extend(args.iter().map(|a| a.to_string()));
        out
    }

    /// Runs git with `args` (from [`SourceAccess::git_args`]) in `dir`;
    /// its standard output, or its error with what the proxy refused.
    async fn run(&self, args: &[String], dir: Option<&Path>) -> Result<String, BuildError> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            // Only the proxy given on the command line, never the host's.
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy");
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        // Never the host's credential helpers or configuration.
        cmd.env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ASKPASS", "/bin/false")
            .env_remove("SSH_ASKPASS");
        // The header in the environment (never on the command line, which
        // /proc shows), and no redirect: git would send it to the new host.
        if let Some((key, value)) = &self.auth_header {
            cmd.env("GIT_CONFIG_COUNT", "2")
                .env("GIT_CONFIG_KEY_0", key)
                .env("GIT_CONFIG_VALUE_0", value)
                .env("GIT_CONFIG_KEY_1", "http.followRedirects")
                .env("GIT_CONFIG_VALUE_1", "false");
        }
        let out = cmd
            .output()
            .await
            .map_err(|e| BuildError::Source(format!("cannot run git: {e}")))?;
        if !out.status.success() {
            let refused = self.refused.lock().expect("source refusals").clone();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = match refused.last() {
                Some(r) => r.trim_start_matches("egress: ").to_owned(),
                None if needs_credentials(&stderr) => {
                    if self.auth_header.is_some() {
                        format!(
                            "the repository {} refused the git credentials given (the secret \
                             named as git_credentials): check the token and that it may read \
                             the repository",
                            self.url
                        )
                    } else {
                        format!(
                            "the repository {} asks for credentials: it is private; name a \
                             project secret holding an access token as the build's \
                             git_credentials",
                            self.url
                        )
                    }
                }
                None => stderr.trim().to_owned(),
            };
            return Err(BuildError::Source(why));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Whether git's error says the server wants (other) credentials.
fn needs_credentials(stderr: &str) -> bool {
    stderr.contains("could not read Username")
        || stderr.contains("Authentication failed")
        || stderr.contains("terminal prompts disabled")
        || stderr.contains("The requested URL returned error: 401")
        || stderr.contains("The requested URL returned error: 403")
}

/// Whether a URL's authority (`host[:port]`) names this machine's loopback.
fn loopback_host(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The host and port of a source URL (`https://`, `http://`, `git://`).
fn source_host(url: &str) -> Result<(String, u16), BuildError> {
    let bad = || BuildError::Source(format!("no host in the source URL {url:.200}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let default = match scheme {
        "https" => 443,
        "http" => 80,
        "git" => 9418,
        _ => return Err(bad()),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => default,
        };
        (format!("[{h}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
            None => (authority.to_owned(), default),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// The system's authorities plus `extra`, in a file for git.
fn host_ca_bundle(extra: &[u8]) -> Result<tempfile::NamedTempFile, BuildError> {
    let mut f = tempfile::NamedTempFile::new()?;
    use std::io::Write;
    if let Ok(system) = std::fs::read("/etc/ssl/certs/ca-certificates.crt") {
        f.write_all(&system)?;
        f.write_all(b"\n")?;
    }
    f.write_all(extra)?;
    f.flush()?;
    Ok(f)
}

/// The builder image's root file system, unpacked once per digest.
async fn builder_root(
    ctx: &Context,
    image: &ImageRef,
    log: &dyn BuildLog,
) -> Result<(PathBuf, Value), BuildError> {
    let m = match ctx
        .client
        .manifest(&image.repository, &image.reference)
        .await
    {
        Ok(m) => m,
        Err(OciError::Refused { status: 404, .. }) => {
            return Err(BuildError::Builder(format!(
                "the builder image {image} is not in the registry (push it, or approve another builder)"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let manifest: Value = serde_json::from_slice(&m.body)
        .map_err(|e| BuildError::Builder(format!("the builder's manifest is not JSON: {e}")))?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| BuildError::Builder("the builder image has no config".into()))?;
    let config: Value = serde_json::from_slice(
        &ctx.client
            .blob_bytes(&image.repository, config_digest)
            .await?,
    )
    .map_err(|e| BuildError::Builder(format!("the builder's config is not JSON: {e}")))?;
    let root = ctx
        .builders_dir
        .join(m.digest.replace(':', "-"))
        .join("rootfs");
    if root.is_dir() {
        log.line(&format!(
            "builder {image} ({}) is unpacked already",
            m.digest
        ));
        return Ok((root, config));
    }
    log.line(&format!("unpacking builder {image} ({})", m.digest));
    let staging = ctx
        .builders_dir
        .join(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let staging_root = staging.join("rootfs");
    std::fs::create_dir_all(&staging_root)?;
    for layer in manifest["layers"].as_array().cloned().unwrap_or_default() {
        let digest = layer["digest"].as_str().unwrap_or_default().to_owned();
        let file = staging.join("layer");
        ctx.client
            .blob_to_file(&image.repository, &digest, &file)
            .await?;
        let root = staging_root.clone();
        tokio::task::spawn_blocking(move || apply_layer(&file, &root))
            .await
            .map_err(|e| BuildError::Builder(e.to_string()))??;
    }
    prepare_root(&staging_root)?;
    let _ = std::fs::remove_file(staging.join("layer"));
    let final_dir = root.parent().expect("a parent").to_owned();
    match std::fs::rename(&staging, &final_dir) {
        Ok(()) => {}
        // Another build unpacked the same builder meanwhile.
        Err(_) if root.is_dir() => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(e) => return Err(e.into()),
    }
    Ok((root, config))
}

/// Runs a build to its end.
pub async fn run(
    ctx: &Context,
    req: &BuildRequest,
    log: &dyn BuildLog,
) -> Result<Outcome, BuildError> {
    let work = ctx.work_dir.join(&req.build_id);
    let _ = std::fs::remove_dir_all(&work);
    let result = run_in(ctx, req, log, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn run_in(
    ctx: &Context,
    req: &BuildRequest,
    log: &dyn BuildLog,
    work: &Path,
) -> Result<Outcome, BuildError> {
    let line = |s: &str| log.line(s);
    log.phase("fetch");
    let builder = ImageRef::parse(&req.builder)?;
    let (root, builder_config) = builder_root(ctx, &builder, log).await?;
    let order: Order = read_toml(&root.join("cnb/order.toml")).map_err(BuildError::Builder)?;
    if order.order.is_empty() {
        return Err(BuildError::Builder(format!(
            "the builder {} has no /cnb/order.toml",
            req.builder
        )));
    }
    let run_toml: RunToml = read_toml(&root.join("cnb/run.toml")).map_err(BuildError::Builder)?;
    let run_ref = run_toml.images.first().ok_or_else(|| {
        BuildError::Builder(format!(
            "the builder {} names no run image in /cnb/run.toml",
            req.builder
        ))
    })?;
    let mut run_ref = ImageRef::parse(&run_ref.image)?;
    run_ref.registry.clear();
    let run_image = RunImage::fetch(&ctx.client, &run_ref).await?;
    let mut catalog = Catalog::load(&root).map_err(BuildError::Builder)?;
    let mut order = order;

    // The source, checked out at the recorded commit, without its history.
    let workspace = work.join("workspace");
    for d in ["workspace", "layers", "platform/env", "tmp", "scratch"] {
        std::fs::create_dir_all(work.join(d))?;
    }
    line(&format!(
        "checking out {} at {}",
        req.source_url, req.commit
    ));
    let access = SourceAccess::open(
        &req.source_url,
        &ctx.isolation,
        req.git_credentials.as_ref(),
    )
    .await?;
    access
        .run(&access.git_args(&["init", "-q"]), Some(&workspace))
        .await?;
    // By commit (servers that allow it), else the ref's history.
    let by_commit = access
        .run(
            &access.git_args(&[
                "fetch",
                "-q",
                "--depth",
                "1",
                "--",
                &req.source_url,
                &req.commit,
            ]),
            Some(&workspace),
        )
        .await;
    if by_commit.is_ok() {
        access
            .run(
                &access.git_args(&["checkout", "-q", "--detach", "FETCH_HEAD"]),
                Some(&workspace),
            )
            .await?;
    } else {
        access
            .run(
                &access.git_args(&["fetch", "-q", "--", &req.source_url, &req.git_ref]),
                Some(&workspace),
            )
            .await
            .map_err(|e| {
                BuildError::Source(format!(
                    "cannot fetch {} of {}: {e}",
                    req.git_ref, req.source_url
                ))
            })?;
        access
            .run(
                &access.git_args(&["checkout", "-q", "--detach", &req.commit]),
                Some(&workspace),
            )
            .await
            .map_err(|_| {
                BuildError::Source(format!(
                    "commit {} is not on {} of {}",
                    req.commit, req.git_ref, req.source_url
                ))
            })?;
    }
    let tree = access
        .run(
            &access.git_args(&["rev-parse", "HEAD^{tree}"]),
            Some(&workspace),
        )
        .await?
        .trim()
        .to_owned();
    drop(access);
    line(&format!("source tree {tree}"));
    if req.unchanged_tree.as_deref() == Some(tree.as_str()) {
        return Err(BuildError::Unchanged(tree));
    }
    std::fs::remove_dir_all(workspace.join(".git"))?;
    // The app's project.toml: files kept out, build-time variables (the
    // request's own win), and the buildpacks to use.
    let mut env = req.env.clone();
    if let Some(d) = project::read(&workspace).map_err(BuildError::Project)? {
        for w in &d.warnings {
            line(w);
        }
        // The buildpacks first: an app-local one is copied out of the app
        // before the excludes apply (apps often exclude its directory).
        order = descriptor_order(&d, order, &mut catalog, &workspace, &work.join("platform"))
            .map_err(BuildError::Project)?;
        let removed = project::filter_files(&workspace, &d).map_err(BuildError::Project)?;
        if removed > 0 {
            line(&format!(
                "project.toml: {removed} files kept out of the build (include/exclude)"
            ));
        }
        if !d.deb_packages.is_empty() {
            // For the Debian packages buildpack (slipway/apt).
            let dir = work.join("platform/slipway");
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("deb-packages"), d.deb_packages.join("\n") + "\n")?;
        }
        for (k, v) in &d.env {
            if k.starts_with("CNB_") {
                return Err(BuildError::Project(format!(
                    "project.toml: the build variable {k} is reserved for the build platform"
                )));
            }
            env.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if !d.group.is_empty() {
            line(&format!(
                "project.toml names the buildpacks: {}",
                order.order[0]
                    .group
                    .iter()
                    .map(|g| format!("{}@{}", g.id, g.version))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    for (k, v) in &env {
        std::fs::write(work.join("platform/env").join(k), v)?;
    }
    // Secrets: files only (a project.toml variable of the same name gives
    // way to the secret).
    for (k, v) in &req.secret_env {
        env.remove(k);
        std::fs::write(work.join("platform/env").join(k), v)?;
    }

    // The build's way out: its egress proxy on a Unix socket (a short
    // path: socket addresses hold 108 bytes), bound into the sandbox with
    // the forwarder; and its certificate bundle.
    let egress_dir = tempfile::Builder::new()
        .prefix("slipway-egress-")
        .tempdir()?;
    let socket = egress_dir.path().join("s");
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let proxy = egress::Proxy::new(ctx.isolation.policy.clone(), ctx.isolation.proxy.clone());
    let events = ProxyEvents(log);
    let ca_bundle = match &ctx.isolation.ca_certificates {
        Some(extra) => Some(build_ca_bundle(&root, extra, work)?),
        None => None,
    };
    let limits = Arc::new(BuildLimits::create(
        &ctx.mechanism,
        &req.build_id,
        req.limits,
    )?);
    log.line(&req.limits.describe(&ctx.mechanism));
    let logged = std::sync::atomic::AtomicU64::new(0);
    let sandbox = Sandbox {
        limits: Some(limits.clone()),
        root: root.clone(),
        workspace: workspace.clone(),
        layers: work.join("layers"),
        platform: work.join("platform"),
        tmp: work.join("tmp"),
        egress: Some(sandbox::Egress {
            socket,
            forwarder: forwarder(ctx)?,
        }),
        ca_bundle,
    };
    let mut base_env: Env = builder_config["config"]["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    e.as_str()?
                        .split_once('=')
                        .map(|(k, v)| (k.into(), v.into()))
                })
                .collect()
        })
        .unwrap_or_default();
    base_env
        .entry("PATH".into())
        .or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
    let target = Target {
        os: run_image.config["os"]
            .as_str()
            .unwrap_or("linux")
            .to_owned(),
        arch: run_image.config["architecture"]
            .as_str()
            .unwrap_or("amd64")
            .to_owned(),
        variant: run_image.config["variant"].as_str().map(str::to_owned),
        distro_name: run_image
            .label("io.buildpacks.base.distro.name")
            .map(str::to_owned),
        distro_version: run_image
            .label("io.buildpacks.base.distro.version")
            .map(str::to_owned),
    };
    let hinted = std::sync::atomic::AtomicBool::new(false);
    let log_fn = |s: &str| {
        // Past the log limit, lines are dropped; the watchdog stops the build.
        let total = logged.fetch_add(s.len() as u64 + 1, Ordering::Relaxed) + s.len() as u64 + 1;
        if total > req.limits.log_bytes {
            return;
        }
        log.line(s);
        if tls_failure(s) && !hinted.swap(true, Ordering::Relaxed) {
            log.line(TLS_HINT);
        }
    };
    let lifecycle = Lifecycle {
        sandbox: &sandbox,
        catalog: &catalog,
        base_env,
        user_env: env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
        target,
        log: &log_fn,
    };

    let serve = proxy.serve_unix(listener, &events);
    tokio::pin!(serve);
    let steps = lifecycle_steps(
        ctx, req, log, work, &lifecycle, &order, &run_image, &workspace,
    );
    let watch = watchdog(req, &limits, &logged, work);
    let outcome = tokio::select! {
        r = steps => r.map(|o| Outcome { tree: tree.clone(), ..o }),
        why = watch => Err(BuildError::Limit(why)),
        () = &mut serve => unreachable!("the proxy serves until dropped"),
    };
    // A buildpack the kernel stopped (out of memory, out of processes)
    // failed for that reason, whatever it printed.
    let outcome = match outcome {
        Err(e) if !matches!(e, BuildError::Limit(_)) => match limits.breach() {
            Some(why) => Err(BuildError::Limit(why)),
            None => Err(e),
        },
        o => o,
    };
    if let Err(BuildError::Limit(why)) = &outcome {
        if logged.load(Ordering::Relaxed) > req.limits.log_bytes {
            log.line("(the log was cut here: builds.limits.log)");
        }
        log.line(why);
    }
    let s = proxy.summary();
    if s.connections > 0 || s.refused > 0 {
        log.line(&format!(
            "egress: {} connections to {} ({} down, {} up), {} refused",
            s.connections,
            if s.hosts.is_empty() {
                "nowhere".to_owned()
            } else {
                s.hosts.join(", ")
            },
            human(s.downloaded),
            human(s.uploaded),
            s.refused
        ));
    }
    outcome
}

/// Watches a running build: returns, with the sentence, when it passes a
/// limit — the kernel's (memory, processes: read from its cgroups), its
/// disk (`/workspace`, `/layers`, `/tmp`, measured every second), or its
/// log.
async fn watchdog(
    req: &BuildRequest,
    limits: &BuildLimits,
    logged: &std::sync::atomic::AtomicU64,
    work: &Path,
) -> String {
    let l = req.limits;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if let Some(why) = limits.breach() {
            return why;
        }
        if logged.load(Ordering::Relaxed) > l.log_bytes {
            return format!(
                "the build printed more than {} of log and was stopped (builds.limits.log)",
                human(l.log_bytes)
            );
        }
        let dirs: Vec<PathBuf> = ["workspace", "layers", "tmp"]
            .iter()
            .map(|d| work.join(d))
            .collect();
        let used = tokio::task::spawn_blocking(move || {
            let refs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
            disk_usage(&refs, u64::MAX)
        })
        .await
        .unwrap_or(0);
        if used > l.disk_bytes {
            return format!(
                "the build wrote more than {} to its disk and was stopped (builds.limits.disk)",
                human(l.disk_bytes)
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn lifecycle_steps(
    ctx: &Context,
    req: &BuildRequest,
    log: &dyn BuildLog,
    work: &Path,
    lifecycle: &Lifecycle<'_>,
    order: &Order,
    run_image: &RunImage,
    workspace: &Path,
) -> Result<Outcome, BuildError> {
    let sandbox = lifecycle.sandbox;
    let log_fn = |s: &str| log.line(s);
    log.phase("detect");
    let detected = lifecycle.detect(order).await?;

    log.phase("restore");
    let repository = req.repository();
    let previous = Previous::fetch(&ctx.client, &repository, "latest").await?;
    let cache = ctx
        .cache_dir
        .join("layers")
        .join(escape_id(&req.project))
        .join(escape_id(&req.image_name));
    let mut restored = restore(&cache, &sandbox.layers, previous.as_ref(), &detected, log)?;
    if !restored.exports.is_empty() {
        // A marker made after every restored file, a tick later: ctimes
        // older than its own are the restore's.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let marker = work.join("restored");
        std::fs::write(&marker, b"")?;
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&marker)?;
        restored.marker = Some((m.ctime(), m.ctime_nsec()));
    }

    log.phase("build");
    let built = lifecycle.build(&detected).await?;

    log.phase("export");
    log.before_export().await;
    let tags = vec![req.build_id.clone(), "latest".to_owned()];
    let project = json!({"source": {"type": "git", "version": {"commit": req.commit}, "metadata": {"repository": req.source_url, "refs": [req.git_ref]}}});
    let exported = Export {
        client: &ctx.client,
        repository: &repository,
        tags: &tags,
        run_image,
        built: &built,
        layers_dir: &sandbox.layers,
        workspace,
        launcher: ctx.launcher,
        previous: previous.as_ref(),
        project,
        scratch: &work.join("scratch"),
        log: &log_fn,
        restored: Some(&restored),
    }
    .run()
    .await?;

    save_cache(&cache, &sandbox.layers, &built, &exported)?;
    Ok(Outcome {
        exported,
        buildpacks: built
            .iter()
            .map(|b| format!("{}@{}", b.buildpack.id(), b.buildpack.version()))
            .collect(),
        tree: String::new(),
    })
}

/// The order a build detects with, given the app's descriptor: its own
/// group (instead of the builder's order) when it names one, and its
/// `pre`/`post` buildpacks around every group. App-local buildpacks are
/// copied from the app, and inline ones written, into the platform
/// directory (`/platform/buildpacks/…`, read-only in the sandbox: a build
/// cannot change a buildpack while it runs).
fn descriptor_order(
    d: &project::Descriptor,
    builder_order: Order,
    catalog: &mut Catalog,
    workspace: &Path,
    platform: &Path,
) -> Result<Order, String> {
    let mut resolve = |entries: &[Entry], key: &str| -> Result<Vec<GroupEntry>, String> {
        let mut out = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let at = format!("project.toml: {key}[{i}]");
            let (id, version) = match e {
                Entry::Builder { id, version } => {
                    let bp = catalog.find(id, version).ok_or_else(|| {
                        format!(
                            "{at}: the builder has no buildpack {id}{}",
                            if version.is_empty() {
                                String::new()
                            } else {
                                format!("@{version}")
                            }
                        )
                    })?;
                    (bp.id().to_owned(), bp.version().to_owned())
                }
                Entry::AppLocal { path } => {
                    let host = workspace.join(path);
                    // Not through a link that leaves the app (the copy is
                    // made by the server, outside the sandbox).
                    let inside = match (host.canonicalize(), workspace.canonicalize()) {
                        (Ok(h), Ok(w)) => h.starts_with(&w) && h == w.join(path),
                        _ => false,
                    };
                    let is_dir = std::fs::symlink_metadata(&host).is_ok_and(|m| m.is_dir());
                    if !is_dir || !inside {
                        return Err(format!(
                            "{at}.uri: the app has no directory {} (links are not followed)",
                            path.display()
                        ));
                    }
                    let name = format!("app-{}-{i}", key.replace('.', "-"));
                    let dir = platform.join("buildpacks").join(&name);
                    copy_tree(&host, &dir).map_err(|e| format!("{at}.uri: {e}"))?;
                    catalog
                        .add(&dir, PathBuf::from("platform/buildpacks").join(&name))
                        .map_err(|e| format!("{at}.uri: {e}"))?
                }
                Entry::Inline {
                    id,
                    api,
                    shell,
                    script,
                } => {
                    let dir = platform
                        .join("buildpacks")
                        .join(slipway_launcher::metadata::escape_id(id));
                    write_inline(&dir, id, api, shell, script).map_err(|e| format!("{at}: {e}"))?;
                    catalog
                        .add(
                            &dir,
                            PathBuf::from("platform/buildpacks")
                                .join(slipway_launcher::metadata::escape_id(id)),
                        )
                        .map_err(|e| format!("{at}: {e}"))?
                }
            };
            out.push(GroupEntry {
                id,
                version,
                optional: false,
            });
        }
        Ok(out)
    };
    let pre = resolve(&d.pre, "io.buildpacks.pre.group")?;
    let post = resolve(&d.post, "io.buildpacks.post.group")?;
    let groups = if d.group.is_empty() {
        builder_order.order
    } else {
        vec![OrderGroup {
            group: resolve(&d.group, "io.buildpacks.group")?,
        }]
    };
    Ok(Order {
        order: groups
            .into_iter()
            .map(|g| OrderGroup {
                group: pre
                    .iter()
                    .cloned()
                    .chain(g.group)
                    .chain(post.iter().cloned())
                    .collect(),
            })
            .collect(),
    })
}

/// An inline buildpack's directory: a `buildpack.toml`, a `bin/detect`
/// that always passes and a `bin/build` that runs the script with `shell`.
fn write_inline(dir: &Path, id: &str, api: &str, shell: &str, script: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("bin"))?;
    let quoted = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    std::fs::write(
        dir.join("buildpack.toml"),
        format!(
            "api = {}\n[buildpack]\nid = {}\nversion = \"0.0.0\"\nname = \"inline buildpack of the app's project.toml\"\n",
            quoted(api),
            quoted(id)
        ),
    )?;
    std::fs::write(dir.join("bin/detect"), "#!/bin/sh\nexit 0\n")?;
    let interpreter = if shell.starts_with('/') {
        shell.to_owned()
    } else {
        format!("/usr/bin/env {shell}")
    };
    std::fs::write(
        dir.join("bin/build"),
        format!("#!{interpreter}\n{script}\n"),
    )?;
    for f in ["bin/detect", "bin/build"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Said once in a build's log after a TLS verification failure.
pub const TLS_HINT: &str = "hint: a TLS certificate could not be verified. If this site's way \
     out re-signs TLS with its own certificate authority, give its authorities to builds with \
     builds.ca_certificates (for example the host's /etc/ssl/certs/ca-certificates.crt).";

/// Whether a log line reports a TLS verification failure (pip, npm, git,
/// curl, cargo, bundler, composer say it in these words).
fn tls_failure(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    [
        "certificate verify failed",
        "self-signed certificate in certificate chain",
        "self_signed_cert_in_chain",
        "unable to get local issuer certificate",
        "unable_to_get_issuer_cert_locally",
        "server certificate verification failed",
        "ssl certificate problem",
    ]
    .iter()
    .any(|p| l.contains(p))
}

/// The forwarder run in sandboxes: the launcher binary, written once into
/// the cache (replaced when the binary changes).
fn forwarder(ctx: &Context) -> Result<PathBuf, BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let path = ctx.cache_dir.join("bin").join("egress-forward");
    if std::fs::read(&path).is_ok_and(|b| b == ctx.launcher) {
        return Ok(path);
    }
    std::fs::create_dir_all(path.parent().expect("a parent"))?;
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, ctx.launcher)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The build's certificate bundle: the stack's authorities (the builder's
/// `/etc/ssl/certs/ca-certificates.crt`, if it has one) and the site's.
fn build_ca_bundle(root: &Path, extra: &[u8], work: &Path) -> Result<PathBuf, BuildError> {
    let mut bundle =
        std::fs::read(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with(b"\n") {
        bundle.push(b'\n');
    }
    bundle.extend_from_slice(extra);
    let path = work.join("ca-certificates.crt");
    std::fs::write(&path, bundle)?;
    Ok(path)
}

/// Before the build: cached layers (contents and metadata, without their
/// types) and the previous image's launch-only layers (metadata only), as
/// the buildpack spec's layer types table says.
fn restore(
    cache: &Path,
    layers: &Path,
    previous: Option<&Previous>,
    detected: &crate::lifecycle::Detected,
    log: &dyn BuildLog,
) -> Result<Restored, BuildError> {
    let mut restored = Restored::default();
    for sel in &detected.group {
        let bp_dir = escape_id(sel.buildpack.id());
        let target = layers.join(&bp_dir);
        std::fs::create_dir_all(&target)?;
        let cached = cache.join(&bp_dir);
        if let Ok(entries) = std::fs::read_dir(&cached) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(layer) = name.strip_suffix(".toml") else {
                    continue;
                };
                let toml: LayerToml = read_toml(&e.path()).map_err(BuildError::Builder)?;
                write_untyped(&target.join(&name), &toml)?;
                if cached.join(layer).is_dir() {
                    copy_tree(&cached.join(layer), &target.join(layer))?;
                    if let Ok(text) = std::fs::read(cached.join(format!("{layer}.export.json")))
                        && let Ok(export) = serde_json::from_slice::<CachedExport>(&text)
                    {
                        restored
                            .exports
                            .insert((sel.buildpack.id().to_owned(), layer.to_owned()), export);
                    }
                }
                log.line(&format!(
                    "restored cached layer {}:{layer}",
                    sel.buildpack.id()
                ));
            }
        }
        if let Some(prev) = previous {
            for (layer, meta) in prev.layer_metadata(sel.buildpack.id()) {
                let file = target.join(format!("{layer}.toml"));
                if file.exists()
                    || meta["launch"].as_bool() != Some(true)
                    || meta["cache"].as_bool() == Some(true)
                {
                    continue;
                }
                let data: toml::Table =
                    serde_json::from_value(meta["data"].clone()).unwrap_or_default();
                write_untyped(
                    &file,
                    &LayerToml {
                        metadata: data,
                        ..Default::default()
                    },
                )?;
            }
        }
    }
    Ok(restored)
}

fn write_untyped(path: &Path, toml: &LayerToml) -> Result<(), BuildError> {
    let mut t = toml.clone();
    t.types = Default::default();
    std::fs::write(
        path,
        toml::to_string(&t).map_err(|e| BuildError::Builder(e.to_string()))?,
    )?;
    Ok(())
}

/// After a successful build: the `cache = true` layers replace the cache.
fn save_cache(
    cache: &Path,
    layers: &Path,
    built: &[crate::lifecycle::Built],
    exported: &Exported,
) -> Result<(), BuildError> {
    let staging = cache.with_extension(format!("new-{}", uuid::Uuid::new_v4().simple()));
    for b in built {
        let bp_dir = escape_id(b.buildpack.id());
        for (name, toml) in &b.layers {
            if !toml.types().cache {
                continue;
            }
            let dir = staging.join(&bp_dir);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(
                dir.join(format!("{name}.toml")),
                toml::to_string(toml).map_err(|e| BuildError::Builder(e.to_string()))?,
            )?;
            let src = layers.join(&bp_dir).join(name);
            if src.is_dir() {
                copy_tree(&src, &dir.join(name))?;
                // What it was exported as, so that an unchanged restore
                // is not archived again.
                if let Some(e) = exported
                    .launch_layers
                    .get(&(b.buildpack.id().to_owned(), name.clone()))
                {
                    std::fs::write(
                        dir.join(format!("{name}.export.json")),
                        serde_json::to_vec(e).expect("serializable"),
                    )?;
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(cache);
    if staging.exists() {
        if let Some(parent) = cache.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&staging, cache)?;
    }
    Ok(())
}

/// Copies a tree: directories, files (with their modes) and symlinks.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            let _ = std::fs::remove_file(&dst);
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if meta.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}
