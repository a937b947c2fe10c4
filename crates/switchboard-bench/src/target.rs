//! The server under test: `ws://host:port/path` parsing and source addresses.
//!
//! Only plain `ws://` URLs (no TLS): the tool measures WebSocket servers, not
//! TLS stacks. Connections can be spread over several loopback source
//! addresses (127.0.0.1, 127.0.0.2, ...) so one machine can open more than the
//! ~28,000 ephemeral ports one source address allows towards one server port.
//! This module never opens a socket.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// Connections per source address before the next one is used when the
/// source count is automatic: below Linux's default ephemeral range
/// (32768–60999, about 28,000 ports) with room for TIME_WAIT leftovers.
pub(crate) const CONNS_PER_SOURCE: usize = 25_000;

/// A parsed `ws://` URL, resolved once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// What goes in the `Host` header (`host` or `host:port`).
    pub(crate) host_header: String,
    /// The request target: path and query.
    pub(crate) path: String,
    /// The resolved server address.
    pub(crate) addr: SocketAddr,
}

impl Target {
    /// Parses and resolves `ws://host[:port][/path][?query]`.
    pub(crate) fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() {
            return Err(format!("{url}: missing host"));
        }
        // A port is digits after the last ':' that is not inside an IPv6
        // literal (`[::1]:8000` has one, `[::1]` does not).
        let has_port = authority.rsplit_once(':').is_some_and(|(h, p)| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']'))
        });
        let with_port = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {with_port}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: {with_port} resolves to nothing"))?;
        Ok(Target {
            host_header: authority.to_owned(),
            path,
            addr,
        })
    }
}

/// Round-robin source addresses on 127.0.0.0/8.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    count: u32,
}

impl Sources {
    /// `requested` addresses (0: automatic, one per [`CONNS_PER_SOURCE`]
    /// connections). Only loopback targets can use more than one; for any
    /// other target the kernel picks the source as usual.
    pub(crate) fn new(requested: u32, conns: usize, target: &Target) -> Sources {
        let count = if !target.addr.ip().is_loopback() || target.addr.is_ipv6() {
            1
        } else if requested == 0 {
            conns.div_ceil(CONNS_PER_SOURCE).max(1) as u32
        } else {
            requested
        };
        // 127.0.0.1 .. 127.0.255.254 is plenty (and stays clear of .0/.255).
        Sources {
            count: count.min(65_000),
        }
    }

    /// How many source addresses are in use.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// The source address for connection number `i`, or `None` to let the
    /// kernel choose (a single source: no `bind`, so the kernel may reuse
    /// TIME_WAIT ports towards the server).
    pub(crate) fn for_conn(&self, i: usize) -> Option<IpAddr> {
        if self.count <= 1 {
            return None;
        }
        let idx = (i as u32) % self.count;
        Some(IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            (idx / 254) as u8,
            (idx % 254) as u8 + 1,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("ws://127.0.0.1:8000/ws/rooms/bench").unwrap();
        assert_eq!(t.host_header, "127.0.0.1:8000");
        assert_eq!(t.path, "/ws/rooms/bench");
        assert_eq!(t.addr, "127.0.0.1:8000".parse().unwrap());
        let t = Target::parse("ws://127.0.0.1:9000").unwrap();
        assert_eq!(t.path, "/");
        let t = Target::parse("ws://127.0.0.1:9000?x=1").unwrap();
        assert_eq!(t.path, "/?x=1");
        let t = Target::parse("ws://localhost/a").unwrap();
        assert_eq!(t.addr.port(), 80);
        let t = Target::parse("ws://[::1]:9000/x").unwrap();
        assert_eq!(t.addr, "[::1]:9000".parse().unwrap());
        assert_eq!(Target::parse("ws://[::1]/").unwrap().addr.port(), 80);
        assert!(Target::parse("http://127.0.0.1/").is_err());
        assert!(Target::parse("wss://127.0.0.1/").is_err());
        assert!(Target::parse("ws:///x").is_err());
    }

    #[test]
    fn sources_spread_over_loopback() {
        let t = Target::parse("ws://127.0.0.1:8000/").unwrap();
        let one = Sources::new(0, 10_000, &t);
        assert_eq!((one.count(), one.for_conn(5)), (1, None));
        let auto = Sources::new(0, 70_000, &t);
        assert_eq!(auto.count(), 3);
        let ips: Vec<_> = (0..4).map(|i| auto.for_conn(i).unwrap()).collect();
        assert_eq!(
            ips,
            ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"]
                .map(|s| s.parse::<IpAddr>().unwrap())
        );
        // Every address is a usable host address in 127.0.0.0/8.
        let many = Sources::new(600, 0, &t);
        for i in 0..600 {
            let IpAddr::V4(ip) = many.for_conn(i).unwrap() else {
                panic!("v4 expected")
            };
            let o = ip.octets();
            assert_eq!(o[0], 127);
            assert!(o[3] != 0 && o[3] != 255, "{ip}");
        }
    }
}
