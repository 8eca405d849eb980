//! The client's side of the VPN, without a TUN device of its own: the platform hands it IP
//! packets read from its tunnel (a TUN, an Android VpnService fd, iOS's packet flow, firmware)
//! and writes back what it returns. Which packets go out, in which class, and what the
//! platform's stack is told when a packet is too large.

use core::net::Ipv4Addr;

use super::gateway::Assignment;
use super::ip::{self, IpError};
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
        /// The IPv4 packet.
        packet: Vec<u8>,
    },
    /// Write back into the tunnel (ICMP "fragmentation needed" for the sender).
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
    /// Packets dropped (malformed, wrong source, no address yet).
    pub dropped: u64,
}

/// The client side of the VPN tunnel: what the platform's packets become, and back.
pub struct TunnelClient {
    /// The largest IP packet the path carries as one realtime message.
    path_mtu: u16,
    assignment: Option<Assignment>,
    /// Counters.
    pub stats: TunnelStats,
}

impl TunnelClient {
    /// `path_mtu`: the largest IP packet one session datagram carries on the current routes.
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
        });
        c
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
