//! Sign-in through an OpenID Connect provider: the authorization-code flow
//! with PKCE (S256), a state and a nonce, the ID token checked by the
//! `openidconnect` crate (signature with a key from the provider's JWKS and
//! an algorithm the provider announces, `iss`, `aud`, `exp`, `nonce`), then
//! the username and groups read from the verified token's claims and mapped
//! as a directory's groups are ([`super::Mapping`]).
//!
//! Slipway is the relying party for both the dashboard (redirect URI
//! `<public_url>/ui/sign-in/oidc/callback`) and the CLI (a loopback
//! redirect URI, RFC 8252): the code is always exchanged here, with the
//! client secret, so no provider token ever reaches a person's machine.
//! What a sign-in under way needs later (nonce, PKCE verifier, redirect
//! URI) is kept in the database under the state's hash, so any replica can
//! finish it, and only once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
    CoreTokenResponse,
};
use openidconnect::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope,
};
use serde::{Deserialize, Serialize};
use slipway_storage::meta::Role;

use super::{Answer, Mapping, valid_username};
use crate::config::OidcConfig;

/// Why a sign-in through the provider failed, in a sentence for the person.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider could not be reached, or answered nonsense.
    #[error("the identity provider cannot be reached: {0}")]
    Unavailable(String),
    /// The provider's answer does not sign this person in.
    #[error("{0}")]
    Refused(String),
    /// A state or handle that is not an open sign-in of this client.
    #[error("{0}")]
    BadState(String),
    /// Too many sign-ins under way.
    #[error("{0}")]
    TooMany(String),
    /// No `[identity.oidc]` is configured.
    #[error("no OpenID Connect provider is configured: set [identity.oidc]")]
    NotConfigured,
    /// Slipway's own store failed.
    #[error("cannot record the sign-in: {0}")]
    Internal(String),
}

/// A sign-in sent to the provider: where to send the person, and what to
/// keep until they come back.
pub struct Begun {
    pub authorization_url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// What discovery says besides the core: the device-authorization
/// endpoint, where the provider offers the device flow (RFC 8628).
#[derive(Clone, Debug, Deserialize, Serialize)]
struct DeviceEndpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_authorization_endpoint: Option<String>,
}

impl openidconnect::AdditionalProviderMetadata for DeviceEndpoint {}

type Metadata = openidconnect::ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// A device sign-in the provider started: what the person is told, and
/// the device code Slipway polls with (never shown to the person's CLI).
pub struct DeviceBegun {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    pub interval: u64,
}

/// What one poll of a device sign-in found.
pub enum DevicePoll {
    /// The person has not finished at the provider yet (`slow_down`: poll
    /// less often).
    Pending {
        slow_down: bool,
    },
    Done(Answer),
}

/// The crate's client as discovery sets it up.
type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// How long the provider's metadata and keys are used before being read
/// again (sooner when a token names a key not among them).
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// A token signed with an unknown key makes Slipway read the keys again at
/// most this often.
const REFRESH_AT_MOST: Duration = Duration::from_secs(30);

pub struct Provider {
    cfg: OidcConfig,
    role: Role,
    http: Http,
    metadata: tokio::sync::Mutex<Option<(Metadata, Instant)>>,
    last_refresh: Mutex<Option<Instant>>,
    /// When discovery last failed: not asked again for [`RETRY_AFTER`].
    failed_at: Mutex<Option<Instant>>,
}

/// After a failed discovery, callers are answered from what is known (or
/// refused) this long before the provider is asked again.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The provider's HTTP client: ours (rustls, the system's authorities plus
/// `ca_file`), never following redirects (which would let a provider's
/// answer point Slipway at internal addresses).
#[derive(Clone)]
struct Http(reqwest::Client);

impl<'c> openidconnect::AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = self.0.execute(request).await?;
            let mut builder = openidconnect::http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let body = response.bytes().await?;
            Ok(builder.body(body.to_vec())?)
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error(transparent)]
    Request(#[from] reqwest::Error),
    #[error(transparent)]
    Response(#[from] openidconnect::http::Error),
}

/// An error and its causes, in one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl Provider {
    /// The provider `[identity.oidc]` names, or `None` when it names none.
    pub fn new(cfg: &OidcConfig) -> anyhow::Result<Option<Provider>> {
        if !cfg.enabled() {
            return Ok(None);
        }
        IssuerUrl::new(cfg.issuer.clone())
            .map_err(|e| anyhow::anyhow!("identity.oidc.issuer: {e}"))?;
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15));
        if !cfg.ca_file.as_os_str().is_empty() {
            let pem = std::fs::read(&cfg.ca_file).map_err(|e| {
                anyhow::anyhow!(
                    "identity.oidc.ca_file: cannot read {}: {e}",
                    cfg.ca_file.display()
                )
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "identity.oidc.ca_file: {} is not a PEM bundle: {e}",
                    cfg.ca_file.display()
                )
            })? {
                b = b.add_root_certificate(cert);
            }
        }
        Ok(Some(Provider {
            role: Role::parse(&cfg.group_role).unwrap_or(Role::Maintainer),
            cfg: cfg.clone(),
            http: Http(b.build()?),
            metadata: tokio::sync::Mutex::new(None),
            last_refresh: Mutex::new(None),
            failed_at: Mutex::new(None),
        }))
    }

    /// What the dashboard's button names.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Where the dashboard's sign-ins come back, given the address the
    /// dashboard is reached at.
    pub fn public_url(&self) -> &str {
        &self.cfg.public_url
    }

    /// The provider's metadata and keys: read by discovery, kept an hour,
    /// read again when `refresh` (a token named an unknown key) and not
    /// read in the last [`REFRESH_AT_MOST`].
    async fn metadata(&self, refresh: bool) -> Result<Metadata, OidcError> {
        let mut held = self.metadata.lock().await;
        let stale = match &*held {
            None => true,
            Some((_, at)) => at.elapsed() > METADATA_TTL,
        };
        let refresh = refresh && {
            let mut last = self.last_refresh.lock().expect("oidc refresh");
            let due = last.is_none_or(|at| at.elapsed() > REFRESH_AT_MOST);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        let backing_off = self
            .failed_at
            .lock()
            .expect("oidc failures")
            .is_some_and(|at| at.elapsed() < RETRY_AFTER);
        if (stale || refresh) && !backing_off {
            let issuer = IssuerUrl::new(self.cfg.issuer.clone())
                .map_err(|e| OidcError::Unavailable(e.to_string()))?;
            match Metadata::discover_async(issuer, &self.http).await {
                Ok(found) => {
                    *held = Some((found, Instant::now()));
                    *self.failed_at.lock().expect("oidc failures") = None;
                }
                Err(e) => {
                    *self.failed_at.lock().expect("oidc failures") = Some(Instant::now());
                    let why = chain(&e);
                    // What was known stays in use while the provider is away.
                    if held.is_none() {
                        return Err(OidcError::Unavailable(why));
                    }
                    tracing::warn!(error = %why, "the identity provider's discovery failed; \
                        its last metadata stays in use");
                }
            }
        }
        match held.as_ref() {
            Some((m, _)) => Ok(m.clone()),
            None => Err(OidcError::Unavailable(
                "its discovery failed moments ago; try again shortly".to_owned(),
            )),
        }
    }

    fn client(&self, metadata: Metadata) -> Client {
        let algs = asymmetric(metadata.id_token_signing_alg_values_supported());
        let metadata = metadata.set_id_token_signing_alg_values_supported(algs);
        // A provider that takes the secret only in the body says so.
        let post_only = secret_in_body(&metadata);
        let secret = self.cfg.client_secret.expose();
        CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.cfg.client_id.clone()),
            (!secret.is_empty()).then(|| ClientSecret::new(secret.to_owned())),
        )
        .set_auth_type(if post_only {
            AuthType::RequestBody
        } else {
            AuthType::BasicAuth
        })
    }

    /// Whether the provider offers the device flow (false when it cannot
    /// be asked now).
    pub async fn device_offered(&self) -> bool {
        self.metadata(false).await.is_ok_and(|m| {
            m.additional_metadata()
                .device_authorization_endpoint
                .is_some()
        })
    }

    /// A POST to one of the provider's endpoints with the client's
    /// credentials (Basic, or in the body where the provider takes only
    /// that): the status and the JSON answer.
    async fn client_post(
        &self,
        metadata: &Metadata,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<(reqwest::StatusCode, serde_json::Value), OidcError> {
        let post_only = secret_in_body(metadata);
        let secret = self.cfg.client_secret.expose();
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        let mut request = self.http.0.post(url).header("accept", "application/json");
        if secret.is_empty() || post_only {
            fields.push(("client_id", &self.cfg.client_id));
            if !secret.is_empty() {
                fields.push(("client_secret", secret));
            }
        } else {
            // RFC 6749, 2.3.1: both form-encoded before Basic.
            let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            request = request.basic_auth(enc(&self.cfg.client_id), Some(enc(secret)));
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let answer = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| OidcError::Unavailable(chain(&e)))?;
        let status = answer.status();
        let json = answer
            .json::<serde_json::Value>()
            .await
            .map_err(|e| OidcError::Unavailable(format!("its answer is not JSON: {e}")))?;
        Ok((status, json))
    }

    /// Starts a device sign-in (RFC 8628): a user code for the person to
    /// enter at the provider, a device code for Slipway to poll with.
    pub async fn device_begin(&self) -> Result<DeviceBegun, OidcError> {
        let metadata = self.metadata(false).await?;
        let Some(endpoint) = metadata
            .additional_metadata()
            .device_authorization_endpoint
            .clone()
        else {
            return Err(OidcError::Refused(
                "the identity provider does not offer the device flow".to_owned(),
            ));
        };
        let mut scopes = vec!["openid".to_owned()];
        scopes.extend(self.cfg.scopes.iter().filter(|s| *s != "openid").cloned());
        let scope = scopes.join(" ");
        let (status, v) = self
            .client_post(&metadata, &endpoint, &[("scope", &scope)])
            .await?;
        let text = |k: &str| v[k].as_str().map(str::to_owned);
        match (
            status.is_success(),
            text("device_code"),
            text("user_code"),
            text("verification_uri"),
        ) {
            (true, Some(device_code), Some(user_code), Some(verification_uri)) => Ok(DeviceBegun {
                device_code,
                user_code,
                verification_uri,
                verification_uri_complete: text("verification_uri_complete"),
                expires_in: v["expires_in"].as_u64().unwrap_or(600).min(3600),
                interval: v["interval"].as_u64().unwrap_or(5).clamp(1, 60),
            }),
            _ => Err(OidcError::Unavailable(format!(
                "the device-authorization endpoint answered {status}: {:.200}",
                v["error_description"]
                    .as_str()
                    .or(v["error"].as_str())
                    .unwrap_or("no device code")
            ))),
        }
    }

    /// Asks the token endpoint once whether the person finished the device
    /// sign-in; when they did, checks the ID token as [`Provider::finish`]
    /// does (the device flow has no nonce).
    pub async fn device_poll(&self, device_code: &str) -> Result<DevicePoll, OidcError> {
        let metadata = self.metadata(false).await?;
        let Some(token_url) = metadata.token_endpoint().map(|u| u.url().to_string()) else {
            return Err(OidcError::Unavailable(
                "it names no token endpoint".to_owned(),
            ));
        };
        let (status, v) = self
            .client_post(
                &metadata,
                &token_url,
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", device_code),
                ],
            )
            .await?;
        if !status.is_success() {
            let described = || {
                v["error_description"]
                    .as_str()
                    .map(|d| format!(" ({d:.200})"))
                    .unwrap_or_default()
            };
            return match v["error"].as_str() {
                Some("authorization_pending") => Ok(DevicePoll::Pending { slow_down: false }),
                Some("slow_down") => Ok(DevicePoll::Pending { slow_down: true }),
                Some("access_denied") => Err(OidcError::Refused(format!(
                    "the identity provider did not sign you in: access_denied{}",
                    described()
                ))),
                Some("expired_token") => Err(OidcError::Refused(
                    "the code expired before the sign-in was finished: sign in again".to_owned(),
                )),
                Some(other) => Err(OidcError::Refused(format!(
                    "the identity provider refused the sign-in: {other:.80}{}",
                    described()
                ))),
                None => Err(OidcError::Unavailable(format!(
                    "the token endpoint answered {status}"
                ))),
            };
        }
        let response: CoreTokenResponse = serde_json::from_value(v).map_err(|e| {
            OidcError::Refused(format!(
                "the identity provider's answer holds no valid ID token: {e}"
            ))
        })?;
        let client = self.client(metadata);
        self.checked(&client, &response, |_: Option<&Nonce>| Ok(()))
            .await
            .map(DevicePoll::Done)
    }

    /// Starts a sign-in that comes back to `redirect_uri`.
    pub async fn begin(&self, redirect_uri: &str) -> Result<Begun, OidcError> {
        let metadata = self.metadata(false).await?;
        let redirect = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|e| OidcError::Refused(format!("{redirect_uri:.200} is no address: {e}")))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = self.client(metadata);
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge)
            .set_redirect_uri(std::borrow::Cow::Owned(redirect));
        for scope in &self.cfg.scopes {
            if scope != "openid" {
                request = request.add_scope(Scope::new(scope.clone()));
            }
        }
        let (url, state, nonce) = request.url();
        Ok(Begun {
            authorization_url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges the code the provider sent back, checks the ID token and
    /// says who signed in and what their groups grant.
    pub async fn finish(
        &self,
        code: &str,
        redirect_uri: &str,
        nonce: &str,
        pkce_verifier: &str,
    ) -> Result<Answer, OidcError> {
        let metadata = self.metadata(false).await?;
        let client = self.client(metadata);
        let redirect = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|e| OidcError::Refused(e.to_string()))?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Unavailable(chain(&e)))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .set_redirect_uri(std::borrow::Cow::Owned(redirect))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                openidconnect::RequestTokenError::ServerResponse(r) => OidcError::Refused(format!(
                    "the identity provider refused the sign-in: {}",
                    r.error_description()
                        .map(String::as_str)
                        .unwrap_or(r.error().as_ref())
                )),
                openidconnect::RequestTokenError::Parse(e, _) => OidcError::Refused(format!(
                    "the identity provider's answer holds no valid ID token: {e}"
                )),
                e => OidcError::Unavailable(chain(&e)),
            })?;
        self.checked(&client, &response, &Nonce::new(nonce.to_owned()))
            .await
    }

    /// Checks the ID token of a token response (with a key read again when
    /// it names one not seen yet) and says whom it signs in.
    async fn checked<N: openidconnect::NonceVerifier + Clone>(
        &self,
        client: &Client,
        response: &CoreTokenResponse,
        nonce: N,
    ) -> Result<Answer, OidcError> {
        use openidconnect::TokenResponse as _;
        let id_token = response.id_token().ok_or_else(|| {
            OidcError::Refused("the identity provider sent no ID token".to_owned())
        })?;
        let checked = match id_token.claims(&client.id_token_verifier(), nonce.clone()) {
            Ok(_) => Ok(()),
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) => {
                // The provider may have rotated its keys: read them again.
                let client = self.client(self.metadata(true).await?);
                id_token
                    .claims(&client.id_token_verifier(), nonce)
                    .map(|_| ())
            }
            Err(e) => Err(e),
        };
        checked
            .map_err(|e| OidcError::Refused(format!("the ID token is not valid: {}", chain(&e))))?;
        // The token is now known to be the provider's: read the claims
        // Slipway maps (the crate's types hold only the standard ones).
        let claims = payload(&id_token.to_string())
            .ok_or_else(|| OidcError::Refused("the ID token's claims cannot be read".to_owned()))?;
        self.answer(&claims)
    }

    /// Who the verified `claims` name, and what their groups grant.
    pub fn answer(&self, claims: &serde_json::Value) -> Result<Answer, OidcError> {
        let claim = &self.cfg.username_claim;
        let user = claims
            .get(claim)
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                OidcError::Refused(format!(
                    "the ID token has no {claim} claim to take the username from"
                ))
            })?
            .to_ascii_lowercase();
        if !valid_username(&user) || crate::auth::people::RESERVED.contains(&user.as_str()) {
            return Err(OidcError::Refused(format!(
                "{user:.80} (the ID token's {claim}) is not a username Slipway accepts"
            )));
        }
        let groups: Vec<String> = match claims.get(&self.cfg.groups_claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            Some(serde_json::Value::Array(many)) => many
                .iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect(),
            Some(_) => {
                return Err(OidcError::Refused(format!(
                    "the ID token's {} claim is neither a list nor a name",
                    self.cfg.groups_claim
                )));
            }
        };
        let subject = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        Ok(Mapping {
            group_pattern: &self.cfg.group_pattern,
            project_pattern: &self.cfg.project_pattern,
            admin_group: &self.cfg.admin_group,
            role: self.role,
        }
        .answer(&user, subject, groups))
    }
}

/// Whether the provider takes the client secret only in the body
/// (`client_secret_post`), not as Basic credentials.
fn secret_in_body(metadata: &Metadata) -> bool {
    metadata
        .token_endpoint_auth_methods_supported()
        .is_some_and(|m| {
            m.contains(&CoreClientAuthMethod::ClientSecretPost)
                && !m.contains(&CoreClientAuthMethod::ClientSecretBasic)
        })
}

/// The asymmetric algorithms among those the provider announces for ID
/// tokens: a token signed with the client secret (HS256, which some
/// providers list) is not the provider's word.
fn asymmetric(
    announced: &[openidconnect::core::CoreJwsSigningAlgorithm],
) -> Vec<openidconnect::core::CoreJwsSigningAlgorithm> {
    use openidconnect::core::CoreJwsSigningAlgorithm as Alg;
    announced
        .iter()
        .filter(|a| {
            !matches!(
                a,
                Alg::HmacSha256 | Alg::HmacSha384 | Alg::HmacSha512 | Alg::None
            )
        })
        .cloned()
        .collect()
}

/// The claims of a compact JWT (not checked here: only after the crate
/// checked the token).
fn payload(jwt: &str) -> Option<serde_json::Value> {
    let part = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether a CLI may ask to come back to `uri`: a loopback address over
/// plain HTTP (RFC 8252, 7.3), any port.
pub fn loopback_redirect(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("http://") else {
        return false;
    };
    // Parsers disagree on a backslash (a path to browsers, part of the
    // authority to others): none in an address Slipway hands out.
    if uri
        .chars()
        .any(|c| c == '\\' || c.is_whitespace() || c.is_control())
    {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // The host, then nothing or `:<port>` (RFC 8252 recommends the
    // literal addresses over `localhost`, which a resolver could answer).
    let port = ["127.0.0.1", "[::1]"]
        .iter()
        .find_map(|h| authority.strip_prefix(h));
    match port {
        Some("") => true,
        Some(p) => p.strip_prefix(':').is_some_and(|d| {
            !d.is_empty() && d.len() <= 5 && d.bytes().all(|b| b.is_ascii_digit())
        }),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_redirects() {
        for ok in [
            "http://127.0.0.1:4711/callback",
            "http://[::1]:80/",
            "http://[::1]/callback",
            "http://127.0.0.1:1/x?y=1",
            "http://127.0.0.1/callback",
        ] {
            assert!(loopback_redirect(ok), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:4711/callback",
            "http://127.0.0.1.evil.org/",
            "http://evil.org/127.0.0.1",
            "http://user@127.0.0.1:80/",
            "http://127.0.0.1:80@evil.org/",
            "http://127.0.0.2:80/",
            "http://localhost:1/",
            "http://127.0.0.1:x/",
            "http://127.0.0.1:80\\@evil.org/",
            "http://127.0.0.10:80/",
            "http://[::1]x/",
            "javascript:alert(1)",
        ] {
            assert!(!loopback_redirect(bad), "{bad}");
        }
    }

    fn provider() -> Provider {
        let cfg = OidcConfig {
            issuer: "https://idp.example.org".into(),
            client_id: "slipway".into(),
            group_pattern: "cn=tools.{tool},ou=servicegroups,dc=wikimedia,dc=org".into(),
            project_pattern: "tool-{tool}".into(),
            admin_group: "cn=tools.admin,ou=servicegroups,dc=wikimedia,dc=org".into(),
            ..OidcConfig::default()
        };
        Provider::new(&cfg).unwrap().unwrap()
    }

    #[test]
    fn claims_map_to_projects() {
        let p = provider();
        let a = p
            .answer(&serde_json::json!({
                "sub": "1234",
                "preferred_username": "Dana",
                "groups": ["cn=tools.y,ou=servicegroups,dc=wikimedia,dc=org",
                           "cn=tools.admin,ou=servicegroups,dc=wikimedia,dc=org",
                           "cn=other,dc=org", 7]
            }))
            .unwrap();
        assert_eq!(a.user, "dana");
        assert!(a.is_admin);
        assert_eq!(a.grants, vec![("tool-y".to_owned(), Role::Maintainer)]);
        let none = p
            .answer(&serde_json::json!({"sub": "1", "preferred_username": "eve"}))
            .unwrap();
        assert!(!none.is_admin && none.grants.is_empty());
        for bad in [
            serde_json::json!({"sub": "1"}),
            serde_json::json!({"sub": "1", "preferred_username": "*)(uid=*"}),
            serde_json::json!({"sub": "1", "preferred_username": "admin"}),
            serde_json::json!({"sub": "1", "preferred_username": "x", "groups": {"a": 1}}),
        ] {
            assert!(
                matches!(p.answer(&bad), Err(OidcError::Refused(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn payloads_are_read() {
        let claims = serde_json::json!({"sub": "x", "groups": ["a"]});
        let enc = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let jwt = format!(
            "{}.{}.sig",
            enc(&serde_json::json!({"alg": "RS256"})),
            enc(&claims)
        );
        assert_eq!(payload(&jwt), Some(claims));
        assert_eq!(payload("nonsense"), None);
    }
}
