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
    CoreAuthenticationFlow, CoreClient, CoreClientAuthMethod, CoreProviderMetadata,
};
use openidconnect::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope,
};
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
    metadata: tokio::sync::Mutex<Option<(CoreProviderMetadata, Instant)>>,
    last_refresh: Mutex<Option<Instant>>,
}

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
    async fn metadata(&self, refresh: bool) -> Result<CoreProviderMetadata, OidcError> {
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
        if stale || refresh {
            let issuer = IssuerUrl::new(self.cfg.issuer.clone())
                .map_err(|e| OidcError::Unavailable(e.to_string()))?;
            let found = CoreProviderMetadata::discover_async(issuer, &self.http)
                .await
                .map_err(|e| OidcError::Unavailable(chain(&e)))?;
            *held = Some((found, Instant::now()));
        }
        Ok(held.as_ref().expect("metadata read").0.clone())
    }

    fn client(
        &self,
        metadata: CoreProviderMetadata,
    ) -> CoreClient<
        EndpointSet,
        EndpointNotSet,
        EndpointNotSet,
        EndpointNotSet,
        EndpointMaybeSet,
        EndpointMaybeSet,
    > {
        // A provider that takes the secret only in the body says so.
        let post_only = metadata
            .token_endpoint_auth_methods_supported()
            .is_some_and(|m| {
                m.contains(&CoreClientAuthMethod::ClientSecretPost)
                    && !m.contains(&CoreClientAuthMethod::ClientSecretBasic)
            });
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
        use openidconnect::TokenResponse as _;
        let id_token = response.id_token().ok_or_else(|| {
            OidcError::Refused("the identity provider sent no ID token".to_owned())
        })?;
        let nonce = Nonce::new(nonce.to_owned());
        let checked = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(_) => Ok(()),
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) => {
                // The provider may have rotated its keys: read them again.
                let client = self.client(self.metadata(true).await?);
                id_token
                    .claims(&client.id_token_verifier(), &nonce)
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
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some(_) => return false,
        None => authority,
    };
    !authority.contains('@') && matches!(host, "127.0.0.1" | "[::1]" | "localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_redirects() {
        for ok in [
            "http://127.0.0.1:4711/callback",
            "http://[::1]:80/",
            "http://localhost:1/x?y=1",
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
            "http://localhost:x/",
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
