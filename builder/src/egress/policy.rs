//! The egress policy: may a build connect to `host` at `addr`? A pure
//! function of the name, the address the name resolved to (at connect
//! time, so DNS rebinding cannot slip past it) and the settings, checked by
//! a table test. The proxy (`proxy.rs`) is a thin I/O loop around it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Whether anything not refused is allowed, or only `allow_hosts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Open,
    Allowlist,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "open" => Ok(Mode::Open),
            "allowlist" => Ok(Mode::Allowlist),
            other => Err(format!(
                "{other:?} is not an egress mode: use \"open\" or \"allowlist\""
            )),
        }
    }
}

/// A host name pattern: an exact name, or `*.suffix` (any name ending in
/// `.suffix`, not the suffix itself). Compared without case and without a
/// trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl std::str::FromStr for HostPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<HostPattern, String> {
        let bad = || {
            format!(
                "{s:?} is not a host pattern: use a name such as pypi.org, or *.suffix such as \
                 *.wikimedia.org"
            )
        };
        let lower = normalize(s);
        let (suffix, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, lower.clone()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(bad());
        }
        Ok(if suffix {
            HostPattern::Suffix(name)
        } else {
            HostPattern::Exact(name)
        })
    }
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        let host = normalize(host);
        match self {
            HostPattern::Exact(n) => host == *n,
            HostPattern::Suffix(s) => host.len() > s.len() + 1 && host.ends_with(&format!(".{s}")),
        }
    }
}

fn normalize(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// What a build may reach. Built once from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: Mode,
    pub allow_hosts: Vec<HostPattern>,
    pub deny_hosts: Vec<HostPattern>,
    /// Addresses allowed although a rule would refuse them (a site's
    /// package mirror on a private address).
    pub allow_cidrs: Vec<IpNet>,
    /// The registry's own addresses (its listen addresses; every address
    /// of this machine when it listens on all of them): always refused.
    pub own_addrs: Vec<IpAddr>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::Open,
            allow_hosts: Vec::new(),
            deny_hosts: Vec::new(),
            allow_cidrs: Vec::new(),
            own_addrs: Vec::new(),
        }
    }
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The name matches `deny_hosts`.
    DeniedHost,
    /// `mode = "allowlist"` and the name is not in `allow_hosts`.
    NotAllowed,
    /// The registry's own address (one outside the special ranges: a
    /// loopback or private one is refused by its range's rule).
    Registry,
    Loopback,
    /// RFC 1918 (10/8, 172.16/12, 192.168/16).
    Private,
    /// 169.254/16 (cloud metadata) and fe80::/10.
    LinkLocal,
    /// 100.64/10, carrier-grade NAT.
    SharedAddress,
    /// fc00::/7.
    UniqueLocal,
    Multicast,
    /// 0.0.0.0, ::, 0/8.
    Unspecified,
    /// 240/4 and the broadcast address.
    Reserved,
}

impl Rule {
    /// A stable short name, for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Rule::DeniedHost => "deny_hosts",
            Rule::NotAllowed => "not in allow_hosts",
            Rule::Registry => "the registry itself",
            Rule::Loopback => "loopback",
            Rule::Private => "private network",
            Rule::LinkLocal => "link-local",
            Rule::SharedAddress => "shared address space",
            Rule::UniqueLocal => "unique local",
            Rule::Multicast => "multicast",
            Rule::Unspecified => "unspecified",
            Rule::Reserved => "reserved",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Refuse(Rule),
}

impl Policy {
    /// Whether the name alone is refused (before any address is known:
    /// `deny_hosts`, and `allow_hosts` in allowlist mode).
    pub fn decide_name(&self, host: &str) -> Decision {
        if self.deny_hosts.iter().any(|p| p.matches(host)) {
            return Decision::Refuse(Rule::DeniedHost);
        }
        if self.mode == Mode::Allowlist && !self.allow_hosts.iter().any(|p| p.matches(host)) {
            return Decision::Refuse(Rule::NotAllowed);
        }
        Decision::Allow
    }

    /// May a build connect to `addr`, which `host` resolved to?
    pub fn decide(&self, host: &str, addr: IpAddr) -> Decision {
        if let Decision::Refuse(r) = self.decide_name(host) {
            return Decision::Refuse(r);
        }
        let addr = canonical(addr);
        let rule = special(addr);
        // The registry's own address is refused whatever allows it; named
        // by its range's rule when it has one (loopback says more).
        if self.own_addrs.iter().any(|a| canonical(*a) == addr) {
            return Decision::Refuse(rule.unwrap_or(Rule::Registry));
        }
        if self.allow_cidrs.iter().any(|n| n.contains(&addr)) {
            return Decision::Allow;
        }
        match rule {
            Some(rule) => Decision::Refuse(rule),
            None => Decision::Allow,
        }
    }
}

/// An IPv6 address that carries an IPv4 one (mapped `::ffff:a.b.c.d`, or
/// NAT64 `64:ff9b::a.b.c.d`) is judged as that IPv4 address.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// The rule that refuses a special-purpose address, if any.
fn special(addr: IpAddr) -> Option<Rule> {
    match addr {
        IpAddr::V4(a) => {
            let [o0, o1, ..] = a.octets();
            if a.is_loopback() {
                Some(Rule::Loopback)
            } else if a.is_private() {
                Some(Rule::Private)
            } else if a.is_link_local() {
                Some(Rule::LinkLocal)
            } else if o0 == 100 && (o1 & 0xc0) == 64 {
                Some(Rule::SharedAddress)
            } else if a.is_multicast() {
                Some(Rule::Multicast)
            } else if o0 == 0 {
                Some(Rule::Unspecified)
            } else if a.is_broadcast() || o0 >= 240 {
                Some(Rule::Reserved)
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            let first = a.segments()[0];
            if a == Ipv6Addr::LOCALHOST {
                Some(Rule::Loopback)
            } else if a.is_unspecified() {
                Some(Rule::Unspecified)
            } else if (first & 0xffc0) == 0xfe80 {
                Some(Rule::LinkLocal)
            } else if (first & 0xfe00) == 0xfc00 {
                Some(Rule::UniqueLocal)
            } else if a.is_multicast() {
                Some(Rule::Multicast)
            } else if (first & 0xffc0) == 0xfec0 {
                // Site-local (deprecated, still private in practice).
                Some(Rule::UniqueLocal)
            } else {
                None
            }
        }
    }
}

/// Parses `allow_cidrs` entries: `10.1.2.0/24`, `fd00::/8`, or a single
/// address.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    if let Ok(a) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(a));
    }
    Err(format!(
        "{s:?} is not a CIDR: use an address and prefix length such as 10.20.0.0/16 or fd00::/8"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            own_addrs: vec!["192.0.2.10".parse().unwrap()],
            ..Policy::default()
        }
    }

    #[test]
    fn addresses() {
        use Decision::{Allow, Refuse};
        let cases: &[(&str, Decision)] = &[
            ("127.0.0.1", Refuse(Rule::Loopback)),
            ("127.8.9.10", Refuse(Rule::Loopback)),
            ("::1", Refuse(Rule::Loopback)),
            ("::ffff:127.0.0.1", Refuse(Rule::Loopback)),
            ("64:ff9b::7f00:1", Refuse(Rule::Loopback)),
            ("10.0.0.1", Refuse(Rule::Private)),
            ("172.16.0.1", Refuse(Rule::Private)),
            ("172.31.255.254", Refuse(Rule::Private)),
            ("192.168.1.1", Refuse(Rule::Private)),
            ("::ffff:10.1.2.3", Refuse(Rule::Private)),
            ("169.254.169.254", Refuse(Rule::LinkLocal)),
            ("fe80::1", Refuse(Rule::LinkLocal)),
            ("100.64.0.1", Refuse(Rule::SharedAddress)),
            ("100.127.255.255", Refuse(Rule::SharedAddress)),
            ("fc00::1", Refuse(Rule::UniqueLocal)),
            ("fd12:3456::1", Refuse(Rule::UniqueLocal)),
            ("224.0.0.1", Refuse(Rule::Multicast)),
            ("ff02::1", Refuse(Rule::Multicast)),
            ("0.0.0.0", Refuse(Rule::Unspecified)),
            ("0.1.2.3", Refuse(Rule::Unspecified)),
            ("::", Refuse(Rule::Unspecified)),
            ("255.255.255.255", Refuse(Rule::Reserved)),
            ("240.0.0.1", Refuse(Rule::Reserved)),
            ("192.0.2.10", Refuse(Rule::Registry)),
            ("::ffff:192.0.2.10", Refuse(Rule::Registry)),
            // Public addresses, and the edges of the refused ranges.
            ("151.101.0.223", Allow),
            ("2a04:4e42::223", Allow),
            ("172.32.0.1", Allow),
            ("172.15.255.255", Allow),
            ("100.128.0.1", Allow),
            ("100.63.255.255", Allow),
            ("192.0.2.11", Allow),
            ("203.0.113.80", Allow),
            ("11.0.0.1", Allow),
        ];
        let p = policy();
        for (addr, want) in cases {
            assert_eq!(
                p.decide("example.org", addr.parse().unwrap()),
                *want,
                "{addr}"
            );
        }
    }

    #[test]
    fn host_rules_and_allowed_cidrs() {
        use Decision::{Allow, Refuse};
        let p = Policy {
            mode: Mode::Open,
            deny_hosts: vec![
                "evil.example".parse().unwrap(),
                "*.bad.example".parse().unwrap(),
            ],
            allow_cidrs: vec![
                parse_cidr("10.20.0.0/16").unwrap(),
                parse_cidr("fd00::5").unwrap(),
            ],
            own_addrs: vec!["10.20.0.1".parse().unwrap()],
            ..Policy::default()
        };
        let public: IpAddr = "151.101.0.223".parse().unwrap();
        let cases: &[(&str, &str, Decision)] = &[
            ("evil.example", "151.101.0.223", Refuse(Rule::DeniedHost)),
            ("EVIL.example.", "151.101.0.223", Refuse(Rule::DeniedHost)),
            ("a.bad.example", "151.101.0.223", Refuse(Rule::DeniedHost)),
            ("bad.example", "151.101.0.223", Allow),
            ("notbad.example", "151.101.0.223", Allow),
            ("mirror.site", "10.20.3.4", Allow),
            ("mirror.site", "10.21.3.4", Refuse(Rule::Private)),
            ("mirror.site", "fd00::5", Allow),
            ("mirror.site", "fd00::6", Refuse(Rule::UniqueLocal)),
            // The registry stays refused even inside an allowed range.
            ("mirror.site", "10.20.0.1", Refuse(Rule::Private)),
        ];
        for (host, addr, want) in cases {
            assert_eq!(
                p.decide(host, addr.parse().unwrap()),
                *want,
                "{host} {addr}"
            );
        }
        let allowlist = Policy {
            mode: Mode::Allowlist,
            allow_hosts: vec![
                "pypi.org".parse().unwrap(),
                "*.pythonhosted.org".parse().unwrap(),
            ],
            ..Policy::default()
        };
        assert_eq!(allowlist.decide("pypi.org", public), Allow);
        assert_eq!(allowlist.decide("files.pythonhosted.org", public), Allow);
        assert_eq!(
            allowlist.decide("registry.npmjs.org", public),
            Refuse(Rule::NotAllowed)
        );
        // An allowed name still cannot reach a refused address.
        assert_eq!(
            allowlist.decide("pypi.org", "127.0.0.1".parse().unwrap()),
            Refuse(Rule::Loopback)
        );
    }

    #[test]
    fn settings_parse_or_say_why_not() {
        assert_eq!("open".parse::<Mode>(), Ok(Mode::Open));
        assert!("closed".parse::<Mode>().unwrap_err().contains("\"closed\""));
        for good in ["pypi.org", "*.wikimedia.org", "PyPI.org.", "a_b.example"] {
            assert!(good.parse::<HostPattern>().is_ok(), "{good}");
        }
        for bad in [
            "", "*", "*.", "a..b", "http://x", "a b", "-a.org", "*.*.org", "x/y",
        ] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_cidr("10.20.30.40/16").unwrap().to_string(),
            "10.20.0.0/16"
        );
        assert_eq!(parse_cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        for bad in ["10.0.0.0/33", "10.0.0", "x", "fd00::/129", ""] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
    }
}
