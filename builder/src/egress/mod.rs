//! A build's way out: the egress [`policy`] (which names and addresses a
//! build may reach) and the [`proxy`] that applies it to every connection.
//! Buildpacks run in a network namespace of their own with nothing but a
//! loopback device; a forwarder inside (the launcher binary run as
//! `egress-forward`, see `slipway_launcher::forward`) listens on
//! `127.0.0.1:3128` there and carries each connection over a Unix socket
//! bound into the sandbox to this build's proxy, which runs in the server
//! process.

pub mod policy;
pub mod proxy;

pub use policy::{Decision, HostPattern, Mode, Policy, Rule, parse_cidr};
pub use proxy::{Events, Proxy, Settings, Summary};

use std::net::IpAddr;

/// Every address of this machine's interfaces: what a registry listening
/// on all addresses (`0.0.0.0`, `::`) is reachable at.
pub fn local_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we only read, and free
    // with freeifaddrs once done.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match (*addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out.sort();
    out.dedup();
    out
}

/// The registry's own addresses for the policy, from its listen address:
/// that address, or every local one when it listens on all of them.
pub fn own_addrs(listen: IpAddr) -> Vec<IpAddr> {
    if listen.is_unspecified() {
        local_addrs()
    } else {
        vec![listen]
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_addresses_include_loopback() {
        let all = super::local_addrs();
        assert!(all.contains(&"127.0.0.1".parse().unwrap()), "{all:?}");
        assert_eq!(
            super::own_addrs("192.0.2.1".parse().unwrap()),
            vec!["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(super::own_addrs("0.0.0.0".parse().unwrap()), all);
    }
}
