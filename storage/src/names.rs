//! Repository names and tags, validated against the distribution-spec grammar.
//!
//! ```text
//! name      = component ("/" component)*
//! component = [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
//! tag       = [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
//! ```

use std::fmt;

use crate::error::StorageError;

/// Longest repository name accepted (the spec's clients assume 255 with the host).
pub const MAX_NAME_LEN: usize = 255;

/// A validated repository name such as `tool-foo/web`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Result<RepoName, StorageError> {
        let invalid = |why: &str| StorageError::NameInvalid(format!("{:.300}: {why}", s));
        if s.is_empty() {
            return Err(invalid("a repository name cannot be empty"));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(invalid(&format!(
                "a repository name has at most {MAX_NAME_LEN} characters"
            )));
        }
        for component in s.split('/') {
            if !valid_component(component) {
                return Err(invalid(
                    "each path component must be lowercase letters and digits, \
                     separated by '.', '_', '__' or dashes",
                ));
            }
        }
        Ok(RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first path component: the project that owns the repository.
    pub fn project(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__' or one or more '-', followed by an alnum.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoName({})", self.0)
    }
}

/// Whether `s` is a valid tag.
pub fn valid_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        let cases: &[(&str, bool)] = &[
            ("a", true),
            ("tool-foo", true),
            ("tool-foo/web", true),
            ("platform/run/bookworm", true),
            ("a.b_c__d---e", true),
            ("a0/b1/c2/d3/e4/f5", true),
            ("", false),
            ("A", false),
            ("tool-Foo", false),
            ("-a", false),
            ("a-", false),
            ("a..b", false),
            ("a___b", false),
            ("a/", false),
            ("/a", false),
            ("a//b", false),
            ("a/../b", false),
            ("..", false),
            ("a%2fb", false),
            ("a b", false),
            ("a:b", false),
            ("ä", false),
        ];
        for (input, ok) in cases {
            assert_eq!(RepoName::parse(input).is_ok(), *ok, "{input:?}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(RepoName::parse(&long).is_err());
        assert!(RepoName::parse(&"a".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn project_is_first_component() {
        assert_eq!(
            RepoName::parse("tool-foo/web").unwrap().project(),
            "tool-foo"
        );
        assert_eq!(RepoName::parse("platform").unwrap().project(), "platform");
    }

    #[test]
    fn tags() {
        let cases: &[(&str, bool)] = &[
            ("latest", true),
            ("v1.2.3-rc_1", true),
            ("_x", true),
            ("X", true),
            ("", false),
            (".x", false),
            ("-x", false),
            ("a/b", false),
            ("a:b", false),
        ];
        for (input, ok) in cases {
            assert_eq!(valid_tag(input), *ok, "{input:?}");
        }
        assert!(valid_tag(&"a".repeat(128)));
        assert!(!valid_tag(&"a".repeat(129)));
    }
}
