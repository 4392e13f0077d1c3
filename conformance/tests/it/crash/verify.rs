//! What must hold after a restart: first through the HTTP API (everything
//! listed or said to exist is whole and hashes to its digest, nothing
//! acknowledged was lost, interrupted uploads resume or are unknown), then on
//! disk (every published blob file hashes to its name).

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;

use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::Value;

use super::push::{Ledger, OCI_INDEX, OCI_MANIFEST, OpenUpload, sha256};

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Counts of what was checked, for the test's summary.
#[derive(Debug, Default)]
pub struct Counts {
    pub repos: usize,
    pub manifests: usize,
    pub blobs: usize,
    pub resumed: usize,
    /// Interrupted uploads the server no longer knows (404 on status).
    pub unknown_uploads: usize,
    /// Interrupted uploads whose status answered 204, after which `PATCH` or
    /// `PUT` answered 404: the kill fell between publishing the file and
    /// completing the upload's record. Allowed (the client starts over), but
    /// counted.
    pub stale_uploads: usize,
    pub files: usize,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.repos += other.repos;
        self.manifests += other.manifests;
        self.blobs += other.blobs;
        self.resumed += other.resumed;
        self.unknown_uploads += other.unknown_uploads;
        self.stale_uploads += other.stale_uploads;
        self.files += other.files;
    }
}

pub struct Checker<'a> {
    client: &'a reqwest::Client,
    url: &'a str,
    pub problems: Vec<String>,
    pub counts: Counts,
    manifests_seen: BTreeSet<(String, String)>,
    blobs_seen: BTreeSet<(String, String)>,
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl<'a> Checker<'a> {
    pub fn new(client: &'a reqwest::Client, url: &'a str) -> Checker<'a> {
        Checker {
            client,
            url,
            problems: Vec::new(),
            counts: Counts::default(),
            manifests_seen: BTreeSet::new(),
            blobs_seen: BTreeSet::new(),
        }
    }

    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    /// Sends a request; a failed connection or a 5xx is a problem (`None`).
    async fn send(&mut self, what: &str, req: reqwest::RequestBuilder) -> Option<Answer> {
        let result = async {
            let resp = req.send().await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>(Answer {
                status,
                headers,
                body,
            })
        }
        .await;
        match result {
            Ok(a) if a.status.is_server_error() => {
                self.problem(format!(
                    "{what}: {} {}",
                    a.status,
                    String::from_utf8_lossy(&a.body)
                ));
                None
            }
            Ok(a) => Some(a),
            Err(e) => {
                self.problem(format!("{what}: the request failed: {e}"));
                None
            }
        }
    }

    /// Everything reachable from the catalog, then everything the pushes
    /// tried, then the interrupted uploads (resumed and finished).
    pub async fn api(&mut self, ledger: &mut Ledger) {
        for repo in self.catalog().await {
            self.counts.repos += 1;
            for tag in self.tags(&repo).await {
                self.manifest_tree(&repo, &tag).await;
            }
        }
        for ((repo, reference), digest) in &ledger.acked_manifests {
            match self.manifest_tree(repo, reference).await {
                Some(d) if &d == digest => {}
                Some(d) => self.problem(format!(
                    "{repo}:{reference} was acknowledged as {digest} but is now {d}"
                )),
                None => self.problem(format!(
                    "{repo}:{reference} was acknowledged (201) but is gone after the restart"
                )),
            }
        }
        for (repo, digest) in &ledger.attempted_manifests {
            let what = format!("HEAD manifest {repo}@{digest}");
            let url = format!("{}/v2/{repo}/manifests/{digest}", self.url);
            let Some(a) = self.send(&what, self.client.head(url)).await else {
                continue;
            };
            match a.status {
                StatusCode::OK => {
                    self.manifest_tree(repo, digest).await;
                }
                StatusCode::NOT_FOUND => {}
                s => self.problem(format!("{what}: {s}")),
            }
        }
        for ((repo, digest), blob) in &ledger.attempted_blobs {
            let acked = ledger.acked_blobs.contains(&(repo.clone(), digest.clone()));
            let what = format!("HEAD blob {repo}@{digest}");
            let url = format!("{}/v2/{repo}/blobs/{digest}", self.url);
            let Some(a) = self.send(&what, self.client.head(url)).await else {
                continue;
            };
            match a.status {
                StatusCode::OK => {
                    let len = a
                        .header("content-length")
                        .and_then(|v| v.parse::<u64>().ok());
                    if len != Some(blob.bytes.len() as u64) {
                        self.problem(format!(
                            "{what}: Content-Length {len:?}, but the blob has {} bytes",
                            blob.bytes.len()
                        ));
                    }
                    self.blob(repo, digest, blob.bytes.len() as u64).await;
                }
                StatusCode::NOT_FOUND if acked => self.problem(format!(
                    "{what}: 404, but the server had acknowledged the blob (201)"
                )),
                StatusCode::NOT_FOUND => {}
                s => self.problem(format!("{what}: {s}")),
            }
        }
        for (location, open) in std::mem::take(&mut ledger.open_uploads) {
            if self.resume(&location, &open).await {
                ledger
                    .acked_blobs
                    .insert((open.repo.clone(), open.blob.digest.clone()));
            }
        }
    }

    async fn catalog(&mut self) -> Vec<String> {
        let mut repos = Vec::new();
        let mut next = Some(format!("{}/v2/_catalog?n=100", self.url));
        while let Some(url) = next.take() {
            let Some(a) = self.send("GET /v2/_catalog", self.client.get(&url)).await else {
                break;
            };
            if a.status != StatusCode::OK {
                self.problem(format!("GET {url}: {}", a.status));
                break;
            }
            let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
            let page: Vec<String> = v["repositories"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            repos.extend(page);
            // `<path?query>; rel="next"`
            next = a
                .header("link")
                .and_then(|l| l.split_once('<'))
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(target, _)| format!("{}{target}", self.url));
        }
        repos
    }

    async fn tags(&mut self, repo: &str) -> Vec<String> {
        let url = format!("{}/v2/{repo}/tags/list", self.url);
        let Some(a) = self
            .send(&format!("GET {url}"), self.client.get(&url))
            .await
        else {
            return Vec::new();
        };
        match a.status {
            StatusCode::OK => {
                let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
                v["tags"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| t.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            }
            s => {
                self.problem(format!("GET {url}: {s}, for a repository in the catalog"));
                Vec::new()
            }
        }
    }

    /// Checks the manifest `reference` names and everything under it;
    /// returns its digest when it is readable.
    async fn manifest_tree(&mut self, repo: &str, reference: &str) -> Option<String> {
        let mut queue = VecDeque::from([(reference.to_owned(), None::<u64>)]);
        let mut top = None;
        while let Some((r, size)) = queue.pop_front() {
            let found = self.manifest(repo, &r, size).await;
            if top.is_none() {
                top = Some(found.as_ref().map(|(d, _)| d.clone()));
            }
            if let Some((_, children)) = found {
                queue.extend(children);
            }
        }
        top.flatten()
    }

    /// One manifest: readable, hashing to its digest, its blobs whole.
    /// Returns its digest and its child manifests (digest, size).
    async fn manifest(
        &mut self,
        repo: &str,
        reference: &str,
        want_size: Option<u64>,
    ) -> Option<(String, Vec<(String, Option<u64>)>)> {
        let what = format!("GET manifest {repo}:{reference}");
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.url);
        let a = self
            .send(
                &what,
                self.client.get(url).header("accept", ACCEPT_MANIFESTS),
            )
            .await?;
        if a.status != StatusCode::OK {
            self.problem(format!(
                "{what}: {} {} (it is listed or referenced, so it must be readable)",
                a.status,
                String::from_utf8_lossy(&a.body)
            ));
            return None;
        }
        let digest = sha256(&a.body);
        if reference.contains(':') && reference != digest {
            self.problem(format!("{what}: the body hashes to {digest}"));
        }
        if a.header("docker-content-digest") != Some(&digest) {
            self.problem(format!(
                "{what}: Docker-Content-Digest {:?}, but the body hashes to {digest}",
                a.header("docker-content-digest")
            ));
        }
        if let Some(size) = want_size
            && size != a.body.len() as u64
        {
            self.problem(format!(
                "{what}: {} bytes, but its descriptor says {size}",
                a.body.len()
            ));
        }
        if !self
            .manifests_seen
            .insert((repo.to_owned(), digest.clone()))
        {
            return Some((digest, Vec::new()));
        }
        self.counts.manifests += 1;
        let Ok(doc) = serde_json::from_slice::<Value>(&a.body) else {
            self.problem(format!("{what}: the stored manifest is not JSON"));
            return Some((digest, Vec::new()));
        };
        let descriptors = |key: &str| -> Vec<(String, Option<u64>)> {
            let list = match &doc[key] {
                Value::Array(a) => a.iter().collect(),
                Value::Object(_) => vec![&doc[key]],
                _ => Vec::new(),
            };
            list.into_iter()
                .filter_map(|d| Some((d["digest"].as_str()?.to_owned(), d["size"].as_u64())))
                .collect()
        };
        let media_type = doc["mediaType"].as_str().unwrap_or_default();
        if media_type == OCI_INDEX {
            return Some((digest, descriptors("manifests")));
        }
        if media_type != OCI_MANIFEST {
            self.problem(format!("{what}: unexpected media type {media_type:?}"));
        }
        for (blob, size) in descriptors("config")
            .into_iter()
            .chain(descriptors("layers"))
        {
            match size {
                Some(size) => self.blob(repo, &blob, size).await,
                None => self.problem(format!("{what}: descriptor of {blob} has no size")),
            }
        }
        Some((digest, Vec::new()))
    }

    /// One blob: readable in `repo`, `size` bytes hashing to `digest`.
    async fn blob(&mut self, repo: &str, digest: &str, size: u64) {
        if !self.blobs_seen.insert((repo.to_owned(), digest.to_owned())) {
            return;
        }
        self.counts.blobs += 1;
        let what = format!("GET blob {repo}@{digest}");
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.url);
        let Some(a) = self.send(&what, self.client.get(url)).await else {
            return;
        };
        if a.status != StatusCode::OK {
            self.problem(format!(
                "{what}: {} {} (a manifest references it or HEAD said it exists)",
                a.status,
                String::from_utf8_lossy(&a.body)
            ));
            return;
        }
        let actual = sha256(&a.body);
        if actual != digest || a.body.len() as u64 != size {
            self.problem(format!(
                "{what}: {} bytes hashing to {actual}; want {size} bytes",
                a.body.len()
            ));
        }
    }

    /// Continues an interrupted upload from where the server says it is and
    /// finishes it. Returns whether the blob is now in place. An upload the
    /// server no longer knows (404) is acceptable.
    async fn resume(&mut self, location: &str, open: &OpenUpload) -> bool {
        let digest = &open.blob.digest;
        let len = open.blob.bytes.len() as u64;
        let what = format!(
            "resuming the upload of {}@{digest} at {location}",
            open.repo
        );
        let base = self.url;
        let url = |loc: &str| {
            if loc.starts_with("http") {
                loc.to_owned()
            } else {
                format!("{base}{loc}")
            }
        };
        let Some(a) = self.send(&what, self.client.get(url(location))).await else {
            return false;
        };
        match a.status {
            StatusCode::NO_CONTENT => {}
            StatusCode::NOT_FOUND => {
                self.unknown_upload(&what, &a, false);
                return false;
            }
            s => {
                self.problem(format!("{what}: GET status {s}"));
                return false;
            }
        }
        // Range is `0-<last byte>`, and `0-0` when empty.
        let last = a
            .header("range")
            .and_then(|r| r.strip_prefix("0-"))
            .and_then(|l| l.parse::<u64>().ok());
        let possible: Vec<u64> = [Some(open.acked), open.in_flight_end]
            .into_iter()
            .flatten()
            .collect();
        let size = match last {
            Some(l) if possible.contains(&(l + 1)) => l + 1,
            Some(0) if possible.contains(&0) => 0,
            _ => {
                self.problem(format!(
                    "{what}: Range {:?}, but the upload can only hold one of {possible:?} bytes \
                     (acknowledged, or with the request in flight at the kill)",
                    a.header("range")
                ));
                return false;
            }
        };
        let mut location = a.header("location").unwrap_or(location).to_owned();
        if size < len {
            let rest = open.blob.bytes.slice(size as usize..);
            let Some(a) = self
                .send(
                    &what,
                    self.client
                        .patch(url(&location))
                        .header("content-type", "application/octet-stream")
                        .header("content-range", format!("{size}-{}", len - 1))
                        .header("content-length", rest.len())
                        .body(rest),
                )
                .await
            else {
                return false;
            };
            match a.status {
                StatusCode::ACCEPTED => {}
                StatusCode::NOT_FOUND => {
                    self.unknown_upload(&what, &a, true);
                    return false;
                }
                s => {
                    self.problem(format!(
                        "{what}: PATCH of bytes {size}-{}: {s} {}",
                        len - 1,
                        String::from_utf8_lossy(&a.body)
                    ));
                    return false;
                }
            }
            location = a.header("location").unwrap_or(&location).to_owned();
        }
        let sep = if location.contains('?') { '&' } else { '?' };
        let Some(a) = self
            .send(
                &what,
                self.client
                    .put(format!("{}{sep}digest={digest}", url(&location)))
                    .header("content-length", 0),
            )
            .await
        else {
            return false;
        };
        match a.status {
            StatusCode::CREATED => {}
            StatusCode::NOT_FOUND => {
                self.unknown_upload(&what, &a, true);
                return false;
            }
            s => {
                self.problem(format!(
                    "{what}: PUT ?digest= after resuming at byte {size}: {s} {}",
                    String::from_utf8_lossy(&a.body)
                ));
                return false;
            }
        }
        self.counts.resumed += 1;
        self.blob(&open.repo, digest, len).await;
        true
    }

    /// A 404 while resuming; `after_status` when the status request had
    /// just answered that the upload exists.
    fn unknown_upload(&mut self, what: &str, a: &Answer, after_status: bool) {
        let code = serde_json::from_slice::<Value>(&a.body)
            .ok()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned));
        if code.as_deref() == Some("BLOB_UPLOAD_UNKNOWN") {
            if after_status {
                self.counts.stale_uploads += 1;
            } else {
                self.counts.unknown_uploads += 1;
            }
        } else {
            self.problem(format!(
                "{what}: 404 with error code {code:?}, not BLOB_UPLOAD_UNKNOWN"
            ));
        }
    }

    /// Every file of the published blob tree (`…/sha256/<xx>/<hex>`) under
    /// `data_dir` hashes to its name, nothing else lives in that tree, and
    /// every blob the server acknowledged has its file.
    pub fn data_dir(&mut self, data_dir: &Path, ledger: &Ledger) {
        let mut trees = Vec::new();
        find_dirs_named(data_dir, "sha256", &mut trees);
        if trees.is_empty() {
            self.problem(format!("no sha256 blob tree under {}", data_dir.display()));
            return;
        }
        let mut published = BTreeSet::new();
        for tree in &trees {
            for entry in read_dir(tree) {
                let prefix = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if !path.is_dir() || prefix.len() != 2 || !is_lower_hex(&prefix) {
                    self.problem(format!(
                        "{} does not belong in the blob tree",
                        path.display()
                    ));
                    continue;
                }
                for file in read_dir(&path) {
                    let name = file.file_name().to_string_lossy().into_owned();
                    let path = file.path();
                    if !path.is_file()
                        || name.len() != 64
                        || !is_lower_hex(&name)
                        || !name.starts_with(&prefix)
                    {
                        self.problem(format!(
                            "{} does not belong in the blob tree",
                            path.display()
                        ));
                        continue;
                    }
                    self.counts.files += 1;
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    let actual = sha256(&bytes);
                    if actual != format!("sha256:{name}") {
                        self.problem(format!(
                            "{} is published but its {} bytes hash to {actual}",
                            path.display(),
                            bytes.len()
                        ));
                    }
                    published.insert(format!("sha256:{name}"));
                }
            }
        }
        for (repo, digest) in &ledger.acked_blobs {
            if !published.contains(digest) {
                self.problem(format!(
                    "{repo}@{digest} was acknowledged but has no file in {}",
                    trees
                        .iter()
                        .map(|t| t.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
}

fn find_dirs_named(dir: &Path, name: &str, found: &mut Vec<std::path::PathBuf>) {
    for entry in read_dir(dir) {
        let path = entry.path();
        if path.is_dir() {
            if entry.file_name() == name {
                found.push(path);
            } else {
                find_dirs_named(&path, name, found);
            }
        }
    }
}

fn read_dir(dir: &Path) -> Vec<std::fs::DirEntry> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    entries
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
