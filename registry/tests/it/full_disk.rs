//! A full disk: the data directory (database and blobs) on a 32 MiB tmpfs
//! the test mounts (CI runs as root).
//!
//! - A push that runs out of space — monolithic, and chunked — is answered
//!   507 with the spec's error JSON and a sentence; its partial upload is
//!   removed (the space comes back); no row points at missing bytes; pulls
//!   keep working.
//! - With the disk filled to the last byte, database writes fail with the
//!   same sentence while reads (pulls, the catalog) go on.
//! - Once space is freed, the same push succeeds, and the integrity check
//!   (SQLite's own included) finds nothing wrong.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use slipway_registry::testing::TestServer;

use crate::replicas::data as bytes_of;
use crate::security::{basic, digest};

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Fills `path` with zeros until the file system refuses more, leaving
/// `leave` bytes free (0: none).
fn fill(path: &Path, dir: &Path, leave: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    loop {
        let free = free_bytes(dir);
        if free <= leave {
            break;
        }
        let n = ((free - leave) as usize).min(chunk.len());
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
        let _ = f.flush();
    }
    let _ = f.sync_all();
}

struct Client {
    http: reqwest::Client,
    url: String,
    auth: String,
}

impl Client {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("authorization", &self.auth)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .unwrap();
        let (s, h) = (r.status(), r.headers().clone());
        let b = r.bytes().await.unwrap();
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null), h)
    }

    /// The integrity check's problems.
    async fn fsck(&self) -> Value {
        let r = self
            .http
            .post(format!("{}/api/v1/fsck", self.url))
            .header("authorization", &self.auth)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()["problems"].clone()
    }

    /// A one-layer image (the layer `layer`) in `repo:tag`; the status of
    /// the first step that failed, or of the manifest PUT.
    async fn push(
        &self,
        repo: &str,
        tag: &str,
        layer: &[u8],
        chunked: bool,
    ) -> (StatusCode, Value) {
        let config = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "tag": tag})
            .to_string()
            .into_bytes();
        for blob in [layer, &config] {
            let d = digest(blob);
            if chunked {
                let (s, v, h) = self
                    .send(
                        Method::POST,
                        &format!("/v2/{repo}/blobs/uploads/"),
                        Vec::new(),
                    )
                    .await;
                assert_eq!(s, StatusCode::ACCEPTED, "{v}");
                let mut at = h["location"].to_str().unwrap().to_owned();
                for part in blob.chunks(4 << 20) {
                    let (s, v, h) = self.send(Method::PATCH, &at, part.to_vec()).await;
                    if s != StatusCode::ACCEPTED {
                        return (s, v);
                    }
                    at = h["location"].to_str().unwrap().to_owned();
                }
                let sep = if at.contains('?') { '&' } else { '?' };
                let (s, v, _) = self
                    .send(Method::PUT, &format!("{at}{sep}digest={d}"), Vec::new())
                    .await;
                if s != StatusCode::CREATED {
                    return (s, v);
                }
            } else {
                let (s, v, _) = self
                    .send(
                        Method::POST,
                        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                        blob.to_vec(),
                    )
                    .await;
                if s != StatusCode::CREATED {
                    return (s, v);
                }
            }
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer), "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        let r = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{tag}", self.url))
            .header("authorization", &self.auth)
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest)
            .send()
            .await
            .unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

fn assert_full(s: StatusCode, v: &Value) {
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    let e = &v["errors"][0];
    assert_eq!(e["code"], "UNKNOWN", "{v}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("the registry's storage is full"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_pushes_cleanly_and_recovers_when_space_returns() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "mounting a tmpfs needs root; CI runs as root"
    );
    let _mount = Mount(data.clone());

    let server = TestServer::start_config(slipway_registry::Config::for_tests(&data)).await;
    server.create_project("tool-full", true).await;
    let c = Client {
        http: reqwest::Client::new(),
        url: server.url.clone(),
        auth: basic("admin", &server.admin_password),
    };
    let small = bytes_of(1 << 20, 1);
    let (s, v) = c.push("tool-full/app", "v1", &small, false).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // Leave 6 MiB; a 12 MiB layer does not fit, pushed either way.
    let filler = work.path().join("data/filler");
    fill(&filler, &data, 6 << 20);
    let before = free_bytes(&data);
    let big = bytes_of(12 << 20, 2);
    for chunked in [false, true] {
        let (s, v) = c.push("tool-full/app", "v2", &big, chunked).await;
        assert_full(s, &v);
        let uploads: Vec<_> = std::fs::read_dir(data.join("blobs/uploads"))
            .unwrap()
            .collect();
        assert!(
            uploads.is_empty(),
            "partial uploads are removed: {uploads:?}"
        );
        let after = free_bytes(&data);
        assert!(
            after + (256 << 10) >= before,
            "the space came back ({before} free before, {after} after; chunked: {chunked})"
        );
    }
    // Nothing recorded points at missing bytes; the first image pulls.
    assert_eq!(c.fsck().await, json!([]));
    let (s, _, _) = c
        .send(
            Method::GET,
            &format!("/v2/tool-full/app/blobs/{}", digest(&small)),
            Vec::new(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // The disk full to the last byte: database writes fail with the same
    // sentence (SQLite may first fill pages it holds), reads go on.
    let filler2 = work.path().join("data/filler2");
    fill(&filler2, &data, 0);
    let mut refused = None;
    for i in 0..2000 {
        let r = c
            .http
            .post(format!("{}/api/v1/projects", c.url))
            .header("authorization", &c.auth)
            .json(&json!({"name": format!("tool-n{i}"), "public": true}))
            .send()
            .await
            .unwrap();
        if r.status() != StatusCode::CREATED {
            refused = Some((r.status(), r.json::<Value>().await.unwrap()));
            break;
        }
    }
    let (s, v) = refused.expect("the full disk never refused a database write");
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("the registry's storage is full"),
        "{v}"
    );
    let (s, _, _) = c
        .send(Method::GET, "/v2/tool-full/app/manifests/v1", Vec::new())
        .await;
    assert_eq!(s, StatusCode::OK, "pulls go on with a full disk");
    let (s, v, _) = c.send(Method::GET, "/v2/_catalog", Vec::new()).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Space freed: the same push succeeds, nothing is damaged.
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&filler2).unwrap();
    let (s, v) = c.push("tool-full/app", "v2", &big, true).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _, _) = c
        .send(
            Method::GET,
            &format!("/v2/tool-full/app/blobs/{}", digest(&big)),
            Vec::new(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(c.fsck().await, json!([]));
    server.stop().await;
}
