//! IPv6 packets as the tunnel sees them: header checks, ICMPv6 errors (packet too big,
//! destination unreachable) and TCP MSS clamping. Nothing on an IPv6 path fragments: a packet
//! over the tunnel MTU is answered with "packet too big" (RFC 8201) and the sender's stack
//! sends smaller ones.

use core::net::Ipv6Addr;

use super::ip::{checksum, clamp_tcp_mss, PROTO_TCP};

/// Bytes in the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;
/// Next-header number of ICMPv6.
pub const NEXT_ICMPV6: u8 = 58;
/// The smallest MTU every IPv6 link carries (RFC 8200): the tunnel never announces less.
pub const MIN_MTU: u16 = 1280;
/// ICMPv6 type "destination unreachable".
pub const ICMPV6_UNREACHABLE: u8 = 1;
/// ICMPv6 type "packet too big".
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// Unreachable code: no route to the destination (the tunnel carries no IPv6 here).
pub const UNREACHABLE_NO_ROUTE: u8 = 0;
/// Unreachable code: communication administratively prohibited (a forbidden destination).
pub const UNREACHABLE_PROHIBITED: u8 = 1;

/// Why a packet is not a valid IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ip6Error {
    /// Shorter than the fixed header.
    #[error("shorter than an IPv6 header")]
    Truncated,
    /// The version is not 6.
    #[error("not IPv6")]
    NotIpv6,
    /// The payload length does not match the packet (jumbograms are not carried).
    #[error("payload length does not match the packet")]
    BadPayloadLength,
}

/// The fields of an IPv6 header the tunnel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6 {
    /// Bytes after the fixed header (extension headers included).
    pub payload_len: usize,
    /// The first next-header value (the upper protocol when there are no extension headers).
    pub next_header: u8,
    /// The hop limit.
    pub hop_limit: u8,
    /// The source address.
    pub src: Ipv6Addr,
    /// The destination address.
    pub dst: Ipv6Addr,
}

/// The IP version of a packet (its first nibble), if it has a first byte.
pub fn version(p: &[u8]) -> Option<u8> {
    p.first().map(|b| b >> 4)
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

/// Parses and checks an IPv6 header (version and payload length).
pub fn parse(p: &[u8]) -> Result<Ipv6, Ip6Error> {
    if p.len() < HEADER_LEN {
        return Err(Ip6Error::Truncated);
    }
    if p[0] >> 4 != 6 {
        return Err(Ip6Error::NotIpv6);
    }
    let payload_len = u16::from_be_bytes([p[4], p[5]]) as usize;
    if HEADER_LEN + payload_len != p.len() {
        return Err(Ip6Error::BadPayloadLength);
    }
    Ok(Ipv6 { payload_len, next_header: p[6], hop_limit: p[7], src: addr(&p[8..24]), dst: addr(&p[24..40]) })
}

/// Builds an IPv6 packet (traffic class and flow label 0, hop limit 64).
pub fn build(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(HEADER_LEN + payload.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next_header, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// The checksum of an upper-layer message over the IPv6 pseudo-header (RFC 8200 8.1).
pub fn upper_checksum(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, upper: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + upper.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(upper.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next_header]);
    pseudo.extend_from_slice(upper);
    checksum(&pseudo)
}

/// Whether an ICMPv6 error may answer `original` (RFC 4443 2.4 e): never an error about an
/// error, nor about a packet from the unspecified or a multicast address; a packet to a
/// multicast address only gets "packet too big".
pub fn may_answer(original: &[u8], hdr: &Ipv6, packet_too_big: bool) -> bool {
    let is_error = hdr.next_header == NEXT_ICMPV6 && original.get(HEADER_LEN).is_some_and(|t| *t < 128);
    !is_error && !hdr.src.is_unspecified() && !hdr.src.is_multicast() && (packet_too_big || !hdr.dst.is_multicast())
}

/// An ICMPv6 error of `kind`/`code` from `from` to the sender of `original`, quoting as much of
/// it as fits in the minimum MTU.
fn icmp_error(original: &[u8], hdr: &Ipv6, kind: u8, code: u8, param: u32, from: Ipv6Addr) -> Vec<u8> {
    let quoted = &original[..original.len().min(MIN_MTU as usize - HEADER_LEN - 8)];
    let mut body = vec![kind, code, 0, 0];
    body.extend_from_slice(&param.to_be_bytes());
    body.extend_from_slice(quoted);
    let c = upper_checksum(from, hdr.src, NEXT_ICMPV6, &body);
    body[2..4].copy_from_slice(&c.to_be_bytes());
    build(from, hdr.src, NEXT_ICMPV6, &body)
}

/// ICMPv6 "packet too big" from `from` to the sender of `original`, announcing `mtu` (never
/// below [`MIN_MTU`]).
pub fn packet_too_big(original: &[u8], hdr: &Ipv6, mtu: u16, from: Ipv6Addr) -> Vec<u8> {
    icmp_error(original, hdr, ICMPV6_PACKET_TOO_BIG, 0, mtu.max(MIN_MTU) as u32, from)
}

/// ICMPv6 "destination unreachable" with `code` from `from` to the sender of `original`.
pub fn unreachable(original: &[u8], hdr: &Ipv6, code: u8, from: Ipv6Addr) -> Vec<u8> {
    icmp_error(original, hdr, ICMPV6_UNREACHABLE, code, 0, from)
}

/// Lowers the MSS option of a TCP SYN to `mss` (and fixes the TCP checksum). Only a TCP
/// header right after the fixed header is looked at (a SYN with extension headers is left
/// alone). Returns whether the packet changed.
pub fn clamp_mss(p: &mut [u8], hdr: &Ipv6, mss: u16) -> bool {
    hdr.next_header == PROTO_TCP && clamp_tcp_mss(p, HEADER_LEN, mss)
}

/// Whether `a` is in `net/len`.
pub fn in_net(a: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let len = len.min(128) as u32;
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
    u128::from(a) & mask == u128::from(net) & mask
}

/// Whether `a` may be routed beyond the gateway: not unspecified, loopback, link-local,
/// multicast or an IPv4-mapped address.
pub fn is_routable(a: Ipv6Addr) -> bool {
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || in_net(a, Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10)
        || in_net(a, Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// A TCP SYN over IPv6 with an MSS option, checksum right.
    pub fn syn6(src: Ipv6Addr, dst: Ipv6Addr, mss: u16) -> Vec<u8> {
        let mut tcp = vec![0u8; 24];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
        tcp[12] = 6 << 4;
        tcp[13] = 0x02;
        tcp[20..24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
        let c = upper_checksum(src, dst, PROTO_TCP, &tcp);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        build(src, dst, PROTO_TCP, &tcp)
    }

    #[test]
    fn parse_checks_version_and_length() {
        let p = build(a("fd00::2"), a("2001:db8::1"), 17, &[1; 100]);
        let h = parse(&p).unwrap();
        assert_eq!((h.payload_len, h.next_header, h.src, h.dst), (100, 17, a("fd00::2"), a("2001:db8::1")));
        assert_eq!(parse(&p[..39]), Err(Ip6Error::Truncated));
        assert_eq!(parse(&p[..p.len() - 1]), Err(Ip6Error::BadPayloadLength));
        let mut v4 = p.clone();
        v4[0] = 0x45;
        assert_eq!(parse(&v4), Err(Ip6Error::NotIpv6));
    }

    #[test]
    fn errors_quote_the_packet_and_verify() {
        let p = build(a("fd00::2"), a("2001:db8::1"), 17, &[7; 1400]);
        let h = parse(&p).unwrap();
        for (e, kind) in [
            (packet_too_big(&p, &h, 1300, a("fd00::1")), ICMPV6_PACKET_TOO_BIG),
            (unreachable(&p, &h, UNREACHABLE_NO_ROUTE, a("fd00::1")), ICMPV6_UNREACHABLE),
        ] {
            let eh = parse(&e).unwrap();
            assert_eq!((eh.next_header, eh.src, eh.dst), (NEXT_ICMPV6, a("fd00::1"), h.src));
            assert_eq!(e[HEADER_LEN], kind);
            assert!(e.len() <= MIN_MTU as usize, "an error fits the minimum MTU");
            assert_eq!(upper_checksum(eh.src, eh.dst, NEXT_ICMPV6, &e[HEADER_LEN..]), 0, "checksum verifies");
            assert_eq!(&e[HEADER_LEN + 8..HEADER_LEN + 48], &p[..40], "the original header is quoted");
            assert!(!may_answer(&e, &eh, true), "never an error about an error");
        }
        let ptb = packet_too_big(&p, &h, 1000, a("fd00::1"));
        assert_eq!(u32::from_be_bytes(ptb[44..48].try_into().unwrap()), MIN_MTU as u32, "never below 1280");
        let mcast = build(a("fd00::2"), a("ff02::1"), 17, &[0; 8]);
        let mh = parse(&mcast).unwrap();
        assert!(!may_answer(&mcast, &mh, false) && may_answer(&mcast, &mh, true));
    }

    #[test]
    fn mss_is_clamped_and_the_checksum_stays_right() {
        let (s, d) = (a("fd00::2"), a("2001:db8::1"));
        let mut p = syn6(s, d, 1440);
        let h = parse(&p).unwrap();
        assert!(clamp_mss(&mut p, &h, 1300));
        assert_eq!(u16::from_be_bytes([p[62], p[63]]), 1300);
        assert_eq!(upper_checksum(s, d, PROTO_TCP, &p[HEADER_LEN..]), 0);
        assert!(!clamp_mss(&mut p, &h, 1400), "never raised");
    }

    #[test]
    fn routable_addresses() {
        assert!(is_routable(a("2001:db8::1")) && is_routable(a("fd00::5")));
        for s in ["::", "::1", "fe80::1", "ff02::1", "::ffff:10.0.0.1"] {
            assert!(!is_routable(a(s)), "{s}");
        }
        assert!(in_net(a("fd12:3456:789a:1::77"), a("fd12:3456:789a:1::"), 64));
        assert!(!in_net(a("fd12:3456:789a:2::77"), a("fd12:3456:789a:1::"), 64));
    }

    proptest! {
        /// Random bytes: parse, the clamp and the error builders never panic.
        #[test]
        fn random_packets_never_panic(mut data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = version(&data);
            if let Ok(h) = parse(&data) {
                let _ = may_answer(&data, &h, false);
                let _ = packet_too_big(&data, &h, 1280, Ipv6Addr::LOCALHOST);
                let _ = clamp_mss(&mut data, &h, 1000);
            }
        }
    }
}
