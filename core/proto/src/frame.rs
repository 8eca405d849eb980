//! Frames carried inside an encrypted link packet. One packet bundles any number of frames
//! (of any routes) up to the link MTU; zero bytes after the last frame are padding.

use crate::identity::PUBLIC_KEY_LEN;
use crate::types::RouteId;
use crate::wire::DecodeError;

/// How many counters below `largest` one ack frame covers.
pub const ACK_BITMAP_BITS: u64 = 256;
/// Encoded size of an ACK frame.
pub const ACK_FRAME_LEN: usize = 1 + 8 + 4 + ACK_BITMAP_BITS as usize / 8;

/// A selective acknowledgement as carried in an ACK frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckFrame {
    /// The largest datagram counter received.
    pub largest: u64,
    /// How long the receiver held the ack, in microseconds (for RTT samples).
    pub delay_us: u32,
    /// Bit `i` (byte `i / 8`, bit `i % 8`) set: counter `largest - 1 - i` was received.
    pub bitmap: [u8; 32],
}

impl AckFrame {
    /// Whether this frame acknowledges `counter`.
    pub fn covers(&self, counter: u64) -> bool {
        if counter == self.largest {
            return true;
        }
        if counter > self.largest || self.largest - counter > ACK_BITMAP_BITS {
            return false;
        }
        let i = self.largest - 1 - counter;
        self.bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Every counter this frame acknowledges.
    pub fn acked(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.largest).chain((0..ACK_BITMAP_BITS).filter_map(move |i| {
            let set = self.bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0;
            (set && self.largest > i).then(|| self.largest - 1 - i)
        }))
    }
}

/// Frame type: padding (to the link's pad size).
pub const FRAME_PADDING: u8 = 0x00;
/// Frame type: PING.
pub const FRAME_PING: u8 = 0x01;
/// Frame type: REKEY.
pub const FRAME_REKEY: u8 = 0x02;
/// Frame type: REKEY_ACK.
pub const FRAME_REKEY_ACK: u8 = 0x03;
/// Frame type: CLOSE.
pub const FRAME_CLOSE: u8 = 0x04;
/// Frame type: ACK.
pub const FRAME_ACK: u8 = 0x05;
/// Frame type: PROBE.
pub const FRAME_PROBE: u8 = 0x06;
/// Frame type: ROUTE_DATA.
pub const FRAME_ROUTE_DATA: u8 = 0x10;
/// Frame type: ROUTE_SETUP.
pub const FRAME_ROUTE_SETUP: u8 = 0x11;
/// Frame type: ROUTE_SETUP_OK.
pub const FRAME_ROUTE_SETUP_OK: u8 = 0x12;
/// Frame type: ROUTE_ERROR.
pub const FRAME_ROUTE_ERROR: u8 = 0x13;
/// Frame type: ROUTE_CLOSE.
pub const FRAME_ROUTE_CLOSE: u8 = 0x14;
/// Frame type: MAX_DATA.
pub const FRAME_MAX_DATA: u8 = 0x15;
/// Frame type: ROUTE_NOTE.
pub const FRAME_ROUTE_NOTE: u8 = 0x16;
/// Frame type: ROUTE_SETUP of a direct route (the sender is the route's source and the
/// receiver its only hop: the route's messages go unsealed inside the link's encryption).
pub const FRAME_ROUTE_SETUP_DIRECT: u8 = 0x17;

/// Length of the key confirmation a hop returns when it joins a route.
pub const PROOF_LEN: usize = 16;
/// Bytes a ROUTE_DATA frame adds around its payload (type, route id, class, offset, length).
pub const ROUTE_DATA_OVERHEAD: usize = 1 + 4 + 1 + 8 + 2;

#[derive(Debug, Clone, PartialEq, Eq)]
/// One frame inside a sealed link packet (WIRE.md has each one's bytes).
pub enum Frame<'a> {
    /// A keepalive or key confirmation: asks for nothing.
    Ping,
    /// Asks the peer for an ack (the link's on-demand liveness check: after the network
    /// changed, or when a link that was idle is used again).
    Probe,
    /// Start of a rekey: the sender's new ephemeral key for `epoch`.
    Rekey {
        /// The key epoch the rotation makes.
        epoch: u8,
        /// The sender's new ephemeral public key.
        ephemeral: &'a [u8; PUBLIC_KEY_LEN],
    },
    /// Answer to a rekey: the receiver's new ephemeral key for `epoch`.
    RekeyAck {
        /// The key epoch being answered.
        epoch: u8,
        /// The receiver's new ephemeral public key.
        ephemeral: &'a [u8; PUBLIC_KEY_LEN],
    },
    /// The peer closes the link.
    Close {
        /// Why (a code; 0: normal close).
        reason: u8,
    },
    /// Selective acknowledgement of link datagrams (by counter).
    Ack(AckFrame),
    /// An accounting note between a route's source and one of its hops (end-to-end sealed to
    /// that hop), passed along the route hop by hop as reliable control: see `route`.
    RouteNote {
        /// The receiver's id of the route.
        route: RouteId,
        /// The sealed note.
        payload: &'a [u8],
    },
    /// A message of the receiver's route `route`: service class, stream offset, bytes.
    RouteData {
        /// The receiver's id of the route.
        route: RouteId,
        /// The service class (0 realtime, 1 bulk).
        class: u8,
        /// The message's offset in the class's stream.
        offset: u64,
        /// The message.
        payload: &'a [u8],
    },
    /// Credit: the sender may have sent up to `limit` bytes of the receiver's route `route`
    /// in `class` (cumulative).
    MaxData {
        /// The receiver's id of the route.
        route: RouteId,
        /// The service class.
        class: u8,
        /// Cumulative bytes the sender may have sent.
        limit: u64,
    },
    /// Join a route: `route` is the sender's id for it; `ephemeral` keys the hop secret.
    RouteSetup {
        /// The sender's id for the route.
        route: RouteId,
        /// The source's ephemeral key for this hop.
        ephemeral: &'a [u8; PUBLIC_KEY_LEN],
        /// The sender is the route's source and the receiver its last hop: the route's
        /// messages are protected by the link alone (`ROUTE_SETUP_DIRECT`).
        direct: bool,
    },
    /// Joined: `route` is the receiver's id, `hop_route` the sender's, `proof` confirms the key.
    RouteSetupOk {
        /// The receiver's id of the route.
        route: RouteId,
        /// The sender's id of the route.
        hop_route: RouteId,
        /// Proves the hop derived the same key.
        proof: &'a [u8; PROOF_LEN],
    },
    /// The receiver's route `route` failed downstream/upstream with `code`.
    RouteError {
        /// The receiver's id of the route.
        route: RouteId,
        /// Why (a route error code).
        code: u8,
    },
    /// Tear down the receiver's route `route`.
    RouteClose {
        /// The receiver's id of the route.
        route: RouteId,
    },
}

/// Reads big-endian fields off a byte slice; running out is `DecodeError::Truncated`. Shared
/// by link frames and session frames.
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn route(&mut self) -> Result<RouteId, DecodeError> {
        RouteId::new(self.u32()?).ok_or(DecodeError::Malformed("route id 0"))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.array::<8>()?;
        Ok(u64::from_be_bytes(*b))
    }
    fn class(&mut self) -> Result<u8, DecodeError> {
        match self.u8()? {
            c @ (0 | 1) => Ok(c),
            _ => Err(DecodeError::Malformed("unknown service class")),
        }
    }
    fn array<const N: usize>(&mut self) -> Result<&'a [u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| DecodeError::Truncated)
    }
}

impl<'a> Frame<'a> {
    /// Decodes the next frame from `buf`, advancing it. `Ok(None)` at the end or at padding.
    pub fn decode(buf: &mut &'a [u8]) -> Result<Option<Frame<'a>>, DecodeError> {
        let mut r = Reader { buf };
        let Some(&ty) = r.buf.first() else { return Ok(None) };
        if ty == FRAME_PADDING {
            *buf = &[];
            return Ok(None);
        }
        r.take(1)?;
        let frame = match ty {
            FRAME_PING => Frame::Ping,
            FRAME_PROBE => Frame::Probe,
            FRAME_REKEY => Frame::Rekey { epoch: r.u8()?, ephemeral: r.array()? },
            FRAME_REKEY_ACK => Frame::RekeyAck { epoch: r.u8()?, ephemeral: r.array()? },
            FRAME_CLOSE => Frame::Close { reason: r.u8()? },
            FRAME_ACK => {
                let largest = r.u64()?;
                let delay_us = r.u32()?;
                let bitmap = *r.array::<32>()?;
                Frame::Ack(AckFrame { largest, delay_us, bitmap })
            }
            FRAME_ROUTE_DATA => {
                let route = r.route()?;
                let class = r.class()?;
                let offset = r.u64()?;
                let len = r.u16()? as usize;
                Frame::RouteData { route, class, offset, payload: r.take(len)? }
            }
            FRAME_MAX_DATA => Frame::MaxData { route: r.route()?, class: r.class()?, limit: r.u64()? },
            FRAME_ROUTE_SETUP => Frame::RouteSetup { route: r.route()?, ephemeral: r.array()?, direct: false },
            FRAME_ROUTE_SETUP_DIRECT => Frame::RouteSetup { route: r.route()?, ephemeral: r.array()?, direct: true },
            FRAME_ROUTE_SETUP_OK => Frame::RouteSetupOk { route: r.route()?, hop_route: r.route()?, proof: r.array()? },
            FRAME_ROUTE_ERROR => Frame::RouteError { route: r.route()?, code: r.u8()? },
            FRAME_ROUTE_CLOSE => Frame::RouteClose { route: r.route()? },
            FRAME_ROUTE_NOTE => {
                let route = r.route()?;
                let len = r.u16()? as usize;
                Frame::RouteNote { route, payload: r.take(len)? }
            }
            t => return Err(DecodeError::UnknownType(t)),
        };
        *buf = r.buf;
        Ok(Some(frame))
    }

    /// Bytes the frame takes on the wire.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Frame::Ping | Frame::Probe => 0,
            Frame::Rekey { .. } | Frame::RekeyAck { .. } => 1 + PUBLIC_KEY_LEN,
            Frame::Close { .. } => 1,
            Frame::Ack(_) => 8 + 4 + 32,
            Frame::RouteData { payload, .. } => ROUTE_DATA_OVERHEAD - 1 + payload.len(),
            Frame::MaxData { .. } => 4 + 1 + 8,
            Frame::RouteSetup { .. } => 4 + PUBLIC_KEY_LEN,
            Frame::RouteSetupOk { .. } => 8 + PROOF_LEN,
            Frame::RouteError { .. } => 5,
            Frame::RouteClose { .. } => 4,
            Frame::RouteNote { payload, .. } => 4 + 2 + payload.len(),
        }
    }

    /// Appends the encoding. Route payloads longer than `u16::MAX` are a caller bug and are
    /// prevented by the node's MTU checks.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Ping => out.push(FRAME_PING),
            Frame::Probe => out.push(FRAME_PROBE),
            Frame::Rekey { epoch, ephemeral } => {
                out.extend_from_slice(&[FRAME_REKEY, *epoch]);
                out.extend_from_slice(&ephemeral[..]);
            }
            Frame::RekeyAck { epoch, ephemeral } => {
                out.extend_from_slice(&[FRAME_REKEY_ACK, *epoch]);
                out.extend_from_slice(&ephemeral[..]);
            }
            Frame::Close { reason } => out.extend_from_slice(&[FRAME_CLOSE, *reason]),
            Frame::Ack(a) => {
                out.push(FRAME_ACK);
                out.extend_from_slice(&a.largest.to_be_bytes());
                out.extend_from_slice(&a.delay_us.to_be_bytes());
                out.extend_from_slice(&a.bitmap);
            }
            Frame::RouteData { route, class, offset, payload } => {
                debug_assert!(payload.len() <= u16::MAX as usize);
                out.push(FRAME_ROUTE_DATA);
                out.extend_from_slice(&route.get().to_be_bytes());
                out.push(*class);
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                out.extend_from_slice(payload);
            }
            Frame::MaxData { route, class, limit } => {
                out.push(FRAME_MAX_DATA);
                out.extend_from_slice(&route.get().to_be_bytes());
                out.push(*class);
                out.extend_from_slice(&limit.to_be_bytes());
            }
            Frame::RouteSetup { route, ephemeral, direct } => {
                out.push(if *direct { FRAME_ROUTE_SETUP_DIRECT } else { FRAME_ROUTE_SETUP });
                out.extend_from_slice(&route.get().to_be_bytes());
                out.extend_from_slice(&ephemeral[..]);
            }
            Frame::RouteSetupOk { route, hop_route, proof } => {
                out.push(FRAME_ROUTE_SETUP_OK);
                out.extend_from_slice(&route.get().to_be_bytes());
                out.extend_from_slice(&hop_route.get().to_be_bytes());
                out.extend_from_slice(&proof[..]);
            }
            Frame::RouteError { route, code } => {
                out.push(FRAME_ROUTE_ERROR);
                out.extend_from_slice(&route.get().to_be_bytes());
                out.push(*code);
            }
            Frame::RouteClose { route } => {
                out.push(FRAME_ROUTE_CLOSE);
                out.extend_from_slice(&route.get().to_be_bytes());
            }
            Frame::RouteNote { route, payload } => {
                out.push(FRAME_ROUTE_NOTE);
                out.extend_from_slice(&route.get().to_be_bytes());
                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                out.extend_from_slice(payload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rid(n: u32) -> RouteId {
        RouteId::new(n).unwrap()
    }

    #[test]
    fn round_trip_every_frame() {
        let e = [2u8; PUBLIC_KEY_LEN];
        let p = [9u8; PROOF_LEN];
        let ack = AckFrame { largest: 77, delay_us: 5, bitmap: [0x55; 32] };
        let frames = vec![
            Frame::Ack(ack.clone()),
            Frame::MaxData { route: rid(6), class: 1, limit: 1 << 40 },
            Frame::Ping,
            Frame::Rekey { epoch: 3, ephemeral: &e },
            Frame::RekeyAck { epoch: 4, ephemeral: &e },
            Frame::Close { reason: 1 },
            Frame::RouteData { route: rid(7), class: 0, offset: 99, payload: b"abc" },
            Frame::RouteSetup { route: rid(8), ephemeral: &e, direct: false },
            Frame::RouteSetup { route: rid(8), ephemeral: &e, direct: true },
            Frame::RouteSetupOk { route: rid(9), hop_route: rid(10), proof: &p },
            Frame::RouteError { route: rid(11), code: 2 },
            Frame::RouteClose { route: rid(12) },
            Frame::RouteNote { route: rid(13), payload: b"note" },
        ];
        let mut buf = Vec::new();
        for f in &frames {
            let before = buf.len();
            f.encode(&mut buf);
            assert_eq!(buf.len() - before, f.encoded_len());
        }
        buf.extend_from_slice(&[0u8; 11]);
        let mut rd: &[u8] = &buf;
        let mut back = Vec::new();
        while let Some(f) = Frame::decode(&mut rd).unwrap() {
            back.push(f);
        }
        assert_eq!(back, frames);
        assert!(rd.is_empty());
    }

    #[test]
    fn typed_errors() {
        let dec = |b: &[u8]| {
            let mut rd = b;
            Frame::decode(&mut rd).map(|f| f.is_some())
        };
        assert_eq!(dec(&[0x77]), Err(DecodeError::UnknownType(0x77)));
        assert_eq!(
            dec(&[FRAME_ROUTE_DATA, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 1]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(dec(&[FRAME_ROUTE_CLOSE, 0, 0, 0, 0]), Err(DecodeError::Malformed("route id 0")));
        assert_eq!(
            dec(&[FRAME_MAX_DATA, 0, 0, 0, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Malformed("unknown service class"))
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut rd: &[u8] = &bytes;
            for _ in 0..600 {
                match Frame::decode(&mut rd) {
                    Ok(Some(f)) => { let mut v = Vec::new(); f.encode(&mut v); prop_assert_eq!(v.len(), f.encoded_len()); }
                    _ => break,
                }
            }
        }
    }
}
