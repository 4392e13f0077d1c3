//! People, their roles in projects, and their personal access tokens.
//!
//! A person is named by the admin or by the directory (LDAP, OpenID
//! Connect), before or after they first sign in. Each membership row has a
//! source: `admin` rows are the admin's grants and stay until the admin
//! revokes them; `directory` rows are replaced wholesale every time the
//! directory is asked ([`Metadata::directory_sync`]), so that a person
//! removed from a group loses the project without anyone touching Slipway.
//! The effective role is the strongest of a person's rows for a project.

use sqlx::Row;

use super::{Metadata, now_ms};
use crate::error::{Result, StorageError};

/// A role in a project, weakest first (so `max` is the strongest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Pulls private images, reads build status.
    Guest,
    /// Also starts and cancels builds, reads their logs.
    Developer,
    /// Also manages triggers, build tokens, robots, secrets and retention;
    /// sees usage and audit. Never the quota or the visibility.
    Maintainer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Developer => "developer",
            Role::Maintainer => "maintainer",
        }
    }

    /// `maintainer`, `developer` or `guest`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "guest" => Some(Role::Guest),
            "developer" => Some(Role::Developer),
            "maintainer" => Some(Role::Maintainer),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a membership comes from.
pub const SOURCE_ADMIN: &str = "admin";
pub const SOURCE_DIRECTORY: &str = "directory";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    pub created_at: i64,
    /// `admin` or `directory`.
    pub created_by: String,
    /// In the directory's admin group when it was last asked.
    pub is_admin: bool,
    pub disabled: bool,
    pub checked_at: Option<i64>,
    pub last_sign_in: Option<i64>,
    /// The OpenID Connect subject they are bound to, once they signed in
    /// through the provider.
    pub oidc_subject: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub person: String,
    pub project: String,
    pub role: Role,
    pub source: String,
    pub granted_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalToken {
    pub id: String,
    pub person: String,
    pub name: String,
    pub secret_hash: String,
    /// Limited to this project; `None`: every project of the person.
    pub project: Option<String>,
    pub pull_only: bool,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl PersonalToken {
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at.is_some_and(|e| e <= now_ms)
    }
}

/// Names a person ($1) at $2 by $3, unless already named.
const NAME_PERSON: &str = "INSERT INTO people (name, created_at, created_by, is_admin, disabled) \
                           VALUES ($1, $2, $3, 0, 0) ON CONFLICT (name) DO NOTHING";

const PERSON_COLUMNS: &str =
    "name, created_at, created_by, is_admin, disabled, checked_at, last_sign_in, oidc_subject";
const TOKEN_COLUMNS: &str = "id, person, name, secret_hash, project, pull_only, created_at, \
                             expires_at, last_used_at";

fn person(r: &sqlx::any::AnyRow) -> Person {
    Person {
        name: r.get(0),
        created_at: r.get(1),
        created_by: r.get(2),
        is_admin: r.get::<i64, _>(3) != 0,
        disabled: r.get::<i64, _>(4) != 0,
        checked_at: r.get(5),
        last_sign_in: r.get(6),
        oidc_subject: r.get(7),
    }
}

fn membership(r: &sqlx::any::AnyRow) -> Result<Membership> {
    let role: String = r.get(2);
    Ok(Membership {
        person: r.get(0),
        project: r.get(1),
        role: Role::parse(&role)
            .ok_or_else(|| StorageError::Corrupt(format!("a membership has role {role:.40}")))?,
        source: r.get(3),
        granted_at: r.get(4),
    })
}

fn token(r: &sqlx::any::AnyRow) -> PersonalToken {
    PersonalToken {
        id: r.get(0),
        person: r.get(1),
        name: r.get(2),
        secret_hash: r.get(3),
        project: r.get(4),
        pull_only: r.get::<i64, _>(5) != 0,
        created_at: r.get(6),
        expires_at: r.get(7),
        last_used_at: r.get(8),
    }
}

impl Metadata {
    /// The person, created (by `created_by`) if not yet named.
    pub async fn person_ensure(&self, name: &str, created_by: &str) -> Result<Person> {
        sqlx::query(NAME_PERSON)
            .bind(name)
            .bind(now_ms())
            .bind(created_by)
            .execute(&self.write)
            .await?;
        self.person_get_from(name, &self.write)
            .await?
            .ok_or_else(|| StorageError::Corrupt("a person vanished after being named".into()))
    }

    pub async fn person_get(&self, name: &str) -> Result<Option<Person>> {
        self.person_get_from(name, &self.read).await
    }

    async fn person_get_from(&self, name: &str, pool: &sqlx::AnyPool) -> Result<Option<Person>> {
        let sql = format!("SELECT {PERSON_COLUMNS} FROM people WHERE name = $1");
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(pool)
            .await?
            .as_ref()
            .map(person))
    }

    /// Everyone named, by name.
    pub async fn people(&self) -> Result<Vec<Person>> {
        let sql = format!("SELECT {PERSON_COLUMNS} FROM people ORDER BY name");
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(person)
            .collect())
    }

    /// Disables (or enables again) a person: a disabled person signs in
    /// nowhere and their tokens open nothing. False when not named.
    pub async fn person_set_disabled(&self, name: &str, disabled: bool) -> Result<bool> {
        Ok(
            sqlx::query("UPDATE people SET disabled = $1 WHERE name = $2")
                .bind(disabled as i64)
                .bind(name)
                .execute(&self.write)
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// Records a sign-in.
    pub async fn person_signed_in(&self, name: &str, at: i64) -> Result<()> {
        sqlx::query("UPDATE people SET last_sign_in = $1 WHERE name = $2")
            .bind(at)
            .bind(name)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Grants `role` in `project` from `source` (the person is named if
    /// not yet); replaces that source's earlier grant there. False (and
    /// nothing written) when the project does not exist.
    pub async fn membership_grant(
        &self,
        person: &str,
        project: &str,
        role: Role,
        source: &str,
    ) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let now = now_ms();
        sqlx::query(NAME_PERSON)
            .bind(person)
            .bind(now)
            .bind(source)
            .execute(&mut *tx)
            .await?;
        if sqlx::query("SELECT 1 FROM projects WHERE name = $1")
            .bind(project)
            .fetch_optional(&mut *tx)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO memberships (person, project, role, source, granted_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (person, project, source) \
             DO UPDATE SET role = excluded.role, granted_at = excluded.granted_at",
        )
        .bind(person)
        .bind(project)
        .bind(role.as_str())
        .bind(source)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes `source`'s grant of `project` to `person`; false when there
    /// was none.
    pub async fn membership_revoke(
        &self,
        person: &str,
        project: &str,
        source: &str,
    ) -> Result<bool> {
        Ok(sqlx::query(
            "DELETE FROM memberships WHERE person = $1 AND project = $2 AND source = $3",
        )
        .bind(person)
        .bind(project)
        .bind(source)
        .execute(&self.write)
        .await?
        .rows_affected()
            == 1)
    }

    /// A person's membership rows, by project then source.
    pub async fn memberships_of(&self, person: &str) -> Result<Vec<Membership>> {
        sqlx::query(
            "SELECT person, project, role, source, granted_at FROM memberships \
             WHERE person = $1 ORDER BY project, source",
        )
        .bind(person)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(membership)
        .collect()
    }

    /// Every membership row, by person, project and source.
    pub async fn memberships(&self) -> Result<Vec<Membership>> {
        sqlx::query(
            "SELECT person, project, role, source, granted_at FROM memberships \
             ORDER BY person, project, source",
        )
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(membership)
        .collect()
    }

    /// A project's membership rows, by person then source.
    pub async fn members_of(&self, project: &str) -> Result<Vec<Membership>> {
        sqlx::query(
            "SELECT person, project, role, source, granted_at FROM memberships \
             WHERE project = $1 ORDER BY person, source",
        )
        .bind(project)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(membership)
        .collect()
    }

    /// A person's effective role in a project: the strongest of its rows;
    /// `None` for no row, or a disabled person.
    pub async fn role_of(&self, person: &str, project: &str) -> Result<Option<Role>> {
        let rows = sqlx::query(
            "SELECT m.role FROM memberships m JOIN people p ON p.name = m.person \
             WHERE m.person = $1 AND m.project = $2 AND p.disabled = 0",
        )
        .bind(person)
        .bind(project)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| Role::parse(&r.get::<String, _>(0)))
            .max())
    }

    /// What the directory says now about `person`: whether they are in the
    /// admin group, and the projects their groups grant. In one
    /// transaction, the person's `directory` rows become exactly `grants`
    /// (projects that do not exist are left out and returned), and
    /// `is_admin` and `checked_at` are set; `admin` rows are left alone.
    pub async fn directory_sync(
        &self,
        person: &str,
        is_admin: bool,
        grants: &[(String, Role)],
        at: i64,
    ) -> Result<Vec<String>> {
        let mut tx = self.write.begin().await?;
        sqlx::query(NAME_PERSON)
            .bind(person)
            .bind(at)
            .bind(SOURCE_DIRECTORY)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE people SET is_admin = $1, checked_at = $2 WHERE name = $3")
            .bind(is_admin as i64)
            .bind(at)
            .bind(person)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM memberships WHERE person = $1 AND source = $2")
            .bind(person)
            .bind(SOURCE_DIRECTORY)
            .execute(&mut *tx)
            .await?;
        let mut unknown = Vec::new();
        for (project, role) in grants {
            // One statement: written only where the project exists.
            let n = sqlx::query(
                "INSERT INTO memberships (person, project, role, source, granted_at) \
                 SELECT $1, name, $3, $4, $5 FROM projects WHERE name = $2 \
                 ON CONFLICT (person, project, source) DO UPDATE SET role = excluded.role",
            )
            .bind(person)
            .bind(project)
            .bind(role.as_str())
            .bind(SOURCE_DIRECTORY)
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                unknown.push(project.clone());
            }
        }
        tx.commit().await?;
        Ok(unknown)
    }

    /// Stores a new personal token; a conflict when the person has one of
    /// that name.
    pub async fn token_create(&self, t: &PersonalToken) -> Result<()> {
        let n = sqlx::query(
            "INSERT INTO personal_tokens (id, person, name, secret_hash, project, pull_only, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (person, name) DO NOTHING",
        )
        .bind(&t.id)
        .bind(&t.person)
        .bind(&t.name)
        .bind(&t.secret_hash)
        .bind(&t.project)
        .bind(t.pull_only as i64)
        .bind(t.created_at)
        .bind(t.expires_at)
        .execute(&self.write)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(StorageError::Conflict(format!(
                "{} already has a token named {}",
                t.person, t.name
            )));
        }
        Ok(())
    }

    pub async fn token_get(&self, id: &str) -> Result<Option<PersonalToken>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM personal_tokens WHERE id = $1");
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(token))
    }

    /// A person's tokens, newest first.
    pub async fn tokens_of(&self, person: &str) -> Result<Vec<PersonalToken>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM personal_tokens WHERE person = $1 \
             ORDER BY created_at DESC, id"
        );
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(person)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(token)
            .collect())
    }

    /// Revokes a person's token; false when they have none of that id.
    pub async fn token_delete(&self, person: &str, id: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM personal_tokens WHERE person = $1 AND id = $2")
                .bind(person)
                .bind(id)
                .execute(&self.write)
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// Records a token's use.
    pub async fn token_used(&self, id: &str, at: i64) -> Result<()> {
        sqlx::query("UPDATE personal_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}

/// An OpenID Connect sign-in under way (`sign_in_requests`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInRequest {
    /// SHA-256 (hex) of the state sent to the provider.
    pub state_hash: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub redirect_uri: String,
    /// `dashboard`, `cli` or `device`.
    pub client: String,
    /// Who started it: an IPv4 address or an IPv6 /64.
    pub remote: String,
    /// SHA-256 (hex) of the CLI's secret, sent back with the code.
    pub client_proof: Option<String>,
    /// A device sign-in: the provider is polled at most this often.
    pub poll_every_ms: i64,
    pub created_at: i64,
    pub expires_at: i64,
}

/// What became of a state brought back from the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInUse {
    /// Taken now, for the first time.
    Taken(SignInRequest),
    /// Still open (when only looked at: a device sign-in being polled).
    Open(SignInRequest),
    /// Brought back before: a replay.
    AlreadyUsed,
    /// Never used, but too late.
    Expired,
    /// Not a state Slipway sent (or one forgotten a day after it expired).
    Unknown,
}

/// How long rows are kept after they expire.
const SIGN_IN_KEEP_MS: i64 = 3600 * 1000;

const SIGN_IN_COLUMNS: &str = "state_hash, nonce, pkce_verifier, redirect_uri, client, remote, \
     client_proof, poll_every_ms, created_at, expires_at";

impl Metadata {
    /// Records a sign-in sent to the provider (and forgets those expired
    /// more than an hour ago).
    pub async fn sign_in_request_create(&self, r: &SignInRequest) -> Result<()> {
        sqlx::query("DELETE FROM sign_in_requests WHERE expires_at < $1")
            .bind(r.created_at - SIGN_IN_KEEP_MS)
            .execute(&self.write)
            .await?;
        let sql = format!(
            "INSERT INTO sign_in_requests ({SIGN_IN_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&r.state_hash)
            .bind(&r.nonce)
            .bind(&r.pkce_verifier)
            .bind(&r.redirect_uri)
            .bind(&r.client)
            .bind(&r.remote)
            .bind(&r.client_proof)
            .bind(r.poll_every_ms)
            .bind(r.created_at)
            .bind(r.expires_at)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// How many sign-ins are under way (not used, not expired): in all,
    /// and started from `remote`.
    pub async fn sign_in_requests_open(&self, remote: &str, now: i64) -> Result<(i64, i64)> {
        let row = sqlx::query(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN remote = $2 THEN 1 ELSE 0 END), 0) \
             FROM sign_in_requests WHERE used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(remote)
        .fetch_one(&self.write)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// Claims the right to poll the provider for a device sign-in now:
    /// false when the last poll was less than its interval ago (or the
    /// sign-in is no longer open), so concurrent or hasty polls do not
    /// reach the provider.
    pub async fn sign_in_request_poll(&self, state_hash: &str, now: i64) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE sign_in_requests SET polled_at = $2 \
             WHERE state_hash = $1 AND used_at IS NULL AND expires_at > $2 \
             AND (polled_at IS NULL OR polled_at <= $2 - poll_every_ms)",
        )
        .bind(state_hash)
        .bind(now)
        .execute(&self.write)
        .await?
        .rows_affected()
            == 1)
    }

    /// Forgets the subject `person` is bound to (the admin's repair when the
    /// provider gave them a new account): the next sign-in binds again.
    pub async fn person_unbind_subject(&self, person: &str) -> Result<bool> {
        Ok(
            sqlx::query("UPDATE people SET oidc_subject = NULL WHERE name = $1")
                .bind(person)
                .execute(&self.write)
                .await?
                .rows_affected()
                == 1,
        )
    }

    /// Binds `person` to the provider's `subject` at their first sign-in
    /// through OpenID Connect; false when they are bound to another.
    pub async fn person_bind_subject(&self, person: &str, subject: &str) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE people SET oidc_subject = $2 \
             WHERE name = $1 AND (oidc_subject IS NULL OR oidc_subject = $2)",
        )
        .bind(person)
        .bind(subject)
        .execute(&self.write)
        .await?
        .rows_affected()
            == 1)
    }

    /// Takes the sign-in whose state hashes to `state_hash`, once: a second
    /// use (a replay), a late one or an unknown state is told apart.
    pub async fn sign_in_request_use(&self, state_hash: &str, now: i64) -> Result<SignInUse> {
        let sql = format!(
            "UPDATE sign_in_requests SET used_at = $2 \
             WHERE state_hash = $1 AND used_at IS NULL AND expires_at > $2 \
             RETURNING {SIGN_IN_COLUMNS}"
        );
        let taken = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(state_hash)
            .bind(now)
            .fetch_optional(&self.write)
            .await?;
        if let Some(row) = taken {
            return Ok(SignInUse::Taken(sign_in_request(&row)?));
        }
        self.sign_in_request_look(state_hash, i64::MAX).await
    }

    /// Looks at the sign-in whose state hashes to `state_hash` without
    /// taking it: `Open` while neither used nor expired at `now`.
    pub async fn sign_in_request_look(&self, state_hash: &str, now: i64) -> Result<SignInUse> {
        let sql = format!(
            "SELECT {SIGN_IN_COLUMNS}, used_at FROM sign_in_requests WHERE state_hash = $1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(state_hash)
            .fetch_optional(&self.write)
            .await?;
        let Some(row) = row else {
            return Ok(SignInUse::Unknown);
        };
        let request = sign_in_request(&row)?;
        Ok(match row.try_get::<Option<i64>, _>(10)? {
            Some(_) => SignInUse::AlreadyUsed,
            // (After a failed take, `now` is past every expiry.)
            None if request.expires_at <= now => SignInUse::Expired,
            None => SignInUse::Open(request),
        })
    }
}

fn sign_in_request(row: &sqlx::any::AnyRow) -> Result<SignInRequest> {
    Ok(SignInRequest {
        state_hash: row.try_get(0)?,
        nonce: row.try_get(1)?,
        pkce_verifier: row.try_get(2)?,
        redirect_uri: row.try_get(3)?,
        client: row.try_get(4)?,
        remote: row.try_get(5)?,
        client_proof: row.try_get(6)?,
        poll_every_ms: row.try_get(7)?,
        created_at: row.try_get(8)?,
        expires_at: row.try_get(9)?,
    })
}
