//! Content discovery: the tags list with `n`, `last` and `Link`; the
//! referrers API with its `artifactType` filter.

use reqwest::Url;
use serde_json::{Value, json};

use super::{Ctx, short, with_query};
use crate::client::Response;
use crate::content::{self, Image, Manifest, OCI_INDEX, artifact, unknown_digest};
use crate::expect::{self, Outcome, ensure};

/// The tags pushed for the listing checks, in lexical (and ASCII) order.
/// Twelve, pushed scrambled: a registry that lists them in storage order
/// cannot be sorted by chance.
pub const TAGS: &[&str] = &[
    "alpha", "beta", "delta", "gamma", "latest", "rc-1", "rc.2", "v1", "v1.0", "v10", "v2", "zeta",
];

/// Pages followed at most, so that a `Link` loop ends.
const MAX_PAGES: usize = 20;

pub struct TagsFixture {
    pub repo: String,
}

/// One manifest, tagged with every tag of `TAGS` in a scrambled order.
pub async fn tags_fixture(cx: &Ctx) -> Outcome<TagsFixture> {
    let repo = cx.repo("listing");
    let image = Image::oci(&[64]);
    cx.push_image(&repo, &image.manifest.digest, &image).await?;
    for i in [7, 2, 11, 4, 0, 9, 5, 1, 10, 3, 8, 6] {
        cx.push_manifest(&repo, TAGS[i], &image.manifest).await?;
    }
    Ok(TagsFixture { repo })
}

struct TagsPage {
    tags: Vec<String>,
    next: Option<Url>,
    resp: Response,
}

/// `GET` a tags list page: 200, `{"name": <repo>, "tags": [...]}`, and the
/// `Link` to the next page if any.
async fn tags_page(cx: &Ctx, repo: &str, url: Url) -> Outcome<TagsPage> {
    let r = cx.get(url).await?;
    expect::status(&r, 200)?;
    let v = expect::json(&r)?;
    let name = v.get("name").and_then(Value::as_str);
    ensure!(
        name == Some(repo),
        "{}: name is {:?}, expected {repo:?}",
        r.request,
        v.get("name")
    );
    let tags = match v.get("tags") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{}: a tag is not a string: {t}", r.request))
            })
            .collect::<Outcome<Vec<_>>>()?,
        other => {
            return Err(format!(
                "{}: `tags` is {}, expected a list",
                r.request,
                other.map_or("missing".to_owned(), Value::to_string)
            ));
        }
    };
    let next = link_next(&r)?;
    Ok(TagsPage {
        tags,
        next,
        resp: r,
    })
}

/// The target of `Link: <…>; rel="next"`, if the response has one. A
/// `Link` header without `rel="next"` is an error (RFC 5988 form).
pub fn link_next(r: &Response) -> Outcome<Option<Url>> {
    let values = r.header_all("Link");
    if values.is_empty() {
        return Ok(None);
    }
    for value in &values {
        for part in value.split('<').skip(1) {
            let Some((target, params)) = part.split_once('>') else {
                continue;
            };
            let is_next = params.split(';').any(|p| {
                let p = p.trim().trim_end_matches(',').trim();
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("rel")
                        && v.trim()
                            .trim_matches('"')
                            .split_whitespace()
                            .any(|rel| rel.eq_ignore_ascii_case("next"))
                })
            });
            if is_next {
                let url = r.url.join(target.trim()).map_err(|e| {
                    format!("{}: Link target {target:?} is not a URL: {e}", r.request)
                })?;
                return Ok(Some(url));
            }
        }
    }
    Err(format!(
        "{}: Link {values:?} has no <…>; rel=\"next\"",
        r.request
    ))
}

fn sorted_tags() -> Vec<String> {
    TAGS.iter().map(|t| (*t).to_owned()).collect()
}

/// `GET /tags/list`: every tag, in lexical order (following `Link`
/// headers, if the registry pages).
pub async fn tags_list(cx: &Ctx) -> Outcome {
    let f = cx.tags_fixture().await?;
    let mut url = Some(cx.v2(&f.repo, "tags/list")?);
    let mut all = Vec::new();
    let mut pages = 0;
    while let Some(u) = url {
        pages += 1;
        ensure!(pages <= MAX_PAGES, "more than {MAX_PAGES} pages of tags");
        let page = tags_page(cx, &f.repo, u).await?;
        all.extend(page.tags);
        url = page.next;
    }
    ensure!(
        all == sorted_tags(),
        "tags are {all:?}, expected {:?} (lexical order)",
        TAGS
    );
    Ok(())
}

/// A page of `n` must hold `n` tags from `expected` unless it has a `Link`
/// (then it may hold fewer, even none), never more.
fn check_page(page: &TagsPage, n: usize, expected: &[&str]) -> Outcome {
    let want: Vec<&str> = expected.iter().take(n).copied().collect();
    let got: Vec<&str> = page.tags.iter().map(String::as_str).collect();
    if got.len() < want.len() && page.next.is_some() {
        ensure!(
            want.starts_with(&got),
            "{}: tags {got:?}, expected the first of {want:?}",
            page.resp.request
        );
        return Ok(());
    }
    ensure!(
        got == want,
        "{}: tags {got:?}, expected {want:?}",
        page.resp.request
    );
    Ok(())
}

/// `?n=3`: the first three tags; `?n=100`: all of them.
pub async fn tags_n(cx: &Ctx) -> Outcome {
    let f = cx.tags_fixture().await?;
    let url = with_query(&cx.v2(&f.repo, "tags/list")?, &[("n", "3")]);
    let page = tags_page(cx, &f.repo, url).await?;
    check_page(&page, 3, TAGS)?;
    let url = with_query(&cx.v2(&f.repo, "tags/list")?, &[("n", "100")]);
    let page = tags_page(cx, &f.repo, url).await?;
    check_page(&page, 100, TAGS)
}

/// `?n=2&last=<2nd tag>`: the two tags after it; `?last=<3rd from the
/// end>` (no `n`): the two last tags; `?n=2&last=<last tag>`: none.
pub async fn tags_last(cx: &Ctx) -> Outcome {
    let f = cx.tags_fixture().await?;
    let base = cx.v2(&f.repo, "tags/list")?;
    let url = with_query(&base, &[("n", "2"), ("last", TAGS[1])]);
    let page = tags_page(cx, &f.repo, url).await?;
    check_page(&page, 2, &TAGS[2..])?;
    let end = TAGS.len();
    let url = with_query(&base, &[("last", TAGS[end - 3])]);
    let page = tags_page(cx, &f.repo, url).await?;
    check_page(&page, end, &TAGS[end - 2..])?;
    let url = with_query(&base, &[("n", "2"), ("last", TAGS[end - 1])]);
    let page = tags_page(cx, &f.repo, url).await?;
    ensure!(
        page.tags.is_empty() && page.next.is_none(),
        "{}: tags {:?} after the last tag (Link: {}), expected none",
        page.resp.request,
        page.tags,
        page.next.is_some()
    );
    Ok(())
}

/// `?n=2`, then the `Link rel="next"` of each page: every tag once, in
/// order, two at most per page. The spec lets a registry leave `Link` out
/// (MAY); this suite wants it while more tags remain, as clients prefer it.
pub async fn tags_link(cx: &Ctx) -> Outcome {
    let f = cx.tags_fixture().await?;
    let mut url = Some(with_query(&cx.v2(&f.repo, "tags/list")?, &[("n", "2")]));
    let mut all: Vec<String> = Vec::new();
    let mut pages = 0;
    while let Some(u) = url {
        pages += 1;
        ensure!(pages <= MAX_PAGES, "more than {MAX_PAGES} pages of tags");
        let page = tags_page(cx, &f.repo, u).await?;
        ensure!(
            page.tags.len() <= 2,
            "{}: {} tags in a page of n=2",
            page.resp.request,
            page.tags.len()
        );
        all.extend(page.tags);
        if page.next.is_none() && all.len() < TAGS.len() {
            return Err(format!(
                "{}: no Link rel=\"next\" header while {} more tags remain",
                page.resp.request,
                TAGS.len() - all.len()
            ));
        }
        url = page.next;
    }
    ensure!(
        all == sorted_tags(),
        "following Link headers gave {all:?}, expected {TAGS:?}"
    );
    Ok(())
}

/// `?n=0`: 200, an empty list, no `Link`.
pub async fn tags_n_zero(cx: &Ctx) -> Outcome {
    let f = cx.tags_fixture().await?;
    let url = with_query(&cx.v2(&f.repo, "tags/list")?, &[("n", "0")]);
    let page = tags_page(cx, &f.repo, url).await?;
    ensure!(
        page.tags.is_empty(),
        "{}: tags {:?}, expected []",
        page.resp.request,
        page.tags
    );
    ensure!(
        page.resp.header("Link").is_none(),
        "{}: a Link header with n=0",
        page.resp.request
    );
    Ok(())
}

/// The tags of a repository that does not exist: 404 `NAME_UNKNOWN`.
pub async fn tags_unknown_repo(cx: &Ctx) -> Outcome {
    let repo = cx.repo(&format!("no-such-repo-{}", content::random_name()));
    let r = cx.get(cx.v2(&repo, "tags/list")?).await?;
    expect::error(&r, 404, &["NAME_UNKNOWN"])
}

pub const SBOM: &str = "application/vnd.example.sbom.v1";
const SIG_CONFIG: &str = "application/vnd.example.signature.config.v1+json";

pub struct ReferrersFixture {
    pub repo: String,
    pub subject: Manifest,
    /// The descriptors the referrers API must list for `subject`.
    pub expected: Vec<Value>,
}

/// A subject image and, pointing at it: an SBOM artifact (`artifactType`
/// set), a signature (no `artifactType`: its config's media type stands
/// in), an index (no `artifactType`: none listed); one artifact that
/// points at another image, and one in another repository.
pub async fn referrers_fixture(cx: &Ctx) -> Outcome<ReferrersFixture> {
    let repo = cx.repo("artifacts");
    let subject = Image::oci(&[256]);
    cx.push_image(&repo, "subject", &subject).await?;
    let other = Image::oci(&[256]);
    cx.push_image(&repo, "other", &other).await?;
    let s = &subject.manifest;

    let sbom_annotations = json!({
        "org.opencontainers.image.created": "2024-01-01T00:00:00Z",
        "org.example.sbom.format": "json",
    });
    let sbom = artifact(s, Some(SBOM), None, sbom_annotations.clone());
    let sig_annotations = json!({"org.example.signature.fingerprint": "abcd"});
    let sig = artifact(s, None, Some(SIG_CONFIG), sig_annotations.clone());
    let index_annotations = json!({"org.example.kind": "bundle"});
    let index = Manifest::from_value(
        OCI_INDEX,
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [s.descriptor()],
            "subject": s.descriptor(),
            "annotations": index_annotations,
        }),
    );
    let elsewhere = artifact(&other.manifest, Some(SBOM), None, json!({"x": "y"}));

    // The same subject, referred to from another repository: not listed
    // here (referrers are "in the same <name> namespace").
    let other_repo = cx.repo("artifacts-elsewhere");
    let foreign = artifact(s, Some(SBOM), None, json!({"x": "foreign"}));
    cx.push_blobs(&other_repo, &foreign.blobs).await?;
    cx.push_manifest(&other_repo, &foreign.manifest.digest, &foreign.manifest)
        .await?;

    for a in [&sbom, &sig, &elsewhere] {
        cx.push_blobs(&repo, &a.blobs).await?;
        cx.push_manifest(&repo, &a.manifest.digest, &a.manifest)
            .await?;
    }
    cx.push_manifest(&repo, &index.digest, &index).await?;

    let describe = |m: &Manifest, artifact_type: Option<&str>, annotations: &Value| {
        let mut d = m.descriptor();
        if let Some(t) = artifact_type {
            d["artifactType"] = json!(t);
        }
        d["annotations"] = annotations.clone();
        d
    };
    Ok(ReferrersFixture {
        repo,
        subject: s.clone(),
        expected: vec![
            describe(&sbom.manifest, Some(SBOM), &sbom_annotations),
            describe(&sig.manifest, Some(SIG_CONFIG), &sig_annotations),
            describe(&index, None, &index_annotations),
        ],
    })
}

/// Every page of `GET /referrers/<digest>[?query]`: each 200 with
/// `Content-Type: application/vnd.oci.image.index.v1+json` and an image
/// index. Returns the descriptors and the first response.
pub async fn referrers(
    cx: &Ctx,
    repo: &str,
    digest: &str,
    query: &[(&str, &str)],
) -> Outcome<(Vec<Value>, Response)> {
    let mut url = Some(with_query(
        &cx.v2(repo, &format!("referrers/{digest}"))?,
        query,
    ));
    let mut all = Vec::new();
    let mut first = None;
    let mut pages = 0;
    while let Some(u) = url {
        pages += 1;
        ensure!(
            pages <= MAX_PAGES,
            "more than {MAX_PAGES} pages of referrers"
        );
        let r = cx.get(u).await?;
        expect::status(&r, 200)?;
        expect::content_type(&r, OCI_INDEX)?;
        let v = expect::json(&r)?;
        ensure!(
            v.get("schemaVersion") == Some(&json!(2)),
            "{}: schemaVersion is {:?}, expected 2",
            r.request,
            v.get("schemaVersion")
        );
        if let Some(mt) = v.get("mediaType") {
            ensure!(
                mt == OCI_INDEX,
                "{}: mediaType is {mt}, expected {OCI_INDEX}",
                r.request
            );
        }
        let Some(Value::Array(manifests)) = v.get("manifests") else {
            return Err(format!("{}: `manifests` is not a list", r.request));
        };
        all.extend(manifests.iter().cloned());
        url = link_next(&r)?;
        first.get_or_insert(r);
    }
    Ok((all, first.expect("at least one page")))
}

/// The listed descriptors are exactly `want` (any order): same digests,
/// media types, sizes, `artifactType` (present or absent alike) and
/// annotations.
fn same_descriptors(request: &str, got: &[Value], want: &[Value]) -> Outcome {
    let digest_of = |d: &Value| d.get("digest").and_then(Value::as_str).map(str::to_owned);
    let mut seen = Vec::new();
    for d in got {
        let digest =
            digest_of(d).ok_or_else(|| format!("{request}: a descriptor has no digest: {d}"))?;
        ensure!(
            !seen.contains(&digest),
            "{request}: {} is listed twice",
            short(&digest)
        );
        let w = want
            .iter()
            .find(|w| digest_of(w).as_deref() == Some(digest.as_str()))
            .ok_or_else(|| {
                format!(
                    "{request}: {} is listed but does not refer to this subject (or was filtered out)",
                    short(&digest)
                )
            })?;
        for field in ["mediaType", "size", "artifactType", "annotations"] {
            ensure!(
                d.get(field) == w.get(field),
                "{request}: {} has {field} {}, expected {}",
                short(&digest),
                d.get(field).map_or("(none)".to_owned(), Value::to_string),
                w.get(field).map_or("(none)".to_owned(), Value::to_string)
            );
        }
        seen.push(digest);
    }
    for w in want {
        let digest = digest_of(w).unwrap_or_default();
        ensure!(
            seen.contains(&digest),
            "{request}: the referrer {} ({}) is missing",
            short(&digest),
            w.get("artifactType")
                .and_then(Value::as_str)
                .unwrap_or("an index")
        );
    }
    Ok(())
}

/// `GET /referrers/<subject>`: an index listing exactly the manifests with
/// that subject, with `artifactType` and annotations.
pub async fn referrers_list(cx: &Ctx) -> Outcome {
    let f = cx.referrers_fixture().await?;
    let (got, r) = referrers(cx, &f.repo, &f.subject.digest, &[]).await?;
    same_descriptors(&r.request, &got, &f.expected)
}

/// `?artifactType=…`: only that type, and `OCI-Filters-Applied:
/// artifactType`. (Filtering is a SHOULD; this suite wants it.)
pub async fn referrers_filter(cx: &Ctx) -> Outcome {
    let f = cx.referrers_fixture().await?;
    let (got, r) = referrers(cx, &f.repo, &f.subject.digest, &[("artifactType", SBOM)]).await?;
    let applied = r
        .header_all("OCI-Filters-Applied")
        .iter()
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == "artifactType");
    ensure!(
        applied,
        "{}: no OCI-Filters-Applied: artifactType (the filter was not applied)",
        r.request
    );
    let want: Vec<Value> = f
        .expected
        .iter()
        .filter(|d| d.get("artifactType") == Some(&json!(SBOM)))
        .cloned()
        .collect();
    same_descriptors(&r.request, &got, &want)
}

/// A manifest whose `artifactType` is the empty string is listed with its
/// config's media type ("If the artifactType is empty or missing …"), or
/// refused as invalid (400 `MANIFEST_INVALID`).
pub async fn referrers_empty_artifact_type(cx: &Ctx) -> Outcome {
    let repo = cx.repo("artifacts-empty-type");
    let subject = Image::oci(&[64]);
    cx.push_image(&repo, "subject", &subject).await?;
    let config_type = "application/vnd.example.empty-type.config.v1+json";
    let a = artifact(
        &subject.manifest,
        Some(""),
        Some(config_type),
        json!({"k": "v"}),
    );
    cx.push_blobs(&repo, &a.blobs).await?;
    let r = cx
        .put_manifest(&repo, &a.manifest.digest, &a.manifest)
        .await?;
    if r.status() == 400 {
        expect::error(&r, 400, &["MANIFEST_INVALID"])?;
        cx.note("refused: artifactType \"\" is not a media type");
        return Ok(());
    }
    expect::status(&r, 201)?;
    let (got, r) = referrers(cx, &repo, &subject.manifest.digest, &[]).await?;
    let mut want = a.manifest.descriptor();
    want["artifactType"] = json!(config_type);
    want["annotations"] = json!({"k": "v"});
    same_descriptors(&r.request, &got, &[want])
}

/// A subject with no referrers: 200 and an empty index.
pub async fn referrers_unknown_subject(cx: &Ctx) -> Outcome {
    let f = cx.referrers_fixture().await?;
    let (got, r) = referrers(cx, &f.repo, &unknown_digest(), &[]).await?;
    ensure!(
        got.is_empty(),
        "{}: {} descriptors for a subject nothing refers to",
        r.request,
        got.len()
    );
    Ok(())
}

/// A malformed digest: 400.
pub async fn referrers_invalid_digest(cx: &Ctx) -> Outcome {
    let f = cx.referrers_fixture().await?;
    let r = cx
        .get(cx.v2(&f.repo, "referrers/sha256:not-a-digest")?)
        .await?;
    expect::error_any_code(&r, &[400])
}

/// For other modules: the listed digests for `subject`.
pub async fn referrer_digests(cx: &Ctx, repo: &str, subject: &str) -> Outcome<Vec<String>> {
    let (got, _) = referrers(cx, repo, subject, &[]).await?;
    Ok(got
        .iter()
        .filter_map(|d| d.get("digest").and_then(Value::as_str).map(str::to_owned))
        .collect())
}
