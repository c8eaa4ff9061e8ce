//! `[api] demand_hosts`: where a pool registered through the API may ask
//! for its demand. The API token is not a way to make the daemon send
//! requests where the caller says (loopback, the instance metadata address,
//! hosts of the internal network): a demand URL's host must be listed, and
//! every address it resolves to when the daemon asks must be public, or
//! covered by a listed address or network.

use std::net::IpAddr;

use ipnet::IpNet;

/// One `demand_hosts` entry: a host name, or an address or network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemandHost {
    /// A host name (matched exactly, ignoring case). Its addresses must be
    /// public unless a network entry covers them.
    Name(String),
    /// An address (`10.1.2.3`) or network (`10.0.0.0/8`): its hosts may be
    /// asked whatever kind of address they are.
    Net(IpNet),
}

impl DemandHost {
    /// Parses an entry; the error says what an entry may be.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Self::Net(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Net(IpNet::from(ip)));
        }
        let name_like = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if name_like {
            Ok(Self::Name(s.to_ascii_lowercase()))
        } else {
            Err(format!(
                "{s:?} is neither a host name nor an address or network (10.0.0.0/8)"
            ))
        }
    }
}

/// Whether the URL host `host` (a name or an address) is listed.
pub fn host_listed(hosts: &[DemandHost], host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => hosts
            .iter()
            .any(|h| matches!(h, DemandHost::Net(n) if n.contains(&ip))),
        Err(_) => hosts
            .iter()
            .any(|h| matches!(h, DemandHost::Name(n) if n.eq_ignore_ascii_case(bare))),
    }
}

/// Why the daemon may not send a request to `ip`: it is an address of the
/// daemon's own machine or network (loopback, link-local — the metadata
/// service —, private, shared, unspecified, multicast) and no listed
/// network covers it. `None`: it may.
pub fn refused_address(hosts: &[DemandHost], ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if hosts
        .iter()
        .any(|h| matches!(h, DemandHost::Net(n) if n.contains(&ip)))
    {
        return None;
    }
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_link_local() {
                Some("a link-local address (the instance metadata service is one)")
            } else if v4.is_private() {
                Some("a private address")
            } else if a == 100 && (64..128).contains(&b) {
                Some("a shared (carrier-grade NAT) address")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || a == 0 {
                Some("not a host's address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("a loopback address")
            } else if first & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if first & 0xfe00 == 0xfc00 {
                Some("a private (unique local) address")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a host's address")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> Vec<DemandHost> {
        list.iter()
            .map(|h| DemandHost::parse(h).expect("entry"))
            .collect()
    }

    #[test]
    fn entries_are_names_addresses_or_networks() {
        assert_eq!(
            DemandHost::parse("Queue.Internal").expect("name"),
            DemandHost::Name("queue.internal".into())
        );
        assert!(matches!(
            DemandHost::parse("10.0.0.0/8"),
            Ok(DemandHost::Net(_))
        ));
        assert!(matches!(
            DemandHost::parse("127.0.0.1"),
            Ok(DemandHost::Net(_))
        ));
        for bad in ["", "http://x", "a b", "x/8", "-..-"] {
            assert!(DemandHost::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_host_is_listed_by_name_or_by_a_network_that_covers_its_address() {
        let h = hosts(&["queue.internal", "10.1.0.0/16"]);
        assert!(host_listed(&h, "QUEUE.internal"));
        assert!(host_listed(&h, "10.1.2.3"));
        assert!(!host_listed(&h, "10.2.0.1"));
        assert!(!host_listed(&h, "evil.example"));
        assert!(!host_listed(&[], "queue.internal"), "none by default");
    }

    #[test]
    fn internal_addresses_are_refused_unless_a_listed_network_covers_them() {
        let none = hosts(&["queue.internal"]);
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("10.0.0.5", "private"),
            ("172.16.3.4", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared"),
            ("0.0.0.0", "not a host"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique local"),
            ("::ffff:127.0.0.1", "loopback"),
        ] {
            let refused = refused_address(&none, ip.parse().expect("ip"));
            assert!(
                refused.is_some_and(|r| r.contains(why)),
                "{ip}: {refused:?}"
            );
        }
        assert_eq!(
            refused_address(&none, "203.0.113.9".parse().expect("ip")),
            None
        );
        let listed = hosts(&["127.0.0.1", "10.0.0.0/8"]);
        assert_eq!(
            refused_address(&listed, "127.0.0.1".parse().expect("ip")),
            None
        );
        assert_eq!(
            refused_address(&listed, "10.9.9.9".parse().expect("ip")),
            None
        );
        assert!(refused_address(&listed, "169.254.169.254".parse().expect("ip")).is_some());
    }
}
