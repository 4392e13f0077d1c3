//! Parses the part of a `/v2/` path after the prefix into an endpoint.
//!
//! Repository names contain slashes, so the path is split on the *last*
//! `/manifests/`, `/blobs/`, `/blobs/uploads/`, `/referrers/` or `/tags/list`;
//! what follows those (a reference, digest or upload id) never has a slash.
//! The raw (still percent-encoded) path is parsed: names, tags, digests and
//! upload ids never need encoding, so any `%` is refused rather than decoded.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: &'a str },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: &'a str, reference: &'a str },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: &'a str, digest: &'a str },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: &'a str },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { name: &'a str, id: &'a str },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: &'a str, digest: &'a str },
}

impl Endpoint<'_> {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Endpoint::Base => "v2.base",
            Endpoint::Catalog => "v2.catalog",
            Endpoint::Tags { .. } => "v2.tags",
            Endpoint::Manifest { .. } => "v2.manifest",
            Endpoint::Blob { .. } => "v2.blob",
            Endpoint::UploadStart { .. } => "v2.upload_start",
            Endpoint::Upload { .. } => "v2.upload",
            Endpoint::Referrers { .. } => "v2.referrers",
        }
    }

    /// The repository the endpoint addresses, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Tags { name }
            | Endpoint::Manifest { name, .. }
            | Endpoint::Blob { name, .. }
            | Endpoint::UploadStart { name }
            | Endpoint::Upload { name, .. }
            | Endpoint::Referrers { name, .. } => Some(name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path has a `%`: names and references never need encoding.
    Encoded,
    /// No endpoint of the spec has this shape.
    NotFound,
}

/// Parses `rest`, the path after `/v2/`.
pub fn parse(rest: &str) -> Result<Endpoint<'_>, PathError> {
    if rest.contains('%') {
        return Err(PathError::Encoded);
    }
    if rest.is_empty() {
        return Ok(Endpoint::Base);
    }
    if rest == "_catalog" {
        return Ok(Endpoint::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return named(name, |name| Endpoint::Tags { name });
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return named(name, |name| Endpoint::UploadStart { name });
    }
    // The last of the keyword segments decides.
    let candidates = [("/manifests/", 0u8), ("/blobs/", 1), ("/referrers/", 2)];
    let (pos, keyword, kind) = candidates
        .iter()
        .filter_map(|(k, kind)| rest.rfind(k).map(|p| (p, *k, *kind)))
        .max_by_key(|(p, _, _)| *p)
        .ok_or(PathError::NotFound)?;
    let name = &rest[..pos];
    let tail = &rest[pos + keyword.len()..];
    if name.is_empty() || tail.is_empty() {
        return Err(PathError::NotFound);
    }
    if kind == 1 {
        // `/blobs/uploads/<id>`: the last `/blobs/` is followed by `uploads/`.
        if let Some(id) = tail.strip_prefix("uploads/") {
            if id.is_empty() || id.contains('/') {
                return Err(PathError::NotFound);
            }
            return Ok(Endpoint::Upload { name, id });
        }
    }
    if tail.contains('/') {
        return Err(PathError::NotFound);
    }
    Ok(match kind {
        0 => Endpoint::Manifest {
            name,
            reference: tail,
        },
        1 => Endpoint::Blob { name, digest: tail },
        _ => Endpoint::Referrers { name, digest: tail },
    })
}

fn named<'a>(
    name: &'a str,
    f: impl FnOnce(&'a str) -> Endpoint<'a>,
) -> Result<Endpoint<'a>, PathError> {
    if name.is_empty() {
        Err(PathError::NotFound)
    } else {
        Ok(f(name))
    }
}

#[cfg(test)]
mod tests {
    use super::Endpoint as E;
    use super::*;

    #[test]
    fn table() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let blob = format!("a/b/blobs/{d}");
        let cases: Vec<(&str, Result<E, PathError>)> = vec![
            ("", Ok(E::Base)),
            ("_catalog", Ok(E::Catalog)),
            ("a/tags/list", Ok(E::Tags { name: "a" })),
            ("a/b/c/tags/list", Ok(E::Tags { name: "a/b/c" })),
            (
                "a/manifests/latest",
                Ok(E::Manifest {
                    name: "a",
                    reference: "latest",
                }),
            ),
            (
                "x/manifests/y/manifests/v1",
                Ok(E::Manifest {
                    name: "x/manifests/y",
                    reference: "v1",
                }),
            ),
            (
                &blob,
                Ok(E::Blob {
                    name: "a/b",
                    digest: d,
                }),
            ),
            ("a/blobs/uploads/", Ok(E::UploadStart { name: "a" })),
            ("a/blobs/uploads", Ok(E::UploadStart { name: "a" })),
            (
                "a/blobs/uploads/abc-1",
                Ok(E::Upload {
                    name: "a",
                    id: "abc-1",
                }),
            ),
            (
                "x/blobs/uploads/blobs/uploads/id",
                Ok(E::Upload {
                    name: "x/blobs/uploads",
                    id: "id",
                }),
            ),
            (
                "x/blobs/uploads/blobs/dg",
                Ok(E::Blob {
                    name: "x/blobs/uploads",
                    digest: "dg",
                }),
            ),
            (
                "a/referrers/dg",
                Ok(E::Referrers {
                    name: "a",
                    digest: "dg",
                }),
            ),
            ("tags/list", Err(PathError::NotFound)),
            ("/tags/list", Err(PathError::NotFound)),
            ("a/manifests/", Err(PathError::NotFound)),
            ("manifests/x", Err(PathError::NotFound)),
            ("a/manifests/x/y", Err(PathError::NotFound)),
            ("a/blobs/uploads/x/y", Err(PathError::NotFound)),
            ("a", Err(PathError::NotFound)),
            ("a/b", Err(PathError::NotFound)),
            ("a%2fb/manifests/x", Err(PathError::Encoded)),
            ("a/manifests/%2e%2e", Err(PathError::Encoded)),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), want, "{input:?}");
        }
    }
}
