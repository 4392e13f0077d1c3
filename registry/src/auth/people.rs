//! People: signed in through the directory, acting with a session (the
//! dashboard's cookie, the CLI's bearer) or a personal access token
//! (`<user>:slp_…` for registry clients).
//!
//! What a person may do comes from their memberships (`Metadata::role_of`)
//! and, for the admin group, `is_admin` — as the directory last said. That
//! answer is trusted for `identity.membership_ttl_secs`: a person acting
//! later than that after the last look is looked up again (with the
//! directory's service account), so a member removed from a tool's group
//! loses the project, and an admin removed from the admin group loses
//! admin, without anyone touching Slipway. A directory that does not answer
//! then leaves the last answer in force (logged), rather than refusing
//! every pull.
//!
//! People never push: the builder is the only writer of images.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use slipway_storage::meta::{Person, PersonalToken, Role, now_ms};

use super::tokens::{Claims, TokenUse};
use super::{Actions, Principal, secrets};
use crate::error::ApiResult;
use crate::server::AppState;

/// How a personal access token starts: `slp_<id>_<secret>`.
pub const TOKEN_PREFIX: &str = "slp_";

/// Names no person may have: the built-in accounts, and what tokens and
/// logs say for nobody.
pub const RESERVED: [&str; 3] = [super::ADMIN, super::BUILDER, "anonymous"];

/// What a personal access token limits its holder to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLimit {
    pub id: String,
    /// Only this project (else every project of the person).
    pub project: Option<String>,
    /// Registry pulls only: no use of the API.
    pub pull_only: bool,
}

/// Splits `slp_<id>_<secret>` into the id (32 hex digits) and the secret.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = (rest.get(..32)?, rest.get(32..)?.strip_prefix('_')?);
    (id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty()).then_some((id, secret))
}

/// A new token's id and its text (shown once).
pub fn new_token() -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let secret = secrets::generate();
    let text = format!("{TOKEN_PREFIX}{id}_{secret}");
    (id, text)
}

/// The people's share of the authenticator: until when each person's
/// memberships need no look-up here (the TTL after an answer, less after
/// a directory that failed), and one look-up at a time.
#[derive(Default)]
pub struct PeopleCache {
    settled_until: Mutex<HashMap<String, Instant>>,
    looking: tokio::sync::Mutex<()>,
    used: Mutex<HashMap<String, Instant>>,
}

/// How long a session lasts (the CLI's from `POST /api/v1/sign-in`, the
/// dashboard's cookie).
pub const SESSION_SECS: i64 = 12 * 3600;

/// How often a token's last use is written.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

impl AppState {
    fn membership_ttl(&self) -> Duration {
        Duration::from_secs(self.config.identity.membership_ttl_secs)
    }

    /// The person `name`, with memberships no older than the TTL (looked
    /// up again in the directory when they are): `None` when unknown or
    /// disabled.
    pub async fn person(&self, name: &str) -> ApiResult<Option<Person>> {
        self.person_looked_up(name, false).await
    }

    /// The person `name` as the directory says now, whatever the TTL (a
    /// personal token is issued on the directory's current word): a
    /// directory that does not answer is a 503 here, not the last answer.
    pub async fn person_now(&self, name: &str) -> ApiResult<Option<Person>> {
        self.person_looked_up(name, true).await
    }

    async fn person_looked_up(&self, name: &str, now: bool) -> ApiResult<Option<Person>> {
        let Some(person) = self.meta.person_get(name).await? else {
            return Ok(None);
        };
        if person.disabled {
            return Ok(None);
        }
        let Some(directory) = self.directory.as_ref() else {
            return Ok(Some(person));
        };
        let ttl = self.membership_ttl();
        let fresh = |p: &Person| {
            p.checked_at
                .is_some_and(|at| now_ms().saturating_sub(at) < ttl.as_millis() as i64)
        };
        let settle = |until: Instant| {
            self.auth
                .people
                .settled_until
                .lock()
                .expect("people cache")
                .insert(name.to_owned(), until);
        };
        if fresh(&person) && !now {
            return Ok(Some(person));
        }
        // One look-up at a time: a burst of pulls asks the directory once.
        let _one = self.auth.people.looking.lock().await;
        let settled = self
            .auth
            .people
            .settled_until
            .lock()
            .expect("people cache")
            .get(name)
            .is_some_and(|until| *until > Instant::now());
        if settled && !now {
            return Ok(self.meta.person_get(name).await?.filter(|p| !p.disabled));
        }
        match directory.look_up(name).await {
            Ok(answer) => {
                let (admin, grants) = match &answer {
                    Some(a) => (a.is_admin, a.grants.clone()),
                    None => (false, Vec::new()),
                };
                self.meta
                    .directory_sync(name, admin, &grants, now_ms())
                    .await?;
                settle(Instant::now() + ttl);
                if answer.is_none() {
                    tracing::info!(person = name, "no longer in the directory: no projects");
                }
                Ok(self.meta.person_get(name).await?.filter(|p| !p.disabled))
            }
            Err(e) if now => {
                tracing::warn!(person = name, error = %e, "the directory did not answer");
                Err(crate::error::ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    crate::error::ErrorCode::Unavailable,
                    "the directory cannot be reached to check your groups; try again later",
                ))
            }
            Err(e) => {
                tracing::warn!(person = name, error = %e,
                    "the directory did not answer; the person's last memberships stay in force");
                settle(Instant::now() + ttl.min(Duration::from_secs(30)));
                Ok(Some(person))
            }
        }
    }

    /// A signed session for `sub` (`use: session`, [`SESSION_SECS`]),
    /// carrying the account's credential version `ver` where it has one.
    pub fn session_token(&self, sub: &str, ver: Option<i64>) -> anyhow::Result<String> {
        let now = now_ms() / 1000;
        self.auth.keys.sign(&Claims {
            iss: self.config.auth.issuer.clone(),
            sub: sub.to_owned(),
            aud: self.config.auth.service.clone(),
            exp: now + SESSION_SECS,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access: Vec::new(),
            token_use: TokenUse::Session,
            ver,
            pat: None,
        })
    }

    /// The claims of a bearer token the API takes: a registry token, or a
    /// person's session (never a built-in account's dashboard cookie: the
    /// dashboard checks those).
    pub fn api_claims(&self, token: &str) -> Option<Claims> {
        if let Ok(c) = self.auth.keys.verify(token, TokenUse::Access) {
            return Some(c);
        }
        self.auth
            .keys
            .verify(token, TokenUse::Session)
            .ok()
            .filter(|c| !RESERVED.contains(&c.sub.as_str()))
    }

    /// Records a sign-in the directory accepted: the person named if new,
    /// their memberships as the directory says, the time. Returns the
    /// projects the directory granted that do not exist here.
    pub async fn directory_signed_in(
        &self,
        answer: &crate::identity::Answer,
    ) -> ApiResult<Vec<String>> {
        let now = now_ms();
        self.meta
            .person_ensure(&answer.user, slipway_storage::meta::SOURCE_DIRECTORY)
            .await?;
        let unknown = self
            .meta
            .directory_sync(&answer.user, answer.is_admin, &answer.grants, now)
            .await?;
        self.meta.person_signed_in(&answer.user, now).await?;
        Ok(unknown)
    }

    /// The principal of a person acting now (memberships refreshed as
    /// `person` does), limited by a personal token if they use one.
    pub async fn person_principal(
        &self,
        name: &str,
        token: Option<&PersonalToken>,
    ) -> ApiResult<Option<Principal>> {
        let Some(person) = self.person(name).await? else {
            return Ok(None);
        };
        Ok(Some(Principal::Person {
            name: person.name,
            admin: person.is_admin,
            limit: token.map(|t| TokenLimit {
                id: t.id.clone(),
                project: t.project.clone(),
                pull_only: t.pull_only,
            }),
        }))
    }

    /// Checks a person's name and personal access token.
    pub async fn token_login(&self, user: &str, text: &str) -> ApiResult<Option<Principal>> {
        // The same work whatever is wrong: no answer tells a token's owner.
        let Some((id, _)) = split_token(text) else {
            secrets::verify(text, super::DUMMY_HASH).await;
            return Ok(None);
        };
        let Some(token) = self.meta.token_get(id).await? else {
            secrets::verify(text, super::DUMMY_HASH).await;
            return Ok(None);
        };
        if token.person != user {
            secrets::verify(text, super::DUMMY_HASH).await;
            return Ok(None);
        }
        if !self.secret_matches(user, text, &token.secret_hash).await {
            return Ok(None);
        }
        if token.expired(now_ms()) {
            return Ok(None);
        }
        self.token_touch(&token).await;
        self.person_principal(user, Some(&token)).await
    }

    /// The token a registry token was issued for, if it still holds.
    pub async fn live_token(&self, person: &str, id: &str) -> ApiResult<Option<PersonalToken>> {
        Ok(self
            .meta
            .token_get(id)
            .await?
            .filter(|t| t.person == person && !t.expired(now_ms())))
    }

    async fn token_touch(&self, token: &PersonalToken) {
        let due = {
            let mut used = self.auth.people.used.lock().expect("token uses");
            match used.get(&token.id) {
                Some(at) if at.elapsed() < TOUCH_EVERY => false,
                _ => {
                    used.insert(token.id.clone(), Instant::now());
                    true
                }
            }
        };
        if due && let Err(e) = self.meta.token_used(&token.id, now_ms()).await {
            tracing::warn!(error = %e, "recording a personal token's use failed");
        }
    }

    /// A person's role in `project` now (none outside a token's project).
    pub async fn role(&self, principal: &Principal, project: &str) -> ApiResult<Option<Role>> {
        let Principal::Person { name, limit, .. } = principal else {
            return Ok(None);
        };
        if let Some(TokenLimit {
            project: Some(only),
            ..
        }) = limit
            && only != project
        {
            return Ok(None);
        }
        Ok(self.meta.role_of(name, project).await?)
    }

    /// What a person may do in repositories of `project`: pull where they
    /// have a role (and, as an admin, everywhere). Never push or delete.
    pub(super) async fn person_actions(
        &self,
        principal: &Principal,
        project: &str,
    ) -> ApiResult<Actions> {
        let Principal::Person { admin, limit, .. } = principal else {
            return Ok(Actions::NONE);
        };
        let in_limit = limit
            .as_ref()
            .and_then(|l| l.project.as_deref())
            .is_none_or(|p| p == project);
        if *admin && in_limit {
            return Ok(Actions::PULL);
        }
        Ok(if self.role(principal, project).await?.is_some() {
            Actions::PULL
        } else {
            Actions::NONE
        })
    }
}

/// What a caller may do to a project through the API and the dashboard,
/// weakest first: each role holds the rights before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Right {
    /// See the project, its images, usage and build status (guest).
    Read,
    /// Start, cancel and retry builds, read their logs (developer).
    Build,
    /// Build tokens, robots, triggers, secrets, retention, the project's
    /// audit log (maintainer).
    Manage,
    /// Quota, visibility, creating and deleting projects (the admin).
    Administer,
}

impl Right {
    /// The strongest right `role` holds.
    fn held_by(role: Role) -> Right {
        match role {
            Role::Maintainer => Right::Manage,
            Role::Developer => Right::Build,
            Role::Guest => Right::Read,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Right::Read => "see",
            Right::Build => "build in",
            Right::Manage => "manage",
            Right::Administer => "administer",
        }
    }
}

impl AppState {
    /// Whether `caller` may exercise `right` on `project`: the one place
    /// the API and the dashboard ask. The admin (and the directory's admin
    /// group) may do everything; a person what their role holds; a robot
    /// read its own project.
    pub async fn may(&self, principal: &Principal, project: &str, right: Right) -> ApiResult<bool> {
        Ok(match principal {
            Principal::Admin => true,
            Principal::Person {
                admin: true, limit, ..
            } if limit
                .as_ref()
                .and_then(|l| l.project.as_deref())
                .is_none_or(|p| p == project) =>
            {
                true
            }
            Principal::Person { .. } => self
                .role(principal, project)
                .await?
                .is_some_and(|r| right <= Right::held_by(r)),
            Principal::Robot {
                project: own,
                permissions,
                ..
            } => right == Right::Read && own == project && permissions.contains(Actions::PULL),
            Principal::Anonymous | Principal::Builder => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_text() {
        let (id, text) = new_token();
        let (i, s) = split_token(&text).unwrap();
        assert_eq!(i, id);
        assert_eq!(s.len(), 43);
        for bad in [
            "",
            "slp_",
            "slp_abc_def",
            &format!("slp_{id}"),
            &format!("slp_{id}_"),
            &format!("slp_{id}x"),
            &format!("slq_{id}_secret"),
            &format!("slp_{}_secret", "g".repeat(32)),
        ] {
            assert!(split_token(bad).is_none(), "{bad}");
        }
    }
}
