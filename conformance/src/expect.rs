//! Assertions on responses. Each returns `Err` with a one-line reason that
//! names the request, what the spec wants, and what came back.

use crate::client::Response;

/// The result of a check, or of a step in one.
pub type Outcome<T = ()> = Result<T, String>;

/// Fails the check with a formatted reason unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}
pub(crate) use ensure;

/// Every error code the spec defines (its "Error Codes" table), and the two
/// legacy Docker codes it says clients may meet.
pub const SPEC_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];
const LEGACY_CODES: &[&str] = &["TAG_INVALID", "MANIFEST_UNVERIFIED"];

/// The start of a body, for reasons.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut out: String = text.chars().take(80).collect();
    if text.chars().count() > 80 {
        out.push('…');
    }
    out.replace(['\n', '\r'], " ")
}

/// Checks that a body is the spec's error JSON:
/// `{"errors":[{"code":"…","message":"…","detail":…}]}` with at least one
/// error, every `code` one of the spec's, every `message` (if any) a string.
/// Returns the codes.
pub fn error_body(body: &[u8]) -> Outcome<Vec<String>> {
    let json: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| format!("the body is not JSON: {:?}", snippet(body)))?;
    let errors = json
        .get("errors")
        .and_then(|e| e.as_array())
        .ok_or_else(|| format!("the body has no `errors` array: {:?}", snippet(body)))?;
    ensure!(!errors.is_empty(), "the `errors` array is empty");
    let mut codes = Vec::new();
    for e in errors {
        let code = e
            .get("code")
            .and_then(|c| c.as_str())
            .ok_or_else(|| format!("an error has no string `code`: {e}"))?;
        ensure!(
            SPEC_CODES.contains(&code) || LEGACY_CODES.contains(&code),
            "error code {code:?} is not one of the spec's codes"
        );
        if let Some(m) = e.get("message") {
            ensure!(m.is_string(), "the `message` of {code} is not a string");
        }
        codes.push(code.to_owned());
    }
    Ok(codes)
}

/// The codes of a body in the spec's error shape (lenient about unknown
/// codes: used to describe responses, not to judge them).
pub fn error_codes(body: &[u8]) -> Outcome<Vec<String>> {
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let errors = json
        .get("errors")
        .and_then(|e| e.as_array())
        .ok_or("no errors array")?;
    Ok(errors
        .iter()
        .map(|e| {
            e.get("code")
                .and_then(|c| c.as_str())
                .unwrap_or("?")
                .to_owned()
        })
        .collect())
}

/// The spec's rules for `Warning` headers: each warning is
/// `299 - "<text>"` (code 299, agent `-`, no date), and all of them
/// together are at most 4096 bytes.
pub fn warnings(values: &[&str]) -> Outcome {
    let total: usize = values.iter().map(|v| v.len()).sum();
    ensure!(
        total <= 4096,
        "{total} bytes of Warning headers (at most 4096)"
    );
    for value in values {
        let mut rest = value.trim();
        loop {
            rest = rest.trim_start_matches([',', ' ', '\t']);
            if rest.is_empty() {
                break;
            }
            let Some(after) = rest.strip_prefix("299 - \"") else {
                return Err(format!("Warning {value:?} is not `299 - \"<text>\"`"));
            };
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or_else(|| format!("Warning {value:?}: the text is not closed"))?;
            rest = after[end + 1..].trim_start();
            ensure!(
                rest.is_empty() || rest.starts_with(','),
                "Warning {value:?} has more than code, agent and text (a warn-date?)"
            );
        }
    }
    Ok(())
}

/// The status is exactly `want`.
pub fn status(r: &Response, want: u16) -> Outcome {
    ensure!(
        r.status() == want,
        "{}: expected {want}, got {}",
        r.request,
        r.summary()
    );
    Ok(())
}

/// The status is one of `want`.
pub fn status_in(r: &Response, want: &[u16]) -> Outcome {
    ensure!(
        want.contains(&r.status()),
        "{}: expected one of {want:?}, got {}",
        r.request,
        r.summary()
    );
    Ok(())
}

/// An error response: exactly `want` status, the spec's error JSON, and one
/// of `codes` among its errors.
pub fn error(r: &Response, want: u16, codes: &[&str]) -> Outcome {
    status(r, want)?;
    let got = error_body(&r.body).map_err(|e| format!("{} → {want}, but {e}", r.request))?;
    ensure!(
        got.iter().any(|c| codes.contains(&c.as_str())),
        "{}: expected {want} with {}, got {want} {}",
        r.request,
        codes.join(" or "),
        got.join(",")
    );
    Ok(())
}

/// An error response with `want` status whose body, if it has one, is the
/// spec's error JSON (any code).
pub fn error_any_code(r: &Response, want: &[u16]) -> Outcome {
    status_in(r, want)?;
    if !r.body.is_empty() {
        error_body(&r.body).map_err(|e| format!("{} → {}, but {e}", r.request, r.status()))?;
    }
    Ok(())
}

/// A header that must be present.
pub fn header<'r>(r: &'r Response, name: &str) -> Outcome<&'r str> {
    r.header(name)
        .ok_or_else(|| format!("{} → {}: no {name} header", r.request, r.status()))
}

/// A header that must be present with exactly this value.
pub fn header_eq(r: &Response, name: &str, want: &str) -> Outcome {
    let got = header(r, name)?;
    ensure!(
        got == want,
        "{}: {name} is {got:?}, expected {want:?}",
        r.request
    );
    Ok(())
}

/// `Content-Type` has this media type (parameters ignored, as the spec
/// tells clients to).
pub fn content_type(r: &Response, want: &str) -> Outcome {
    let got = header(r, "Content-Type")?;
    let essence = got.split(';').next().unwrap_or_default().trim();
    ensure!(
        essence.eq_ignore_ascii_case(want),
        "{}: Content-Type is {got:?}, expected {want:?}",
        r.request
    );
    Ok(())
}

/// `Content-Length`, when present, is `want`; with `required`, it must be.
pub fn content_length(r: &Response, want: usize, required: bool) -> Outcome {
    match r.header("Content-Length") {
        Some(v) => ensure!(
            v.trim().parse::<usize>() == Ok(want),
            "{}: Content-Length is {v:?}, expected {want}",
            r.request
        ),
        None => ensure!(!required, "{}: no Content-Length header", r.request),
    }
    Ok(())
}

/// The body is exactly `want`.
pub fn body_eq(r: &Response, want: &[u8]) -> Outcome {
    ensure!(
        r.body.as_ref() == want,
        "{}: the body ({} bytes) differs from what was pushed ({} bytes)",
        r.request,
        r.body.len(),
        want.len()
    );
    Ok(())
}

/// The body is empty (HEAD, 204).
pub fn no_body(r: &Response) -> Outcome {
    ensure!(
        r.body.is_empty(),
        "{}: expected no body, got {} bytes",
        r.request,
        r.body.len()
    );
    Ok(())
}

/// The body as JSON.
pub fn json(r: &Response) -> Outcome<serde_json::Value> {
    serde_json::from_slice(&r.body).map_err(|e| {
        format!(
            "{}: the body is not JSON ({e}): {:?}",
            r.request,
            snippet(&r.body)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies() {
        let ok: &[&str] = &[
            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown","detail":{"d":1}}]}"#,
            r#"{"errors":[{"code":"DENIED"}]}"#,
            r#"{"errors":[{"code":"TAG_INVALID","message":""}]}"#,
        ];
        for body in ok {
            assert!(error_body(body.as_bytes()).is_ok(), "{body}");
        }
        let bad: &[&str] = &[
            "404 page not found",
            r#"{"errors":[]}"#,
            r#"{"error":"x"}"#,
            r#"{"errors":[{"code":"RANGE_INVALID"}]}"#,
            r#"{"errors":[{"code":"UNKNOWN","message":"x"}]}"#,
            r#"{"errors":[{"code":"DENIED","message":3}]}"#,
            r#"{"errors":[{"message":"no code"}]}"#,
        ];
        for body in bad {
            assert!(error_body(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn warning_headers() {
        let ok: &[&[&str]] = &[
            &[],
            &[r#"299 - "Your auth token will expire in 30 seconds.""#],
            &[r#"299 - "a, with a comma", 299 - "b \"quoted\"""#],
            &[r#"299 - "one""#, r#"299 - "two""#],
        ];
        for values in ok {
            assert!(warnings(values).is_ok(), "{values:?}");
        }
        let long = format!(r#"299 - "{}""#, "x".repeat(4096));
        let bad: &[&[&str]] = &[
            &[r#"199 - "stale""#],
            &[r#"299 registry "agent""#],
            &[r#"299 - "dated" "Sat, 01 Jan 2000 00:00:00 GMT""#],
            &[r#"299 - "unterminated"#],
            &["299 - bare"],
            &[&long],
        ];
        for values in bad {
            assert!(warnings(values).is_err(), "{values:?}");
        }
    }
}
