//! Who is asking, and what they may do.
//!
//! Principals: anonymous, `admin` (everything), `builder` (the build front
//! end: pull, push and delete everywhere), robots `robot$<project>+<name>`
//! (their permissions on their own project; `push`/`delete` only when
//! `auth.robots_may_write`) and people from the directory (pull where they
//! have a role; see [`people`]). Anyone may pull from public projects.
//! Nothing may be pushed into a project that does not exist.
//!
//! Credentials: Docker token authentication (Bearer JWTs from
//! `/auth/token`) and, for simple clients, Basic credentials directly on
//! `/v2`. Every request is checked against the principal's *live* rights, so
//! a robot disabled, expired, rotated or deleted is refused at once, even
//! with a token obtained before.

pub mod bootstrap;
pub mod endpoint;
pub mod oidc;
pub mod people;
pub mod secrets;
pub mod tokens;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use slipway_storage::meta::{Project, Robot, now_ms};

use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::server::AppState;
use tokens::{Claims, TokenKeys, TokenUse};

pub const ADMIN: &str = "admin";
pub const BUILDER: &str = "builder";

/// A set of repository actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const PULL: Actions = Actions(1);
    pub const PUSH: Actions = Actions(2);
    pub const DELETE: Actions = Actions(4);
    pub const ALL: Actions = Actions(7);

    pub fn contains(self, other: Actions) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    pub fn intersect(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    pub fn names(self) -> Vec<&'static str> {
        [
            (Self::PULL, "pull"),
            (Self::PUSH, "push"),
            (Self::DELETE, "delete"),
        ]
        .into_iter()
        .filter(|(a, _)| self.contains(*a))
        .map(|(_, n)| n)
        .collect()
    }

    /// Parses `pull,push`, `*`; unknown words are ignored (the token spec
    /// lets clients ask for actions a registry does not have).
    pub fn parse(s: &str) -> Actions {
        s.split(',').map(str::trim).fold(Actions::NONE, |acc, a| {
            acc.union(match a {
                "pull" => Actions::PULL,
                "push" => Actions::PUSH,
                "delete" => Actions::DELETE,
                "*" => Actions::ALL,
                _ => Actions::NONE,
            })
        })
    }

    /// `pull,push`, as robots store it.
    pub fn to_list(self) -> String {
        self.names().join(",")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    Admin,
    Builder,
    Robot {
        id: i64,
        project: String,
        name: String,
        permissions: Actions,
    },
    /// A person from the directory (or named by the admin), with a session
    /// or a personal access token.
    Person {
        name: String,
        /// In the directory's admin group.
        admin: bool,
        /// The personal token in use, if any, and what it limits.
        limit: Option<people::TokenLimit>,
    },
}

impl Principal {
    /// The name in tokens, logs and the audit log.
    pub fn subject(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".into(),
            Principal::Admin => ADMIN.into(),
            Principal::Builder => BUILDER.into(),
            Principal::Robot { project, name, .. } => format!("robot${project}+{name}"),
            Principal::Person { name, .. } => name.clone(),
        }
    }

    /// The admin, or a person in the directory's admin group (with a
    /// session, or a personal token not limited to one project).
    pub fn is_admin(&self) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Person {
                admin: true, limit, ..
            } => limit.as_ref().is_none_or(|l| l.project.is_none()),
            _ => false,
        }
    }

    /// The personal token a person acts with.
    pub fn personal_token(&self) -> Option<&people::TokenLimit> {
        match self {
            Principal::Person { limit, .. } => limit.as_ref(),
            _ => None,
        }
    }
}

/// Splits `robot$<project>+<name>`.
pub fn parse_robot_name(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix("robot$")?;
    let (project, name) = rest.rsplit_once('+')?;
    (!project.is_empty() && !name.is_empty()).then_some((project, name))
}

/// Splits `build$<project>+<name>`, a build token's user name.
pub fn parse_build_token_name(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix("build$")?;
    let (project, name) = rest.rsplit_once('+')?;
    (!project.is_empty() && !name.is_empty()).then_some((project, name))
}

/// What a request needs on `/v2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Any valid credentials, anonymous tokens included (`GET /v2/`).
    Login,
    /// The catalog (filtered by what the principal may pull).
    Catalog,
    Repository {
        name: &'a str,
        actions: Actions,
        /// Whether a caller without credentials may be answered at once
        /// when anyone may do `actions` (public pulls, with no round trip
        /// to the token endpoint). False for a blob `HEAD`: see
        /// `v2::need`.
        open: bool,
    },
}

/// A checked request: who is asking, and from where.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub remote: Option<IpAddr>,
}

/// Authentication state shared by every request.
pub struct Authenticator {
    pub keys: TokenKeys,
    verified: secrets::VerifiedCache,
    pub limiter: secrets::FailureLimiter,
    projects: Mutex<HashMap<String, (Option<Project>, Instant)>>,
    touched: Mutex<HashMap<i64, Instant>>,
    pub people: people::PeopleCache,
}

/// How long a project's visibility may be served from memory.
const PROJECT_TTL: Duration = Duration::from_secs(2);
/// How often a robot's last-used time is written.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

impl Authenticator {
    pub fn new(keys: TokenKeys) -> Authenticator {
        Authenticator {
            keys,
            verified: secrets::VerifiedCache::new(Duration::from_secs(60)),
            limiter: secrets::FailureLimiter::new(10, Duration::from_secs(60)),
            projects: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashMap::new()),
            people: people::PeopleCache::default(),
        }
    }

    /// Forgets a project's cached state (after it changed here).
    pub fn forget_project(&self, name: &str) {
        self.projects.lock().expect("project cache").remove(name);
    }
}

impl AppState {
    fn auth(&self) -> &Authenticator {
        &self.auth
    }

    pub async fn project(&self, name: &str) -> ApiResult<Option<Project>> {
        if let Some((p, at)) = self
            .auth()
            .projects
            .lock()
            .expect("project cache")
            .get(name)
            && at.elapsed() < PROJECT_TTL
        {
            return Ok(p.clone());
        }
        let p = self.meta.project_get(name).await?;
        self.auth()
            .projects
            .lock()
            .expect("project cache")
            .insert(name.to_owned(), (p.clone(), Instant::now()));
        Ok(p)
    }

    /// Whether the project has a quota (from the short-lived cache: the
    /// authoritative checks run in the storage transactions).
    pub async fn has_quota(&self, project: &str) -> ApiResult<bool> {
        Ok(self
            .project(project)
            .await?
            .is_some_and(|p| p.quota_bytes.is_some()))
    }

    /// What `principal` may do, now, in repositories of `project`.
    pub async fn allowed(&self, principal: &Principal, project: &str) -> ApiResult<Actions> {
        let Some(p) = self.project(project).await? else {
            return Ok(Actions::NONE);
        };
        let public = if p.public {
            Actions::PULL
        } else {
            Actions::NONE
        };
        Ok(match principal {
            Principal::Admin | Principal::Builder => Actions::ALL,
            Principal::Anonymous => public,
            Principal::Robot {
                project: own,
                permissions,
                ..
            } => {
                if own == project {
                    self.robot_rights(*permissions).union(public)
                } else {
                    public
                }
            }
            Principal::Person { .. } => {
                self.person_actions(principal, project).await?.union(public)
            }
        })
    }

    /// A robot's stored permissions, less what configuration forbids.
    pub fn robot_rights(&self, permissions: Actions) -> Actions {
        if self.config.auth.robots_may_write {
            permissions
        } else {
            permissions.intersect(Actions::PULL)
        }
    }

    /// Checks a name and secret. `Ok(None)` when they do not match.
    pub async fn login(
        &self,
        user: &str,
        secret: &str,
    ) -> ApiResult<Option<(Principal, Option<i64>)>> {
        if let Some((project, name)) = parse_robot_name(user) {
            let Some(robot) = self.meta.robot_get(project, name).await? else {
                // Spend the time a verification would, so a missing robot
                // and a wrong secret look alike.
                secrets::verify(secret, DUMMY_HASH).await;
                return Ok(None);
            };
            if !self.secret_matches(user, secret, &robot.secret_hash).await {
                return Ok(None);
            }
            if !robot.enabled || robot.expired(now_ms()) {
                return Ok(None);
            }
            self.touch(&robot).await;
            let version = robot.version;
            return Ok(Some((robot_principal(&robot), Some(version))));
        }
        if secret.starts_with(people::TOKEN_PREFIX) && !people::RESERVED.contains(&user) {
            return Ok(self.token_login(user, secret).await?.map(|p| (p, None)));
        }
        let principal = match user {
            ADMIN => Principal::Admin,
            BUILDER => Principal::Builder,
            _ => {
                secrets::verify(secret, DUMMY_HASH).await;
                return Ok(None);
            }
        };
        let Some(hash) = self.meta.account_hash(user).await? else {
            return Ok(None);
        };
        if !self.secret_matches(user, secret, &hash).await {
            return Ok(None);
        }
        Ok(Some((principal, Some(account_version(&hash)))))
    }

    /// Checks a build token's name (`build$<project>+<name>`) and secret.
    /// Build tokens start builds of their own project; they have no rights
    /// on `/v2`.
    pub async fn build_token_login(
        &self,
        user: &str,
        secret: &str,
    ) -> ApiResult<Option<slipway_storage::meta::BuildToken>> {
        let Some((project, name)) = parse_build_token_name(user) else {
            return Ok(None);
        };
        let Some(token) = self.meta.build_token(project, name).await? else {
            secrets::verify(secret, DUMMY_HASH).await;
            return Ok(None);
        };
        if !self.secret_matches(user, secret, &token.secret_hash).await {
            return Ok(None);
        }
        if let Err(e) = self.meta.build_token_touch(token.id).await {
            tracing::warn!(error = %e, "recording a build token's use failed");
        }
        Ok(Some(token))
    }

    async fn secret_matches(&self, user: &str, secret: &str, hash: &str) -> bool {
        if self.auth().verified.check(user, secret, hash) {
            return true;
        }
        let ok = secrets::verify(secret, hash).await;
        if ok {
            self.auth().verified.remember(user, secret, hash);
        }
        ok
    }

    async fn touch(&self, robot: &Robot) {
        let due = {
            let mut touched = self.auth().touched.lock().expect("touch map");
            match touched.get(&robot.id) {
                Some(at) if at.elapsed() < TOUCH_EVERY => false,
                _ => {
                    touched.insert(robot.id, Instant::now());
                    true
                }
            }
        };
        if due && let Err(e) = self.meta.robot_touch(robot.id, now_ms()).await {
            tracing::warn!(error = %e, robot = %robot.full_name(), "recording a robot's use failed");
        }
    }

    /// The principal a verified token names, if it is still valid now:
    /// robots must exist, be enabled, unexpired and at the same version.
    pub async fn token_principal(&self, claims: &Claims) -> ApiResult<Option<Principal>> {
        Ok(match claims.sub.as_str() {
            "anonymous" => Some(Principal::Anonymous),
            ADMIN => Some(Principal::Admin),
            BUILDER => Some(Principal::Builder),
            sub => {
                let Some((project, name)) = parse_robot_name(sub) else {
                    return self.claimed_person(claims).await;
                };
                match self.meta.robot_get(project, name).await? {
                    Some(r)
                        if r.enabled && !r.expired(now_ms()) && Some(r.version) == claims.ver =>
                    {
                        self.touch(&r).await;
                        Some(robot_principal(&r))
                    }
                    _ => None,
                }
            }
        })
    }

    /// The person a token names: a registry token issued for a personal
    /// token that still holds, or a session (the CLI's, the dashboard's).
    async fn claimed_person(&self, claims: &Claims) -> ApiResult<Option<Principal>> {
        if people::RESERVED.contains(&claims.sub.as_str())
            || parse_build_token_name(&claims.sub).is_some()
        {
            return Ok(None);
        }
        match (&claims.pat, &claims.token_use) {
            (Some(id), _) => match self.live_token(&claims.sub, id).await? {
                Some(t) => self.person_principal(&claims.sub, Some(&t)).await,
                None => Ok(None),
            },
            (None, TokenUse::Session) => self.person_principal(&claims.sub, None).await,
            (None, _) => Ok(None),
        }
    }

    /// Authenticates and authorises a `/v2` request.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        remote: Option<IpAddr>,
        need: Need<'_>,
    ) -> ApiResult<Caller> {
        let caller = |principal| Caller { principal, remote };
        let credentials = parse_authorization(headers);
        match credentials {
            Credentials::None => {
                // Public content needs no round trip to the token endpoint.
                if let Need::Repository {
                    name,
                    actions,
                    open: true,
                } = need
                    && actions == Actions::PULL
                    && self
                        .allowed(&Principal::Anonymous, project_of(name))
                        .await?
                        .contains(Actions::PULL)
                {
                    return Ok(caller(Principal::Anonymous));
                }
                Err(self.challenge(headers, need, None))
            }
            Credentials::Invalid => Err(self.challenge(headers, need, Some("invalid_token"))),
            Credentials::Basic(user, secret) => {
                if let Some(wait) = self.auth().limiter.blocked(remote) {
                    return Err(too_many(wait));
                }
                let Some((principal, _)) = self.login(&user, &secret).await? else {
                    self.auth().limiter.failed(remote);
                    return Err(self.challenge(headers, need, Some("invalid_token")));
                };
                self.check_rights(headers, &principal, need, None).await?;
                Ok(caller(principal))
            }
            Credentials::Bearer(token) => {
                let claims = self
                    .auth()
                    .keys
                    .verify(&token, TokenUse::Access)
                    .map_err(|_| self.challenge(headers, need, Some("invalid_token")))?;
                let Some(principal) = self.token_principal(&claims).await? else {
                    return Err(self.challenge(headers, need, Some("invalid_token")));
                };
                self.check_rights(headers, &principal, need, Some(&claims))
                    .await?;
                Ok(caller(principal))
            }
        }
    }

    /// Checks that `principal` may do what `need` asks, now, and — for a
    /// token — that the token grants it.
    async fn check_rights(
        &self,
        headers: &HeaderMap,
        principal: &Principal,
        need: Need<'_>,
        claims: Option<&Claims>,
    ) -> ApiResult<()> {
        let Need::Repository { name, actions, .. } = need else {
            return Ok(());
        };
        let project = project_of(name);
        let live = self.allowed(principal, project).await?;
        if !live.contains(actions) {
            if *principal == Principal::Anonymous {
                return Err(self.challenge(headers, need, Some("insufficient_scope")));
            }
            let exists = self.project(project).await?.is_some();
            let message = if !exists {
                format!(
                    "project {project} does not exist; an administrator creates it with \
                     `slipway admin project create {project}`"
                )
            } else {
                format!(
                    "{} may not {} in {name}",
                    principal.subject(),
                    actions.intersect(Actions(!live.0)).names().join(" or ")
                )
            };
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Denied,
                message,
            ));
        }
        if let Some(claims) = claims {
            let granted = claims
                .access
                .iter()
                .filter(|a| a.kind == "repository" && a.name == name)
                .fold(Actions::NONE, |acc, a| {
                    acc.union(Actions::parse(&a.actions.join(",")))
                });
            if !granted.contains(actions) {
                return Err(self.challenge(headers, need, Some("insufficient_scope")));
            }
        }
        Ok(())
    }

    /// 401 with the `WWW-Authenticate` challenge that tells a client where
    /// to get a token for this request.
    pub fn challenge(&self, headers: &HeaderMap, need: Need<'_>, error: Option<&str>) -> ApiError {
        let realm = self.realm(headers);
        let mut value = format!(
            "Bearer realm=\"{realm}\",service=\"{}\"",
            self.config.auth.service
        );
        match need {
            Need::Login => {}
            Need::Catalog => value.push_str(",scope=\"registry:catalog:*\""),
            Need::Repository { name, actions, .. } => {
                value.push_str(&format!(
                    ",scope=\"repository:{name}:{}\"",
                    actions.names().join(",")
                ));
            }
        }
        if let Some(e) = error {
            value.push_str(&format!(",error=\"{e}\""));
        }
        let message = match error {
            Some("insufficient_scope") => "the credentials do not grant this access",
            Some(_) => "the credentials are not valid",
            None => "authentication required",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
            .with_header(header::WWW_AUTHENTICATE, &value)
    }

    /// The token endpoint's URL as clients should see it.
    pub fn realm(&self, headers: &HeaderMap) -> String {
        if !self.config.auth.realm.is_empty() {
            return self.config.auth.realm.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".:-[]".contains(&b))
            })
            .map(str::to_owned)
            .unwrap_or_else(|| self.config.listen.to_string());
        // Settled by `tls::scheme` for every request: this server's TLS, or
        // a trusted proxy's word.
        let scheme = match headers.get("x-forwarded-proto").map(|v| v.as_bytes()) {
            Some(b"https") => "https",
            _ => "http",
        };
        format!("{scheme}://{host}/auth/token")
    }
}

fn too_many(wait: Duration) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooManyRequests,
        format!(
            "too many failed logins from this address; try again in {} seconds",
            wait.as_secs().max(1)
        ),
    )
    .with_header(header::RETRY_AFTER, &wait.as_secs().max(1).to_string())
}

pub fn project_of(repository: &str) -> &str {
    repository.split('/').next().unwrap_or(repository)
}

fn robot_principal(r: &Robot) -> Principal {
    Principal::Robot {
        id: r.id,
        project: r.project.clone(),
        name: r.name.clone(),
        permissions: Actions::parse(&r.permissions),
    }
}

/// A number that changes when an account's password hash changes.
pub fn account_version(hash: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(hash.as_bytes());
    i64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// A valid argon2 hash of a random string, to verify against when the
/// account does not exist (equal timing).
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2xpcHdheWR1bW15c2FsdA$2bEs1X6xFb6nZ+X2cI4t3iG4cfTgkTgkTgPfz2v1h5g";

pub enum Credentials {
    None,
    Invalid,
    Basic(String, String),
    Bearer(String),
}

pub fn parse_authorization(headers: &HeaderMap) -> Credentials {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Credentials::None;
    };
    let Ok(value) = value.to_str() else {
        return Credentials::Invalid;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Credentials::Bearer(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        if let Some((user, secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
            return Credentials::Basic(user.to_owned(), secret.to_owned());
        }
    }
    Credentials::Invalid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        assert_eq!(
            Actions::parse("pull,push"),
            Actions::PULL.union(Actions::PUSH)
        );
        assert_eq!(Actions::parse("*"), Actions::ALL);
        assert_eq!(Actions::parse("pull,frobnicate"), Actions::PULL);
        assert_eq!(Actions::parse(""), Actions::NONE);
        assert_eq!(Actions::ALL.names(), ["pull", "push", "delete"]);
        assert!(Actions::ALL.contains(Actions::PUSH));
        assert!(!Actions::PULL.contains(Actions::PUSH));
        assert_eq!(Actions::parse("push,pull").to_list(), "pull,push");
    }

    #[test]
    fn robot_names() {
        assert_eq!(parse_robot_name("robot$tool-a+ci"), Some(("tool-a", "ci")));
        assert_eq!(
            parse_robot_name("robot$tool-a+b+ci"),
            Some(("tool-a+b", "ci"))
        );
        assert_eq!(parse_robot_name("robot$+ci"), None);
        assert_eq!(parse_robot_name("robot$tool-a+"), None);
        assert_eq!(parse_robot_name("admin"), None);
    }

    #[test]
    fn dummy_hash_parses() {
        assert!(argon2::password_hash::PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn authorization_headers() {
        let mut h = HeaderMap::new();
        assert!(matches!(parse_authorization(&h), Credentials::None));
        h.insert(header::AUTHORIZATION, "Basic YWRtaW46cDpx".parse().unwrap());
        assert!(
            matches!(parse_authorization(&h), Credentials::Basic(u, p) if u == "admin" && p == "p:q")
        );
        h.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert!(matches!(parse_authorization(&h), Credentials::Bearer(t) if t == "abc"));
        for bad in [
            "Basic !!!",
            "Basic YWRtaW4=",
            "Digest x",
            "Bearer ",
            "Basic",
        ] {
            h.insert(header::AUTHORIZATION, bad.parse().unwrap());
            assert!(
                matches!(parse_authorization(&h), Credentials::Invalid),
                "{bad}"
            );
        }
    }
}
