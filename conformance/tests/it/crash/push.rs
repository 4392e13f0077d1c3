//! The workload the server is killed under: concurrent image pushes that
//! share layers, through every way of putting a blob (monolithic `POST
//! ?digest=`, `POST` then `PUT` with the body, chunked `PATCH`es then `PUT`,
//! cross-repository mount), then manifest (and sometimes index) `PUT`s.
//!
//! Each push writes what it tried and what the server acknowledged into a
//! shared [`Ledger`], which the checks after the restart hold the server to.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use rand::{RngCore, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, watch};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Pushes running at once in every round.
pub const PUSHES: usize = 20;
/// Repositories they share.
const REPOS: usize = 7;

/// Content and its digest.
pub struct Blob {
    pub digest: String,
    pub bytes: Bytes,
}

impl Blob {
    pub fn new(bytes: impl Into<Bytes>) -> Arc<Blob> {
        let bytes = bytes.into();
        Arc::new(Blob {
            digest: sha256(&bytes),
            bytes,
        })
    }

    /// `len` pseudo-random bytes from `seed`.
    pub fn random(seed: u64, len: usize) -> Arc<Blob> {
        let mut bytes = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
        Blob::new(bytes)
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Layers every round's images draw from (so pushes race on the same blobs).
pub fn shared_layers() -> Vec<Arc<Blob>> {
    [(2 << 20) + 1, (768 << 10) + 7, (256 << 10) + 3, 20 << 10]
        .into_iter()
        .enumerate()
        .map(|(i, len)| Blob::random(1000 + i as u64, len))
        .collect()
}

/// How one blob is put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// `POST …/uploads/?digest=` with the whole blob.
    Monolithic,
    /// `POST`, then `PUT ?digest=` with the whole blob.
    PostThenPut,
    /// `POST`, `PATCH`es with `Content-Range`, then `PUT ?digest=`.
    Chunked,
    /// `POST ?mount=&from=`; chunked when the server offers a session.
    Mount,
}

/// The one request of a push whose body stops half-way until the kill, so
/// that every kill finds requests with bodies half received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// The second `PATCH` of the image's own layer.
    Chunk,
    /// The monolithic `POST` of the image's own layer.
    Monolithic,
    /// The `PUT` that carries the image's own layer and finishes its upload.
    FinishingPut,
    /// The manifest `PUT`.
    Manifest,
}

/// One image push of one round.
pub struct Image {
    repo: String,
    tag: String,
    /// Config first, then layers, the image's own layer last.
    blobs: Vec<(Arc<Blob>, How)>,
    /// Where `How::Mount` mounts from.
    mount_from: String,
    manifest: Arc<Blob>,
    /// An index over the manifest, tagged instead of it.
    index: Option<Arc<Blob>>,
    gate: Option<Gate>,
}

impl Image {
    /// Whether one request of this push holds its body until the kill.
    pub fn is_gated(&self) -> bool {
        self.gate.is_some()
    }

    fn gated(&self, gate: Gate, blob: &Blob) -> bool {
        self.gate == Some(gate)
            && self
                .blobs
                .last()
                .is_some_and(|(b, _)| b.digest == blob.digest)
    }
}

/// The images of `round`: different per round and push, sharing layers.
pub fn images(round: usize, shared: &[Arc<Blob>]) -> Vec<Image> {
    const OWN_SIZES: [usize; 5] = [
        32 << 10,
        300 << 10,
        700 << 10,
        (1 << 20) + (600 << 10),
        150 << 10,
    ];
    let rotation = [How::Monolithic, How::Chunked, How::PostThenPut];
    (0..PUSHES)
        .map(|i| {
            let seed = (round * PUSHES + i) as u64;
            // Pushes 1, 7, 13 and 19 each hold one request open until the
            // kill; which kind of request rotates with the round.
            let gate = (i % 6 == 1).then(|| {
                [Gate::Chunk, Gate::Monolithic, Gate::FinishingPut, Gate::Manifest]
                    [(i / 6 + round) % 4]
            });
            // A gated chunk is the second: gated layers have several.
            let own_len = OWN_SIZES[(i + round) % 5] + 13 * i;
            let own_len = if gate.is_some() { own_len.max(96 << 10) } else { own_len };
            let own = Blob::random(seed, own_len);
            let own_how = match gate {
                Some(Gate::Chunk) => How::Chunked,
                Some(Gate::Monolithic) => How::Monolithic,
                Some(Gate::FinishingPut) => How::PostThenPut,
                _ => rotation[(i + round) % 3],
            };
            let mut layers = vec![shared[i % shared.len()].clone()];
            if i % 3 == 0 {
                layers.push(shared[(i + 1) % shared.len()].clone());
            }
            let config = Blob::new(
                json!({
                    "architecture": "amd64",
                    "os": "linux",
                    "rootfs": {"type": "layers", "diff_ids": []},
                    "config": {"Labels": {"slipway.test": format!("round {round} push {i}")}},
                })
                .to_string(),
            );
            let manifest = Blob::new(
                json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": descriptor(OCI_CONFIG, &config),
                    "layers": layers.iter().chain([&own]).map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
                })
                .to_string(),
            );
            let index = (i % 5 == 4).then(|| {
                Blob::new(
                    json!({
                        "schemaVersion": 2,
                        "mediaType": OCI_INDEX,
                        "manifests": [descriptor(OCI_MANIFEST, &manifest)],
                    })
                    .to_string(),
                )
            });
            let mut blobs = vec![(
                config,
                if i % 2 == 0 { How::Monolithic } else { How::PostThenPut },
            )];
            for (k, layer) in layers.into_iter().enumerate() {
                let how = if (i + k) % 4 == 2 {
                    How::Mount
                } else {
                    rotation[(i + k + round + 1) % 3]
                };
                blobs.push((layer, how));
            }
            blobs.push((own, own_how));
            Image {
                repo: format!("crash/app{}", i % REPOS),
                tag: format!("r{round}-p{i}"),
                blobs,
                mount_from: format!("crash/app{}", (i + 1) % REPOS),
                manifest,
                index,
                gate,
            }
        })
        .collect()
}

fn descriptor(media_type: &str, blob: &Blob) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": blob.digest, "size": blob.bytes.len()})
}

/// Byte offsets where the chunks of a chunked upload of `len` bytes end.
pub fn chunk_ends(len: usize) -> Vec<u64> {
    let n = match len {
        0..=65_535 => 1,
        65_536..=2_097_151 => 3,
        _ => 4,
    };
    (1..=n).map(|k| (len * k / n) as u64).collect()
}

/// What the pushes tried and what the server acknowledged, across rounds.
#[derive(Default)]
pub struct Ledger {
    /// Every blob a push tried to put, by (repository, digest).
    pub attempted_blobs: BTreeMap<(String, String), Arc<Blob>>,
    /// Blobs the server answered 201 for.
    pub acked_blobs: BTreeSet<(String, String)>,
    /// Every manifest a push tried to put, by (repository, digest).
    pub attempted_manifests: BTreeSet<(String, String)>,
    /// Manifests the server answered 201 for: (repository, reference) → digest.
    pub acked_manifests: BTreeMap<(String, String), String>,
    /// Upload sessions the kill interrupted, by location.
    pub open_uploads: BTreeMap<String, OpenUpload>,
    /// Wrong answers from the server while it was alive.
    pub failures: Vec<String>,
}

/// An upload session that was open when the server was killed.
pub struct OpenUpload {
    pub repo: String,
    pub blob: Arc<Blob>,
    /// Bytes the server acknowledged.
    pub acked: u64,
    /// Where the upload ends if the request in flight at the kill was
    /// committed without its answer arriving.
    pub in_flight_end: Option<u64>,
}

/// Counters the kill waits on.
#[derive(Default)]
pub struct Progress {
    /// Chunks (`PATCH`es) acknowledged.
    pub acks: AtomicUsize,
    /// Gated requests holding half their body.
    pub gated: AtomicUsize,
    /// Pushes that ended (done, failed, or stopped by the kill).
    pub ended: AtomicUsize,
    pub changed: Notify,
}

impl Progress {
    fn bump(&self, counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_one();
    }
}

/// What every push of a round shares.
pub struct Ctx {
    pub client: reqwest::Client,
    pub url: String,
    pub ledger: Arc<Mutex<Ledger>>,
    pub progress: Arc<Progress>,
    /// Set just before the SIGKILL is sent.
    pub killed: watch::Receiver<bool>,
}

/// Why a push stopped early.
enum Stop {
    /// The connection failed after the kill: expected.
    Killed,
    /// The server answered wrongly, or failed while still alive.
    Failed(String),
}

impl Ctx {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger lock")
    }

    fn transport(&self, what: &str, e: reqwest::Error) -> Stop {
        if *self.killed.borrow() {
            Stop::Killed
        } else {
            Stop::Failed(format!(
                "{what}: the request failed before the kill (did the server panic?): {e}"
            ))
        }
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<Answer, Stop> {
        let resp = req.send().await.map_err(|e| self.transport(what, e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| self.transport(what, e))?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// An absolute URL for a `Location` header, relative or not.
    fn resolve(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{location}", self.url)
        }
    }

    /// A body that sends its first half, then waits for the kill.
    fn gated_body(&self, bytes: &Bytes) -> reqwest::Body {
        let first = bytes.slice(..bytes.len() / 2);
        let progress = self.progress.clone();
        let mut killed = self.killed.clone();
        let head = futures::stream::once(async move { Ok::<_, std::io::Error>(first) });
        let tail = futures::stream::once(async move {
            progress.bump(&progress.gated);
            let _ = killed.wait_for(|k| *k).await;
            Err(std::io::Error::other(
                "the server was killed while this body was half sent",
            ))
        });
        reqwest::Body::wrap_stream(head.chain(tail))
    }
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn expect(self, what: &str, want: StatusCode) -> Result<Answer, Stop> {
        if self.status == want {
            Ok(self)
        } else {
            Err(Stop::Failed(format!(
                "{what}: expected {want}, got {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )))
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn location(&self, what: &str) -> Result<String, Stop> {
        self.header("location")
            .map(str::to_owned)
            .ok_or_else(|| Stop::Failed(format!("{what}: the answer has no Location")))
    }
}

/// Runs one push to its end (or the kill) and records its failures.
pub async fn push(ctx: Arc<Ctx>, image: Image) {
    if let Err(Stop::Failed(why)) = push_image(&ctx, &image).await {
        ctx.ledger()
            .failures
            .push(format!("{}:{}: {why}", image.repo, image.tag));
    }
    ctx.progress.bump(&ctx.progress.ended);
}

async fn push_image(ctx: &Ctx, image: &Image) -> Result<(), Stop> {
    for (blob, how) in &image.blobs {
        put_blob(ctx, image, blob, *how).await?;
    }
    let (manifest_ref, tag_index) = match &image.index {
        Some(_) => (image.manifest.digest.clone(), true),
        None => (image.tag.clone(), false),
    };
    put_manifest(ctx, image, &image.manifest, OCI_MANIFEST, &manifest_ref).await?;
    if tag_index && let Some(index) = &image.index {
        put_manifest(ctx, image, index, OCI_INDEX, &image.tag).await?;
    }
    Ok(())
}

async fn put_manifest(
    ctx: &Ctx,
    image: &Image,
    manifest: &Arc<Blob>,
    media_type: &str,
    reference: &str,
) -> Result<(), Stop> {
    let repo = &image.repo;
    let what = format!("PUT manifest {repo}:{reference}");
    ctx.ledger()
        .attempted_manifests
        .insert((repo.clone(), manifest.digest.clone()));
    let gated = image.gate == Some(Gate::Manifest) && media_type == OCI_MANIFEST;
    let body = if gated {
        ctx.gated_body(&manifest.bytes)
    } else {
        manifest.bytes.clone().into()
    };
    let answer = ctx
        .send(
            &what,
            ctx.client
                .put(format!("{}/v2/{repo}/manifests/{reference}", ctx.url))
                .header("content-type", media_type)
                .header("content-length", manifest.bytes.len())
                .body(body),
        )
        .await?
        .expect(&what, StatusCode::CREATED)?;
    if answer.header("docker-content-digest") != Some(&manifest.digest) {
        return Err(Stop::Failed(format!(
            "{what}: Docker-Content-Digest is {:?}, not {}",
            answer.header("docker-content-digest"),
            manifest.digest
        )));
    }
    ctx.ledger().acked_manifests.insert(
        (repo.clone(), reference.to_owned()),
        manifest.digest.clone(),
    );
    Ok(())
}

async fn put_blob(ctx: &Ctx, image: &Image, blob: &Arc<Blob>, how: How) -> Result<(), Stop> {
    let repo = &image.repo;
    let digest = &blob.digest;
    ctx.ledger()
        .attempted_blobs
        .insert((repo.clone(), digest.clone()), blob.clone());
    let uploads = format!("{}/v2/{repo}/blobs/uploads/", ctx.url);
    match how {
        How::Monolithic => {
            let what = format!("POST {repo} blob {digest} (monolithic)");
            let body = if image.gated(Gate::Monolithic, blob) {
                ctx.gated_body(&blob.bytes)
            } else {
                blob.bytes.clone().into()
            };
            ctx.send(
                &what,
                ctx.client
                    .post(format!("{uploads}?digest={digest}"))
                    .header("content-type", "application/octet-stream")
                    .header("content-length", blob.bytes.len())
                    .body(body),
            )
            .await?
            .expect(&what, StatusCode::CREATED)?;
        }
        How::PostThenPut => {
            let location = start_upload(ctx, repo, blob, &uploads).await?;
            let what = format!("PUT {repo} blob {digest} with its body");
            set_in_flight(ctx, &location, Some(blob.bytes.len() as u64));
            let body = if image.gated(Gate::FinishingPut, blob) {
                ctx.gated_body(&blob.bytes)
            } else {
                blob.bytes.clone().into()
            };
            finish_upload(ctx, &what, &location, blob, body).await?;
        }
        How::Chunked => {
            let location = start_upload(ctx, repo, blob, &uploads).await?;
            chunks(ctx, image, &location, blob).await?;
        }
        How::Mount => {
            let what = format!("POST {repo} mount {digest} from {}", image.mount_from);
            let answer = ctx
                .send(
                    &what,
                    ctx.client
                        .post(format!(
                            "{uploads}?mount={digest}&from={}",
                            image.mount_from
                        ))
                        .header("content-length", 0),
                )
                .await?;
            match answer.status {
                StatusCode::CREATED => {}
                StatusCode::ACCEPTED => {
                    let location = answer.location(&what)?;
                    open(ctx, &location, repo, blob);
                    chunks(ctx, image, &location, blob).await?;
                }
                _ => {
                    answer.expect(&what, StatusCode::CREATED)?;
                }
            }
        }
    }
    ctx.ledger()
        .acked_blobs
        .insert((repo.clone(), digest.clone()));
    Ok(())
}

/// `POST` for a new session; returns its location.
async fn start_upload(
    ctx: &Ctx,
    repo: &str,
    blob: &Arc<Blob>,
    uploads: &str,
) -> Result<String, Stop> {
    let what = format!("POST {repo} new upload for {}", blob.digest);
    let answer = ctx
        .send(&what, ctx.client.post(uploads).header("content-length", 0))
        .await?
        .expect(&what, StatusCode::ACCEPTED)?;
    let location = answer.location(&what)?;
    open(ctx, &location, repo, blob);
    Ok(location)
}

async fn chunks(ctx: &Ctx, image: &Image, location: &str, blob: &Arc<Blob>) -> Result<(), Stop> {
    let mut start = 0u64;
    let mut location = location.to_owned();
    for (k, end) in chunk_ends(blob.bytes.len()).into_iter().enumerate() {
        let what = format!(
            "PATCH {} {}: bytes {start}-{}",
            image.repo,
            blob.digest,
            end - 1
        );
        let chunk = blob.bytes.slice(start as usize..end as usize);
        set_in_flight(ctx, &location, Some(end));
        let body = if k == 1 && image.gated(Gate::Chunk, blob) {
            ctx.gated_body(&chunk)
        } else {
            chunk.clone().into()
        };
        let answer = ctx
            .send(
                &what,
                ctx.client
                    .patch(ctx.resolve(&location))
                    .header("content-type", "application/octet-stream")
                    .header("content-range", format!("{start}-{}", end - 1))
                    .header("content-length", chunk.len())
                    .body(body),
            )
            .await?
            .expect(&what, StatusCode::ACCEPTED)?;
        let want_range = format!("0-{}", end - 1);
        if answer.header("range") != Some(&want_range) {
            return Err(Stop::Failed(format!(
                "{what}: Range is {:?}, not {want_range}",
                answer.header("range")
            )));
        }
        // The session may move; what follows goes where the server says.
        let next = answer.location(&what)?;
        {
            let mut ledger = ctx.ledger();
            if let Some(mut open) = ledger.open_uploads.remove(&location) {
                open.acked = end;
                open.in_flight_end = None;
                ledger.open_uploads.insert(next.clone(), open);
            }
        }
        location = next;
        ctx.progress.bump(&ctx.progress.acks);
        start = end;
    }
    let what = format!("PUT {} {} to finish its chunks", image.repo, blob.digest);
    finish_upload(
        ctx,
        &what,
        &location,
        blob,
        reqwest::Body::from(Bytes::new()),
    )
    .await
}

async fn finish_upload(
    ctx: &Ctx,
    what: &str,
    location: &str,
    blob: &Arc<Blob>,
    body: reqwest::Body,
) -> Result<(), Stop> {
    let sep = if location.contains('?') { '&' } else { '?' };
    let len = body.as_bytes().map_or(blob.bytes.len(), <[u8]>::len);
    let answer = ctx
        .send(
            what,
            ctx.client
                .put(format!(
                    "{}{sep}digest={}",
                    ctx.resolve(location),
                    blob.digest
                ))
                .header("content-type", "application/octet-stream")
                .header("content-length", len)
                .body(body),
        )
        .await?
        .expect(what, StatusCode::CREATED)?;
    if answer.header("docker-content-digest") != Some(&blob.digest) {
        return Err(Stop::Failed(format!(
            "{what}: Docker-Content-Digest is {:?}, not {}",
            answer.header("docker-content-digest"),
            blob.digest
        )));
    }
    ctx.ledger().open_uploads.remove(location);
    Ok(())
}

fn open(ctx: &Ctx, location: &str, repo: &str, blob: &Arc<Blob>) {
    ctx.ledger().open_uploads.insert(
        location.to_owned(),
        OpenUpload {
            repo: repo.to_owned(),
            blob: blob.clone(),
            acked: 0,
            in_flight_end: None,
        },
    );
}

fn set_in_flight(ctx: &Ctx, location: &str, end: Option<u64>) {
    if let Some(open) = ctx.ledger().open_uploads.get_mut(location) {
        open.in_flight_end = end;
    }
}
