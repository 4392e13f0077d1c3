//! Typed configuration: defaults, then a TOML file, then `SLIPWAY_…`
//! environment variables (nested keys joined by `__`, e.g.
//! `SLIPWAY_DATABASE__URL`), then command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the SQLite file and the blob tree live.
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub quota: QuotaConfig,
    pub gc: GcConfig,
    pub builds: BuildsConfig,
    pub rebase: RebaseConfig,
    pub log: LogConfig,
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub identity: IdentityConfig,
}

/// Where people sign in from, besides the admin's password.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// How long what the directory said about a person is trusted: a
    /// personal token used later than this after the last look asks the
    /// directory again (a removed member loses the project, a removed
    /// admin loses admin).
    pub membership_ttl_secs: u64,
    pub ldap: LdapConfig,
    pub oidc: OidcConfig,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            membership_ttl_secs: 300,
            ldap: LdapConfig::default(),
            oidc: OidcConfig::default(),
        }
    }
}

/// An LDAP directory: people bind as themselves; their groups are found by
/// searching for groups that list them (`member=<DN>`, or `memberUid=<uid>`
/// for posixGroup-only directories), never by `memberOf` alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LdapConfig {
    /// `ldaps://host` or `ldap://host` (then with `starttls`, unless
    /// `allow_plain`); empty: no LDAP.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS.
    pub starttls: bool,
    /// Allow `ldap://` without StartTLS: passwords cross the network in the
    /// clear. Only for a directory on the same host.
    pub allow_plain: bool,
    /// PEM: authorities for the directory's certificate besides the
    /// system's. Empty: the system's.
    pub ca_file: PathBuf,
    /// A service account that searches people and groups; empty: the
    /// person's DN comes from `user_dn_template` and the searches run bound
    /// as the person.
    pub bind_dn: String,
    pub bind_password: Secret,
    /// Where people are (searched with `user_filter`).
    pub user_base: String,
    /// `{user}` is the escaped username.
    pub user_filter: String,
    /// `uid={user},ou=people,dc=example,dc=org`: the DN without a search.
    pub user_dn_template: String,
    /// Where groups are.
    pub group_base: String,
    /// A group's DN for a tool: `cn=tools.{tool},ou=servicegroups,…`.
    pub group_pattern: String,
    /// The project a tool's group grants: `tool-{tool}`.
    pub project_pattern: String,
    /// The group whose members administer Slipway; empty: none.
    pub admin_group: String,
    /// The role a group grants: `maintainer`, `developer` or `guest`.
    pub group_role: String,
}

impl Default for LdapConfig {
    fn default() -> Self {
        LdapConfig {
            url: String::new(),
            starttls: false,
            allow_plain: false,
            ca_file: PathBuf::new(),
            bind_dn: String::new(),
            bind_password: Secret::default(),
            user_base: String::new(),
            user_filter: "(uid={user})".into(),
            user_dn_template: String::new(),
            group_base: String::new(),
            group_pattern: String::new(),
            project_pattern: "{tool}".into(),
            admin_group: String::new(),
            group_role: "maintainer".into(),
        }
    }
}

impl LdapConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Checks the `[identity.ldap]` section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let bad = |m: String| Err(ConfigError(format!("identity.ldap: {m}")));
        if !(self.url.starts_with("ldaps://") || self.url.starts_with("ldap://")) {
            return bad(format!(
                "url must start with ldaps:// or ldap:// (got {:.100})",
                self.url
            ));
        }
        if self.url.starts_with("ldap://") && !self.starttls && !self.allow_plain {
            return bad(
                "an ldap:// url sends passwords in the clear: set starttls = true, \
                 use ldaps://, or (for a directory on this host only) allow_plain = true"
                    .into(),
            );
        }
        if self.user_dn_template.is_empty() && self.user_base.is_empty() {
            return bad("set user_base (people are searched) or user_dn_template".into());
        }
        if !self.user_dn_template.is_empty() && !self.user_dn_template.contains("{user}") {
            return bad("user_dn_template must contain {user}".into());
        }
        if !self.user_filter.contains("{user}") {
            return bad("user_filter must contain {user}".into());
        }
        if self.group_base.is_empty() {
            return bad("set group_base (where groups are searched)".into());
        }
        check_mapping(&self.group_pattern, &self.project_pattern, &self.group_role).or_else(bad)?;
        Ok(())
    }
}

/// An OpenID Connect provider: people sign in through its authorization
/// endpoint (authorization code with PKCE, state and nonce); Slipway checks
/// the ID token (signature from the provider's JWKS, `iss`, `aud`, `exp`,
/// `nonce`) and maps the groups claim to projects as `[identity.ldap]`
/// maps groups.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The issuer (`https://idp.example.org/oidc`): discovery is read from
    /// `<issuer>/.well-known/openid-configuration`. Empty: no OIDC.
    pub issuer: String,
    /// What the dashboard's button says: "Sign in with <name>".
    pub name: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
    /// The ID-token claim that holds the username (lowercased; it must be
    /// the directory's uid when `[identity.ldap]` is configured too).
    pub username_claim: String,
    /// The ID-token claim listing the person's groups (names or DNs).
    pub groups_claim: String,
    /// A group for a tool: `cn=tools.{tool},ou=servicegroups,…`; empty:
    /// groups grant no projects.
    pub group_pattern: String,
    /// The project a tool's group grants: `tool-{tool}`.
    pub project_pattern: String,
    /// The group whose members administer Slipway; empty: none.
    pub admin_group: String,
    /// The role a group grants: `maintainer`, `developer` or `guest`.
    pub group_role: String,
    /// PEM: authorities for the provider's certificate besides the
    /// system's.
    pub ca_file: PathBuf,
    /// Allow an `http://` issuer: only for a provider on this host.
    pub allow_http: bool,
    /// Where the dashboard is reached (`https://registry.example.org`), for
    /// the redirect URI `<public_url>/ui/sign-in/oidc/callback` registered
    /// with the provider; empty: `builds.public_url`, else the scheme and
    /// Host of the request.
    pub public_url: String,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuer: String::new(),
            name: "OpenID Connect".into(),
            client_id: String::new(),
            client_secret: Secret::default(),
            scopes: vec!["profile".into(), "groups".into()],
            username_claim: "preferred_username".into(),
            groups_claim: "groups".into(),
            group_pattern: String::new(),
            project_pattern: "{tool}".into(),
            admin_group: String::new(),
            group_role: "maintainer".into(),
            ca_file: PathBuf::new(),
            allow_http: false,
            public_url: String::new(),
        }
    }
}

impl OidcConfig {
    pub fn enabled(&self) -> bool {
        !self.issuer.is_empty()
    }

    /// Checks the `[identity.oidc]` section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let bad = |m: String| Err(ConfigError(format!("identity.oidc: {m}")));
        if !(self.issuer.starts_with("https://")
            || (self.issuer.starts_with("http://") && self.allow_http))
        {
            return bad(format!(
                "issuer must be an https:// address (got {:.100}); allow_http = true \
                 allows http:// for a provider on this host",
                self.issuer
            ));
        }
        if self.client_id.is_empty() {
            return bad("set client_id (as registered with the provider)".into());
        }
        if self.username_claim.is_empty() || self.groups_claim.is_empty() {
            return bad("username_claim and groups_claim must name claims".into());
        }
        check_mapping(&self.group_pattern, &self.project_pattern, &self.group_role).or_else(bad)?;
        let pu = &self.public_url;
        if !(pu.is_empty() || pu.starts_with("https://") || pu.starts_with("http://")) {
            return bad(format!(
                "public_url: {pu:.200} is not an http:// or https:// address"
            ));
        }
        Ok(())
    }
}

/// Checks how groups map to projects (`[identity.ldap]` and
/// `[identity.oidc]` alike): the sentence of what is wrong.
fn check_mapping(
    group_pattern: &str,
    project_pattern: &str,
    group_role: &str,
) -> Result<(), String> {
    if !group_pattern.is_empty()
        && (!group_pattern.contains("{tool}") || !project_pattern.contains("{tool}"))
    {
        return Err("group_pattern and project_pattern must both contain {tool}".into());
    }
    if slipway_storage::meta::Role::parse(group_role).is_none() {
        return Err(format!(
            "group_role must be maintainer, developer or guest (got {group_role:.40})"
        ));
    }
    Ok(())
}

/// How the server sees its clients.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses (`10.0.0.5`) or networks (`10.0.0.0/8`) of load balancers
    /// whose `X-Forwarded-Proto` / `Forwarded: proto=` headers say the
    /// scheme a client used; from anyone else those headers are ignored.
    pub trusted_proxies: Vec<String>,
}

impl ServerConfig {
    pub fn proxies(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        ConfigError(format!(
                            "server.trusted_proxies: {p:.100} is neither an address (10.0.0.5) \
                             nor a network (10.0.0.0/8)"
                        ))
                    })
            })
            .collect()
    }
}

/// HTTPS. With `cert_file` and `key_file` set the listener speaks TLS only
/// (HTTP/1.1 and HTTP/2); both files are read again when they change or on
/// SIGHUP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM: the server's certificate, then any intermediates; empty:
    /// plain HTTP.
    pub cert_file: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: PathBuf,
    /// PEM: the authorities whose client certificates the admin API
    /// demands (mutual TLS); other routes do not ask for one. Empty: none.
    pub client_ca_file: PathBuf,
    /// How often the files are checked for a change.
    pub reload_check_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: PathBuf::new(),
            reload_check_secs: 5,
        }
    }
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }

    /// Whether the admin API demands client certificates.
    pub fn mutual(&self) -> bool {
        !self.client_ca_file.as_os_str().is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RebaseConfig {
    /// Run image tags (`platform/run:bookworm`): a push that moves one to a
    /// new digest queues a fleet rebase of every image built on it.
    pub auto_run_images: Vec<String>,
    /// Images a fleet rebase reads and writes at once.
    pub concurrency: usize,
}

impl Default for RebaseConfig {
    fn default() -> Self {
        RebaseConfig {
            auto_run_images: Vec::new(),
            concurrency: 16,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildsConfig {
    /// Build workers in this process (0: this process runs no builds; other
    /// `slipway serve` processes on the same database may).
    pub workers: u32,
    /// Builds a project may have pending or running at once (more: 409).
    pub per_project: u32,
    /// Builds waiting in the whole queue at most (more: 503).
    pub max_pending: u32,
    /// Longest a build may run, in seconds.
    pub timeout_secs: u64,
    /// The builder used when a build names none (it must be approved).
    pub default_builder: String,
    /// Unpacked builders and layer caches; empty: `<data_dir>/builds`.
    pub cache_dir: PathBuf,
    /// Unpacked builder images, by digest; empty: `<cache_dir>/builders`.
    /// Read-only once unpacked, so servers on one machine may share it.
    pub builders_dir: PathBuf,
    /// How builds reach this registry; empty: `http://<listen address>`.
    pub registry_url: String,
    /// The builder identity's password; empty: `<data_dir>/builder-password`.
    pub builder_password: Secret,
    /// Whether builds may read `file://` repositories on this machine (off:
    /// only `https://`, `http://` and `git://`).
    pub allow_local_sources: bool,
    /// A PEM bundle of certificate authorities every build trusts besides
    /// its stack's (and Slipway's own git fetch of sources): a site whose
    /// egress re-signs TLS. Empty: none.
    pub ca_certificates: PathBuf,
    /// An HTTP proxy (`host:port`) that the egress proxy goes through, for
    /// sites whose way out is one. Empty: connect directly.
    pub upstream_proxy: String,
    /// What a build's code may reach (see README, "Build isolation").
    pub egress: EgressConfig,
    /// Where sources may come from.
    pub sources: SourcesConfig,
    /// What one build may use.
    pub limits: BuildLimitsConfig,
    /// Build records kept per image name: the newest successful ones
    /// (reused builds and rebases count as such)…
    pub keep_succeeded: u32,
    /// …and the newest failed, cancelled or timed-out ones. Projects may
    /// say otherwise.
    pub keep_failed: u32,
    /// The address forges reach this server at, for the delivery URLs of
    /// triggers (`https://registry.example.org`); empty: the scheme and
    /// Host of the request that created the trigger.
    pub public_url: String,
    /// Largest webhook body accepted, in bytes.
    pub max_hook_bytes: usize,
    /// Shortest poll interval a trigger may have, in seconds.
    pub min_poll_interval_secs: u64,
}

/// `[builds.limits]`: per build, unless the project says otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildLimitsConfig {
    /// Memory, swap included where the kernel accounts it.
    pub memory_bytes: u64,
    /// Processes and threads at once.
    pub processes: u64,
    /// CPUs at once (1.0: one core).
    pub cpus: f64,
    /// `/workspace`, `/layers` and `/tmp` together.
    pub disk_bytes: u64,
    /// The build log.
    pub log_bytes: u64,
    /// Off: build workers start even where memory and processes cannot be
    /// limited (no cgroups). On by default: they refuse to.
    pub enforce: bool,
}

impl Default for BuildLimitsConfig {
    fn default() -> Self {
        BuildLimitsConfig {
            memory_bytes: 2 << 30,
            processes: 512,
            cpus: 1.0,
            disk_bytes: 4 << 30,
            log_bytes: 10 << 20,
            enforce: true,
        }
    }
}

impl BuildLimitsConfig {
    pub fn limits(&self) -> slipway_builder::limits::Limits {
        slipway_builder::limits::Limits {
            memory_bytes: self.memory_bytes,
            processes: self.processes,
            cpus: self.cpus,
            disk_bytes: self.disk_bytes,
            log_bytes: self.log_bytes,
        }
    }
}

/// Checks a build's limits against what this machine has; `what` names the
/// setting (`builds.limits`, or a project's).
pub fn check_limits(l: &slipway_builder::limits::Limits, what: &str) -> Result<(), ConfigError> {
    let memory = machine_memory();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0);
    let bad = |key: &str, why: String| Err(ConfigError(format!("{what}.{key} {why}")));
    if l.memory_bytes < (64 << 20) {
        return bad("memory_bytes", "must be at least 64 MiB".into());
    }
    if let Some(m) = memory
        && l.memory_bytes > m
    {
        return bad(
            "memory_bytes",
            format!(
                "is {} bytes, more than this machine has ({m} bytes)",
                l.memory_bytes
            ),
        );
    }
    if l.processes < 16 || l.processes > 4_194_304 {
        return bad("processes", "must be between 16 and 4194304".into());
    }
    if !(l.cpus >= 0.01 && l.cpus <= cpus) {
        return bad(
            "cpus",
            format!(
                "is {}, but must be above 0 and at most this machine's {cpus}",
                l.cpus
            ),
        );
    }
    if l.disk_bytes < (16 << 20) {
        return bad("disk_bytes", "must be at least 16 MiB".into());
    }
    if l.log_bytes < 4096 {
        return bad("log_bytes", "must be at least 4096".into());
    }
    Ok(())
}

/// This machine's memory, from /proc/meminfo.
fn machine_memory() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// `[builds.egress]`: every connection a build makes goes through
/// Slipway's egress proxy, which applies this policy to the address each
/// name resolves to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// `open`: anything not refused by the rules below; `allowlist`: only
    /// `allow_hosts`.
    pub mode: String,
    /// Names (`pypi.org`) or suffixes (`*.pythonhosted.org`).
    pub allow_hosts: Vec<String>,
    /// Names or suffixes always refused.
    pub deny_hosts: Vec<String>,
    /// Addresses allowed although private (a site's package mirror):
    /// `10.20.0.0/16`, `fd00::/8`.
    pub allow_cidrs: Vec<String>,
    /// Bytes a build may download in all.
    pub max_download_bytes: u64,
    pub connect_timeout_secs: u64,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout_secs: u64,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            mode: "open".into(),
            allow_hosts: Vec::new(),
            deny_hosts: Vec::new(),
            allow_cidrs: Vec::new(),
            max_download_bytes: 4 << 30,
            connect_timeout_secs: 30,
            idle_timeout_secs: 300,
        }
    }
}

/// `[builds.sources]`: the git repositories builds may be asked for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// Only these hosts (names or `*.suffix`), e.g. the platform's forge.
    /// Empty: any host the egress policy allows.
    pub allow_hosts: Vec<String>,
}

impl Default for BuildsConfig {
    fn default() -> Self {
        BuildsConfig {
            workers: 1,
            per_project: 2,
            max_pending: 100,
            timeout_secs: 1800,
            default_builder: "platform/builder:bookworm".into(),
            cache_dir: PathBuf::new(),
            builders_dir: PathBuf::new(),
            registry_url: String::new(),
            builder_password: Secret::default(),
            allow_local_sources: false,
            ca_certificates: PathBuf::new(),
            upstream_proxy: String::new(),
            egress: EgressConfig::default(),
            sources: SourcesConfig::default(),
            limits: BuildLimitsConfig::default(),
            keep_succeeded: 4,
            keep_failed: 2,
            public_url: String::new(),
            max_hook_bytes: 1 << 20,
            min_poll_interval_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Shared base projects: their blobs cost the other projects nothing.
    pub base_projects: Vec<String>,
    /// How long a blob uploaded but not yet referenced by a manifest is held
    /// against its project's quota (seconds).
    pub reservation_ttl_secs: u64,
    /// Bytes a project's uploads in flight may hold on disk: the larger of
    /// this and the project's quota (projects without a quota: no bound).
    /// Uploads in flight are not usage and are judged by the quota when
    /// they complete; this only bounds what unfinished uploads occupy.
    pub upload_headroom_bytes: u64,
    /// Usage thresholds (percent of the quota) recorded as audit events.
    pub warn_percent: Vec<u32>,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            base_projects: vec!["platform".into()],
            reservation_ttl_secs: 3600,
            upload_headroom_bytes: slipway_storage::meta::DEFAULT_UPLOAD_HEADROOM,
            warn_percent: vec![80, 95],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Seconds between periodic collections; 0 turns them off.
    pub interval_secs: u64,
    /// Blobs whose references changed more recently than this (seconds) are
    /// kept: a push in flight has uploaded them and will reference them.
    pub blob_grace_secs: u64,
    /// Untagged manifests are kept this long (seconds).
    pub untagged_grace_secs: u64,
    /// Tagged images kept per repository, unless a project says otherwise.
    pub keep_images: u32,
    /// Whether periodic collections apply retention (else only blobs).
    pub retention: bool,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval_secs: 3600,
            blob_grace_secs: 2 * 3600,
            untagged_grace_secs: 24 * 3600,
            keep_images: 10,
            retention: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The `service` of the token protocol: the tokens' audience.
    pub service: String,
    /// The tokens' issuer.
    pub issuer: String,
    /// The token endpoint announced in challenges; empty means
    /// `http://<Host of the request>/auth/token`.
    pub realm: String,
    /// Lifetime of access tokens, in seconds.
    pub token_ttl_secs: u64,
    /// Lifetime of refresh tokens, in seconds.
    pub refresh_ttl_secs: u64,
    /// Tolerated clock difference when checking token times, in seconds.
    pub clock_skew_secs: u64,
    /// Whether robot accounts may hold `push` and `delete`. Off: the build
    /// front end is the only credentialed writer.
    pub robots_may_write: bool,
    /// The token signing key (PKCS#8 PEM, created if missing); empty means
    /// `<data_dir>/token-signing-key.pem`. Replicas share one file.
    pub key_file: PathBuf,
    /// The admin password; from `SLIPWAY_ADMIN_PASSWORD` only, never from a
    /// file. Without it, a password is generated on first start.
    #[serde(skip)]
    pub admin_password: Option<Secret>,
    /// The key that seals projects' secrets and webhook secrets (32 random
    /// bytes, hex; created with mode 0600 if missing); empty means
    /// `<data_dir>/secrets-key`. Replicas share one key.
    pub secrets_key_file: PathBuf,
    /// The secrets key itself; from `SLIPWAY_SECRETS_KEY` only (it wins
    /// over the file).
    #[serde(skip)]
    pub secrets_key: Option<Secret>,
}

/// A secret string whose `Debug`, `Display` and serialisation never show it
/// (it serialises as `***`, or as nothing when empty).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            service: "slipway".into(),
            issuer: "slipway".into(),
            realm: String::new(),
            token_ttl_secs: 300,
            refresh_ttl_secs: 30 * 24 * 3600,
            clock_skew_secs: 30,
            robots_may_write: false,
            key_file: PathBuf::new(),
            admin_password: None,
            secrets_key_file: PathBuf::new(),
            secrets_key: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`; empty means `<data_dir>/slipway.db`.
    pub url: String,
    /// Connections in the (read) pool.
    pub max_connections: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `filesystem` (the default) or `s3`.
    pub backend: StorageBackend,
    /// Blob tree for the filesystem backend; empty means `<data_dir>/blobs`.
    pub path: PathBuf,
    pub s3: S3Config,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Filesystem,
    S3,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Empty: AWS's endpoint for the region.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Key prefix inside the bucket.
    pub prefix: String,
    /// Path-style addressing (most self-hosted stores need it).
    pub path_style: bool,
    /// Static credentials; both empty: the default provider chain.
    pub access_key: String,
    pub secret_key: Secret,
    /// Size of multipart parts, in MiB (at least 5).
    pub part_size_mib: usize,
    /// Answer blob GETs with a 307 to a presigned URL instead of streaming.
    pub redirect: bool,
    /// Validity of presigned URLs, in seconds.
    pub presign_ttl_secs: u64,
    /// Create the bucket at start if it does not exist.
    pub create_bucket: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: "slipway".into(),
            prefix: String::new(),
            path_style: true,
            access_key: String::new(),
            secret_key: Secret::default(),
            part_size_mib: 8,
            redirect: false,
            presign_ttl_secs: 300,
            create_bucket: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: usize,
    /// Largest blob accepted, in bytes.
    pub max_blob_bytes: u64,
    /// Uploads idle this long (seconds) are removed.
    pub upload_idle_secs: u64,
    /// Longest wait for in-flight requests at shutdown (seconds).
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `slipway=debug,info`.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:5000".parse().expect("valid address"),
            data_dir: PathBuf::from("slipway-data"),
            database: DatabaseConfig::default(),
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            quota: QuotaConfig::default(),
            gc: GcConfig::default(),
            builds: BuildsConfig::default(),
            rebase: RebaseConfig::default(),
            log: LogConfig::default(),
            server: ServerConfig::default(),
            tls: TlsConfig::default(),
            identity: IdentityConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: String::new(),
            max_connections: 8,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Filesystem,
            path: PathBuf::new(),
            s3: S3Config::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_manifest_bytes: 4 << 20,
            max_blob_bytes: 64 << 30,
            upload_idle_secs: 24 * 3600,
            shutdown_grace_secs: 30,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// Settings given as command-line flags; they win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

/// The keys of [`Config`]: environment variables starting with anything
/// else are not configuration.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen", "data_dir", "database", "storage", "limits", "auth", "quota", "gc", "builds",
    "rebase", "log", "server", "tls",
];

#[derive(Debug, thiserror::Error)]
#[error("the configuration is invalid: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// What is wrong, without "the configuration is invalid".
    pub fn sentence(&self) -> String {
        self.0.clone()
    }
}

impl Config {
    /// Loads defaults, then `file` (if given), then the environment `env`
    /// (`SLIPWAY_…` pairs, passed in so libraries never read it themselves),
    /// then `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "the configuration file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        let mut env_map = figment::value::Dict::new();
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("SLIPWAY_") else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            // Other SLIPWAY_… variables (credentials for the CLI, test
            // settings) are not configuration; within a section, unknown
            // keys are errors like in the file.
            if !TOP_LEVEL_KEYS.contains(&path[0].as_str()) {
                continue;
            }
            let value: figment::value::Value = value.parse().expect("figment parses any string");
            insert_path(&mut env_map, &path, value);
        }
        fig = fig.merge(Serialized::defaults(env_map));
        let mut config: Config = fig.extract().map_err(|e| ConfigError(e.to_string()))?;
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            config.data_dir = dir.clone();
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.identity.ldap.validate()?;
        self.identity.oidc.validate()?;
        if self.identity.membership_ttl_secs == 0 {
            return Err(ConfigError(
                "identity.membership_ttl_secs must be at least 1".into(),
            ));
        }
        if self.auth.token_ttl_secs == 0 || self.auth.token_ttl_secs > 24 * 3600 {
            return Err(ConfigError(
                "auth.token_ttl_secs must be between 1 and 86400 (tokens are short-lived)".into(),
            ));
        }
        if self.auth.service.is_empty() || self.auth.issuer.is_empty() {
            return Err(ConfigError(
                "auth.service and auth.issuer cannot be empty".into(),
            ));
        }
        if self.quota.warn_percent.iter().any(|p| *p == 0 || *p > 100) {
            return Err(ConfigError(
                "quota.warn_percent values must be between 1 and 100".into(),
            ));
        }
        if self.storage.backend == StorageBackend::S3 {
            if self.storage.s3.bucket.is_empty() {
                return Err(ConfigError("storage.s3.bucket cannot be empty".into()));
            }
            if self.storage.s3.part_size_mib < 5 {
                return Err(ConfigError(
                    "storage.s3.part_size_mib must be at least 5 (S3's smallest part)".into(),
                ));
            }
        }
        for name in &self.rebase.auto_run_images {
            let (repo, tag) = name.rsplit_once(':').unwrap_or((name, ""));
            if name.contains('@')
                || repo.contains(':')
                || slipway_storage::RepoName::parse(repo).is_err()
                || !slipway_storage::names::valid_tag(tag)
            {
                return Err(ConfigError(format!(
                    "rebase.auto_run_images: {name:.200} is not a run image tag such as \
                     platform/run:bookworm (a repository of this registry and a tag)"
                )));
            }
        }
        self.server.proxies()?;
        if self.tls.enabled() == self.tls.key_file.as_os_str().is_empty() {
            return Err(ConfigError(
                "tls.cert_file and tls.key_file go together: set both for HTTPS, or neither".into(),
            ));
        }
        if self.tls.mutual() && !self.tls.enabled() {
            return Err(ConfigError(
                "tls.client_ca_file needs tls.cert_file and tls.key_file: client certificates \
                 are asked for only over HTTPS"
                    .into(),
            ));
        }
        if self.tls.reload_check_secs == 0 {
            return Err(ConfigError("tls.reload_check_secs must be above 0".into()));
        }
        if self.rebase.concurrency == 0 {
            return Err(ConfigError("rebase.concurrency must be above 0".into()));
        }
        self.egress_policy()?;
        self.source_hosts()?;
        check_limits(&self.builds.limits.limits(), "builds.limits")?;
        let e = &self.builds.egress;
        for (name, v) in [
            ("max_download_bytes", e.max_download_bytes),
            ("connect_timeout_secs", e.connect_timeout_secs),
            ("idle_timeout_secs", e.idle_timeout_secs),
        ] {
            if v == 0 {
                return Err(ConfigError(format!("builds.egress.{name} must be above 0")));
            }
        }
        let up = &self.builds.upstream_proxy;
        if !up.is_empty()
            && up
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(ConfigError(format!(
                "builds.upstream_proxy: {up:.200} is not host:port (such as proxy.site:3128)"
            )));
        }
        if self.builds.keep_succeeded == 0 {
            return Err(ConfigError(
                "builds.keep_succeeded must be at least 1 (the last successful build is what an \
                 equal build reuses)"
                    .into(),
            ));
        }
        if self.builds.max_hook_bytes < 1024 {
            return Err(ConfigError(
                "builds.max_hook_bytes must be at least 1024".into(),
            ));
        }
        if self.builds.min_poll_interval_secs == 0 {
            return Err(ConfigError(
                "builds.min_poll_interval_secs must be above 0".into(),
            ));
        }
        let pu = &self.builds.public_url;
        if !(pu.is_empty() || pu.starts_with("https://") || pu.starts_with("http://")) {
            return Err(ConfigError(format!(
                "builds.public_url: {pu:.200} is not an http:// or https:// address"
            )));
        }
        if self.limits.max_manifest_bytes == 0 {
            return Err(ConfigError(
                "limits.max_manifest_bytes must be above 0".into(),
            ));
        }
        Ok(())
    }

    /// The egress policy of `[builds.egress]`, parsed (without the
    /// registry's own addresses, which the server adds).
    pub fn egress_policy(&self) -> Result<slipway_builder::egress::Policy, ConfigError> {
        use slipway_builder::egress::{Policy, parse_cidr};
        let e = &self.builds.egress;
        let hosts = |key: &str, list: &[String]| {
            list.iter()
                .map(|h| {
                    h.parse()
                        .map_err(|m| ConfigError(format!("builds.egress.{key}: {m}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Policy {
            mode: e
                .mode
                .parse()
                .map_err(|m| ConfigError(format!("builds.egress.mode: {m}")))?,
            allow_hosts: hosts("allow_hosts", &e.allow_hosts)?,
            deny_hosts: hosts("deny_hosts", &e.deny_hosts)?,
            allow_cidrs: e
                .allow_cidrs
                .iter()
                .map(|c| {
                    parse_cidr(c)
                        .map_err(|m| ConfigError(format!("builds.egress.allow_cidrs: {m}")))
                })
                .collect::<Result<_, _>>()?,
            own_addrs: Vec::new(),
        })
    }

    /// `[builds.sources] allow_hosts`, parsed.
    pub fn source_hosts(&self) -> Result<Vec<slipway_builder::egress::HostPattern>, ConfigError> {
        self.builds
            .sources
            .allow_hosts
            .iter()
            .map(|h| {
                h.parse()
                    .map_err(|m| ConfigError(format!("builds.sources.allow_hosts: {m}")))
            })
            .collect()
    }

    /// A configuration for tests: loopback with a free port, all data in `dir`.
    pub fn for_tests(dir: &Path) -> Config {
        Config {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            data_dir: dir.to_path_buf(),
            log: LogConfig {
                format: LogFormat::Text,
                filter: "warn".into(),
            },
            ..Config::default()
        }
    }

    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            slipway_storage::Metadata::sqlite_url(&self.data_dir.join("slipway.db"))
        } else {
            self.database.url.clone()
        }
    }

    pub fn blob_path(&self) -> PathBuf {
        if self.storage.path.as_os_str().is_empty() {
            self.data_dir.join("blobs")
        } else {
            self.storage.path.clone()
        }
    }

    pub fn secrets_key_file(&self) -> PathBuf {
        if self.auth.secrets_key_file.as_os_str().is_empty() {
            self.data_dir.join("secrets-key")
        } else {
            self.auth.secrets_key_file.clone()
        }
    }

    pub fn key_file(&self) -> PathBuf {
        if self.auth.key_file.as_os_str().is_empty() {
            self.data_dir.join("token-signing-key.pem")
        } else {
            self.auth.key_file.clone()
        }
    }

    pub fn build_cache_dir(&self) -> PathBuf {
        if self.builds.cache_dir.as_os_str().is_empty() {
            self.data_dir.join("builds")
        } else {
            self.builds.cache_dir.clone()
        }
    }

    pub fn builders_dir(&self) -> PathBuf {
        if self.builds.builders_dir.as_os_str().is_empty() {
            self.build_cache_dir().join("builders")
        } else {
            self.builds.builders_dir.clone()
        }
    }

    pub fn upload_idle(&self) -> Duration {
        Duration::from_secs(self.limits.upload_idle_secs)
    }

    /// The configuration as one line for the log, secrets removed.
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        c.database.url = slipway_storage::meta::redact_url(&c.database.url);
        serde_json::to_string(&c).unwrap_or_default()
    }
}

fn insert_path(map: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    use figment::value::Value;
    match path {
        [] => {}
        [last] => {
            map.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = map
                .entry(first.clone())
                .or_insert_with(|| Value::from(figment::value::Dict::new()));
            if let Value::Dict(_, dict) = entry {
                insert_path(dict, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.data_dir, PathBuf::from("slipway-data"));
        assert!(
            c.database_url()
                .starts_with("sqlite://slipway-data/slipway.db")
        );
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("slipway.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:6000\"\ndata_dir = \"/srv/a\"\n[limits]\nmax_manifest_bytes = 1000\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 6000);
        assert_eq!(c.limits.max_manifest_bytes, 1000);

        let e = env(&[
            ("SLIPWAY_LISTEN", "127.0.0.1:7000"),
            ("SLIPWAY_LIMITS__MAX_MANIFEST_BYTES", "2000"),
            ("SLIPWAY_DATABASE__URL", "postgres://u:hunter2-pw@h/db"),
            ("SLIPWAY_STORAGE__S3__SECRET_KEY", "s3-hunter3"),
            ("SLIPWAY_ADMIN_PASSWORD", "not-config"),
            ("SLIPWAY_TEST_POSTGRES_URL", "not-config-either"),
            ("OTHER", "x"),
        ]);
        let c = Config::load(Some(&file), e.clone(), &Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.limits.max_manifest_bytes, 2000);
        assert_eq!(c.storage.s3.secret_key.expose(), "s3-hunter3");
        for leak in ["hunter2-pw", "s3-hunter3"] {
            assert!(!c.redacted().contains(leak), "{leak} in {}", c.redacted());
        }

        let o = Overrides {
            listen: Some("127.0.0.1:8000".parse().unwrap()),
            data_dir: Some("/srv/b".into()),
        };
        let c = Config::load(Some(&file), e, &o).unwrap();
        assert_eq!(c.listen.port(), 8000);
        assert_eq!(c.data_dir, PathBuf::from("/srv/b"));
    }

    #[test]
    fn rebase_run_images_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("slipway.toml");
        std::fs::write(
            &file,
            "[rebase]\nauto_run_images = [\"platform/run:bookworm\"]\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.rebase.auto_run_images, ["platform/run:bookworm"]);
        assert_eq!(c.rebase.concurrency, 16);
        let e = env(&[
            (
                "SLIPWAY_REBASE__AUTO_RUN_IMAGES",
                "[\"platform/run:bookworm\", \"platform/run:jammy\"]",
            ),
            ("SLIPWAY_REBASE__CONCURRENCY", "4"),
        ]);
        let c = Config::load(Some(&file), e, &Overrides::default()).unwrap();
        assert_eq!(
            c.rebase.auto_run_images,
            ["platform/run:bookworm", "platform/run:jammy"]
        );
        assert_eq!(c.rebase.concurrency, 4);
        for bad in [
            "platform/run",
            "platform/run@sha256:00",
            "Platform/run:x",
            ":x",
        ] {
            let e = env(&[("SLIPWAY_REBASE__AUTO_RUN_IMAGES", &format!("[\"{bad}\"]"))]);
            let err = Config::load(None, e, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("auto_run_images"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("slipway.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:6000\"\n").unwrap();
        let err = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = Config::load(
            Some(&dir.path().join("nope.toml")),
            env(&[]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = Config::load(
            None,
            env(&[("SLIPWAY_LISTEN", "nonsense")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
    }

    #[test]
    fn bad_egress_settings_are_refused_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("slipway.toml");
        let cases = [
            (
                "[builds.egress]\nmode = \"closed\"\n",
                "builds.egress.mode: \"closed\" is not an egress mode",
            ),
            (
                "[builds.egress]\nallow_cidrs = [\"10.0.0.0/33\"]\n",
                "builds.egress.allow_cidrs: \"10.0.0.0/33\" is not a CIDR",
            ),
            (
                "[builds.egress]\nallow_hosts = [\"https://pypi.org\"]\n",
                "builds.egress.allow_hosts: \"https://pypi.org\" is not a host pattern",
            ),
            (
                "[builds.egress]\ndeny_hosts = [\"*\"]\n",
                "builds.egress.deny_hosts:",
            ),
            (
                "[builds.sources]\nallow_hosts = [\"a b\"]\n",
                "builds.sources.allow_hosts:",
            ),
            (
                "[builds.egress]\nmax_download_bytes = 0\n",
                "builds.egress.max_download_bytes must be above 0",
            ),
            (
                "[builds.egress]\nidle_timeout_secs = 0\n",
                "builds.egress.idle_timeout_secs must be above 0",
            ),
            (
                "[builds]\nupstream_proxy = \"proxy.site\"\n",
                "builds.upstream_proxy: proxy.site is not host:port",
            ),
            (
                "[builds.limits]\nmemory_bytes = 0\n",
                "builds.limits.memory_bytes must be at least 64 MiB",
            ),
            (
                "[builds.limits]\nmemory_bytes = 1125899906842624\n",
                "builds.limits.memory_bytes is 1125899906842624 bytes, more than this machine has",
            ),
            (
                "[builds.limits]\nprocesses = 0\n",
                "builds.limits.processes must be between 16 and",
            ),
            (
                "[builds.limits]\ncpus = 0.0\n",
                "builds.limits.cpus is 0, but must be above 0",
            ),
            (
                "[builds.limits]\ncpus = 4096.0\n",
                "builds.limits.cpus is 4096, but must be above 0 and at most this machine's",
            ),
            (
                "[builds.limits]\ndisk_bytes = 0\n",
                "builds.limits.disk_bytes must be at least 16 MiB",
            ),
            (
                "[builds.limits]\nlog_bytes = 0\n",
                "builds.limits.log_bytes must be at least 4096",
            ),
        ];
        for (text, want) in cases {
            std::fs::write(&file, text).unwrap();
            let err = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
        std::fs::write(
            &file,
            "[builds]\nupstream_proxy = \"proxy.site:3128\"\n[builds.egress]\nmode = \"allowlist\"\nallow_hosts = [\"pypi.org\", \"*.pythonhosted.org\"]\nallow_cidrs = [\"10.20.0.0/16\"]\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap();
        let p = c.egress_policy().unwrap();
        assert_eq!(p.allow_hosts.len(), 2);
        assert_eq!(p.allow_cidrs.len(), 1);
    }
}
