//! Push to deploy: what a forge's webhook says (GitHub, GitLab, Gitea,
//! Forgejo), whether its signature holds, whether a push builds under a
//! trigger, and the repository poller.
//!
//! The webhook's signature is checked over the exact bytes received before
//! anything is parsed. The build is always of the trigger's own source URL
//! (never a URL from the payload) at the pushed commit.

use std::time::Duration;

use axum::http::HeaderMap;
use hmac::{KeyInit as _, Mac as _};
use serde_json::Value;
use slipway_storage::meta::{Delivery, Trigger, now_ms};
use subtle::ConstantTimeEq as _;

use crate::server::AppState;

/// Who sent a webhook, told apart by its signature header (Gitea and
/// Forgejo also send GitHub's event headers, without GitHub's signature
/// header in older versions and with it in newer ones: theirs come first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    GitLab,
    Gitea,
    Forgejo,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Forgejo => "forgejo",
        }
    }
}

/// A webhook whose signature held: who sent it, the event, the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub provider: Provider,
    /// `push`, `ping`, `Push Hook`, `Tag Push Hook`, …
    pub event: String,
    /// The forge's delivery id, when it sends one.
    pub delivery: Option<String>,
}

/// Why a webhook was refused before its body was read as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSignature {
    /// The provider its headers claim, if any.
    pub provider: Option<Provider>,
    pub sentence: String,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Whether `hex_sig` is the HMAC-SHA256 of `body` under `secret` (compared
/// in constant time).
fn hmac_matches(secret: &[u8], body: &[u8], hex_sig: &str) -> bool {
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// The HMAC-SHA256 of `body` under `secret`, in hex (what forges send).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a webhook's signature over the raw `body` with the trigger's
/// `secret`, and says who sent it.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<Signed, BadSignature> {
    let refuse = |provider: Option<Provider>, sentence: String| BadSignature { provider, sentence };
    let hmac_provider = if let Some(sig) = header(headers, "x-forgejo-signature") {
        Some((Provider::Forgejo, sig))
    } else if let Some(sig) = header(headers, "x-gitea-signature") {
        Some((Provider::Gitea, sig))
    } else {
        header(headers, "x-gogs-signature").map(|sig| (Provider::Gitea, sig))
    };
    let (provider, ok) = if let Some((p, sig)) = hmac_provider {
        (p, hmac_matches(secret, body, sig))
    } else if let Some(sig) = header(headers, "x-hub-signature-256") {
        let ok = sig
            .strip_prefix("sha256=")
            .is_some_and(|hex| hmac_matches(secret, body, hex));
        (Provider::GitHub, ok)
    } else if let Some(token) = header(headers, "x-gitlab-token") {
        (Provider::GitLab, bool::from(token.as_bytes().ct_eq(secret)))
    } else {
        let claimed = if header(headers, "x-gitlab-event").is_some() {
            Some(Provider::GitLab)
        } else if header(headers, "x-github-event").is_some() {
            Some(Provider::GitHub)
        } else {
            None
        };
        return Err(refuse(
            claimed,
            "the delivery has no signature: set the trigger's secret in the forge's webhook \
             settings (GitHub and Gitea/Forgejo sign with it; GitLab sends it as the secret token)"
                .into(),
        ));
    };
    if !ok {
        return Err(refuse(
            Some(provider),
            match provider {
                Provider::GitLab => {
                    "the secret token (X-Gitlab-Token) is not this trigger's secret".into()
                }
                p => format!(
                    "the {} signature does not match this trigger's secret (over the body as \
                     received)",
                    match p {
                        Provider::GitHub => "X-Hub-Signature-256",
                        Provider::Gitea => "X-Gitea-Signature",
                        _ => "X-Forgejo-Signature",
                    }
                ),
            },
        ));
    }
    let (event, delivery) = match provider {
        Provider::GitHub => (
            header(headers, "x-github-event"),
            header(headers, "x-github-delivery"),
        ),
        Provider::GitLab => (
            header(headers, "x-gitlab-event"),
            header(headers, "x-gitlab-event-uuid")
                .or_else(|| header(headers, "x-gitlab-webhook-uuid")),
        ),
        Provider::Gitea => (
            header(headers, "x-gitea-event").or_else(|| header(headers, "x-gogs-event")),
            header(headers, "x-gitea-delivery").or_else(|| header(headers, "x-gogs-delivery")),
        ),
        Provider::Forgejo => (
            header(headers, "x-forgejo-event").or_else(|| header(headers, "x-gitea-event")),
            header(headers, "x-forgejo-delivery").or_else(|| header(headers, "x-gitea-delivery")),
        ),
    };
    Ok(Signed {
        provider,
        event: event.unwrap_or("").chars().take(64).collect(),
        delivery: delivery
            .filter(|d| !d.is_empty())
            .map(|d| d.chars().take(128).collect()),
    })
}

/// A push, as the forge described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// `refs/heads/main`, `refs/tags/v1`.
    pub git_ref: String,
    /// The pushed commit; `None` when the push deleted the ref.
    pub commit: Option<String>,
    /// The commit the ref was at before (`before`); `None` for a new ref.
    pub before: Option<String>,
    /// The repository's URLs as the payload gives them (clone, web, ssh).
    pub repo_urls: Vec<String>,
}

/// What a signed webhook's body says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// GitHub's `ping` (sent when a webhook is created).
    Ping,
    Push(Push),
    /// Anything else (issues, merge requests, a Gitea `delete` event…).
    Other(String),
}

const ZERO: &str = "0000000000000000000000000000000000000000";

fn is_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads the event from the (signed) body.
pub fn parse(signed: &Signed, body: &[u8]) -> Result<Event, String> {
    let kind = signed.event.to_ascii_lowercase();
    let push = match signed.provider {
        Provider::GitLab => kind == "push hook" || kind == "tag push hook",
        _ => kind == "push",
    };
    if signed.provider == Provider::GitHub && kind == "ping" {
        return Ok(Event::Ping);
    }
    if !push {
        return Ok(Event::Other(signed.event.clone()));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the delivery's body is not JSON: {e}"))?;
    if !v.is_object() {
        return Err("the delivery's body is not a JSON object".into());
    }
    let git_ref = v["ref"]
        .as_str()
        .filter(|r| r.starts_with("refs/") && r.len() <= 255)
        .ok_or("the push event has no \"ref\" (such as refs/heads/main)")?
        .to_owned();
    let str_at = |path: &[&str]| -> Option<String> {
        let mut cur = &v;
        for p in path {
            cur = cur.get(p)?;
        }
        cur.as_str().map(str::to_owned)
    };
    let after = str_at(&["after"]);
    let (commit, urls): (Option<String>, Vec<Option<String>>) = match signed.provider {
        Provider::GitLab => {
            // checkout_sha is null when the push deleted the ref.
            let commit = match &v["checkout_sha"] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                _ => return Err("the push event's checkout_sha is not a commit".into()),
            };
            (
                commit.filter(|c| c != ZERO),
                vec![
                    str_at(&["project", "git_http_url"]),
                    str_at(&["project", "web_url"]),
                    str_at(&["project", "git_ssh_url"]),
                    str_at(&["repository", "git_http_url"]),
                    str_at(&["repository", "homepage"]),
                    str_at(&["repository", "url"]),
                ],
            )
        }
        _ => {
            let deleted = v["deleted"].as_bool().unwrap_or(false);
            (
                after.filter(|a| !deleted && a != ZERO),
                vec![
                    str_at(&["repository", "clone_url"]),
                    str_at(&["repository", "html_url"]),
                    str_at(&["repository", "ssh_url"]),
                    str_at(&["repository", "git_url"]),
                    str_at(&["repository", "url"]),
                ],
            )
        }
    };
    if let Some(c) = &commit
        && !is_commit(c)
    {
        return Err(format!(
            "the push event's commit {c:.80} is not a commit id"
        ));
    }
    let repo_urls: Vec<String> = urls.into_iter().flatten().collect();
    if repo_urls.is_empty() {
        return Err("the push event names no repository URL".into());
    }
    let before = str_at(&["before"])
        .map(|b| b.to_ascii_lowercase())
        .filter(|b| b != ZERO && is_commit(b));
    Ok(Event::Push(Push {
        git_ref,
        commit: commit.map(|c| c.to_ascii_lowercase()),
        before,
        repo_urls,
    }))
}

/// A repository URL reduced to what identifies it: host (lower case, the
/// scheme's default port dropped) and path (lower case, without `.git` and
/// slashes at the ends, without credentials). `git@host:owner/repo.git`
/// reads as `host/owner/repo`.
pub fn repo_key(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r.to_owned()),
        None => match url.split_once(':') {
            // scp-like: user@host:path
            Some((host, path)) if !host.contains('/') => (
                "ssh".to_owned(),
                format!("{host}/{}", path.trim_start_matches('/')),
            ),
            _ => (String::new(), url.to_owned()),
        },
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit('@')
        .next()
        .unwrap_or(authority)
        .to_ascii_lowercase();
    let host = match (scheme.as_str(), host.rsplit_once(':')) {
        ("https", Some((h, "443"))) | ("http", Some((h, "80"))) | ("ssh", Some((h, "22"))) => {
            h.to_owned()
        }
        _ => host,
    };
    let path = path.trim_matches('/').to_ascii_lowercase();
    let path = path.strip_suffix(".git").unwrap_or(&path);
    format!("{host}/{}", path.trim_end_matches('/'))
}

/// Whether the push's repository is the trigger's.
pub fn same_repository(trigger_url: &str, push: &Push) -> bool {
    let want = repo_key(trigger_url);
    push.repo_urls.iter().any(|u| repo_key(u) == want)
}

/// A branch or tag pattern: a name, or a glob (`*` within a path segment,
/// `**` across them, `?`, `[…]`).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
    {
        Ok(g) => g.compile_matcher().is_match(name),
        Err(_) => pattern == name,
    }
}

/// Checks a pattern as the API takes it.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let ok = !pattern.is_empty()
        && pattern.len() <= 255
        && !pattern.starts_with('-')
        && !pattern.starts_with("refs/")
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-+@*?[]!".contains(&b));
    if !ok {
        return Err(format!(
            "{pattern:.100} is not a branch or tag pattern: give a name (main) or a glob \
             (release/*), without refs/heads/"
        ));
    }
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("{pattern:.100} is not a valid glob: {e}"))?;
    Ok(())
}

/// What a push does under a trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Build `commit`, pushed to `git_ref` (a branch or tag name).
    Build { git_ref: String, commit: String },
    /// Nothing; why, for the forge and the delivery record.
    Ignore(String),
}

/// Whether a push (of the trigger's repository) builds.
pub fn decide(trigger: &Trigger, push: &Push) -> Decision {
    let (kind, name, pattern) = if let Some(b) = push.git_ref.strip_prefix("refs/heads/") {
        ("branch", b, Some(trigger.ref_pattern.as_str()))
    } else if let Some(t) = push.git_ref.strip_prefix("refs/tags/") {
        ("tag", t, trigger.tag_pattern.as_deref())
    } else {
        return Decision::Ignore(format!(
            "ignored: {} is neither a branch nor a tag",
            push.git_ref
        ));
    };
    let Some(commit) = &push.commit else {
        return Decision::Ignore(format!("ignored: the push deleted the {kind} {name}"));
    };
    match pattern {
        None => Decision::Ignore(format!(
            "ignored: the push is of the tag {name}, and this trigger builds no tags"
        )),
        Some(p) if !pattern_matches(p, name) => Decision::Ignore(format!(
            "ignored: the {kind} {name} does not match this trigger's {kind} pattern {p}"
        )),
        Some(_) => Decision::Build {
            git_ref: name.to_owned(),
            commit: commit.clone(),
        },
    }
}

// ----- polling -----------------------------------------------------------------

/// How often a replica looks for triggers due for a poll.
const POLL_TICK: Duration = Duration::from_secs(5);
/// The longest poll interval a trigger may have: a week.
pub const MAX_POLL_INTERVAL_SECS: u64 = 7 * 24 * 3600;
/// How long a replica holds a trigger it polls.
const POLL_LEASE: Duration = Duration::from_secs(300);

/// Polls the triggers that ask for it, on every replica; each due trigger
/// is leased to one replica (see `Metadata::triggers_poll_claim`).
pub async fn poller(state: AppState) {
    let owner = format!(
        "{}#{}",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into()),
        uuid::Uuid::new_v4().simple()
    );
    loop {
        tokio::time::sleep(POLL_TICK).await;
        // Due triggers one at a time, each under its own lease (a poll
        // takes at most 60 s), until none is due.
        loop {
            let due = match state
                .meta
                .triggers_poll_claim(&owner, POLL_LEASE.as_millis() as i64, 1)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for triggers to poll");
                    break;
                }
            };
            let Some(t) = due.into_iter().next() else {
                break;
            };
            let seen = poll_one(&state, &t).await;
            let next = now_ms().saturating_add(
                t.poll_interval_secs
                    .unwrap_or(60)
                    .clamp(1, MAX_POLL_INTERVAL_SECS as i64)
                    * 1000,
            );
            if let Err(e) = state
                .meta
                .trigger_poll_done(&t.id, &owner, seen.as_deref(), next)
                .await
            {
                tracing::warn!(trigger = %t.id, error = %e, "cannot end a trigger's poll");
            }
        }
    }
}

/// Polls one trigger: the branch's commit, and a build when it changed.
/// Returns the commit seen (to remember), or `None` when it could not be
/// read or its build could not be asked for (the next poll tries again).
async fn poll_one(state: &AppState, t: &Trigger) -> Option<String> {
    let mut d = Delivery {
        trigger_id: t.id.clone(),
        at: now_ms(),
        provider: "poll".into(),
        event: "poll".into(),
        git_ref: Some(t.ref_pattern.clone()),
        ..Default::default()
    };
    let creds = match &t.git_credentials {
        Some(name) => match crate::api::triggers::git_credentials(state, &t.project, name).await {
            Ok(c) => Some(c),
            Err(e) => {
                d.result = "failed".into();
                d.detail = e.message;
                record(state, &d).await;
                return None;
            }
        },
        None => None,
    };
    let resolved = tokio::time::timeout(
        Duration::from_secs(60),
        slipway_builder::job::resolve_ref(
            &t.source_url,
            &t.ref_pattern,
            &state.isolation,
            creds.as_ref(),
        ),
    )
    .await;
    let commit = match resolved {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            d.result = "failed".into();
            d.detail = e.to_string();
            record(state, &d).await;
            return None;
        }
        Err(_) => {
            d.result = "failed".into();
            d.detail = format!(
                "the repository {} did not answer within 60 seconds",
                t.source_url
            );
            record(state, &d).await;
            return None;
        }
    };
    d.git_commit = Some(commit.clone());
    if t.poll_commit.as_deref() == Some(commit.as_str()) {
        d.result = "unchanged".into();
        d.detail = format!("{} is still at {commit}", t.ref_pattern);
        record(state, &d).await;
        return Some(commit);
    }
    let ask = crate::api::builds::BuildAsk::of_trigger(t, t.ref_pattern.clone(), commit.clone());
    let who = crate::api::builds::Who {
        subject: format!("trigger:{} (poll)", t.id),
        remote: None,
    };
    match crate::api::builds::request_build(state, &who, ask).await {
        Ok(r) => {
            (d.result, d.detail, d.build_id) = r.delivery_result();
            record(state, &d).await;
            Some(commit)
        }
        Err(e) => {
            d.result = "failed".into();
            d.detail = e.message;
            record(state, &d).await;
            None
        }
    }
}

/// Records a delivery (or poll); an unchanged poll after another of the
/// same commit updates that one instead of adding a row.
async fn record(state: &AppState, d: &Delivery) {
    if d.result == "unchanged"
        && let Ok(last) = state.meta.deliveries(&d.trigger_id, 1).await
        && let Some(prev) = last.first()
        && prev.result == "unchanged"
        && prev.git_commit == d.git_commit
    {
        let detail = format!(
            "{} (checked again at {})",
            prev.detail.split(" (checked again").next().unwrap_or(""),
            crate::api::time(d.at)
        );
        if let Err(e) = state
            .meta
            .delivery_result(prev.id, "unchanged", &detail, None)
            .await
        {
            tracing::warn!(error = %e, "cannot record a poll");
        }
        return;
    }
    if let Err(e) = state.meta.delivery_record(d).await {
        tracing::warn!(trigger = %d.trigger_id, error = %e, "cannot record a poll");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn providers_are_told_apart_by_their_signature_header() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let sig = sign(b"s3cret", body);
        let gh = headers(&[
            ("x-hub-signature-256", &format!("sha256={sig}")),
            ("x-github-event", "push"),
            ("x-github-delivery", "d1"),
        ]);
        let s = verify(&gh, body, b"s3cret").unwrap();
        assert_eq!(s.provider, Provider::GitHub);
        assert_eq!(s.delivery.as_deref(), Some("d1"));
        // Gitea sends GitHub's event headers too, and its own signature.
        let gitea = headers(&[
            ("x-gitea-signature", &sig),
            ("x-gitea-event", "push"),
            ("x-gitea-delivery", "d2"),
            ("x-github-event", "push"),
            ("x-github-delivery", "d2"),
        ]);
        assert_eq!(
            verify(&gitea, body, b"s3cret").unwrap().provider,
            Provider::Gitea
        );
        let forgejo = headers(&[
            ("x-forgejo-signature", &sig),
            ("x-gitea-signature", &sig),
            ("x-hub-signature-256", &format!("sha256={sig}")),
            ("x-forgejo-event", "push"),
            ("x-forgejo-delivery", "d3"),
        ]);
        let s = verify(&forgejo, body, b"s3cret").unwrap();
        assert_eq!(
            (s.provider, s.delivery.as_deref()),
            (Provider::Forgejo, Some("d3"))
        );
        let gl = headers(&[
            ("x-gitlab-token", "s3cret"),
            ("x-gitlab-event", "Push Hook"),
            ("x-gitlab-event-uuid", "d4"),
        ]);
        assert_eq!(
            verify(&gl, body, b"s3cret").unwrap().provider,
            Provider::GitLab
        );
        // Gitea's headers with a wrong Gitea signature and a right GitHub
        // one: Gitea's is the one judged.
        let mixed = headers(&[
            ("x-gitea-signature", &sign(b"other", body)),
            ("x-hub-signature-256", &format!("sha256={sig}")),
        ]);
        assert!(verify(&mixed, body, b"s3cret").is_err());
    }

    #[test]
    fn a_signature_holds_only_over_the_exact_bytes_with_the_secret() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let sig = sign(b"s3cret", body);
        let h = headers(&[("x-hub-signature-256", &format!("sha256={sig}"))]);
        assert!(verify(&h, br#"{"ref": "refs/heads/main"}"#, b"s3cret").is_err());
        assert!(verify(&h, body, b"other").is_err());
        let no_prefix = headers(&[("x-hub-signature-256", &sig)]);
        assert!(verify(&no_prefix, body, b"s3cret").is_err());
        let e = verify(&headers(&[("x-github-event", "push")]), body, b"s3cret").unwrap_err();
        assert!(e.sentence.contains("no signature"), "{}", e.sentence);
        assert_eq!(e.provider, Some(Provider::GitHub));
        let gl = headers(&[("x-gitlab-token", "s3cre")]);
        assert!(verify(&gl, body, b"s3cret").is_err());
    }

    #[test]
    fn repository_urls_are_compared_by_host_and_path() {
        let k = repo_key("https://GitHub.com/Owner/Repo.git/");
        assert_eq!(k, "github.com/owner/repo");
        for same in [
            "https://github.com/owner/repo",
            "http://github.com:80/owner/repo",
            "git@github.com:owner/repo.git",
            "https://user:token@github.com/owner/repo.git",
            "ssh://git@github.com:22/owner/repo.git",
        ] {
            assert_eq!(repo_key(same), k, "{same}");
        }
        for other in [
            "https://github.com/owner/repo2",
            "https://gitlab.com/owner/repo",
            "https://github.com:8443/owner/repo",
            "https://github.com/owner/repo/extra",
        ] {
            assert_ne!(repo_key(other), k, "{other}");
        }
    }

    #[test]
    fn patterns_match_names_and_globs() {
        assert!(pattern_matches("main", "main"));
        assert!(!pattern_matches("main", "main2"));
        assert!(pattern_matches("release/*", "release/1.0"));
        assert!(!pattern_matches("release/*", "release/1.0/x"));
        assert!(pattern_matches("release/**", "release/1.0/x"));
        assert!(pattern_matches("v*", "v1.2.3"));
        assert!(pattern_matches("*", "anything"));
        assert!(check_pattern("release/*").is_ok());
        assert!(check_pattern("refs/heads/main").is_err());
        assert!(check_pattern("-x").is_err());
        assert!(check_pattern("a b").is_err());
        assert!(check_pattern("[").is_err());
    }

    fn trigger(tags: Option<&str>) -> Trigger {
        Trigger {
            ref_pattern: "main".into(),
            tag_pattern: tags.map(str::to_owned),
            ..Default::default()
        }
    }

    fn push(r: &str, commit: Option<&str>) -> Push {
        Push {
            git_ref: r.into(),
            commit: commit.map(str::to_owned),
            before: None,
            repo_urls: vec![],
        }
    }

    #[test]
    fn pushes_build_or_are_ignored_with_the_reason() {
        let c = "a".repeat(40);
        assert_eq!(
            decide(&trigger(None), &push("refs/heads/main", Some(&c))),
            Decision::Build {
                git_ref: "main".into(),
                commit: c.clone()
            }
        );
        let ignored = |d: Decision| match d {
            Decision::Ignore(s) => s,
            d => panic!("{d:?}"),
        };
        assert!(
            ignored(decide(&trigger(None), &push("refs/heads/dev", Some(&c))))
                .contains("does not match")
        );
        assert!(
            ignored(decide(&trigger(None), &push("refs/heads/main", None))).contains("deleted")
        );
        assert!(
            ignored(decide(&trigger(None), &push("refs/tags/v1", Some(&c))))
                .contains("builds no tags")
        );
        assert!(matches!(
            decide(&trigger(Some("v*")), &push("refs/tags/v1", Some(&c))),
            Decision::Build { .. }
        ));
        assert!(matches!(
            decide(&trigger(Some("v*")), &push("refs/tags/x1", Some(&c))),
            Decision::Ignore(_)
        ));
    }
}
