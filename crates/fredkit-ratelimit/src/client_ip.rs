//! [`ClientIp`]: the client's address, trusting `X-Forwarded-For` only from
//! configured proxies.

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use fredkit_core::{Error, Result};
use http::{HeaderMap, HeaderName, Request};

use crate::tower::KeyExtractor;

/// A network (`10.0.0.0/8`, `fd00::/8`) or a single address (`10.1.2.3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Result<Net> {
        let s = s.trim();
        let bad = || {
            Error::config(format!(
                "trusted proxy {s:?} is not an IP address or CIDR network (like \"10.0.0.0/8\" or \"::1\")"
            ))
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                IpAddr::from_str(a).map_err(|_| bad())?.to_canonical(),
                Some(p.parse::<u8>().map_err(|_| bad())?),
            ),
            None => (IpAddr::from_str(s).map_err(|_| bad())?.to_canonical(), None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Net { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Identifies a request by its client's IP address.
///
/// By default it is the TCP peer's address, and `X-Forwarded-For` is
/// **ignored**: any client can send that header, so trusting it would let
/// every request pick its own rate-limit key. Behind reverse proxies, name
/// them with [`trust_proxies`](Self::trust_proxies): when the peer is a
/// trusted proxy, the `X-Forwarded-For` entries are walked from the right
/// (the hop nearest to us) skipping trusted proxies, and the first untrusted
/// address is the client. Entries left of it are whatever the client sent
/// and are never used. If every hop is trusted the leftmost one is used; an
/// entry that is not an IP address stops the walk at the last trusted hop
/// (logged as a warning: a proxy is misconfigured).
///
/// The peer address is taken from the request extensions: axum's
/// `ConnectInfo<SocketAddr>` (feature `axum`; serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`), or a plain
/// `SocketAddr` or `IpAddr` extension that your server inserts. A request
/// without one has no key (see
/// [`RateLimitLayer::missing_key_status`](crate::tower::RateLimitLayer::missing_key_status)).
///
/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) count as their IPv4
/// address.
///
/// ```
/// use std::net::{IpAddr, SocketAddr};
/// use fredkit_ratelimit::tower::ClientIp;
///
/// let ip = ClientIp::new().trust_proxies(["10.0.0.0/8"])?;
/// let req = http::Request::builder()
///     .header("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2")
///     .extension(SocketAddr::from(([10, 0, 0, 1], 443)))
///     .body(())
///     .unwrap();
/// // 10.0.0.1 (peer) and 10.0.0.2 are trusted: the client is 203.0.113.7;
/// // 6.6.6.6 was written by the client itself and is ignored.
/// assert_eq!(ip.client_ip(&req), Some("203.0.113.7".parse::<IpAddr>().unwrap()));
/// # Ok::<(), fredkit_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: Arc<[Net]>,
    header: HeaderName,
    ipv6_prefix: u8,
}

impl Default for ClientIp {
    fn default() -> Self {
        ClientIp::new()
    }
}

impl ClientIp {
    /// The peer address only; `X-Forwarded-For` is ignored.
    pub fn new() -> ClientIp {
        ClientIp {
            trusted: Arc::from(Vec::new()),
            header: HeaderName::from_static("x-forwarded-for"),
            ipv6_prefix: 128,
        }
    }

    /// Keys IPv6 clients by their network of `prefix` bits instead of their
    /// full address (the key becomes e.g. `2001:db8:1:2::/64`). An IPv6 user
    /// usually holds a whole /64 and can pick a new address per request, so
    /// `ipv6_prefix(64)` is the sensible setting for abuse limits. Default
    /// 128 (the full address); values above 128 are treated as 128. IPv4
    /// addresses are always used whole.
    #[must_use]
    pub fn ipv6_prefix(mut self, prefix: u8) -> ClientIp {
        self.ipv6_prefix = prefix.min(128);
        self
    }

    /// Trusts the proxies at these addresses or CIDR networks
    /// (`"10.0.0.0/8"`, `"192.168.1.10"`, `"fd00::/8"`), replacing any
    /// trusted before.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](fredkit_core::ErrorKind::Config) naming an entry
    /// that is not an address or network.
    pub fn trust_proxies<I, S>(mut self, proxies: I) -> Result<ClientIp>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets = proxies
            .into_iter()
            .map(|p| Net::parse(p.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        self.trusted = Arc::from(nets);
        Ok(self)
    }

    /// Reads the forwarded-for list from `header` instead of
    /// `X-Forwarded-For` (for example `X-Real-IP`-style single-entry headers
    /// your proxy sets). Same format: comma-separated addresses, the nearest
    /// hop last.
    #[must_use]
    pub fn header(mut self, header: HeaderName) -> ClientIp {
        self.header = header;
        self
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }

    /// The client address of `req`, or `None` when the request carries no
    /// peer address.
    pub fn client_ip<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = peer_addr(req.extensions())?;
        Some(self.resolve(peer, req.headers()))
    }

    /// The client address given the peer's address and the headers.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusted(peer) {
            return peer;
        }
        let mut client = peer;
        // Several header lines form one list, in order.
        let entries: Vec<&str> = headers
            .get_all(&self.header)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        for entry in entries.iter().rev() {
            let Some(ip) = parse_hop(entry) else {
                tracing::warn!(
                    entry = %entry,
                    "X-Forwarded-For holds something that is not an IP address; using the last trusted hop"
                );
                return client;
            };
            client = ip;
            if !self.trusted(ip) {
                return ip;
            }
        }
        client
    }
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim_matches('"');
    if let Ok(ip) = IpAddr::from_str(entry) {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = SocketAddr::from_str(entry) {
        return Some(sa.ip().to_canonical());
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    IpAddr::from_str(inner).ok().map(|ip| ip.to_canonical())
}

fn peer_addr(ext: &http::Extensions) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(ci) = ext.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(ci.0.ip());
    }
    if let Some(sa) = ext.get::<SocketAddr>() {
        return Some(sa.ip());
    }
    ext.get::<IpAddr>().copied()
}

impl ClientIp {
    /// The rate-limit key of a client address: the address, or its IPv6
    /// network (see [`ipv6_prefix`](Self::ipv6_prefix)).
    pub fn key_of(&self, ip: IpAddr) -> String {
        match ip {
            IpAddr::V6(v6) if self.ipv6_prefix < 128 => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix))
                    .unwrap_or(0);
                let net = std::net::Ipv6Addr::from(u128::from(v6) & mask);
                format!("{net}/{}", self.ipv6_prefix)
            }
            ip => ip.to_string(),
        }
    }
}

impl<B> KeyExtractor<B> for ClientIp {
    fn extract(&self, req: &Request<B>) -> Option<String> {
        self.client_ip(req).map(|ip| self.key_of(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: &str, xff: &[&str]) -> Request<()> {
        let mut b = Request::builder();
        for v in xff {
            b = b.header("x-forwarded-for", *v);
        }
        b.extension(IpAddr::from_str(peer).unwrap())
            .body(())
            .unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(IpAddr::from_str(s).unwrap())
    }

    #[test]
    fn forwarded_for_is_ignored_without_trusted_proxies() {
        let c = ClientIp::new();
        assert_eq!(
            c.client_ip(&req("198.51.100.9", &["1.2.3.4"])),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn forwarded_for_is_ignored_when_the_peer_is_not_trusted() {
        let c = ClientIp::new().trust_proxies(["10.0.0.0/8"]).unwrap();
        assert_eq!(
            c.client_ip(&req("198.51.100.9", &["1.2.3.4"])),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn walk_stops_at_the_first_untrusted_hop_from_the_right() {
        let c = ClientIp::new()
            .trust_proxies(["10.0.0.0/8", "192.168.1.5"])
            .unwrap();
        // The client forged "6.6.6.6" on the left; proxies appended the rest.
        let r = req(
            "10.0.0.1",
            &["6.6.6.6, 203.0.113.7", "192.168.1.5, 10.9.9.9"],
        );
        assert_eq!(c.client_ip(&r), ip("203.0.113.7"));
    }

    #[test]
    fn all_trusted_hops_give_the_leftmost() {
        let c = ClientIp::new().trust_proxies(["10.0.0.0/8"]).unwrap();
        assert_eq!(
            c.client_ip(&req("10.0.0.1", &["10.0.0.3, 10.0.0.2"])),
            ip("10.0.0.3")
        );
        assert_eq!(c.client_ip(&req("10.0.0.1", &[])), ip("10.0.0.1"));
    }

    #[test]
    fn garbage_entry_stops_at_the_last_trusted_hop() {
        let c = ClientIp::new().trust_proxies(["10.0.0.0/8"]).unwrap();
        assert_eq!(
            c.client_ip(&req("10.0.0.1", &["203.0.113.7, unknown, 10.0.0.2"])),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        let c = ClientIp::new()
            .trust_proxies(["::1", "10.0.0.0/8"])
            .unwrap();
        assert_eq!(
            c.client_ip(&req("::1", &["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
        assert_eq!(
            c.client_ip(&req("::ffff:10.0.0.1", &["203.0.113.7:5555"])),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn ipv6_clients_can_be_keyed_by_network() {
        let c = ClientIp::new().ipv6_prefix(64);
        let r = req("2001:db8:1:2:aaaa:bbbb:cccc:dddd", &[]);
        assert_eq!(
            KeyExtractor::extract(&c, &r).as_deref(),
            Some("2001:db8:1:2::/64")
        );
        let r = req("198.51.100.9", &[]);
        assert_eq!(
            KeyExtractor::extract(&c, &r).as_deref(),
            Some("198.51.100.9")
        );
        let whole = ClientIp::new();
        let r = req("2001:db8::1", &[]);
        assert_eq!(
            KeyExtractor::extract(&whole, &r).as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(
            ClientIp::new().ipv6_prefix(0).key_of(ip("::1").unwrap()),
            "::/0"
        );
    }

    #[test]
    fn no_peer_address_means_no_key() {
        let c = ClientIp::new();
        let r = Request::builder().body(()).unwrap();
        assert_eq!(KeyExtractor::extract(&c, &r), None);
    }

    #[test]
    fn bad_proxy_entries_are_config_errors() {
        for bad in ["10.0.0.0/33", "nope", "::1/129", "1.2.3.4/x"] {
            let e = ClientIp::new().trust_proxies([bad]).unwrap_err();
            assert_eq!(e.kind(), fredkit_core::ErrorKind::Config, "{bad}");
        }
        let n = Net::parse("0.0.0.0/0").unwrap();
        assert!(n.contains(IpAddr::from_str("8.8.8.8").unwrap()));
    }
}
