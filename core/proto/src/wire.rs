//! Outer link packets: what an observer of a link sees. See WIRE.md for the byte layout.
//!
//! Every packet starts with one byte `version << 4 | type`. Data packets then carry only the key
//! epoch, the receiver's link index, the packet counter and padded ciphertext; frame types and
//! route ids are inside the encryption.

use crate::crypto::TAG_LEN;
use crate::identity::PUBLIC_KEY_LEN;

/// Wire format version carried in the high nibble of the first byte.
pub const VERSION: u8 = 1;
/// Largest datagram a node accepts (jumbo Ethernet frames fit).
pub const MAX_PACKET_LEN: usize = 9216;

/// Packet type: a link handshake initiation.
pub const TYPE_HANDSHAKE_INIT: u8 = 1;
/// Packet type: a link handshake response.
pub const TYPE_HANDSHAKE_RESP: u8 = 2;
/// Packet type: sealed link data (frames).
pub const TYPE_DATA: u8 = 3;
/// Packet type: a cookie reply: a node under handshake load asks the initiator to prove its
/// address before it spends an ECDH on the init (see [`crate::link::cookie`]).
pub const TYPE_COOKIE_REPLY: u8 = 4;

/// Data packet header: type/version, epoch, 2 reserved zero bytes, receiver index, counter.
pub const DATA_HEADER_LEN: usize = 16;
/// Encrypted static key in the handshake init: compressed point + tag.
pub const ENC_STATIC_LEN: usize = PUBLIC_KEY_LEN + TAG_LEN;
/// The initiator's timestamp in the init: seconds (8 bytes) and nanoseconds (4 bytes), big
/// endian, so byte order is time order (a responder refuses an init not newer than the last).
pub const TIMESTAMP_LEN: usize = 12;
/// The sealed timestamp in the handshake init.
pub const ENC_TIMESTAMP_LEN: usize = TIMESTAMP_LEN + TAG_LEN;
/// Bytes of each MAC closing a handshake init.
pub const MAC_LEN: usize = 16;
/// Bytes of an init covered by `mac1` (everything before it).
pub const INIT_MAC1_AT: usize = 8 + PUBLIC_KEY_LEN + ENC_STATIC_LEN + ENC_TIMESTAMP_LEN;
/// Bytes of an init covered by `mac2` (everything before it, `mac1` included).
pub const INIT_MAC2_AT: usize = INIT_MAC1_AT + MAC_LEN;
/// Bytes in a handshake initiation.
pub const HANDSHAKE_INIT_LEN: usize = INIT_MAC2_AT + MAC_LEN;
/// The random nonce of a cookie reply (its key is derived from it, so no nonce repeats).
pub const COOKIE_NONCE_LEN: usize = 16;
/// Bytes of a cookie.
pub const COOKIE_LEN: usize = 16;
/// Bytes in a cookie reply: header, receiver index, nonce, sealed cookie. Smaller than the init
/// that causes it, so an unauthenticated sender can make a node send no more than it sent.
pub const COOKIE_REPLY_LEN: usize = 8 + COOKIE_NONCE_LEN + COOKIE_LEN + TAG_LEN;
/// Bytes in a handshake response.
pub const HANDSHAKE_RESP_LEN: usize = 12 + PUBLIC_KEY_LEN + TAG_LEN;

/// Why a packet or frame could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet truncated")]
    /// Shorter than the packet type needs.
    Truncated,
    #[error("packet larger than {MAX_PACKET_LEN} bytes")]
    /// Longer than the packet type allows.
    Oversized,
    #[error("unsupported wire version {0}")]
    /// A version byte we do not speak.
    BadVersion(u8),
    #[error("unknown packet or frame type {0:#04x}")]
    /// A packet type we do not know.
    UnknownType(u8),
    #[error("malformed: {0}")]
    /// A field out of range (which one).
    Malformed(&'static str),
}

/// A parsed outer packet, borrowing from the datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A handshake initiation.
    HandshakeInit(HandshakeInit<'a>),
    /// A handshake response.
    HandshakeResp(HandshakeResp<'a>),
    /// Sealed data: the header; the sealed frames follow it.
    Data(DataHeader),
    /// A cookie reply to one of our inits.
    CookieReply(CookieReply<'a>),
}

#[derive(Debug, PartialEq, Eq)]
/// A handshake initiation, borrowed from the datagram.
pub struct HandshakeInit<'a> {
    /// The initiator's link slot: which of its interfaces the link lives on (0: unbound).
    /// A neighbour reachable over two radios has a link per slot.
    pub slot: u8,
    /// The initiator's session index.
    pub sender_index: u32,
    /// The initiator's ephemeral public key.
    pub ephemeral: &'a [u8; PUBLIC_KEY_LEN],
    /// The initiator's static key, sealed.
    pub enc_static: &'a [u8; ENC_STATIC_LEN],
    /// The initiator's sealed timestamp (the tag proves the initiator holds its static key).
    pub enc_timestamp: &'a [u8; ENC_TIMESTAMP_LEN],
    /// A MAC of everything before it keyed by the responder's public key: checked before any
    /// ECDH, so only a sender that knows whom it dials makes the responder work.
    pub mac1: &'a [u8; MAC_LEN],
    /// A MAC of everything before it keyed by a cookie the responder gave this sender's
    /// address; zero without one. Needed only while the responder is under load.
    pub mac2: &'a [u8; MAC_LEN],
}

#[derive(Debug, PartialEq, Eq)]
/// A cookie reply, borrowed from the datagram.
pub struct CookieReply<'a> {
    /// The initiator's session index from the init this answers.
    pub receiver_index: u32,
    /// The random nonce the sealing key derives from.
    pub nonce: &'a [u8; COOKIE_NONCE_LEN],
    /// The cookie, sealed with the init's `mac1` as associated data.
    pub enc_cookie: &'a [u8; COOKIE_LEN + TAG_LEN],
}

#[derive(Debug, PartialEq, Eq)]
/// A handshake response, borrowed from the datagram.
pub struct HandshakeResp<'a> {
    /// The responder's session index.
    pub sender_index: u32,
    /// The initiator's session index, echoed.
    pub receiver_index: u32,
    /// The responder's ephemeral public key.
    pub ephemeral: &'a [u8; PUBLIC_KEY_LEN],
    /// The sealed empty payload (its tag confirms the keys).
    pub enc_payload: &'a [u8; TAG_LEN],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The header of a sealed data packet (also the AEAD's associated data).
pub struct DataHeader {
    /// The key epoch the packet is sealed under (keys rotate every second under traffic).
    pub epoch: u8,
    /// The receiver's session index.
    pub receiver_index: u32,
    /// The packet counter (the nonce; never reused under one key).
    pub counter: u64,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn arr<const N: usize>(b: &[u8]) -> &[u8; N] {
    // Callers slice exactly N bytes after checking the packet length.
    match b.try_into() {
        Ok(a) => a,
        Err(_) => unreachable!("slice length checked by caller"),
    }
}

impl<'a> Packet<'a> {
    /// Parses the outer header. For data packets the ciphertext is `&datagram[DATA_HEADER_LEN..]`.
    pub fn parse(datagram: &'a [u8]) -> Result<Packet<'a>, DecodeError> {
        if datagram.len() > MAX_PACKET_LEN {
            return Err(DecodeError::Oversized);
        }
        let first = *datagram.first().ok_or(DecodeError::Truncated)?;
        if first >> 4 != VERSION {
            return Err(DecodeError::BadVersion(first >> 4));
        }
        let need = |n: usize| if datagram.len() < n { Err(DecodeError::Truncated) } else { Ok(()) };
        let exact = |n: usize| if datagram.len() > n { Err(DecodeError::Malformed("trailing bytes")) } else { Ok(()) };
        match first & 0x0f {
            TYPE_HANDSHAKE_INIT => {
                need(HANDSHAKE_INIT_LEN)?;
                exact(HANDSHAKE_INIT_LEN)?;
                if datagram[2..4] != [0, 0] {
                    return Err(DecodeError::Malformed("reserved bytes not zero"));
                }
                let e_end = 8 + PUBLIC_KEY_LEN;
                let s_end = e_end + ENC_STATIC_LEN;
                Ok(Packet::HandshakeInit(HandshakeInit {
                    slot: datagram[1],
                    sender_index: be32(&datagram[4..8]),
                    ephemeral: arr(&datagram[8..e_end]),
                    enc_static: arr(&datagram[e_end..s_end]),
                    enc_timestamp: arr(&datagram[s_end..INIT_MAC1_AT]),
                    mac1: arr(&datagram[INIT_MAC1_AT..INIT_MAC2_AT]),
                    mac2: arr(&datagram[INIT_MAC2_AT..HANDSHAKE_INIT_LEN]),
                }))
            }
            TYPE_HANDSHAKE_RESP => {
                need(HANDSHAKE_RESP_LEN)?;
                exact(HANDSHAKE_RESP_LEN)?;
                if datagram[1..4] != [0, 0, 0] {
                    return Err(DecodeError::Malformed("reserved bytes not zero"));
                }
                let e_end = 12 + PUBLIC_KEY_LEN;
                Ok(Packet::HandshakeResp(HandshakeResp {
                    sender_index: be32(&datagram[4..8]),
                    receiver_index: be32(&datagram[8..12]),
                    ephemeral: arr(&datagram[12..e_end]),
                    enc_payload: arr(&datagram[e_end..e_end + TAG_LEN]),
                }))
            }
            TYPE_COOKIE_REPLY => {
                need(COOKIE_REPLY_LEN)?;
                exact(COOKIE_REPLY_LEN)?;
                if datagram[1..4] != [0, 0, 0] {
                    return Err(DecodeError::Malformed("reserved bytes not zero"));
                }
                let n_end = 8 + COOKIE_NONCE_LEN;
                Ok(Packet::CookieReply(CookieReply {
                    receiver_index: be32(&datagram[4..8]),
                    nonce: arr(&datagram[8..n_end]),
                    enc_cookie: arr(&datagram[n_end..COOKIE_REPLY_LEN]),
                }))
            }
            TYPE_DATA => {
                need(DATA_HEADER_LEN + TAG_LEN)?;
                if datagram[2..4] != [0, 0] {
                    return Err(DecodeError::Malformed("reserved bytes not zero"));
                }
                if !(datagram.len() - DATA_HEADER_LEN - TAG_LEN).is_multiple_of(16) {
                    return Err(DecodeError::Malformed("ciphertext not padded to 16 bytes"));
                }
                Ok(Packet::Data(DataHeader {
                    epoch: datagram[1],
                    receiver_index: be32(&datagram[4..8]),
                    counter: u64::from_be_bytes(*arr(&datagram[8..16])),
                }))
            }
            t => Err(DecodeError::UnknownType(t)),
        }
    }
}

impl DataHeader {
    /// Writes the header into `out`.
    pub fn write(&self, out: &mut [u8; DATA_HEADER_LEN]) {
        out[0] = VERSION << 4 | TYPE_DATA;
        out[1] = self.epoch;
        out[2..4].fill(0);
        out[4..8].copy_from_slice(&self.receiver_index.to_be_bytes());
        out[8..16].copy_from_slice(&self.counter.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn data_header_round_trip() {
        let h = DataHeader { epoch: 7, receiver_index: 0xdead_beef, counter: 42 };
        let mut buf = vec![0u8; DATA_HEADER_LEN + TAG_LEN + 16];
        h.write((&mut buf[..DATA_HEADER_LEN]).try_into().unwrap());
        assert_eq!(Packet::parse(&buf), Ok(Packet::Data(h)));
        assert_eq!(Packet::parse(&buf[..20]), Err(DecodeError::Truncated));
        assert_eq!(
            Packet::parse(&buf[..DATA_HEADER_LEN + TAG_LEN + 5]),
            Err(DecodeError::Malformed("ciphertext not padded to 16 bytes"))
        );
        buf[0] = 0x23;
        assert_eq!(Packet::parse(&buf), Err(DecodeError::BadVersion(2)));
        buf[0] = 0x1f;
        assert_eq!(Packet::parse(&buf), Err(DecodeError::UnknownType(0xf)));
        assert_eq!(Packet::parse(&[]), Err(DecodeError::Truncated));
        assert_eq!(Packet::parse(&vec![0x13; MAX_PACKET_LEN + 1]), Err(DecodeError::Oversized));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = Packet::parse(&bytes);
        }

        #[test]
        fn mutated_cookie_reply_never_panics(pos in 0usize..COOKIE_REPLY_LEN, val in any::<u8>(), cut in 0usize..COOKIE_REPLY_LEN + 4) {
            let mut b = vec![0u8; COOKIE_REPLY_LEN];
            b[0] = VERSION << 4 | TYPE_COOKIE_REPLY;
            b[pos] = val;
            b.resize(cut, 0);
            match Packet::parse(&b) {
                Ok(Packet::CookieReply(r)) => prop_assert_eq!(r.receiver_index, be32(&b[4..8])),
                Ok(_) => prop_assert!(pos == 0, "only the type byte changes the kind"),
                Err(_) => prop_assert!(cut != COOKIE_REPLY_LEN || pos < 4, "a whole reply with zero reserved bytes parses"),
            }
        }

        #[test]
        fn mutated_handshake_never_panics(pos in 0usize..HANDSHAKE_INIT_LEN, val in any::<u8>(), cut in 0usize..HANDSHAKE_INIT_LEN + 4) {
            let mut b = vec![0u8; HANDSHAKE_INIT_LEN];
            b[0] = VERSION << 4 | TYPE_HANDSHAKE_INIT;
            b[pos] = val;
            b.resize(cut, 0);
            let _ = Packet::parse(&b);
        }
    }
}
