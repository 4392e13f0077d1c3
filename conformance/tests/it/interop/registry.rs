//! The Slipway under test, and plain HTTP for what the tests set up and
//! check themselves: projects, a robot, pushes, reads. Requests here carry
//! the admin's Basic credentials; the clients under test show their own.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use slipway_registry::testing::TestServer;

use super::image::{Image, referenced_blobs, sha256};

/// A public project: anyone pulls, the admin pushes.
pub const PUBLIC: &str = "tool-interop";
/// A private project: its robots and the admin pull, the admin pushes.
pub const PRIVATE: &str = "tool-hidden";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub struct Registry {
    pub server: TestServer,
    pub http: reqwest::Client,
}

/// A user name and secret, as clients take them.
pub struct Creds {
    pub user: String,
    pub secret: String,
}

impl Creds {
    /// `user:secret`, for `--creds`, `--dest-creds` and `--user`.
    pub fn joined(&self) -> String {
        format!("{}:{}", self.user, self.secret)
    }
}

impl Registry {
    /// Starts Slipway in process with the projects `PUBLIC` and `PRIVATE`.
    pub async fn start() -> Registry {
        let server = TestServer::start().await;
        server.create_project(PUBLIC, true).await;
        server.create_project(PRIVATE, false).await;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client");
        Registry { server, http }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.server.host()
    }

    pub fn admin(&self) -> Creds {
        Creds {
            user: "admin".into(),
            secret: self.server.admin_password.clone(),
        }
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.http
            .get(url)
            .basic_auth("admin", Some(&self.server.admin_password))
    }

    /// Creates a pull-only robot in `project` through the admin API.
    pub async fn pull_robot(&self, project: &str, name: &str) -> Creds {
        let url = format!("{}/api/v1/projects/{project}/robots", self.server.url);
        let resp = self
            .http
            .post(&url)
            .basic_auth("admin", Some(&self.server.admin_password))
            .json(&json!({"name": name, "permissions": ["pull"]}))
            .send()
            .await
            .expect("POST a robot");
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or_default();
        assert_eq!(status, StatusCode::CREATED, "POST {url}: {body}");
        Creds {
            user: body["robot"]["username"]
                .as_str()
                .expect("robot user name")
                .to_owned(),
            secret: body["secret"].as_str().expect("robot secret").to_owned(),
        }
    }

    /// Pushes `image` to `repo:tag` (POST then PUT per blob, then the
    /// manifest); returns the manifest's digest.
    pub async fn push(&self, image: &Image, repo: &str, tag: &str) -> String {
        let base = &self.server.url;
        let password = Some(&self.server.admin_password);
        let (desc, manifest) = image.manifest();
        for blob in referenced_blobs(&manifest) {
            let bytes = image.layout.blob(&blob.digest);
            let url = format!("{base}/v2/{repo}/blobs/uploads/");
            let resp = self
                .http
                .post(&url)
                .basic_auth("admin", password)
                .send()
                .await;
            let resp = resp.expect("POST an upload");
            assert_eq!(resp.status(), StatusCode::ACCEPTED, "POST {url}");
            let location = header(&resp, "location")
                .unwrap_or_else(|| panic!("POST {url} answered no Location"));
            let location = match location.starts_with('/') {
                true => format!("{base}{location}"),
                false => location,
            };
            let sep = if location.contains('?') { '&' } else { '?' };
            let url = format!("{location}{sep}digest={}", blob.digest);
            let resp = self
                .http
                .put(&url)
                .basic_auth("admin", password)
                .body(bytes);
            let resp = resp.send().await.expect("PUT a blob");
            assert_eq!(resp.status(), StatusCode::CREATED, "PUT {url}");
        }
        let url = format!("{base}/v2/{repo}/manifests/{tag}");
        let resp = self
            .http
            .put(&url)
            .basic_auth("admin", password)
            .header("content-type", &desc.media_type)
            .body(manifest)
            .send()
            .await
            .expect("PUT the manifest");
        assert_eq!(resp.status(), StatusCode::CREATED, "PUT {url}");
        desc.digest
    }

    /// The `Docker-Content-Digest` and bytes of a manifest.
    pub async fn manifest(&self, repo: &str, reference: &str) -> (String, Vec<u8>) {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.server.url);
        let resp = self
            .get(&url)
            .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"));
        let resp = resp.send().await.expect("GET a manifest");
        assert_eq!(resp.status(), StatusCode::OK, "GET {url}");
        let digest = header(&resp, "docker-content-digest")
            .unwrap_or_else(|| panic!("GET {url} answered no Docker-Content-Digest"));
        let bytes = resp.bytes().await.expect("manifest body").to_vec();
        assert_eq!(
            sha256(&bytes),
            digest,
            "GET {url}: the body does not hash to Docker-Content-Digest"
        );
        (digest, bytes)
    }

    pub async fn manifest_status(&self, repo: &str, reference: &str) -> StatusCode {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.server.url);
        let resp = self
            .get(&url)
            .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"));
        resp.send().await.expect("GET a manifest").status()
    }

    /// A blob's bytes, checked against its digest.
    pub async fn blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.server.url);
        let resp = self.get(&url).send().await.expect("GET a blob");
        assert_eq!(resp.status(), StatusCode::OK, "GET {url}");
        let bytes = resp.bytes().await.expect("blob body").to_vec();
        assert_eq!(
            sha256(&bytes),
            digest,
            "GET {url}: the body does not hash to the digest"
        );
        bytes
    }

    /// `GET /v2/<repo>/referrers/<digest>` without credentials: the status,
    /// `Content-Type` and the index.
    pub async fn referrers(&self, repo: &str, digest: &str) -> (StatusCode, Option<String>, Value) {
        let url = format!("{}/v2/{repo}/referrers/{digest}", self.server.url);
        let resp = self.http.get(&url).send().await.expect("GET referrers");
        let status = resp.status();
        let content_type = header(&resp, "content-type");
        let text = resp.text().await.expect("referrers body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("GET {url} answered {status} with no JSON ({e}): {text}"));
        (status, content_type, body)
    }
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
