//! What counts as one source when the servers limit abuse (connections, guesses, floods).

use std::net::{IpAddr, Ipv6Addr};

/// The key a source is counted under: an IPv4 address (also when mapped into IPv6), or the
/// /64 prefix of an IPv6 address. One subscriber usually holds a whole /64, so counting its
/// addresses one by one would give an attacker 2^64 fresh budgets; a /64 is to IPv6 what one
/// public IPv4 address behind a NAT is.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_source_is_its_64_and_a_mapped_ipv4_its_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(address_key(ip("2001:db8:1:2::7")), address_key(ip("2001:db8:1:2:ffff::1")));
        assert_eq!(address_key(ip("2001:db8:1:2::7")), ip("2001:db8:1:2::"));
        assert_ne!(address_key(ip("2001:db8:1:2::7")), address_key(ip("2001:db8:1:3::7")));
        assert_eq!(address_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(address_key(ip("192.0.2.7")), ip("192.0.2.7"));
    }
}
