//! The client's side of the VPN, without a TUN device of its own: the platform hands it IP
//! packets read from its tunnel (a TUN, an Android VpnService fd, iOS's packet flow, firmware)
//! and writes back what it returns. Which packets go out, in which class, and what the
//! platform's stack is told when a packet is too large.

use core::net::{Ipv4Addr, Ipv6Addr};

use super::gateway::Assignment;
use super::ip::{self, IpError};
use super::ip6::{self, Ip6Error};
use crate::forward::Class;

/// Packets up to this size (ICMP, DNS, TCP acks, keystrokes, voice) ride the session's
/// realtime class; larger ones the bulk stream.
pub const REALTIME_MAX: usize = 256;

/// What to do with a packet from the platform's tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// Send to the gateway in this class.
    Send {
        /// The class (small packets realtime, large bulk).
        class: Class,
        /// The IP packet (IPv4 or IPv6).
        packet: Vec<u8>,
    },
    /// Write back into the tunnel: ICMP "fragmentation needed" or ICMPv6 "packet too big" for
    /// the sender, or ICMPv6 "unreachable" when the gateway carries no IPv6.
    Reply(Vec<u8>),
}

/// Why a packet was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientDrop {
    #[error("no address from the gateway yet")]
    /// The gateway has not assigned an address yet.
    NotConnected,
    #[error("malformed packet: {0}")]
    /// Not a valid IPv4 packet.
    Malformed(IpError),
    #[error("source address is not the tunnel's")]
    /// The source is not the tunnel's address.
    WrongSource,
    #[error("malformed IPv6 packet: {0}")]
    /// Not a valid IPv6 packet.
    Malformed6(Ip6Error),
    #[error("the gateway carries no IPv6")]
    /// An IPv6 packet that may not be answered (an error, from a multicast source), and the
    /// gateway carries no IPv6.
    NoIpv6,
    #[error("link-local or multicast: not for the tunnel")]
    /// IPv6 to or from an address that is never routed (the host's neighbour discovery,
    /// router solicitations and MLD on the tunnel interface).
    NotRouted,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
/// A tunnel client's counters.
pub struct TunnelStats {
    /// Packets sent to the gateway.
    pub packets_out: u64,
    /// Bytes sent to the gateway.
    pub bytes_out: u64,
    /// Packets from the gateway.
    pub packets_in: u64,
    /// Bytes from the gateway.
    pub bytes_in: u64,
    /// Packets sent as realtime (small ones).
    pub realtime_out: u64,
    /// Packets fragmented to fit the path.
    pub fragmented: u64,
    /// ICMP "fragmentation needed" sent back for DF packets too large.
    pub frag_needed_sent: u64,
    /// TCP SYNs whose MSS was clamped to the tunnel.
    pub mss_clamped: u64,
    /// ICMPv6 "unreachable" answered for IPv6 the gateway does not carry.
    pub unreachable_sent: u64,
    /// IPv6 packets sent to the gateway (of `packets_out`).
    pub ipv6_out: u64,
    /// Packets dropped (malformed, wrong source, no address yet).
    pub dropped: u64,
}

/// The client side of the VPN tunnel: what the platform's packets become, and back.
pub struct TunnelClient {
    /// The largest IP packet the client lets into the tunnel whatever the gateway offers.
    path_mtu: u16,
    assignment: Option<Assignment>,
    /// Counters.
    pub stats: TunnelStats,
}

impl TunnelClient {
    /// `path_mtu`: the largest IP packet the client lets into the tunnel whatever the
    /// gateway offers (packets over [`REALTIME_MAX`] ride the session's stream, which carries
    /// any size, so this is a policy bound, not the session datagram's size).
    pub fn new(path_mtu: u16) -> Self {
        TunnelClient { path_mtu: path_mtu.max(576), assignment: None, stats: TunnelStats::default() }
    }

    /// The gateway admitted us.
    pub fn assigned(&mut self, a: Assignment) {
        self.assignment = Some(a);
    }

    /// The gateway's assignment, once admitted.
    pub fn assignment(&self) -> Option<&Assignment> {
        self.assignment.as_ref()
    }

    /// The tunnel's MTU: the gateway's offer, within what the path carries.
    pub fn mtu(&self) -> u16 {
        self.assignment.as_ref().map_or(self.path_mtu, |a| a.mtu.min(self.path_mtu))
    }

    /// TCP MSS for the tunnel (MTU minus IPv4 and TCP headers).
    pub fn mss(&self) -> u16 {
        self.mtu() - 40
    }

    /// A packet the platform read from its tunnel.
    pub fn outbound(&mut self, mut packet: Vec<u8>) -> Result<Vec<Outbound>, ClientDrop> {
        let r = self.outbound_inner(&mut packet);
        if r.is_err() {
            self.stats.dropped += 1;
        }
        r
    }

    fn outbound_inner(&mut self, packet: &mut Vec<u8>) -> Result<Vec<Outbound>, ClientDrop> {
        if ip6::version(packet) == Some(6) {
            return self.outbound6(packet);
        }
        let a = self.assignment.as_ref().ok_or(ClientDrop::NotConnected)?;
        let (me, gw) = (a.address, a.gateway);
        let hdr = ip::parse(packet).map_err(ClientDrop::Malformed)?;
        if hdr.src != me {
            return Err(ClientDrop::WrongSource);
        }
        let mtu = self.mtu();
        if ip::clamp_mss(packet, &hdr, self.mss()) {
            self.stats.mss_clamped += 1;
        }
        if packet.len() > mtu as usize {
            if hdr.dont_fragment {
                self.stats.frag_needed_sent += 1;
                return Ok(vec![Outbound::Reply(ip::frag_needed(packet, &hdr, mtu, gw))]);
            }
            self.stats.fragmented += 1;
            return Ok(ip::fragment(packet, &hdr, mtu as usize).into_iter().map(|f| self.send(f)).collect());
        }
        Ok(vec![self.send(std::mem::take(packet))])
    }

    /// An IPv6 packet from the platform. Without IPv6 from the gateway it is answered at once
    /// with "no route" (quoting it, from its own destination), so the application falls back
    /// to IPv4 instead of waiting, and nothing goes around the tunnel. With it: the checks and
    /// the MSS clamp of IPv4; a packet over the tunnel MTU gets "packet too big" (IPv6 is never
    /// fragmented on the way).
    fn outbound6(&mut self, packet: &mut Vec<u8>) -> Result<Vec<Outbound>, ClientDrop> {
        let a = self.assignment.as_ref().ok_or(ClientDrop::NotConnected)?;
        let v6 = a.v6;
        let hdr = ip6::parse(packet).map_err(ClientDrop::Malformed6)?;
        if !ip6::is_routable(hdr.dst) || !ip6::is_routable(hdr.src) {
            return Err(ClientDrop::NotRouted);
        }
        let Some(v6) = v6 else {
            if !ip6::may_answer(packet, &hdr, false) {
                return Err(ClientDrop::NoIpv6);
            }
            self.stats.unreachable_sent += 1;
            return Ok(vec![Outbound::Reply(ip6::unreachable(packet, &hdr, ip6::UNREACHABLE_NO_ROUTE, hdr.dst))]);
        };
        if hdr.src != v6.address {
            return Err(ClientDrop::WrongSource);
        }
        let mtu = self.mtu6();
        if ip6::clamp_mss(packet, &hdr, mtu - 60) {
            self.stats.mss_clamped += 1;
        }
        if packet.len() > mtu as usize {
            if !ip6::may_answer(packet, &hdr, true) {
                return Err(ClientDrop::NotRouted);
            }
            self.stats.frag_needed_sent += 1;
            return Ok(vec![Outbound::Reply(ip6::packet_too_big(packet, &hdr, mtu, v6.gateway))]);
        }
        self.stats.ipv6_out += 1;
        Ok(vec![self.send(std::mem::take(packet))])
    }

    /// The tunnel's IPv6 MTU: as IPv4's, but never below IPv6's minimum (1280): a path that
    /// carries less in one datagram sends such packets on the bulk stream.
    pub fn mtu6(&self) -> u16 {
        self.mtu().max(ip6::MIN_MTU)
    }

    fn send(&mut self, packet: Vec<u8>) -> Outbound {
        let class = if packet.len() <= REALTIME_MAX { Class::Realtime } else { Class::Bulk };
        self.stats.packets_out += 1;
        self.stats.bytes_out += packet.len() as u64;
        if class == Class::Realtime {
            self.stats.realtime_out += 1;
        }
        Outbound::Send { class, packet }
    }

    /// A packet from the gateway: checked before the platform writes it to its tunnel.
    pub fn inbound(&mut self, packet: &[u8]) -> Result<(), ClientDrop> {
        if ip6::version(packet) == Some(6) {
            let me = self.address6();
            let hdr = ip6::parse(packet).map_err(|e| {
                self.stats.dropped += 1;
                ClientDrop::Malformed6(e)
            })?;
            if me != Some(hdr.dst) {
                self.stats.dropped += 1;
                return Err(ClientDrop::WrongSource);
            }
            self.stats.packets_in += 1;
            self.stats.bytes_in += packet.len() as u64;
            return Ok(());
        }
        let me = self.assignment.as_ref().map(|a| a.address).ok_or(ClientDrop::NotConnected)?;
        let hdr = ip::parse(packet).map_err(|e| {
            self.stats.dropped += 1;
            ClientDrop::Malformed(e)
        })?;
        if hdr.dst != me {
            self.stats.dropped += 1;
            return Err(ClientDrop::WrongSource);
        }
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.len() as u64;
        Ok(())
    }

    /// The address assigned, if any.
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.assignment.as_ref().map(|a| a.address)
    }

    /// The IPv6 address assigned, if the gateway carries IPv6.
    pub fn address6(&self) -> Option<Ipv6Addr> {
        self.assignment.as_ref().and_then(|a| a.v6).map(|v6| v6.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> TunnelClient {
        let mut c = TunnelClient::new(1300);
        c.assigned(Assignment {
            address: Ipv4Addr::new(10, 77, 1, 2),
            prefix_len: 16,
            gateway: Ipv4Addr::new(10, 77, 0, 1),
            mtu: 1400,
            v6: None,
            dns: Vec::new(),
        });
        c
    }

    fn client6() -> TunnelClient {
        let mut c = client();
        let mut a = c.assignment().cloned().unwrap();
        a.v6 =
            Some(super::super::Assignment6 { address: a6("fd00:77::1234"), prefix_len: 64, gateway: a6("fd00:77::1") });
        c.assigned(a);
        c
    }

    fn a6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_without_gateway_support_is_answered_at_once() {
        let mut c = client();
        let p = ip6::build(a6("2001:db8:1::5"), a6("2001:db8:2::1"), ip::PROTO_UDP, &[0; 30]);
        match &c.outbound(p.clone()).unwrap()[..] {
            [Outbound::Reply(icmp)] => {
                let h = ip6::parse(icmp).unwrap();
                assert_eq!((h.dst, icmp[40], icmp[41]), (a6("2001:db8:1::5"), ip6::ICMPV6_UNREACHABLE, 0));
                assert_eq!(&icmp[48..88], &p[..40], "quotes the packet");
            }
            other => panic!("{other:?}"),
        }
        // Never an error about an error; the host's link-local chatter is not for the tunnel.
        let h = ip6::parse(&p).unwrap();
        let err = ip6::unreachable(&p, &h, 0, a6("2001:db8:2::1"));
        let err_back = ip6::build(a6("2001:db8:1::5"), a6("2001:db8:2::1"), ip6::NEXT_ICMPV6, &err[40..]);
        assert_eq!(c.outbound(err_back), Err(ClientDrop::NoIpv6));
        let rs = ip6::build(a6("fe80::1"), a6("ff02::2"), ip6::NEXT_ICMPV6, &[133, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(c.outbound(rs), Err(ClientDrop::NotRouted));
        assert_eq!(c.stats.unreachable_sent, 1);
        assert_eq!(c.stats.packets_out, 0, "nothing IPv6 went out");
    }

    #[test]
    fn ipv6_through_the_tunnel() {
        let mut c = client6();
        let (me, far) = (a6("fd00:77::1234"), a6("2001:db8::1"));
        assert_eq!(c.address6(), Some(me));
        let small = ip6::build(me, far, ip::PROTO_UDP, &[1; 40]);
        assert!(matches!(&c.outbound(small).unwrap()[..], [Outbound::Send { class: Class::Realtime, .. }]));
        let big = ip6::build(me, far, ip::PROTO_UDP, &[1; 1000]);
        assert!(matches!(&c.outbound(big).unwrap()[..], [Outbound::Send { class: Class::Bulk, .. }]));
        // Over the MTU (the path's 1300, above IPv6's 1280): packet too big, from the gateway.
        let huge = ip6::build(me, far, ip::PROTO_UDP, &[1; 1400]);
        match &c.outbound(huge).unwrap()[..] {
            [Outbound::Reply(icmp)] => {
                let h = ip6::parse(icmp).unwrap();
                assert_eq!((h.src, h.dst, icmp[40]), (a6("fd00:77::1"), me, ip6::ICMPV6_PACKET_TOO_BIG));
                assert_eq!(u32::from_be_bytes(icmp[44..48].try_into().unwrap()), 1300);
            }
            other => panic!("{other:?}"),
        }
        // SYNs are clamped to the tunnel's MTU less 60 bytes of headers.
        match &c.outbound(ip6::tests::syn6(me, far, 1440)).unwrap()[..] {
            [Outbound::Send { packet, .. }] => assert_eq!(u16::from_be_bytes([packet[62], packet[63]]), 1240),
            other => panic!("{other:?}"),
        }
        let spoof = ip6::build(a6("fd00:77::99"), far, ip::PROTO_UDP, &[0; 10]);
        assert_eq!(c.outbound(spoof), Err(ClientDrop::WrongSource));
        assert!(c.inbound(&ip6::build(far, me, ip::PROTO_UDP, &[0; 10])).is_ok());
        assert_eq!(
            c.inbound(&ip6::build(far, a6("fd00:77::99"), ip::PROTO_UDP, &[0; 10])),
            Err(ClientDrop::WrongSource)
        );
        assert_eq!((c.stats.ipv6_out, c.stats.frag_needed_sent, c.stats.mss_clamped), (3, 1, 1));
    }

    #[test]
    fn classes_fragmentation_and_frag_needed() {
        let mut c = client();
        assert_eq!(c.mtu(), 1300, "the path limits the gateway's offer");
        let (me, far) = (Ipv4Addr::new(10, 77, 1, 2), Ipv4Addr::new(192, 0, 2, 1));
        let small = ip::build(me, far, ip::PROTO_UDP, &[1; 40]);
        assert!(matches!(&c.outbound(small).unwrap()[..], [Outbound::Send { class: Class::Realtime, .. }]));
        let big = ip::build(me, far, ip::PROTO_UDP, &[1; 1000]);
        assert!(matches!(&c.outbound(big).unwrap()[..], [Outbound::Send { class: Class::Bulk, .. }]));
        // Too large without DF: fragments; with DF: ICMP back to the sender.
        let huge = ip::build(me, far, ip::PROTO_UDP, &[1; 3000]);
        let out = c.outbound(huge.clone()).unwrap();
        assert_eq!(out.len(), 3);
        let mut df = huge;
        df[6] |= 0x40;
        let csum_fix = ip::parse(&df);
        assert!(csum_fix.is_err(), "changing DF without the checksum is caught");
        df[10] = 0;
        df[11] = 0;
        let sum = ip::checksum(&df[..20]);
        df[10..12].copy_from_slice(&sum.to_be_bytes());
        match &c.outbound(df).unwrap()[..] {
            [Outbound::Reply(icmp)] => assert_eq!(ip::parse(icmp).unwrap().dst, me),
            other => panic!("{other:?}"),
        }
        // SYNs are clamped to the tunnel's MSS.
        let syn = ip::tests::syn(me, far, 1460);
        match &c.outbound(syn).unwrap()[..] {
            [Outbound::Send { packet, .. }] => assert_eq!(u16::from_be_bytes([packet[42], packet[43]]), 1260),
            other => panic!("{other:?}"),
        }
        assert_eq!((c.stats.fragmented, c.stats.frag_needed_sent, c.stats.mss_clamped), (1, 1, 1));
    }

    #[test]
    fn refuses_what_is_not_ours() {
        let mut c = TunnelClient::new(1300);
        let p = ip::build(Ipv4Addr::new(10, 77, 1, 2), Ipv4Addr::new(1, 1, 1, 1), ip::PROTO_UDP, &[0; 10]);
        assert_eq!(c.outbound(p.clone()), Err(ClientDrop::NotConnected));
        let mut c = client();
        let spoof = ip::build(Ipv4Addr::new(10, 77, 1, 3), Ipv4Addr::new(1, 1, 1, 1), ip::PROTO_UDP, &[0; 10]);
        assert_eq!(c.outbound(spoof), Err(ClientDrop::WrongSource));
        assert!(matches!(c.outbound(vec![0x45; 30]), Err(ClientDrop::Malformed(_))));
        let not_for_us = ip::build(Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(10, 77, 1, 9), ip::PROTO_UDP, &[0; 10]);
        assert_eq!(c.inbound(&not_for_us), Err(ClientDrop::WrongSource));
        assert_eq!(c.stats.dropped, 3);
    }
}
