//! Random requests from a seeded RNG: every method, paths built from the
//! distribution API's route shapes with random mutations, random query
//! strings, headers and bodies (garbage, broken manifests, plausible
//! manifests with random digests).

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};

use super::sha256;

/// What the generator may refer to: real content and upload sessions.
pub struct Fixture {
    /// Repositories that exist.
    pub repos: Vec<String>,
    /// Tags that exist (in the first repository).
    pub tags: Vec<String>,
    /// Digests of blobs that exist, with their sizes.
    pub blobs: Vec<(String, u64)>,
    /// Digests of manifests that exist.
    pub manifests: Vec<String>,
    /// Upload sessions opened by valid `POST`s: (repository, id).
    pub uploads: Vec<(String, String)>,
}

/// One generated request.
pub struct Req {
    pub method: reqwest::Method,
    /// Path and query, starting with `/`.
    pub target: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.oci.artifact.manifest.v1+json",
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    items.choose(rng).expect("a non-empty list")
}

pub fn request(rng: &mut StdRng, fx: &Fixture) -> Req {
    let body = if rng.random_bool(0.35) {
        Vec::new()
    } else {
        body(rng, fx)
    };
    let (target, allowed) = target(rng, fx, &body);
    // Mostly a method the route has, so that requests reach its handler.
    let method = if !allowed.is_empty() && rng.random_bool(0.7) {
        reqwest::Method::from_bytes(pick(rng, allowed).as_bytes()).expect("a valid method")
    } else {
        method(rng)
    };
    let mut headers = Vec::new();
    if rng.random_bool(0.3) {
        headers.push(("content-type", content_type(rng)));
    }
    if rng.random_bool(0.3) {
        headers.push(("content-range", content_range(rng)));
    }
    if rng.random_bool(0.15) {
        headers.push(("range", range(rng)));
    }
    if rng.random_bool(0.2) {
        headers.push(("accept", accept(rng)));
    }
    if rng.random_bool(0.05) {
        headers.push(("authorization", format!("Bearer {}", text(rng, 40))));
    }
    if rng.random_bool(0.05) {
        headers.push(("x-fuzz", text(rng, 200)));
    }
    Req {
        method,
        target,
        headers,
        body,
    }
}

fn method(rng: &mut StdRng) -> reqwest::Method {
    use reqwest::Method as M;
    let odd = ["PROPFIND", "BREW", "MKCOL", "PURGE", "X-SLIPWAY"];
    match rng.random_range(0..20) {
        0..=3 => M::GET,
        4..=5 => M::HEAD,
        6..=8 => M::PUT,
        9..=11 => M::POST,
        12..=14 => M::PATCH,
        15..=16 => M::DELETE,
        17 => M::OPTIONS,
        18 => M::TRACE,
        _ => M::from_bytes(pick(rng, &odd).as_bytes()).expect("a valid method token"),
    }
}

/// A path from a route shape, sometimes mutated, with a random query; and
/// the methods the route has.
fn target(rng: &mut StdRng, fx: &Fixture, body: &[u8]) -> (String, &'static [&'static str]) {
    const READ: &[&str] = &["GET", "HEAD"];
    const LIST: &[&str] = &["GET"];
    const MANIFEST: &[&str] = &["GET", "HEAD", "PUT", "PUT", "DELETE"];
    const BLOB: &[&str] = &["GET", "HEAD", "DELETE"];
    const START: &[&str] = &["POST"];
    const UPLOAD: &[&str] = &["GET", "PATCH", "PATCH", "PUT", "PUT", "DELETE"];
    let (mut path, allowed) = match rng.random_range(0..24) {
        0 => (
            pick(
                rng,
                &[
                    "/v2/",
                    "/v2",
                    "/v2//",
                    "/v2/_catalog",
                    "/v2/_catalog/",
                    "/v2/_catalog/x",
                ],
            )
            .to_string(),
            READ,
        ),
        // By the body's own digest, as a push by digest names it.
        1 => (
            format!("/v2/{}/manifests/{}", name(rng, fx), sha256(body)),
            MANIFEST,
        ),
        2..=5 => (
            format!("/v2/{}/manifests/{}", name(rng, fx), reference(rng, fx)),
            MANIFEST,
        ),
        6..=9 => (
            format!("/v2/{}/blobs/{}", name(rng, fx), digest(rng, fx)),
            BLOB,
        ),
        10..=12 => (
            format!(
                "/v2/{}/blobs/uploads{}",
                name(rng, fx),
                pick(rng, &["/", "", "//"])
            ),
            START,
        ),
        13..=17 => {
            let (repo, id) = upload(rng, fx);
            let repo = if rng.random_bool(0.7) {
                repo
            } else {
                name(rng, fx)
            };
            (format!("/v2/{repo}/blobs/uploads/{id}"), UPLOAD)
        }
        18..=19 => (format!("/v2/{}/tags/list", name(rng, fx)), LIST),
        20..=21 => (
            format!("/v2/{}/referrers/{}", name(rng, fx), digest(rng, fx)),
            LIST,
        ),
        22 => {
            let segments: Vec<String> = (0..rng.random_range(0..6))
                .map(|_| segment(rng, fx))
                .collect();
            (format!("/v2/{}", segments.join("/")), &[][..])
        }
        _ => (
            pick(
                rng,
                &[
                    "/", "/healthz", "/readyz", "/metrics", "/v1/", "/v3/x", "/V2/", "/v2x/",
                ],
            )
            .to_string(),
            READ,
        ),
    };
    if rng.random_bool(0.15) {
        path = mutate_path(rng, &path);
    }
    if rng.random_bool(0.5) {
        path.push('?');
        path.push_str(&query(rng, fx));
    }
    (path, allowed)
}

fn mutate_path(rng: &mut StdRng, path: &str) -> String {
    let mut chars: Vec<char> = path.chars().collect();
    let at = rng.random_range(0..=chars.len());
    match rng.random_range(0..9) {
        0 => {
            chars.insert(
                at,
                *pick(
                    rng,
                    &['/', '.', '%', '-', '_', ':', '@', 'A', 'é', '~', ';'],
                ),
            );
        }
        1 if !chars.is_empty() => {
            chars.remove(at.min(chars.len() - 1));
        }
        2 => return path.replacen('/', "//", rng.random_range(1..4)),
        3 => return format!("{path}/"),
        4 => return path.to_uppercase(),
        5 => return path.replacen("/v2/", "/v2/%2f", 1),
        6 => {
            return format!(
                "{path}/../{}",
                pick(rng, &["x", "manifests/y", "blobs/uploads/"])
            );
        }
        7 => return path.replace('/', "/./"),
        _ => return format!("{path}%{:02x}", rng.random::<u8>()),
    }
    chars.into_iter().collect()
}

/// A repository name: real, valid and new, or broken in some way.
fn name(rng: &mut StdRng, fx: &Fixture) -> String {
    match rng.random_range(0..12) {
        0..=3 => pick(rng, &fx.repos).clone(),
        4..=5 => valid_name(rng),
        6 => pick(
            rng,
            &[
                "Fuzz/Real",
                "..",
                "a/..",
                "../a",
                ".",
                "a//b",
                "/a",
                "a/",
                "-a",
                "a-",
                "a..b",
                "a___b",
                "_catalog",
                "",
                "%2e%2e",
                "a%2fb",
                "a%2Fb",
                "ünïcödé",
                "名前/x",
                "a b",
                "a;b",
                "a?b",
                "a:b",
                "a@b",
                "a\\b",
                "a\u{0}b",
                "v2",
                "fuzz/real/",
                "manifests",
                "blobs/uploads",
                "tags",
            ],
        )
        .to_string(),
        7 => "a".repeat(*pick(rng, &[255, 256, 300, 5000])),
        8 => vec!["a"; rng.random_range(2..200)].join("/"),
        9 => {
            let mut n = valid_name(rng);
            let at = rng.random_range(0..=n.len());
            n.insert(
                at,
                *pick(
                    rng,
                    &['A', '.', '_', '-', '/', '%', 'é', '+', '*', '\u{7f}'],
                ),
            );
            n
        }
        10 => text(rng, 30),
        _ => format!("{}/{}", pick(rng, &fx.repos), valid_name(rng)),
    }
}

fn valid_name(rng: &mut StdRng) -> String {
    let components: Vec<String> = (0..rng.random_range(1..5))
        .map(|_| {
            let mut c = alnum(rng, 1..8);
            if rng.random_bool(0.3) {
                const SEPARATORS: &[&str] = &[".", "_", "__", "-", "---"];
                let separator = *pick(rng, SEPARATORS);
                c.push_str(separator);
                c.push_str(&alnum(rng, 1..5));
            }
            c
        })
        .collect();
    components.join("/")
}

fn alnum(rng: &mut StdRng, len: std::ops::Range<usize>) -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let len = rng.random_range(len);
    (0..len).map(|_| *pick(rng, A) as char).collect()
}

/// Printable junk, including characters a URL must encode.
fn text(rng: &mut StdRng, max: usize) -> String {
    let len = rng.random_range(0..=max);
    (0..len)
        .map(|_| match rng.random_range(0..10) {
            0 => *pick(rng, &['é', '名', '\u{202e}', '\u{fffd}', 'ß']),
            _ => rng.random_range(0x20u8..0x7f) as char,
        })
        .collect()
}

fn segment(rng: &mut StdRng, fx: &Fixture) -> String {
    match rng.random_range(0..6) {
        0 => pick(
            rng,
            &[
                "manifests",
                "blobs",
                "uploads",
                "tags",
                "list",
                "referrers",
                "_catalog",
            ],
        )
        .to_string(),
        1 => digest(rng, fx),
        2 => String::new(),
        3 => "..".into(),
        4 => valid_name(rng),
        _ => text(rng, 12).replace(['/', '?', '#'], ""),
    }
}

/// A manifest reference: tag or digest, real or not, valid or not.
fn reference(rng: &mut StdRng, fx: &Fixture) -> String {
    match rng.random_range(0..10) {
        0..=1 => pick(rng, &fx.tags).clone(),
        2..=3 => pick(rng, &fx.manifests).clone(),
        4 => {
            const T: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-";
            let len = *pick(rng, &[1, 5, 127, 128, 129, 300]);
            (0..len).map(|_| *pick(rng, T) as char).collect()
        }
        5 => pick(
            rng,
            &[
                "latest", ".hidden", "-dash", "_under", "a:b", "ünï", "", ".", "..", "v1.0",
            ],
        )
        .to_string(),
        _ => digest(rng, fx),
    }
}

/// A digest: real, well-formed and unknown, or malformed.
fn digest(rng: &mut StdRng, fx: &Fixture) -> String {
    let hex = |rng: &mut StdRng, n: usize| -> String {
        (0..n)
            .map(|_| *pick(rng, b"0123456789abcdef") as char)
            .collect()
    };
    match rng.random_range(0..16) {
        0..=3 => pick(rng, &fx.blobs).0.clone(),
        4 => pick(rng, &fx.manifests).clone(),
        5..=6 => format!("sha256:{}", hex(rng, 64)),
        7 => format!("sha512:{}", hex(rng, 128)),
        8 => format!("sha256:{}", hex(rng, 64).to_uppercase()),
        9 => {
            let len = *pick(rng, &[0, 1, 63, 65, 128]);
            format!("sha256:{}", hex(rng, len))
        }
        10 => format!(
            "{}:{}",
            pick(
                rng,
                &[
                    "sha384",
                    "md5",
                    "SHA256",
                    "sha256+b64u",
                    "a.b+c",
                    "",
                    "sha 256"
                ]
            ),
            hex(rng, 64)
        ),
        11 => pick(
            rng,
            &["sha256", "sha256:", ":", "sha256::", "sha256:g", ":abc"],
        )
        .to_string(),
        12 => format!("sha256:{}", "a".repeat(10_000)),
        13 => text(rng, 80),
        14 => pick(rng, &fx.blobs).0.replacen(':', "%3a", 1),
        _ => format!("{}x", pick(rng, &fx.blobs).0),
    }
}

/// An upload session: real (from a valid `POST`) or invented.
fn upload(rng: &mut StdRng, fx: &Fixture) -> (String, String) {
    let repo = pick(rng, &fx.repos).clone();
    let id = match rng.random_range(0..10) {
        0..=4 => return pick(rng, &fx.uploads).clone(),
        5 => alnum(rng, 32..33),
        6 => format!(
            "{}-{}-{}",
            alnum(rng, 8..9),
            alnum(rng, 4..5),
            alnum(rng, 12..13)
        ),
        7 => "a".repeat(*pick(rng, &[64, 65, 1000])),
        8 => pick(
            rng,
            &["..", ".", "-", "%00", "ünï", "a.b", "A", "_", "uploads"],
        )
        .to_string(),
        _ => text(rng, 40),
    };
    (repo, id)
}

fn query(rng: &mut StdRng, fx: &Fixture) -> String {
    let parts: Vec<String> = (0..rng.random_range(1..4))
        .map(|_| match rng.random_range(0..10) {
            0..=2 => format!("digest={}", digest(rng, fx)),
            3 => format!("mount={}&from={}", digest(rng, fx), name(rng, fx)),
            4 => format!("mount={}", digest(rng, fx)),
            5 => format!(
                "n={}",
                pick(
                    rng,
                    &[
                        "0",
                        "1",
                        "2",
                        "-1",
                        "10000",
                        "10001",
                        "4294967295",
                        "4294967296",
                        "18446744073709551616",
                        "abc",
                        "",
                        "1e3",
                        "+1",
                        " 1"
                    ]
                )
            ),
            6 => format!(
                "last={}",
                pick(rng, &["", "v1", "zzzz", "fuzz/real", "\u{10ffff}"])
            ),
            7 => format!("last={}", text(rng, 300)),
            8 => format!("artifactType={}", content_type(rng)),
            _ => pick(
                rng,
                &[
                    "&&",
                    "=",
                    "a",
                    "%",
                    "%zz",
                    "digest",
                    "digest=",
                    "digest=a&digest=b",
                    "from=",
                    "n=1&n=2",
                    "last",
                ],
            )
            .to_string(),
        })
        .collect();
    parts.join("&")
}

fn content_type(rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0..=1 => pick(rng, MANIFEST_TYPES).to_string(),
        2 => pick(
            rng,
            &[
                "application/octet-stream",
                "application/json",
                "text/plain",
                "",
                "garbage",
                "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
                ";;;",
                "APPLICATION/VND.OCI.IMAGE.MANIFEST.V1+JSON",
                "multipart/form-data; boundary=x",
            ],
        )
        .to_string(),
        _ => text(rng, 300),
    }
}

/// Boundary numbers and small ones.
fn number(rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 => rng.random_range(0u64..100_000).to_string(),
        1 => pick(
            rng,
            &[
                u64::MAX,
                u64::MAX - 1,
                1 << 63,
                i64::MAX as u64,
                u32::MAX as u64,
                0,
                1,
            ],
        )
        .to_string(),
        2 => pick(
            rng,
            &["18446744073709551616", "-1", "", "a", "1.5", "0x10", " 3"],
        )
        .to_string(),
        _ => rng.random_range(0u64..1000).to_string(),
    }
}

fn content_range(rng: &mut StdRng) -> String {
    match rng.random_range(0..7) {
        0 => format!("{}-{}", number(rng), number(rng)),
        1 => format!("bytes {}-{}/{}", number(rng), number(rng), number(rng)),
        2 => format!("0-{}", number(rng)),
        // Ends at the top of the range of offsets (mostly from 0, where a
        // new upload is).
        3..=4 => format!(
            "{}-{}",
            pick(rng, &[0, 0, 0, 1, 10_000]),
            pick(
                rng,
                &[u64::MAX, u64::MAX, u64::MAX - 1, i64::MAX as u64, 1 << 63]
            )
        ),
        5 => pick(
            rng,
            &[
                "0-0",
                "bytes=5-4",
                "-1",
                "abc",
                "",
                "0-",
                "1-2-3",
                "*/*",
                "bytes */10",
            ],
        )
        .to_string(),
        _ => text(rng, 30),
    }
}

fn range(rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 => format!("bytes={}-{}", number(rng), number(rng)),
        1 => format!("bytes=-{}", number(rng)),
        2 => pick(
            rng,
            &[
                "bytes=0-0",
                "bytes=0-",
                "bytes=-0",
                "bytes=5-3",
                "bytes=0-1,2-3",
                "items=0-1",
                "",
                "bytes=",
                "bytes=-",
                "garbage",
            ],
        )
        .to_string(),
        _ => text(rng, 30),
    }
}

fn accept(rng: &mut StdRng) -> String {
    match rng.random_range(0..4) {
        0 => MANIFEST_TYPES.join(", "),
        1 => pick(
            rng,
            &[
                "*/*",
                "",
                "application/*",
                "text/html",
                ",,,",
                "*/*;q=0",
                "application/vnd.oci.image.manifest.v1+json;q=0.5, */*;q=0.1",
            ],
        )
        .to_string(),
        2 => vec![*pick(rng, MANIFEST_TYPES); rng.random_range(1..200)].join(","),
        _ => text(rng, 100),
    }
}

fn body(rng: &mut StdRng, fx: &Fixture) -> Vec<u8> {
    match rng.random_range(0..10) {
        0..=2 => random_bytes(rng),
        3..=4 => {
            let doc = manifest(rng, fx).to_string().into_bytes();
            truncate_or_garble(rng, doc)
        }
        5..=7 => manifest(rng, fx).to_string().into_bytes(),
        8 => pick(
            rng,
            &[
                "null".to_string(),
                "[]".to_string(),
                "\"str\"".to_string(),
                "{}".to_string(),
                "\u{feff}{\"schemaVersion\":2}".to_string(),
                "[".repeat(20_000),
                format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)),
                "{\"a\":".repeat(3_000),
                "{\"schemaVersion\":2,\"schemaVersion\":1}".to_string(),
                "{\"schemaVersion\":1e400}".to_string(),
                "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
                 \"config\":{\"digest\":\"sha256:x\",\"size\":1e400},\"layers\":[]}"
                    .to_string(),
            ],
        )
        .clone()
        .into_bytes(),
        _ => {
            let mut b = text(rng, 2000).into_bytes();
            b.extend([0u8, 0xff, 0xfe, 0x80]);
            b
        }
    }
}

fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
    let len = if rng.random_bool(0.1) {
        rng.random_range(0..64 << 10)
    } else {
        rng.random_range(0..4096)
    };
    let mut b = vec![0u8; len];
    rng.fill(&mut b[..]);
    b
}

fn truncate_or_garble(rng: &mut StdRng, mut doc: Vec<u8>) -> Vec<u8> {
    if doc.is_empty() {
        return doc;
    }
    if rng.random_bool(0.5) {
        doc.truncate(rng.random_range(0..doc.len()));
    } else {
        for _ in 0..rng.random_range(1..6) {
            let at = rng.random_range(0..doc.len());
            doc[at] = rng.random();
        }
    }
    doc
}

/// A manifest or index that looks plausible: real or random digests, sizes
/// right, wrong or absurd, fields missing or of the wrong type.
fn manifest(rng: &mut StdRng, fx: &Fixture) -> Value {
    let descriptor = |rng: &mut StdRng, manifest: bool| -> Value {
        let (digest, size) = if rng.random_bool(0.5) {
            if manifest {
                (
                    pick(rng, &fx.manifests).clone(),
                    json!(rng.random_range(0..2000)),
                )
            } else {
                let (d, s) = pick(rng, &fx.blobs).clone();
                (d, json!(s))
            }
        } else {
            (digest(rng, fx), json!(rng.random_range(0..1_000_000)))
        };
        let size = match rng.random_range(0..8) {
            0 => json!(-1),
            1 => json!(u64::MAX),
            2 => json!(1.5),
            3 => json!("12"),
            4 => json!(i64::MIN),
            _ => size,
        };
        let mut d = json!({
            "mediaType": if manifest { *pick(rng, MANIFEST_TYPES) } else { "application/vnd.oci.image.layer.v1.tar+gzip" },
            "digest": digest,
            "size": size,
        });
        if rng.random_bool(0.1) {
            d["urls"] = json!(["http://example.invalid/x"]);
            d["mediaType"] = json!("application/vnd.oci.image.layer.nondistributable.v1.tar");
        }
        if rng.random_bool(0.1) {
            d["annotations"] = json!({"k": text(rng, 20)});
        }
        d
    };
    let media_type = if rng.random_bool(0.8) {
        json!(pick(rng, MANIFEST_TYPES))
    } else {
        pick(
            rng,
            &[json!(null), json!(5), json!("text/plain"), json!([])],
        )
        .clone()
    };
    let mut doc = if rng.random_bool(0.7) {
        json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": descriptor(rng, false),
            "layers": (0..rng.random_range(0..4)).map(|_| descriptor(rng, false)).collect::<Vec<_>>(),
        })
    } else {
        json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": (0..rng.random_range(0..4)).map(|_| descriptor(rng, true)).collect::<Vec<_>>(),
        })
    };
    if rng.random_bool(0.2) {
        doc["subject"] = descriptor(rng, true);
    }
    if rng.random_bool(0.1) {
        doc["artifactType"] = json!(content_type(rng));
    }
    if rng.random_bool(0.1) {
        doc["annotations"] = json!({"org.opencontainers.image.created": text(rng, 30)});
    }
    // One field of the wrong shape, sometimes.
    if rng.random_bool(0.2) {
        let key = *pick(
            rng,
            &[
                "schemaVersion",
                "config",
                "layers",
                "manifests",
                "subject",
                "annotations",
                "mediaType",
            ],
        );
        doc[key] = pick(
            rng,
            &[
                json!(null),
                json!(1),
                json!("x"),
                json!([1, 2]),
                json!({}),
                json!(3),
            ],
        )
        .clone();
    }
    if rng.random_bool(0.1)
        && let Some(obj) = doc.as_object_mut()
    {
        obj.remove(*pick(
            rng,
            &[
                "schemaVersion",
                "config",
                "layers",
                "manifests",
                "mediaType",
            ],
        ));
    }
    doc
}
