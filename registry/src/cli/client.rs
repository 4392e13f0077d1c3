//! The HTTP client the commands share: Basic credentials on every request,
//! the API's `{"error": "<sentence>"}` turned into the command's error.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

/// Which server, and the admin's password: what every command group takes.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// The Slipway server.
    #[arg(
        long,
        env = "SLIPWAY_URL",
        default_value = "http://127.0.0.1:5000",
        global = true
    )]
    pub url: String,
    /// The admin's password; without it, SLIPWAY_PASSWORD, then
    /// `<data-dir>/admin-password`.
    #[arg(long, env = "SLIPWAY_PASSWORD", hide_env_values = true, global = true)]
    pub password: Option<String>,
    /// Where a local server keeps its data (for its admin-password file).
    #[arg(long, default_value = "slipway-data", global = true)]
    pub data_dir: PathBuf,
    /// A PEM file of authorities to trust for an HTTPS server, besides the
    /// system's.
    #[arg(long, env = "SLIPWAY_CACERT", global = true)]
    pub cacert: Option<PathBuf>,
    /// A PEM file holding a client certificate and its key, for a server
    /// whose admin API demands one (`tls.client_ca_file`).
    #[arg(long, env = "SLIPWAY_CLIENT_CERT", global = true)]
    pub client_cert: Option<PathBuf>,
}

impl ServerArgs {
    /// The HTTP client these settings ask for.
    pub fn http(&self) -> anyhow::Result<reqwest::Client> {
        let mut b = reqwest::Client::builder();
        if let Some(path) = &self.cacert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --cacert {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--cacert {} is not a PEM bundle", path.display()))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        if let Some(path) = &self.client_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --client-cert {}", path.display()))?;
            let id = reqwest::Identity::from_pem(&pem).with_context(|| {
                format!(
                    "--client-cert {} must hold a certificate and its private key, in PEM",
                    path.display()
                )
            })?;
            b = b.identity(id);
        }
        b.build().context("cannot set up the HTTP client")
    }
}

pub struct Client {
    pub http: reqwest::Client,
    pub url: String,
    pub user: String,
    pub password: String,
    /// A person's session from `slipway login`, sent instead of `user` and
    /// `password`.
    pub session: Option<String>,
}

impl Client {
    pub fn new(http: reqwest::Client, url: String, user: String, password: String) -> Client {
        Client {
            http,
            url,
            user,
            password,
            session: None,
        }
    }

    /// A client acting with a person's session.
    pub fn with_session(http: reqwest::Client, url: String, session: String) -> Client {
        Client {
            http,
            url,
            user: String::new(),
            password: String::new(),
            session: Some(session),
        }
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.session {
            Some(token) => req.bearer_auth(token),
            None => req.basic_auth(&self.user, Some(&self.password)),
        }
    }

    /// Calls the API: the answer's JSON (`Null` when empty), or its error
    /// sentence.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let resp = self
            .send_patiently(&method, || {
                let mut req = self.authorized(self.http.request(method.clone(), self.url_of(path)));
                if let Some(b) = &body {
                    req = req.json(b);
                }
                req
            })
            .await?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{}", error_sentence(&text, status));
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).context("the server's answer is not JSON")
    }

    /// Calls the API without credentials (signing in): the answer's JSON,
    /// or its error sentence.
    pub async fn call_anonymous(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let resp = self
            .http
            .request(method, self.url_of(path))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("cannot reach Slipway at {}", self.url))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{}", error_sentence(&text, status));
        }
        serde_json::from_str(&text).context("the server's answer is not JSON")
    }

    /// A `GET` whose answer is read by the caller (text, or a stream); an
    /// error sentence unless it succeeded.
    pub async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let resp = self
            .send_patiently(&reqwest::Method::GET, || {
                self.authorized(self.http.get(self.url_of(path)))
            })
            .await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            bail!("{}", error_sentence(&text, status));
        }
        Ok(resp)
    }

    /// Sends a request; a `GET` answered 503 (the server's database or
    /// store briefly unavailable: nothing was done) is asked again, with
    /// backoff, for about 20 seconds before its answer is shown. Other
    /// methods are sent once: the person decides whether to repeat them.
    async fn send_patiently(
        &self,
        method: &reqwest::Method,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let mut wait = std::time::Duration::from_millis(500);
        let mut waited = std::time::Duration::ZERO;
        loop {
            let resp = make()
                .send()
                .await
                .with_context(|| format!("cannot reach Slipway at {}", self.url))?;
            if resp.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE
                || *method != reqwest::Method::GET
                || waited >= std::time::Duration::from_secs(20)
            {
                return Ok(resp);
            }
            tokio::time::sleep(wait).await;
            waited += wait;
            wait = (wait * 2).min(std::time::Duration::from_secs(8));
        }
    }

    fn url_of(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }
}

/// `s` as one path segment: a name with `/` (an image `web/api`) or `%`
/// stays one segment, and the API reads it back as given.
pub fn segment(s: &str) -> String {
    // '.' is escaped too: a `..` segment would be resolved away.
    const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, ESCAPED).to_string()
}

fn error_sentence(body: &str, status: reqwest::StatusCode) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("the server answered {status}"))
}

/// The admin's password: as given (flag or `SLIPWAY_PASSWORD`), else from
/// a local server's `<data_dir>/admin-password`. `missing` says what to do
/// when there is neither, before the file's name.
pub fn admin_password(
    given: Option<String>,
    data_dir: &Path,
    missing: &str,
) -> anyhow::Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let file = data_dir.join("admin-password");
    std::fs::read_to_string(&file)
        .map(|s| s.trim().to_owned())
        .with_context(|| format!("{missing} {} is readable", file.display()))
}
