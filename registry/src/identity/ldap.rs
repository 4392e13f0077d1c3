//! Signing in against an LDAP directory: a simple bind as the person (over
//! `ldaps://`, StartTLS, or plain `ldap://` only where the admin allows
//! it), then their groups — every group under `group_base` that lists
//! them as `member`/`uniqueMember` (their DN) or `memberUid` (their uid),
//! so directories without the `memberOf` overlay work — mapped to projects
//! with `group_pattern` → `project_pattern`.
//!
//! Usernames are checked ([`super::valid_username`]) and every value put
//! into a filter or a DN is escaped (RFC 4515, RFC 4514): `*)(uid=*` never
//! becomes a filter. An empty password is refused before any bind (an
//! LDAP bind with a DN and no password is an unauthenticated bind, which
//! directories accept).

use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, dn_escape, ldap_escape};
use slipway_storage::meta::Role;

use super::{Answer, valid_username};
use crate::config::LdapConfig;

/// Why a sign-in or a look-up failed, as a sentence for the person (the
/// wrong-password and unknown-user cases read the same).
#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("the username or the password is wrong")]
    Refused,
    #[error("{0:.80} is not a username (letters, digits, '.', '_' and '-')")]
    InvalidName(String),
    #[error("the directory cannot be reached or failed: {0}")]
    Unavailable(String),
}

impl From<ldap3::LdapError> for LdapError {
    fn from(e: ldap3::LdapError) -> Self {
        LdapError::Unavailable(e.to_string())
    }
}

/// The result code of a refused bind (RFC 4511: invalidCredentials).
const INVALID_CREDENTIALS: u32 = 49;

pub struct Directory {
    cfg: LdapConfig,
    role: Role,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Directory {
    /// `None` when no directory is configured.
    pub fn new(cfg: &LdapConfig) -> anyhow::Result<Option<Directory>> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let tls = if cfg.ca_file.as_os_str().is_empty() {
            None
        } else {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&cfg.ca_file).map_err(|e| {
                anyhow::anyhow!("identity.ldap.ca_file {}: {e}", cfg.ca_file.display())
            })? {
                roots.add(cert?)?;
            }
            Some(Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            ))
        };
        Ok(Some(Directory {
            role: Role::parse(&cfg.group_role).unwrap_or(Role::Maintainer),
            cfg: cfg.clone(),
            tls,
        }))
    }

    async fn connect(&self) -> Result<ldap3::Ldap, LdapError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(Duration::from_secs(10))
            .set_starttls(self.cfg.starttls && self.cfg.url.starts_with("ldap://"));
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.cfg.url).await?;
        ldap3::drive!(conn);
        ldap.with_timeout(Duration::from_secs(10));
        Ok(ldap)
    }

    /// Binds as the service account, or stays anonymous without one.
    async fn service(&self, ldap: &mut ldap3::Ldap) -> Result<(), LdapError> {
        if self.cfg.bind_dn.is_empty() {
            return Ok(());
        }
        let r = ldap
            .simple_bind(&self.cfg.bind_dn, self.cfg.bind_password.expose())
            .await?;
        if r.rc != 0 {
            return Err(LdapError::Unavailable(format!(
                "the service account {} cannot bind (result {}: {})",
                self.cfg.bind_dn, r.rc, r.text
            )));
        }
        Ok(())
    }

    /// The person's DN: from the template, or searched (exactly one).
    async fn dn_of(&self, ldap: &mut ldap3::Ldap, user: &str) -> Result<Option<String>, LdapError> {
        if !self.cfg.user_dn_template.is_empty() && self.cfg.bind_dn.is_empty() {
            return Ok(Some(
                self.cfg
                    .user_dn_template
                    .replace("{user}", &dn_escape(user)),
            ));
        }
        let filter = self.cfg.user_filter.replace("{user}", &ldap_escape(user));
        let (entries, _) = ldap
            .search(&self.cfg.user_base, Scope::Subtree, &filter, vec!["1.1"])
            .await?
            .success()?;
        match entries.len() {
            0 => Ok(None),
            1 => Ok(Some(
                SearchEntry::construct(entries.into_iter().next().expect("one")).dn,
            )),
            n => Err(LdapError::Unavailable(format!(
                "{n} entries under {} match {filter}: a username must name one person",
                self.cfg.user_base
            ))),
        }
    }

    /// The groups listing `dn` (or `user` as `memberUid`), mapped.
    async fn answer(
        &self,
        ldap: &mut ldap3::Ldap,
        user: &str,
        dn: String,
    ) -> Result<Answer, LdapError> {
        let filter = format!(
            "(|(member={d})(uniqueMember={d})(memberUid={u}))",
            d = ldap_escape(dn.as_str()),
            u = ldap_escape(user)
        );
        let (entries, _) = ldap
            .search(&self.cfg.group_base, Scope::Subtree, &filter, vec!["1.1"])
            .await?
            .success()?;
        let groups: Vec<String> = entries
            .into_iter()
            .map(|e| SearchEntry::construct(e).dn)
            .collect();
        Ok(super::Mapping {
            group_pattern: &self.cfg.group_pattern,
            project_pattern: &self.cfg.project_pattern,
            admin_group: &self.cfg.admin_group,
            role: self.role,
        }
        .answer(user, dn, groups))
    }

    /// Checks `user`'s password by binding as them, and reads their groups.
    pub async fn sign_in(&self, user: &str, password: &str) -> Result<Answer, LdapError> {
        if !valid_username(user) {
            return Err(LdapError::InvalidName(user.to_owned()));
        }
        if password.is_empty() {
            return Err(LdapError::Refused);
        }
        let mut ldap = self.connect().await?;
        self.service(&mut ldap).await?;
        let Some(dn) = self.dn_of(&mut ldap, user).await? else {
            let _ = ldap.unbind().await;
            return Err(LdapError::Refused);
        };
        let r = ldap.simple_bind(&dn, password).await?;
        if r.rc == INVALID_CREDENTIALS {
            let _ = ldap.unbind().await;
            return Err(LdapError::Refused);
        }
        if r.rc != 0 {
            let _ = ldap.unbind().await;
            return Err(LdapError::Unavailable(format!(
                "the bind answered {}: {}",
                r.rc, r.text
            )));
        }
        // The groups as the service account when there is one (people may
        // not read groups themselves), else as the person.
        self.service(&mut ldap).await?;
        let answer = self.answer(&mut ldap, user, dn).await;
        let _ = ldap.unbind().await;
        answer
    }

    /// What the directory says about `user` now, without their password
    /// (a token's or a session's periodic check): `None` when they are no
    /// longer in the directory.
    pub async fn look_up(&self, user: &str) -> Result<Option<Answer>, LdapError> {
        if !valid_username(user) {
            return Err(LdapError::InvalidName(user.to_owned()));
        }
        let mut ldap = self.connect().await?;
        self.service(&mut ldap).await?;
        let answer = match self.dn_of(&mut ldap, user).await? {
            Some(dn) => Some(self.answer(&mut ldap, user, dn).await?),
            None => None,
        };
        let _ = ldap.unbind().await;
        Ok(answer)
    }
}
