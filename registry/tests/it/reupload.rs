//! Re-uploads of blobs a project already pays for are never refused for
//! quota, whatever the client's upload flow; new bytes over the quota are
//! refused (at the latest at completion) and never counted; uploads in
//! flight are bounded by the upload headroom, not by the quota.

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::security::{Env, assert_error, digest};

const MIB: u64 = 1 << 20;

/// The ways real clients upload a blob.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Flow {
    /// `POST ?digest=` with the whole body and its `Content-Length`.
    Monolithic,
    /// `POST ?digest=` with a body of unknown length (chunked encoding).
    MonolithicStreamed,
    /// `POST`, then `PUT ?digest=` with the whole body.
    PostThenPut,
    /// `POST`, then `PUT ?digest=` with a body of unknown length.
    PostThenPutStreamed,
    /// `POST`, two `PATCH` chunks with `Content-Range`, `PUT ?digest=`.
    Chunks,
    /// `POST`, one `PATCH` of unknown length, `PUT ?digest=`.
    ChunksStreamed,
    /// `POST`, a `PATCH` with the first half, `PUT ?digest=` with the rest.
    ChunkThenPutWithRest,
}

pub(crate) const FLOWS: [Flow; 7] = [
    Flow::Monolithic,
    Flow::MonolithicStreamed,
    Flow::PostThenPut,
    Flow::PostThenPutStreamed,
    Flow::Chunks,
    Flow::ChunksStreamed,
    Flow::ChunkThenPutWithRest,
];

/// A body of unknown length: the bytes in 64 KiB pieces.
fn streamed(bytes: &[u8]) -> reqwest::Body {
    let pieces: Vec<Result<Bytes, std::io::Error>> = bytes
        .chunks(64 << 10)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    reqwest::Body::wrap_stream(futures::stream::iter(pieces))
}

pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
    /// The upload's location, for flows that opened a session.
    pub location: Option<String>,
}

impl Env {
    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: reqwest::Body,
    ) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.server.url))
            .header("authorization", self.admin())
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status();
                let headers = r.headers().clone();
                let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                (status, headers, body)
            }
            // The server may answer and close before a streamed body ends.
            Err(e) => panic!("{path}: {e}"),
        }
    }

    /// Uploads `bytes` into `repo` the way `flow` does; the last answer.
    pub(crate) async fn upload_by(&self, repo: &str, bytes: &[u8], flow: Flow) -> Answer {
        let d = digest(bytes);
        let len = |b: &[u8]| ("content-length", b.len().to_string());
        let monolithic = format!("/v2/{repo}/blobs/uploads/?digest={d}");
        let (status, body) = match flow {
            Flow::Monolithic => {
                let (s, _, b) = self
                    .request(
                        Method::POST,
                        &monolithic,
                        &[len(bytes)],
                        bytes.to_vec().into(),
                    )
                    .await;
                (s, b)
            }
            Flow::MonolithicStreamed => {
                let (s, _, b) = self
                    .request(Method::POST, &monolithic, &[], streamed(bytes))
                    .await;
                (s, b)
            }
            _ => {
                let (s, h, b) = self
                    .request(
                        Method::POST,
                        &format!("/v2/{repo}/blobs/uploads/"),
                        &[],
                        Vec::new().into(),
                    )
                    .await;
                assert_eq!(s, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&b));
                let location = h["location"].to_str().unwrap().to_owned();
                let finish = format!("{location}?digest={d}");
                let half = bytes.len() / 2;
                let patch = async |from: usize, to: usize, known: bool| {
                    let part = &bytes[from..to];
                    let (s, _, b) = if known {
                        self.request(
                            Method::PATCH,
                            &location,
                            &[
                                len(part),
                                ("content-range", format!("{from}-{}", to - 1)),
                                ("content-type", "application/octet-stream".into()),
                            ],
                            part.to_vec().into(),
                        )
                        .await
                    } else {
                        self.request(Method::PATCH, &location, &[], streamed(part))
                            .await
                    };
                    (s, b)
                };
                let last = match flow {
                    Flow::PostThenPut => {
                        self.request(Method::PUT, &finish, &[len(bytes)], bytes.to_vec().into())
                            .await
                    }
                    Flow::PostThenPutStreamed => {
                        self.request(Method::PUT, &finish, &[], streamed(bytes))
                            .await
                    }
                    Flow::Chunks | Flow::ChunksStreamed => {
                        let known = matches!(flow, Flow::Chunks);
                        let cuts: &[(usize, usize)] = if known {
                            &[(0, half), (half, bytes.len())]
                        } else {
                            &[(0, bytes.len())]
                        };
                        for (from, to) in cuts {
                            let (s, b) = patch(*from, *to, known).await;
                            if s != StatusCode::ACCEPTED {
                                return Answer {
                                    status: s,
                                    body: b,
                                    location: Some(location),
                                };
                            }
                        }
                        self.request(Method::PUT, &finish, &[len(&[])], Vec::new().into())
                            .await
                    }
                    Flow::ChunkThenPutWithRest => {
                        let (s, b) = patch(0, half, true).await;
                        if s != StatusCode::ACCEPTED {
                            return Answer {
                                status: s,
                                body: b,
                                location: Some(location),
                            };
                        }
                        let rest = &bytes[half..];
                        self.request(Method::PUT, &finish, &[len(rest)], rest.to_vec().into())
                            .await
                    }
                    Flow::Monolithic | Flow::MonolithicStreamed => unreachable!(),
                };
                return Answer {
                    status: last.0,
                    body: last.2,
                    location: Some(location),
                };
            }
        };
        Answer {
            status,
            body,
            location: None,
        }
    }

    /// A manifest in `repo:tag` of the layers (uploaded already) and a
    /// fresh config; its status.
    async fn manifest_of(&self, repo: &str, tag: &str, layers: &[&[u8]]) -> StatusCode {
        let config =
            json!({"architecture": "amd64", "os": "linux", "for": format!("{repo}:{tag}")})
                .to_string()
                .into_bytes();
        let (s, b) = self.put_blob(repo, config.clone()).await;
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
            "layers": layers.iter().map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(l), "size": l.len()})).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        let (s, _, b) = self
            .send(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{tag}"),
                Some(&self.admin()),
                manifest,
                Some("application/vnd.oci.image.manifest.v1+json"),
            )
            .await;
        assert!(
            s == StatusCode::CREATED || s == StatusCode::FORBIDDEN,
            "{s}: {}",
            String::from_utf8_lossy(&b)
        );
        s
    }

    async fn no_drift(&self) {
        let (s, r) = self
            .admin_json(Method::POST, "/api/v1/usage/recompute?dry_run=true", None)
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(r["drifts"], json!([]), "{r}");
    }
}

/// 3,000,000 bytes that compress badly, different for each seed.
fn layer(seed: u8) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64 ^ seed as u64;
    (0..3_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn usage_numbers(u: &Value) -> (u64, u64, u64) {
    (
        u["used_bytes"].as_u64().unwrap(),
        u["reserved_bytes"].as_u64().unwrap(),
        u["uploading_bytes"].as_u64().unwrap(),
    )
}

/// Where the project already has the blob the re-uploads carry.
#[derive(Debug, Clone, Copy)]
enum Holder {
    /// A manifest of another repository of the project references it.
    OwnManifest,
    /// It was uploaded to another repository of the project, and no
    /// manifest references it yet (a push of two images at once).
    OwnReservation,
    /// The base project `platform` holds it.
    BaseProject,
}

async fn re_uploads_are_never_refused(holder: Holder) {
    let env = Env::new().await;
    let l = layer(1);
    match holder {
        Holder::OwnManifest => {
            env.project_with_quota("tool-q", 4 * MIB).await;
            assert_eq!(
                env.upload_by("tool-q/a", &l, Flow::Monolithic).await.status,
                StatusCode::CREATED
            );
            assert_eq!(
                env.manifest_of("tool-q/a", "v1", &[&l]).await,
                StatusCode::CREATED
            );
        }
        Holder::OwnReservation => {
            env.project_with_quota("tool-q", 4 * MIB).await;
            assert_eq!(
                env.upload_by("tool-q/a", &l, Flow::Chunks).await.status,
                StatusCode::CREATED
            );
        }
        Holder::BaseProject => {
            env.project_with_quota("platform", 100 * MIB).await;
            env.project_with_quota("tool-q", MIB).await;
            assert_eq!(
                env.upload_by("platform/run", &l, Flow::Monolithic)
                    .await
                    .status,
                StatusCode::CREATED
            );
            assert_eq!(
                env.manifest_of("platform/run", "v1", &[&l]).await,
                StatusCode::CREATED
            );
        }
    }
    let before = usage_numbers(&env.usage("tool-q").await);
    for (i, flow) in FLOWS.into_iter().enumerate() {
        let repo = format!("tool-q/b{i}");
        let a = env.upload_by(&repo, &l, flow).await;
        assert_eq!(
            a.status,
            StatusCode::CREATED,
            "{holder:?}, {flow:?}: {}",
            String::from_utf8_lossy(&a.body)
        );
        let (s, _, _) = env
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{}", digest(&l)),
                Some(&env.admin()),
                Vec::new(),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{holder:?}, {flow:?}: linked");
        let after = usage_numbers(&env.usage("tool-q").await);
        assert_eq!(
            after, before,
            "{holder:?}, {flow:?}: the re-upload adds nothing"
        );
    }
    // An image of it fits as well (its config and manifest are small).
    assert_eq!(
        env.manifest_of("tool-q/b0", "v1", &[&l]).await,
        StatusCode::CREATED,
        "{holder:?}"
    );
    env.no_drift().await;
}

#[tokio::test]
async fn a_re_upload_of_a_blob_another_repository_references_is_never_refused() {
    re_uploads_are_never_refused(Holder::OwnManifest).await;
}

#[tokio::test]
async fn a_re_upload_of_a_blob_the_project_just_uploaded_is_never_refused() {
    re_uploads_are_never_refused(Holder::OwnReservation).await;
}

#[tokio::test]
async fn a_re_upload_of_a_base_project_blob_is_never_refused() {
    re_uploads_are_never_refused(Holder::BaseProject).await;
}

#[tokio::test]
async fn new_bytes_over_the_quota_are_refused_by_every_flow_and_never_counted() {
    let env = Env::new().await;
    env.project_with_quota("tool-q", 2 * MIB).await;
    let l = layer(2);
    for (i, flow) in FLOWS.into_iter().enumerate() {
        let repo = format!("tool-q/n{i}");
        let a = env.upload_by(&repo, &l, flow).await;
        assert_error(a.status, &a.body, StatusCode::FORBIDDEN, "DENIED");
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        let message = v["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.starts_with("quota exceeded for project tool-q: 0 B used of 2 MiB"),
            "{flow:?}: {message}"
        );
        assert_eq!(v["errors"][0]["detail"]["quota_bytes"], 2 * MIB, "{flow:?}");
        assert_eq!(
            usage_numbers(&env.usage("tool-q").await),
            (0, 0, 0),
            "{flow:?}: nothing counted, reserved or left in flight"
        );
        // Nothing visible, and a refused upload is gone (its bytes too).
        let (s, _, _) = env
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{}", digest(&l)),
                Some(&env.admin()),
                Vec::new(),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{flow:?}");
        if let Some(location) = a.location {
            let (s, _, _) = env.get(&location, Some(&env.admin())).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{flow:?}: the upload was removed");
        }
    }
    assert_eq!(
        env.server.state.meta.upload_count().await.unwrap(),
        0,
        "no upload left behind"
    );
    env.no_drift().await;
}

#[tokio::test]
async fn chunks_in_flight_are_not_refused_for_quota_only_at_completion() {
    let env = Env::new().await;
    env.project_with_quota("tool-q", 2 * MIB).await;
    let l = layer(3);
    // 3 MB in flight with a 2 MiB quota: accepted while in flight.
    let (s, h, _) = env
        .request(
            Method::POST,
            "/v2/tool-q/web/blobs/uploads/",
            &[],
            Vec::new().into(),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let location = h["location"].to_str().unwrap().to_owned();
    let (s, _, b) = env
        .request(
            Method::PATCH,
            &location,
            &[
                ("content-length", l.len().to_string()),
                ("content-range", format!("0-{}", l.len() - 1)),
            ],
            l.clone().into(),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&b));
    let u = env.usage("tool-q").await;
    assert_eq!(usage_numbers(&u), (0, 0, l.len() as u64), "{u}");
    // Completion decides: these bytes are new, and do not fit.
    let (s, _, b) = env
        .request(
            Method::PUT,
            &format!("{location}?digest={}", digest(&l)),
            &[("content-length", "0".into())],
            Vec::new().into(),
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "DENIED");
    assert_eq!(usage_numbers(&env.usage("tool-q").await), (0, 0, 0));
}

#[tokio::test]
async fn uploads_in_flight_are_bounded_by_the_headroom() {
    let env = Env::with(|c| c.quota.upload_headroom_bytes = 4 * MIB).await;
    env.project_with_quota("tool-q", 3 * MIB).await;
    let open = async || {
        let (s, h, _) = env
            .request(
                Method::POST,
                "/v2/tool-q/web/blobs/uploads/",
                &[],
                Vec::new().into(),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
        h["location"].to_str().unwrap().to_owned()
    };
    // Two uploads of 3 MB each: the second passes max(quota, headroom) =
    // 4 MiB in flight and is refused before its body is read.
    let (first, second) = (open().await, open().await);
    let l = layer(4);
    let length = [("content-length", l.len().to_string())];
    let chunk = async |location: &str| {
        env.request(Method::PATCH, location, &length, l.clone().into())
            .await
    };
    let (s, _, b) = chunk(&first).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&b));
    let (s, _, b) = chunk(&second).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "DENIED");
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        v["errors"][0]["message"],
        "uploads in flight for project tool-q already hold 2.9 MiB of the 4 MiB they may use; \
         this chunk needs 2.9 MiB more: finish or cancel those uploads first"
    );
    assert_eq!(v["errors"][0]["detail"]["limit_bytes"], 4 * MIB);
    // A body of unknown length is cut as it passes the headroom.
    let (s, _, b) = env
        .request(Method::PATCH, &second, &[], streamed(&layer(5)))
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "DENIED");
    let (s, h, _) = env.get(&second, Some(&env.admin())).await;
    assert_eq!(
        (s, h["range"].to_str().unwrap()),
        (StatusCode::NO_CONTENT, "0-0")
    );
    // Cancelling the first frees its headroom.
    let (s, _, _) = env
        .request(Method::DELETE, &first, &[], Vec::new().into())
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, b) = chunk(&second).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        usage_numbers(&env.usage("tool-q").await),
        (0, 0, l.len() as u64)
    );
}

#[tokio::test]
async fn a_body_longer_than_the_blob_it_names_is_refused_before_it_is_read() {
    let env = Env::new().await;
    env.project_with_quota("tool-q", 4 * MIB).await;
    let l = layer(6);
    assert_eq!(
        env.upload_by("tool-q/a", &l, Flow::Monolithic).await.status,
        StatusCode::CREATED
    );
    let (s, _, b) = env
        .request(
            Method::POST,
            &format!("/v2/tool-q/b/blobs/uploads/?digest={}", digest(&l)),
            &[("content-length", (l.len() + 1).to_string())],
            [l.as_slice(), b"x"].concat().into(),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "SIZE_INVALID");
}
