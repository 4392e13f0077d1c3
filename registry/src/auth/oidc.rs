//! Signing people in through the OpenID Connect provider, for the API (the
//! CLI's loopback redirect) and the dashboard alike: a sign-in is started
//! (its nonce and PKCE verifier kept under the state's hash), and finished
//! once — a state brought back twice, late, by another client or never sent
//! is refused with a sentence, and every refusal is audited
//! (`person.sign_in_refused`, `via: oidc`) as every sign-in is
//! (`person.sign_in`).

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use slipway_storage::meta::{NewAuditEntry, SignInRequest, SignInUse, now_ms};

use crate::identity::Answer;
use crate::identity::oidc::OidcError;
use crate::server::AppState;

/// How long a person has at the provider before a sign-in expires.
pub const WINDOW_MS: i64 = 10 * 60 * 1000;

/// At most this many sign-ins under way from one address (an IPv6 /64)…
const MAX_OPEN_PER_ADDRESS: i64 = 20;
/// …and in all (a bound on the table, not a lever: reaching it takes
/// thousands of addresses).
const MAX_OPEN: i64 = 100_000;

/// Who started a sign-in: it is finished by the same kind of client only.
pub const DASHBOARD: &str = "dashboard";
pub const CLI: &str = "cli";
/// A CLI's device sign-in (RFC 8628): polled, then taken once.
pub const DEVICE: &str = "device";

/// A device sign-in started for a CLI: what it tells the person, and the
/// handle it polls with (the provider's device code stays here).
pub struct DeviceStarted {
    pub handle: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    pub interval: u64,
}

/// What a poll of a device sign-in found.
pub enum DeviceState {
    Pending { slow_down: bool },
    Done(Answer),
}

/// What a finished sign-in brings back from the provider.
pub struct Returned<'a> {
    pub state: &'a str,
    pub code: Option<&'a str>,
    /// The provider's `error` (`access_denied` when the person declined).
    pub error: Option<&'a str>,
    pub error_description: Option<&'a str>,
    /// The CLI's secret whose hash it gave when it started.
    pub proof: Option<&'a str>,
}

pub fn state_hash(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

/// The address a sign-in is counted against: an IPv4 address, or the /64
/// of an IPv6 one (a host has a whole /64 to itself).
fn address_key(remote: Option<IpAddr>) -> String {
    match remote {
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(ip) => ip.to_string(),
        None => "unknown".to_owned(),
    }
}

impl AppState {
    /// Starts a sign-in for `client` that comes back to `redirect_uri`:
    /// the address to send the person to, and the state.
    /// A CLI gives the hash of a secret (`proof_hash`) it will send back
    /// with the code.
    pub async fn oidc_begin(
        &self,
        client: &str,
        redirect_uri: &str,
        remote: Option<IpAddr>,
        proof_hash: Option<&str>,
    ) -> Result<crate::identity::oidc::Begun, OidcError> {
        let provider = self.oidc.as_ref().ok_or(OidcError::NotConfigured)?;
        let now = now_ms();
        // Starting costs nothing to anyone: a bound per address keeps a
        // flood of starts from filling the table.
        self.oidc_room(remote, now).await?;
        let begun = provider.begin(redirect_uri).await?;
        self.meta
            .sign_in_request_create(&SignInRequest {
                state_hash: state_hash(&begun.state),
                nonce: begun.nonce.clone(),
                pkce_verifier: begun.pkce_verifier.clone(),
                redirect_uri: redirect_uri.to_owned(),
                client: client.to_owned(),
                remote: address_key(remote),
                client_proof: proof_hash.map(str::to_owned),
                poll_every_ms: 0,
                created_at: now,
                expires_at: now + WINDOW_MS,
            })
            .await
            .map_err(|e| OidcError::Internal(e.to_string()))?;
        Ok(begun)
    }

    /// Starts a device sign-in for a CLI on a machine without a browser.
    pub async fn oidc_device_begin(
        &self,
        remote: Option<IpAddr>,
    ) -> Result<DeviceStarted, OidcError> {
        let provider = self.oidc.as_ref().ok_or(OidcError::NotConfigured)?;
        let now = now_ms();
        self.oidc_room(remote, now).await?;
        let begun = provider.device_begin().await?;
        let handle = crate::auth::secrets::generate();
        self.meta
            .sign_in_request_create(&SignInRequest {
                state_hash: state_hash(&handle),
                nonce: String::new(),
                pkce_verifier: begun.device_code,
                redirect_uri: String::new(),
                client: DEVICE.to_owned(),
                remote: address_key(remote),
                client_proof: None,
                // The provider is asked at most this often, whoever polls.
                poll_every_ms: begun.interval as i64 * 1000,
                created_at: now,
                expires_at: now + begun.expires_in as i64 * 1000,
            })
            .await
            .map_err(|e| OidcError::Internal(e.to_string()))?;
        Ok(DeviceStarted {
            handle,
            user_code: begun.user_code,
            verification_uri: begun.verification_uri,
            verification_uri_complete: begun.verification_uri_complete,
            expires_in: begun.expires_in,
            interval: begun.interval,
        })
    }

    /// Polls a device sign-in once: pending, or the person signed in (their
    /// memberships synced, the sign-in taken so a second poll cannot reuse
    /// it). Refusals are audited.
    pub async fn oidc_device_poll(
        &self,
        handle: &str,
        remote: Option<IpAddr>,
    ) -> Result<DeviceState, OidcError> {
        let result = self.oidc_device_check(handle).await;
        match &result {
            Ok(DeviceState::Done(answer)) => self.oidc_signed_in(DEVICE, answer, remote).await,
            Ok(DeviceState::Pending { .. }) => {}
            Err(e @ (OidcError::Refused(_) | OidcError::BadState(_))) => {
                self.oidc_refused(DEVICE, e, remote).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "an OpenID Connect device sign-in could not finish")
            }
        }
        result
    }

    async fn oidc_device_check(&self, handle: &str) -> Result<DeviceState, OidcError> {
        let provider = self.oidc.as_ref().ok_or(OidcError::NotConfigured)?;
        let hash = state_hash(handle);
        let look = self
            .meta
            .sign_in_request_look(&hash, now_ms())
            .await
            .map_err(|e| OidcError::Internal(e.to_string()))?;
        let request = match look {
            SignInUse::Open(r) if r.client == DEVICE => r,
            other => return Err(unusable(other)),
        };
        // One poll of the provider per interval, however often (or from
        // however many places) the handle is polled here.
        let due = self
            .meta
            .sign_in_request_poll(&hash, now_ms())
            .await
            .map_err(|e| OidcError::Internal(e.to_string()))?;
        if !due {
            return Ok(DeviceState::Pending { slow_down: true });
        }
        let answer = match provider.device_poll(&request.pkce_verifier).await {
            Ok(crate::identity::oidc::DevicePoll::Pending { slow_down }) => {
                return Ok(DeviceState::Pending { slow_down });
            }
            Ok(crate::identity::oidc::DevicePoll::Done(answer)) => answer,
            Err(e) => {
                if matches!(e, OidcError::Refused(_)) {
                    // Declined or expired at the provider: done with.
                    let _ = self.meta.sign_in_request_use(&hash, now_ms()).await;
                }
                return Err(e);
            }
        };
        // Taken once: of two polls that both saw the tokens, one signs in.
        let taken = self
            .meta
            .sign_in_request_use(&hash, now_ms())
            .await
            .map_err(|e| OidcError::Internal(e.to_string()))?;
        match taken {
            SignInUse::Taken(_) => {}
            other => return Err(unusable(other)),
        }
        self.oidc_person(answer).await.map(DeviceState::Done)
    }

    /// Refuses starts beyond the sign-ins under way an address (and the
    /// server) may have.
    async fn oidc_room(&self, remote: Option<IpAddr>, now: i64) -> Result<(), OidcError> {
        let (all, here) = self
            .meta
            .sign_in_requests_open(&address_key(remote), now)
            .await
            .map_err(|e| OidcError::Internal(e.to_string()))?;
        if here >= MAX_OPEN_PER_ADDRESS {
            return Err(OidcError::TooMany(format!(
                "{here} sign-ins started from this address are under way: \
                 finish one or wait ten minutes"
            )));
        }
        if all >= MAX_OPEN {
            return Err(OidcError::TooMany(format!(
                "{all} sign-ins are under way; try again in a few minutes"
            )));
        }
        Ok(())
    }

    /// Finishes a sign-in `client` started: the person, their memberships
    /// synced from the groups claim. Refusals are audited.
    pub async fn oidc_finish(
        &self,
        client: &str,
        back: Returned<'_>,
        remote: Option<IpAddr>,
    ) -> Result<Answer, OidcError> {
        let result = self.oidc_check(client, &back).await;
        match &result {
            Ok(answer) => self.oidc_signed_in(client, answer, remote).await,
            Err(e @ (OidcError::Refused(_) | OidcError::BadState(_))) => {
                self.oidc_refused(client, e, remote).await
            }
            Err(e) => tracing::warn!(error = %e, "an OpenID Connect sign-in could not finish"),
        }
        result
    }

    async fn oidc_signed_in(&self, client: &str, answer: &Answer, remote: Option<IpAddr>) {
        self.oidc_audit(
            &answer.user,
            "person.sign_in",
            &answer.user,
            serde_json::json!({"via": "oidc", "client": client,
                "admin": answer.is_admin, "groups": answer.groups,
                "projects": answer.grants.iter().map(|(p, _)| p).collect::<Vec<_>>()}),
            remote,
        )
        .await;
    }

    /// Records a refused sign-in. A state or handle nobody was given,
    /// brought to the API, counts against the address; the provider's
    /// refusals (a person declining, a code expiring) and the dashboard's
    /// callback (any web page can make a browser ask for it) do not.
    pub async fn oidc_refused(&self, client: &str, e: &OidcError, remote: Option<IpAddr>) {
        if matches!(e, OidcError::BadState(_)) && client != DASHBOARD {
            self.auth.limiter.failed(remote);
        }
        let reason = e.to_string();
        self.oidc_audit(
            "anonymous",
            "person.sign_in_refused",
            "oidc",
            serde_json::json!({"via": "oidc", "client": client, "reason": reason}),
            remote,
        )
        .await;
    }

    async fn oidc_check(&self, client: &str, back: &Returned<'_>) -> Result<Answer, OidcError> {
        let provider = self.oidc.as_ref().ok_or(OidcError::NotConfigured)?;
        let refused = |m: &str| Err(OidcError::Refused(m.to_owned()));
        let taken = self
            .meta
            .sign_in_request_use(&state_hash(back.state), now_ms())
            .await
            .map_err(|e| OidcError::Internal(e.to_string()))?;
        let request = match taken {
            SignInUse::Taken(r) => r,
            other => return Err(unusable(other)),
        };
        if request.client != client {
            return Err(OidcError::BadState(
                "this sign-in was started by another client: sign in again".to_owned(),
            ));
        }
        // The CLI proves it is the one that started this sign-in.
        if let Some(expected) = &request.client_proof {
            use subtle::ConstantTimeEq as _;
            let given = back.proof.map(state_hash).unwrap_or_default();
            if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
                return Err(OidcError::BadState(
                    "this sign-in was started by another program (its proof does not match): \
                     sign in again"
                        .to_owned(),
                ));
            }
        }
        if let Some(error) = back.error {
            return Err(OidcError::Refused(format!(
                "the identity provider did not sign you in: {:.80}{}",
                error,
                back.error_description
                    .map(|d| format!(" ({d:.200})"))
                    .unwrap_or_default()
            )));
        }
        let Some(code) = back.code.filter(|c| !c.is_empty()) else {
            return refused("the identity provider sent no authorization code");
        };
        let answer = provider
            .finish(
                code,
                &request.redirect_uri,
                &request.nonce,
                &request.pkce_verifier,
            )
            .await?;
        self.oidc_person(answer).await
    }

    /// The person a checked ID token names: bound to the provider's
    /// subject at their first sign-in, their memberships synced.
    async fn oidc_person(&self, answer: Answer) -> Result<Answer, OidcError> {
        let known = self
            .meta
            .person_get(&answer.user)
            .await
            .map_err(|e| OidcError::Internal(e.to_string()))?;
        if known.is_some_and(|p| p.disabled) {
            return Err(OidcError::Refused(format!(
                "{} is disabled in Slipway",
                answer.user
            )));
        }
        // One person, one account at the provider: the username claim is
        // bound to the subject it first came with.
        self.meta
            .person_ensure(&answer.user, slipway_storage::meta::SOURCE_DIRECTORY)
            .await
            .map_err(|e| OidcError::Internal(e.to_string()))?;
        let same = self
            .meta
            .person_bind_subject(&answer.user, &answer.dn)
            .await
            .map_err(|e| OidcError::Internal(e.to_string()))?;
        if !same {
            return Err(OidcError::Refused(format!(
                "{} signed in before with another account at the identity provider \
                 (subject {:.80} is not theirs)",
                answer.user, answer.dn
            )));
        }
        self.directory_signed_in(&answer)
            .await
            .map_err(|e| OidcError::Internal(e.message))?;
        Ok(answer)
    }

    async fn oidc_audit(
        &self,
        principal: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
        remote: Option<IpAddr>,
    ) {
        let entry = NewAuditEntry {
            principal: principal.to_owned(),
            action: action.to_owned(),
            project: None,
            target: Some(target.to_owned()),
            detail: Some(detail.to_string()),
            remote_addr: remote.map(|r| r.to_string()),
        };
        if let Err(e) = self.meta.audit(&entry).await {
            tracing::warn!(error = %e, "cannot audit an OpenID Connect sign-in");
        }
    }
}

/// Why a sign-in that is not open cannot be used, in a sentence.
fn unusable(u: SignInUse) -> OidcError {
    OidcError::BadState(
        match u {
            SignInUse::AlreadyUsed => {
                "this sign-in was already used (a state is good once): sign in again"
            }
            SignInUse::Expired => "this sign-in took too long: sign in again",
            SignInUse::Unknown => {
                "this sign-in was not started here (unknown state): sign in again"
            }
            SignInUse::Taken(_) | SignInUse::Open(_) => {
                "this sign-in was started by another client: sign in again"
            }
        }
        .to_owned(),
    )
}
