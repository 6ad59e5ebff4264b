//! The caps a WebSocket handshake passes before it costs anything more: connections per node
//! (`CHAT_MAX_CONNECTIONS`), connections per client address (`CHAT_MAX_CONNECTIONS_PER_IP`)
//! and handshakes in progress (`CHAT_MAX_HANDSHAKES`), and who the client is when it comes
//! through a proxy (`CHAT_TRUSTED_PROXIES`).
//!
//! Each cap is a reservation taken before the work it bounds and given back on drop, so an
//! error path can never leak one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::header::HeaderMap;
use ipnet::IpNet;
use parking_lot::Mutex;

/// Which cap refused a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Connections,
    PerIp,
    Handshakes,
}

/// Open connections by client address (only kept when the per-address cap is on).
#[derive(Debug)]
struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize, foldhash::fast::RandomState>>,
}

/// The node's admission caps.
#[derive(Debug)]
pub struct Gate {
    connections: Arc<AtomicUsize>,
    max_connections: usize,
    per_ip: Option<Arc<PerIp>>,
    handshakes: Arc<AtomicUsize>,
    max_handshakes: usize,
    trusted: Box<[IpNet]>,
}

/// A reserved connection slot (and the client address's share); released on drop.
#[derive(Debug)]
pub struct Admission {
    connections: Arc<AtomicUsize>,
    /// Boxed: every idle connection's task holds its `Admission`, and the per-address cap
    /// is off by default.
    ip: Option<Box<(Arc<PerIp>, IpAddr)>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some((per_ip, ip)) = self.ip.as_deref() {
            let mut open = per_ip.open.lock();
            if let Some(n) = open.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(ip);
                }
            }
        }
    }
}

/// A handshake in progress (token check, id allocation, presence registration); released on
/// drop.
#[derive(Debug)]
pub struct Handshake(Arc<AtomicUsize>);

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes one unit of `counter` if that keeps it at most `max`.
fn reserve(counter: &AtomicUsize, max: usize) -> bool {
    counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1)).is_ok()
}

impl Gate {
    /// `max_per_ip` 0: no per-address cap.
    pub fn new(
        connections: Arc<AtomicUsize>,
        max_connections: usize,
        max_per_ip: usize,
        max_handshakes: usize,
        trusted: Vec<IpNet>,
    ) -> Gate {
        let per_ip = (max_per_ip > 0).then(|| Arc::new(PerIp { max: max_per_ip, open: Mutex::default() }));
        Gate {
            connections,
            max_connections,
            per_ip,
            handshakes: Arc::new(AtomicUsize::new(0)),
            max_handshakes,
            trusted: trusted.into_boxed_slice(),
        }
    }

    /// Starts a handshake, or `Full::Handshakes` while `CHAT_MAX_HANDSHAKES` are under way.
    pub fn handshake(&self) -> Result<Handshake, Full> {
        if reserve(&self.handshakes, self.max_handshakes) {
            Ok(Handshake(self.handshakes.clone()))
        } else {
            Err(Full::Handshakes)
        }
    }

    /// Reserves a connection slot for a client at `ip`.
    pub fn admit(&self, ip: IpAddr) -> Result<Admission, Full> {
        let ip = bucket(canonical(ip));
        if !reserve(&self.connections, self.max_connections) {
            return Err(Full::Connections);
        }
        // From here on, dropping `slot` gives the node-wide slot back.
        let mut slot = Admission { connections: self.connections.clone(), ip: None };
        if let Some(per_ip) = &self.per_ip {
            let mut open = per_ip.open.lock();
            let n = open.entry(ip).or_insert(0);
            if *n >= per_ip.max {
                return Err(Full::PerIp);
            }
            *n += 1;
            drop(open);
            slot.ip = Some(Box::new((per_ip.clone(), ip)));
        }
        Ok(slot)
    }

    /// Handshakes under way.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy; then the
    /// right-most `X-Forwarded-For` entry that is not a trusted proxy (entries to its left
    /// were written by the client itself and prove nothing). An unparsable entry stops the
    /// walk at the last trusted hop.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        // Header lines in order, each split into its entries; a line that is not text is
        // an unparsable entry (the walk stops there).
        let hops: Vec<Option<&str>> = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| match v.to_str() {
                Ok(line) => line.split(',').map(Some).collect::<Vec<_>>(),
                Err(_) => vec![None],
            })
            .collect();
        for hop in hops.iter().rev() {
            let Some(ip) = hop.and_then(forwarded_ip) else { break };
            client = canonical(ip);
            if !self.is_trusted(client) {
                break;
            }
        }
        client
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// One `X-Forwarded-For` entry: an address, or an address with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`), as some balancers write it.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// The key a client address is counted under: an IPv6 client by its /64 (one host gets a
/// whole /64 and can pick any address in it), an IPv4 client by its address.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`, from a dual-stack listener) as the IPv4
/// address it is, so one client is one key whichever socket family it arrived on.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_connections: usize, per_ip: usize, trusted: &[&str]) -> Gate {
        let trusted = trusted.iter().map(|t| t.parse().unwrap()).collect();
        Gate::new(Arc::new(AtomicUsize::new(0)), max_connections, per_ip, 2, trusted)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_cap_and_release() {
        let g = gate(10, 2, &[]);
        let a1 = g.admit(ip("10.0.0.1")).unwrap();
        let _a2 = g.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(g.admit(ip("10.0.0.1")).unwrap_err(), Full::PerIp);
        // The refused attempt gave its node-wide slot back.
        assert_eq!(g.connections.load(Ordering::Relaxed), 2);
        let _b = g.admit(ip("10.0.0.2")).unwrap();
        drop(a1);
        let _a3 = g.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(g.connections.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn node_cap_comes_first_and_entries_go_when_empty() {
        let g = gate(1, 5, &[]);
        let a = g.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(g.admit(ip("10.0.0.2")).unwrap_err(), Full::Connections);
        drop(a);
        assert!(g.per_ip.as_ref().unwrap().open.lock().is_empty());
        assert_eq!(g.connections.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn handshakes_are_capped_and_released() {
        let g = gate(10, 0, &[]);
        let h1 = g.handshake().unwrap();
        let _h2 = g.handshake().unwrap();
        assert_eq!(g.handshake().unwrap_err(), Full::Handshakes);
        drop(h1);
        assert!(g.handshake().is_ok());
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let xff = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", v.parse().unwrap());
            h
        };
        let g = gate(10, 0, &["10.0.0.0/8", "::1/128"]);
        // Not a proxy: its header is the client's own words.
        assert_eq!(g.client_ip(ip("203.0.113.9"), &xff("1.2.3.4")), ip("203.0.113.9"));
        // One trusted proxy: the entry it appended.
        assert_eq!(g.client_ip(ip("10.1.1.1"), &xff("1.2.3.4")), ip("1.2.3.4"));
        // A spoofed left part does not help: the right-most untrusted entry wins.
        assert_eq!(g.client_ip(ip("10.1.1.1"), &xff("6.6.6.6, 1.2.3.4, 10.2.2.2")), ip("1.2.3.4"));
        // Only trusted hops: the left-most of them.
        assert_eq!(g.client_ip(ip("10.1.1.1"), &xff("10.3.3.3")), ip("10.3.3.3"));
        // No header, or garbage: the proxy itself.
        assert_eq!(g.client_ip(ip("10.1.1.1"), &HeaderMap::new()), ip("10.1.1.1"));
        assert_eq!(g.client_ip(ip("10.1.1.1"), &xff("unknown")), ip("10.1.1.1"));
        assert_eq!(g.client_ip(ip("::1"), &xff("1.2.3.4")), ip("1.2.3.4"));
        // IPv4-mapped peers count as their IPv4 address.
        assert_eq!(g.client_ip(ip("::ffff:10.1.1.1"), &xff("1.2.3.4")), ip("1.2.3.4"));
        // Entries with ports, as some balancers write them.
        assert_eq!(g.client_ip(ip("10.1.1.1"), &xff("1.2.3.4:5678")), ip("1.2.3.4"));
        assert_eq!(g.client_ip(ip("10.1.1.1"), &xff("[2001:db8::1]:443")), ip("2001:db8::1"));
        assert_eq!(g.client_ip(ip("10.1.1.1"), &xff("[2001:db8::1]")), ip("2001:db8::1"));
        // A header line that is not text stops the walk at the last trusted hop (here the
        // peer): the client's own line before it is never reached.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.append("x-forwarded-for", hyper::header::HeaderValue::from_bytes(b"\xff, 10.2.2.2").unwrap());
        assert_eq!(g.client_ip(ip("10.1.1.1"), &h), ip("10.1.1.1"));
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64() {
        let g = gate(10, 1, &[]);
        let _a = g.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(g.admit(ip("2001:db8:1:2:ffff::9")).unwrap_err(), Full::PerIp, "same /64");
        let _b = g.admit(ip("2001:db8:1:3::1")).unwrap();
    }
}
