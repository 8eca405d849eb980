//! IPv4 packets as the tunnel sees them: header checks, checksums, TCP MSS clamping, ICMP
//! "fragmentation needed", and fragmentation per RFC 791.

use core::net::Ipv4Addr;

/// Bytes in an IPv4 header without options.
pub const HEADER_LEN: usize = 20;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
/// Why a packet is not a valid IPv4 packet.
pub enum IpError {
    #[error("shorter than an IPv4 header")]
    /// Shorter than a header.
    Truncated,
    #[error("not IPv4")]
    /// The version is not 4.
    NotIpv4,
    #[error("bad header length")]
    /// The header length field is out of range.
    BadHeaderLength,
    #[error("total length does not match the packet")]
    /// The total length does not match the packet.
    BadTotalLength,
    #[error("header checksum mismatch")]
    /// The header checksum does not match.
    BadChecksum,
}

/// The fields of an IPv4 header the tunnel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4 {
    /// Header bytes (options included).
    pub header_len: usize,
    /// The packet's total length.
    pub total_len: usize,
    /// The DF bit.
    pub dont_fragment: bool,
    /// The protocol number.
    pub protocol: u8,
    /// The source address.
    pub src: Ipv4Addr,
    /// The destination address.
    pub dst: Ipv4Addr,
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Parses and checks an IPv4 header (version, lengths, checksum).
pub fn parse(p: &[u8]) -> Result<Ipv4, IpError> {
    if p.len() < HEADER_LEN {
        return Err(IpError::Truncated);
    }
    if p[0] >> 4 != 4 {
        return Err(IpError::NotIpv4);
    }
    let header_len = (p[0] & 0x0f) as usize * 4;
    if header_len < HEADER_LEN || header_len > p.len() {
        return Err(IpError::BadHeaderLength);
    }
    let total_len = u16::from_be_bytes([p[2], p[3]]) as usize;
    if total_len < header_len || total_len != p.len() {
        return Err(IpError::BadTotalLength);
    }
    if checksum(&p[..header_len]) != 0 {
        return Err(IpError::BadChecksum);
    }
    Ok(Ipv4 {
        header_len,
        total_len,
        dont_fragment: p[6] & 0x40 != 0,
        protocol: p[9],
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
    })
}

fn set_header_checksum(p: &mut [u8], header_len: usize) {
    p[10] = 0;
    p[11] = 0;
    let c = checksum(&p[..header_len]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Builds an IPv4 packet (no options, DF clear, TTL 64).
pub fn build(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let total = HEADER_LEN + payload.len();
    let mut p = vec![0u8; HEADER_LEN];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = protocol;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    set_header_checksum(&mut p, HEADER_LEN);
    p.extend_from_slice(payload);
    p
}

/// ICMP "destination unreachable, fragmentation needed" (type 3, code 4) from `from` to the
/// sender of `original`, announcing `mtu` (RFC 1191).
pub fn frag_needed(original: &[u8], hdr: &Ipv4, mtu: u16, from: Ipv4Addr) -> Vec<u8> {
    let quoted = &original[..(hdr.header_len + 8).min(original.len())];
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(quoted);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    build(from, hdr.src, PROTO_ICMP, &icmp)
}

/// Splits a packet without DF into fragments of at most `mtu` bytes (RFC 791: payload pieces
/// in multiples of 8 bytes, "more fragments" on all but the last, options copied as is).
pub fn fragment(p: &[u8], hdr: &Ipv4, mtu: usize) -> Vec<Vec<u8>> {
    let hl = hdr.header_len;
    let step = (mtu.saturating_sub(hl) / 8 * 8).max(8);
    let flags_off = u16::from_be_bytes([p[6], p[7]]);
    let base_off = (flags_off & 0x1fff) as usize * 8;
    let more_after = flags_off & 0x2000 != 0;
    let payload = &p[hl..hdr.total_len];
    let mut out = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let end = (at + step).min(payload.len());
        let last = end == payload.len();
        let mut f = Vec::with_capacity(hl + end - at);
        f.extend_from_slice(&p[..hl]);
        f.extend_from_slice(&payload[at..end]);
        f[2..4].copy_from_slice(&((hl + end - at) as u16).to_be_bytes());
        let mf = if last { more_after } else { true };
        let off = ((base_off + at) / 8) as u16 | if mf { 0x2000 } else { 0 };
        f[6..8].copy_from_slice(&off.to_be_bytes());
        set_header_checksum(&mut f, hl);
        out.push(f);
        at = end;
    }
    out
}

/// Lowers the MSS option of a TCP SYN to `mss` (and fixes the TCP checksum). Returns whether
/// the packet changed.
pub fn clamp_mss(p: &mut [u8], hdr: &Ipv4, mss: u16) -> bool {
    if hdr.protocol != PROTO_TCP {
        return false;
    }
    // A fragment other than the first has no TCP header.
    if u16::from_be_bytes([p[6], p[7]]) & 0x1fff != 0 {
        return false;
    }
    clamp_tcp_mss(p, hdr.header_len, mss)
}

/// Lowers the MSS option of the TCP SYN starting at `tcp` in `p` to `mss`, fixing the TCP
/// checksum incrementally (so it works under either IP version's pseudo-header). Returns
/// whether the packet changed; anything that is not a well-formed SYN is left alone.
pub(crate) fn clamp_tcp_mss(p: &mut [u8], tcp: usize, mss: u16) -> bool {
    if p.len() < tcp + 20 {
        return false;
    }
    let flags = p[tcp + 13];
    if flags & 0x02 == 0 {
        return false;
    }
    let data_off = (p[tcp + 12] >> 4) as usize * 4;
    if data_off < 20 || tcp + data_off > p.len() {
        return false;
    }
    let mut i = tcp + 20;
    while i < tcp + data_off {
        match p[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = p.get(i + 1) else { return false };
                let len = len as usize;
                if len < 2 || i + len > tcp + data_off {
                    return false;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([p[i + 2], p[i + 3]]);
                    if old <= mss {
                        return false;
                    }
                    p[i + 2..i + 4].copy_from_slice(&mss.to_be_bytes());
                    // Incremental checksum update (RFC 1624): HC' = ~(~HC + ~m + m').
                    let hc = u16::from_be_bytes([p[tcp + 16], p[tcp + 17]]);
                    let mut sum = (!hc) as u32 + (!old) as u32 + mss as u32;
                    while sum > 0xffff {
                        sum = (sum & 0xffff) + (sum >> 16);
                    }
                    p[tcp + 16..tcp + 18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A TCP SYN with an MSS option, checksums right.
    pub fn syn(src: Ipv4Addr, dst: Ipv4Addr, mss: u16) -> Vec<u8> {
        let mut tcp = vec![0u8; 24];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[12] = 6 << 4;
        tcp[13] = 0x02;
        tcp[20..24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
        let c = tcp_checksum(src, dst, &tcp);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        build(src, dst, PROTO_TCP, &tcp)
    }

    pub fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, tcp: &[u8]) -> u16 {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&[0, PROTO_TCP]);
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(tcp);
        checksum(&pseudo)
    }

    #[test]
    fn mss_is_clamped_and_the_checksum_stays_right() {
        let (s, d) = (Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(192, 0, 2, 1));
        let mut p = syn(s, d, 1460);
        let h = parse(&p).unwrap();
        assert!(clamp_mss(&mut p, &h, 1200));
        assert_eq!(u16::from_be_bytes([p[42], p[43]]), 1200);
        assert_eq!(tcp_checksum(s, d, &p[20..]), 0, "the TCP checksum still verifies");
        assert!(!clamp_mss(&mut p, &h, 1300), "never raised");
    }

    #[test]
    fn frag_needed_quotes_the_packet() {
        let p = build(Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(1, 1, 1, 1), PROTO_UDP, &[0; 1500]);
        let h = parse(&p).unwrap();
        let icmp = frag_needed(&p, &h, 1280, Ipv4Addr::new(10, 77, 0, 1));
        let ih = parse(&icmp).unwrap();
        assert_eq!((ih.protocol, ih.dst), (PROTO_ICMP, h.src));
        assert_eq!(&icmp[20..22], &[3, 4]);
        assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1280);
        assert_eq!(checksum(&icmp[20..]), 0);
    }

    proptest! {
        /// Fragments reassemble to the original payload, each fits the MTU and has a valid header.
        #[test]
        fn fragments_reassemble(len in 0usize..4000, mtu in 68usize..1500) {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let p = build(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), PROTO_UDP, &payload);
            let h = parse(&p).unwrap();
            let frags = fragment(&p, &h, mtu);
            let mut joined = vec![0u8; len];
            for f in &frags {
                let fh = parse(f).unwrap();
                prop_assert!(f.len() <= mtu.max(28));
                let off = (u16::from_be_bytes([f[6], f[7]]) & 0x1fff) as usize * 8;
                joined[off..off + f.len() - 20].copy_from_slice(&f[20..]);
                prop_assert_eq!(fh.src, h.src);
            }
            prop_assert_eq!(joined, payload);
        }

        /// Random bytes: parse and the clamp never panic.
        #[test]
        fn random_packets_never_panic(mut data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(h) = parse(&data) {
                let _ = clamp_mss(&mut data, &h, 1000);
            }
        }
    }
}
