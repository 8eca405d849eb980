//! The IPv4 VPN (the seed's "IPv4 gateway"): a client sends its IP packets over a session to a
//! gateway node, which sends them on from its own address.
//!
//! Sans-IO like the rest of this crate: [`client::TunnelClient`] takes packets the platform
//! read from its tunnel (a TUN device, an Android VpnService fd, iOS's packet flow, firmware)
//! and says what to send and in which class; [`gateway::Gateway`] admits clients, assigns
//! addresses, and checks every packet in both directions. [`Message`] is what they say on the
//! gateway channel of a session.

pub mod client;
pub mod gateway;
pub mod ip;
pub mod ip6;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use client::{ClientDrop, Outbound, TunnelClient, TunnelStats};
pub use gateway::{Access, Assignment, Assignment6, ClientStats, Gateway, GatewayConfig, Refusal};

/// The session channel of the gateway service.
pub const CHANNEL: u16 = 4;
/// The service name gateways publish in the DHT (clients look it up to find one).
pub const GATEWAY_SERVICE: &str = "skyroute/ipv4-gateway";

const HELLO: u8 = 0;
const PACKET: u8 = 1;
const ASSIGNED: u8 = 2;
const REFUSED: u8 = 3;

/// Extensions after the 11 bytes of an assignment: type, length, value (unknown types are
/// skipped, so later ones need no new message).
const EXT_IPV6: u8 = 1;
const EXT_DNS4: u8 = 2;
const EXT_DNS6: u8 = 3;
/// DNS servers one assignment may carry.
const MAX_DNS: usize = 8;

/// Gateway channel messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Client -> gateway: please admit me (the session already proves my key).
    Hello,
    /// An IPv4 packet, either way.
    Packet(Vec<u8>),
    /// Gateway -> client.
    Assigned(Assignment),
    /// Gateway -> client: not admitted (why).
    Refused(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed gateway message")]
/// A gateway message that does not parse.
pub struct MessageError;

impl Message {
    /// The message's wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Hello => vec![HELLO],
            Message::Packet(p) => {
                let mut v = Vec::with_capacity(1 + p.len());
                v.push(PACKET);
                v.extend_from_slice(p);
                v
            }
            Message::Assigned(a) => {
                let mut v = vec![ASSIGNED];
                v.extend_from_slice(&a.address.octets());
                v.push(a.prefix_len);
                v.extend_from_slice(&a.gateway.octets());
                v.extend_from_slice(&a.mtu.to_be_bytes());
                if let Some(v6) = &a.v6 {
                    v.extend_from_slice(&[EXT_IPV6, 33]);
                    v.extend_from_slice(&v6.address.octets());
                    v.push(v6.prefix_len);
                    v.extend_from_slice(&v6.gateway.octets());
                }
                for d in a.dns.iter().take(MAX_DNS) {
                    match d {
                        IpAddr::V4(d) => {
                            v.extend_from_slice(&[EXT_DNS4, 4]);
                            v.extend_from_slice(&d.octets());
                        }
                        IpAddr::V6(d) => {
                            v.extend_from_slice(&[EXT_DNS6, 16]);
                            v.extend_from_slice(&d.octets());
                        }
                    }
                }
                v
            }
            Message::Refused(r) => {
                let mut v = vec![REFUSED];
                v.extend_from_slice(r.as_bytes());
                v
            }
        }
    }

    /// Parses a message; malformed bytes give an error, never a panic.
    pub fn decode(b: &[u8]) -> Result<Message, MessageError> {
        let (&tag, rest) = b.split_first().ok_or(MessageError)?;
        Ok(match tag {
            HELLO if rest.is_empty() => Message::Hello,
            PACKET => Message::Packet(rest.to_vec()),
            ASSIGNED if rest.len() >= 11 => {
                let mut a = Assignment {
                    address: Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]),
                    prefix_len: rest[4].min(32),
                    gateway: Ipv4Addr::new(rest[5], rest[6], rest[7], rest[8]),
                    mtu: u16::from_be_bytes([rest[9], rest[10]]),
                    v6: None,
                    dns: Vec::new(),
                };
                let mut ext = &rest[11..];
                while let [kind, len, more @ ..] = ext {
                    let value = more.get(..*len as usize).ok_or(MessageError)?;
                    match (*kind, value.len()) {
                        (EXT_IPV6, 33) => {
                            a.v6 = Some(Assignment6 {
                                address: ipv6(&value[..16]),
                                prefix_len: value[16].min(128),
                                gateway: ipv6(&value[17..33]),
                            })
                        }
                        (EXT_DNS4, 4) if a.dns.len() < MAX_DNS => {
                            a.dns.push(IpAddr::V4(Ipv4Addr::new(value[0], value[1], value[2], value[3])))
                        }
                        (EXT_DNS6, 16) if a.dns.len() < MAX_DNS => a.dns.push(IpAddr::V6(ipv6(value))),
                        (EXT_IPV6, _) | (EXT_DNS4, _) | (EXT_DNS6, _) => return Err(MessageError),
                        _ => {}
                    }
                    ext = &more[*len as usize..];
                }
                if !ext.is_empty() {
                    return Err(MessageError);
                }
                Message::Assigned(a)
            }
            REFUSED => Message::Refused(String::from_utf8_lossy(rest).into_owned()),
            _ => return Err(MessageError),
        })
    }
}

fn ipv6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let a = Assignment {
            address: Ipv4Addr::new(10, 77, 3, 4),
            prefix_len: 16,
            gateway: Ipv4Addr::new(10, 77, 0, 1),
            mtu: 1280,
            v6: None,
            dns: Vec::new(),
        };
        let a6 = Assignment {
            v6: Some(Assignment6 {
                address: "fd00:77::1234".parse().unwrap(),
                prefix_len: 64,
                gateway: "fd00:77::1".parse().unwrap(),
            }),
            dns: vec!["10.77.0.1".parse().unwrap(), "fd00:77::1".parse().unwrap()],
            ..a.clone()
        };
        // An extension this version does not know is skipped; a cut one is refused.
        let mut future = Message::Assigned(a6.clone()).encode();
        future.extend_from_slice(&[99, 3, 1, 2, 3]);
        assert_eq!(Message::decode(&future), Ok(Message::Assigned(a6.clone())));
        let mut cut = Message::Assigned(a6.clone()).encode();
        cut.pop();
        assert_eq!(Message::decode(&cut), Err(MessageError));
        for m in [
            Message::Hello,
            Message::Packet(vec![0x45, 1]),
            Message::Assigned(a),
            Message::Assigned(a6),
            Message::Refused("no".into()),
        ] {
            assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Message::decode(&b);
        }
    }
}
