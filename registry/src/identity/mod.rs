//! Where people sign in from: an LDAP directory and an OpenID Connect
//! provider. What either says about a person — whether they administer
//! Slipway, and the projects their groups grant — is mapped here
//! ([`Mapping`]) and written with `Metadata::directory_sync`.

pub mod ldap;
pub mod oidc;

use slipway_storage::meta::Role;

/// What the directory says about a person now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The username, as the person signs in.
    pub user: String,
    /// Their entry in the directory.
    pub dn: String,
    /// In the admin group.
    pub is_admin: bool,
    /// The projects their groups grant, with the role.
    pub grants: Vec<(String, Role)>,
    /// The groups found (DNs), for the audit log.
    pub groups: Vec<String>,
}

/// How groups become projects and admin: the same rules for a directory's
/// groups and a provider's groups claim.
pub struct Mapping<'a> {
    /// `cn=tools.{tool},ou=servicegroups,…`; empty: no projects.
    pub group_pattern: &'a str,
    /// `tool-{tool}`.
    pub project_pattern: &'a str,
    /// Empty: nobody administers through a group.
    pub admin_group: &'a str,
    pub role: Role,
}

impl Mapping<'_> {
    /// What `groups` say about `user`.
    pub fn answer(&self, user: &str, dn: String, groups: Vec<String>) -> Answer {
        let is_admin =
            !self.admin_group.is_empty() && groups.iter().any(|g| same_dn(g, self.admin_group));
        let mut grants: Vec<(String, Role)> = if self.group_pattern.is_empty() {
            Vec::new()
        } else {
            // The admin group (`cn=tools.admin` on Toolforge) matches the
            // pattern too, but is no tool.
            groups
                .iter()
                .filter(|g| self.admin_group.is_empty() || !same_dn(g, self.admin_group))
                .filter_map(|g| tool_of(self.group_pattern, g))
                .map(|tool| (self.project_pattern.replace("{tool}", &tool), self.role))
                .collect()
        };
        grants.sort();
        grants.dedup();
        Answer {
            user: user.to_owned(),
            dn,
            is_admin,
            grants,
            groups,
        }
    }
}

/// Whether `user` may be a username: 1 to 64 letters, digits, `.`, `_`
/// or `-`, starting with a letter or digit. Anything else (a filter's
/// `*)(uid=*`, a DN's `,`) never reaches the directory.
pub fn valid_username(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The tool a group DN names under `pattern` (`cn=tools.{tool},ou=…`),
/// compared without case and without spaces after commas.
pub fn tool_of(pattern: &str, group: &str) -> Option<String> {
    let norm = |s: &str| {
        s.split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(",")
            .to_ascii_lowercase()
    };
    let (prefix, suffix) = pattern.split_once("{tool}")?;
    let (prefix, suffix) = (norm(prefix), norm(suffix));
    let group = norm(group);
    let tool = group.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
    let ok = !tool.is_empty()
        && tool
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    ok.then(|| tool.to_owned())
}

/// Whether two DNs are the same (case and spaces after commas aside).
pub fn same_dn(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.split(',')
            .map(|p| p.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["alice", "bob.smith", "a1", "x-y_z"] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in [
            "",
            "*)(uid=*",
            "a,b",
            "-x",
            "a b",
            "ä",
            &"a".repeat(65),
            "a)(",
            "a\\2a",
        ] {
            assert!(!valid_username(bad), "{bad}");
        }
    }

    #[test]
    fn groups_map_to_tools() {
        let p = "cn=tools.{tool},ou=servicegroups,dc=wikimedia,dc=org";
        assert_eq!(
            tool_of(p, "cn=tools.x,ou=servicegroups,dc=wikimedia,dc=org").as_deref(),
            Some("x")
        );
        assert_eq!(
            tool_of(
                p,
                "CN=tools.My-Tool, OU=servicegroups, DC=wikimedia, DC=org"
            )
            .as_deref(),
            Some("my-tool")
        );
        assert_eq!(
            tool_of(p, "cn=tools.,ou=servicegroups,dc=wikimedia,dc=org"),
            None
        );
        assert_eq!(
            tool_of(p, "cn=other,ou=servicegroups,dc=wikimedia,dc=org"),
            None
        );
        assert_eq!(tool_of(p, "cn=tools.x,ou=people,dc=wikimedia,dc=org"), None);
        assert_eq!(
            tool_of(p, "cn=tools.a,b,ou=servicegroups,dc=wikimedia,dc=org"),
            None
        );
        assert!(same_dn(
            "cn=tools.admin, ou=x,DC=org",
            "CN=tools.admin,ou=x,dc=org"
        ));
    }
}
