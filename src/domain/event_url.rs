//! Where events may be sent: the URL of an endpoint, and the addresses it may reach.
//!
//! An endpoint's URL is chosen by a client, so the service must not become a way into its
//! own network (SSRF): `https` only, and no address on loopback, a private network, the
//! link-local range (where the clouds' metadata services live) or any range that is not a
//! host on the internet. `EVENT_ALLOW_PRIVATE_URLS` lets `http` and loopback and private
//! addresses through, for development and tests; link-local, metadata and reserved
//! addresses stay refused even then. The same check runs on every address a name resolves
//! to, at registration and again at send time, on the very addresses connected to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

pub use url::Url;

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Why an address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Loopback or a private network: allowed with `EVENT_ALLOW_PRIVATE_URLS`.
    Private,
    /// Never a destination: link-local and cloud metadata, unspecified, multicast,
    /// broadcast, documentation or reserved.
    Never(&'static str),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Private => f.write_str(
                "a loopback or private address (allowed only with EVENT_ALLOW_PRIVATE_URLS)",
            ),
            Self::Never(what) => write!(f, "{what}, which events are never sent to"),
        }
    }
}

fn v4(text: &str) -> Ipv4Net {
    text.parse().expect("static IPv4 range")
}

fn v6(text: &str) -> Ipv6Net {
    text.parse().expect("static IPv6 range")
}

/// Why `ip` may not receive events, if it may not.
pub fn refused(ip: IpAddr, allow_private: bool) -> Option<Refused> {
    let verdict = match ip {
        IpAddr::V4(ip) => refused_v4(ip),
        IpAddr::V6(ip) => refused_v6(ip),
    }?;
    match verdict {
        Refused::Private if allow_private => None,
        other => Some(other),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<Refused> {
    // Metadata services first: some sit inside ranges that are merely private.
    const NEVER: &[(&str, &str)] = &[
        (
            "169.254.0.0/16",
            "a link-local address (cloud metadata services live there)",
        ),
        ("100.100.100.200/32", "a cloud metadata address"),
        ("0.0.0.0/8", "an unspecified address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
        ("192.0.2.0/24", "a documentation address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
    ];
    const PRIVATE: &[&str] = &[
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "192.0.0.0/24",
        "198.18.0.0/15",
    ];
    if let Some((_, what)) = NEVER.iter().find(|(net, _)| v4(net).contains(&ip)) {
        return Some(Refused::Never(what));
    }
    PRIVATE
        .iter()
        .any(|net| v4(net).contains(&ip))
        .then_some(Refused::Private)
}

fn refused_v6(ip: Ipv6Addr) -> Option<Refused> {
    // An IPv4 address carried inside an IPv6 one (mapped, NAT64, 6to4, the old compatible
    // form) is judged as that IPv4 address.
    if let Some(inner) = embedded_v4(ip) {
        return refused_v4(inner);
    }
    const NEVER: &[(&str, &str)] = &[
        ("fd00:ec2::254/128", "a cloud metadata address"),
        ("::/128", "an unspecified address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
        ("2001:db8::/32", "a documentation address"),
        ("100::/64", "a discard address"),
    ];
    const PRIVATE: &[&str] = &["::1/128", "fc00::/7"];
    if let Some((_, what)) = NEVER.iter().find(|(net, _)| v6(net).contains(&ip)) {
        return Some(Refused::Never(what));
    }
    PRIVATE
        .iter()
        .any(|net| v6(net).contains(&ip))
        .then_some(Refused::Private)
}

fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return Some(mapped);
    }
    let o = ip.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if v6("64:ff9b::/96").contains(&ip) || v6("64:ff9b:1::/48").contains(&ip) {
        return Some(tail);
    }
    if v6("2002::/16").contains(&ip) {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // ::a.b.c.d (deprecated "compatible" form), but not :: and ::1 themselves.
    if o[..12].iter().all(|b| *b == 0) && u32::from(tail) > 1 {
        return Some(tail);
    }
    None
}

/// Checks an endpoint URL as a client sends it: absolute, `https` (or `http` with
/// `allow_private`), a host, no user name or password (they would be stored and shown as
/// they are), and a literal address or a `localhost` name judged by [`refused`].
pub fn check_url(text: &str, allow_private: bool) -> Result<Url, String> {
    let text = text.trim();
    if text.len() > MAX_URL_LEN {
        return Err(format!("`url` must be at most {MAX_URL_LEN} characters"));
    }
    let mut url = Url::parse(text).map_err(|e| format!("`url` is not an absolute URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => {
            return Err(
                "`url` must use https (http is allowed only with EVENT_ALLOW_PRIVATE_URLS)".into(),
            );
        }
        other => return Err(format!("`url` must use https, not {other:?}")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("`url` must not hold a user name or password".into());
    }
    let refusal = match url.host() {
        None => return Err("`url` must name a host".into()),
        Some(url::Host::Ipv4(ip)) => refused(IpAddr::V4(ip), allow_private),
        Some(url::Host::Ipv6(ip)) => refused(IpAddr::V6(ip), allow_private),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            (name == "localhost" || name.ends_with(".localhost"))
                .then_some(Refused::Private)
                .filter(|_| !allow_private)
        }
    };
    if let Some(refusal) = refusal {
        return Err(format!("`url` points at {refusal}"));
    }
    url.set_fragment(None);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn public_addresses_pass() {
        for text in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "1.1.1.1"] {
            assert_eq!(refused(ip(text), false), None, "{text}");
        }
    }

    #[test]
    fn private_addresses_pass_only_when_allowed() {
        for text in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd12:3456::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert_eq!(refused(ip(text), false), Some(Refused::Private), "{text}");
            assert_eq!(refused(ip(text), true), None, "{text}");
        }
    }

    #[test]
    fn metadata_link_local_and_reserved_never_pass() {
        for text in [
            "169.254.169.254",
            "169.254.0.1",
            "100.100.100.200",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "fe80::1",
            "fd00:ec2::254",
            "::",
            "ff02::1",
            "::ffff:169.254.169.254",
            "2002:a9fe:a9fe::",
        ] {
            assert!(
                matches!(refused(ip(text), true), Some(Refused::Never(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://hooks.example.com/events", false).is_ok());
        assert!(check_url("https://93.184.216.34:8443/x?y=1", false).is_ok());
        let no_fragment = check_url("https://example.com/a#frag", false).unwrap();
        assert_eq!(no_fragment.as_str(), "https://example.com/a");
        for (text, allowed) in [
            ("http://example.com/", false),
            ("ftp://example.com/", true),
            ("https://user:pw@example.com/", true),
            ("https://127.0.0.1/", false),
            ("https://[::1]/", false),
            ("https://localhost/", false),
            ("https://api.localhost./", false),
            ("https://169.254.169.254/latest/meta-data", true),
            ("https://[::ffff:a9fe:a9fe]/", true),
            ("https://0x7f000001/", false),
            ("https://2130706433/", false),
            ("not a url", true),
            ("/relative", true),
        ] {
            assert!(check_url(text, allowed).is_err(), "{text}");
        }
        assert!(check_url("http://127.0.0.1:9000/hook", true).is_ok());
        assert!(check_url("http://localhost:9000/hook", true).is_ok());
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(2100)), false).is_err());
    }
}
