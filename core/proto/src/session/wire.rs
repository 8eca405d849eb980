//! Session frames: what travels inside a session's sealed packets.
//!
//! A session packet is carried as route application data and uses the link packet layout
//! ([`crate::wire`]): a Noise IK init or response (under the session prologue), or a data packet
//! `type, epoch, 2 reserved, receiver index u32, counter u64` followed by the sealed body. The
//! body, once opened:
//!
//! ```text
//! path u32 | path_seq u32 | sent_us u32 | frame*
//! SYMBOL    0x01 block u32, offset u64, block_len u32, esi u32, sym_len u16, data
//! DATAGRAM  0x02 id u32, budget_ms u16, len u16, data
//! ACK       0x03 ack_seq u32, next_block u32, n u8, n x (block u32, received u16, source_bits u64),
//!                m u8, m x (path u32, last_seq u32, count u32, min_delay u32)
//! PROBE     0x04
//! RESUME    0x05 next_block u32, offset u64, recv_next u32, fresh u8
//! CLOSE     0x06
//! PATH_CLOSE 0x07 path u32
//! ```
//! PADDING   0x00 to the end (zeros): bodies are padded to a multiple of 16 bytes.
//! All integers big-endian. `received == DECODED` marks a block decoded out of order.
//! `sent_us` is the sender's session clock in microseconds (wrapping); a receiver's
//! `min_delay` for a path is the smallest recent `receive clock - sent_us` of the packets it
//! got on that path (wrapping): one-way delay plus the clocks' offset, which cancels when both
//! directions' values are added (see `Path::base_delay`).

use thiserror::Error;

use crate::frame::Reader;
use crate::wire::DecodeError;

/// Frame type: a RaptorQ symbol of the stream.
pub const SYMBOL: u8 = 0x01;
/// Frame type: a deadline datagram.
pub const DATAGRAM: u8 = 0x02;
/// Frame type: an ack.
pub const ACK: u8 = 0x03;
/// Frame type: a probe (asks for an ack).
pub const PROBE: u8 = 0x04;
/// Frame type: where the stream resumes after a handshake.
pub const RESUME: u8 = 0x05;
/// Frame type: the session closes.
pub const CLOSE: u8 = 0x06;
/// Frame type: a path closes.
pub const PATH_CLOSE: u8 = 0x07;

/// `received` value of a block the receiver has decoded.
pub const DECODED: u16 = u16::MAX;
/// Length of the body header (path, path_seq, sent_us).
pub const BODY_HEADER_LEN: usize = 12;
/// Bytes a SYMBOL frame adds to its data.
pub const SYMBOL_OVERHEAD: usize = 1 + 4 + 8 + 4 + 4 + 2;
/// Length of a RESUME frame.
pub const RESUME_LEN: usize = 1 + 4 + 8 + 4 + 1;
/// Bytes a DATAGRAM frame adds to its data.
pub const DATAGRAM_OVERHEAD: usize = 1 + 4 + 2 + 2;
/// Most block entries and path reports one ACK carries.
pub const MAX_ACK_ENTRIES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
/// Why a session body did not parse.
pub enum FrameError {
    #[error("session frame truncated")]
    /// Shorter than a frame needs.
    Truncated,
    #[error("unknown session frame type {0:#04x}")]
    /// A frame type we do not know.
    UnknownType(u8),
    #[error("malformed session frame: {0}")]
    /// A field out of range (which one).
    Malformed(&'static str),
}

impl From<DecodeError> for FrameError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Truncated => FrameError::Truncated,
            DecodeError::UnknownType(t) => FrameError::UnknownType(t),
            DecodeError::Malformed(m) => FrameError::Malformed(m),
            DecodeError::Oversized | DecodeError::BadVersion(_) => FrameError::Malformed("not a session frame"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// What the receiver holds of one block.
pub struct BlockAck {
    /// The block.
    pub block: u32,
    /// Distinct symbols received, or [`DECODED`].
    pub received: u16,
    /// Which source symbols (ESI < 64) arrived.
    pub source_bits: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// What the receiver saw on one path (for loss and delay estimates).
pub struct PathReport {
    /// The path.
    pub path: u32,
    /// Highest path sequence number received on the path.
    pub last_seq: u32,
    /// Packets received on the path (cumulative).
    pub count: u32,
    /// The reporter's smallest recent (receive clock - sender's stamp) on the path, in
    /// microseconds, wrapping.
    pub min_delay: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// A session ack.
pub struct Ack {
    /// Increases with every ack (newer replaces older).
    pub ack_seq: u32,
    /// Every block below this one is decoded and delivered.
    pub next_block: u32,
    /// Blocks at or after `next_block` the receiver holds symbols of.
    pub blocks: Vec<BlockAck>,
    /// Per-path reports.
    pub paths: Vec<PathReport>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// One frame in a session packet body (WIRE.md has each one's bytes).
pub enum Frame<'a> {
    /// A RaptorQ symbol of the stream.
    Symbol {
        /// The block.
        block: u32,
        /// The block's first byte in the stream.
        offset: u64,
        /// The block's length in bytes.
        block_len: u32,
        /// The encoding symbol id (below the block's symbol count: source; else repair).
        esi: u32,
        /// The symbol.
        data: &'a [u8],
    },
    /// A deadline datagram.
    Datagram {
        /// Its id (copies on other paths share it).
        id: u32,
        /// Its deadline, ms after it was sent.
        budget_ms: u16,
        /// The datagram.
        data: &'a [u8],
    },
    /// An ack.
    Ack(Ack),
    /// Asks for an ack.
    Probe,
    /// Sent after every handshake until acknowledged: where our stream continues
    /// (`next_block` at byte `offset`), the first block we still need (`recv_next`), and whether
    /// our state is new (`fresh`: we have none of the peer's earlier data).
    Resume {
        /// Our next block.
        next_block: u32,
        /// The stream offset of `next_block`.
        offset: u64,
        /// The first of the peer's blocks we still need.
        recv_next: u32,
        /// We hold none of the peer's earlier data.
        fresh: bool,
    },
    /// The session closes.
    Close,
    /// The sender closes one path.
    PathClose {
        /// The path.
        path: u32,
    },
}

impl Frame<'_> {
    /// Whether the frame asks the receiver for an ACK.
    pub fn eliciting(&self) -> bool {
        matches!(self, Frame::Symbol { .. } | Frame::Datagram { .. } | Frame::Probe | Frame::Resume { .. })
    }

    /// Appends the frame's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Symbol { block, offset, block_len, esi, data } => {
                out.push(SYMBOL);
                out.extend_from_slice(&block.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&block_len.to_be_bytes());
                out.extend_from_slice(&esi.to_be_bytes());
                out.extend_from_slice(&(data.len() as u16).to_be_bytes());
                out.extend_from_slice(data);
            }
            Frame::Datagram { id, budget_ms, data } => {
                out.push(DATAGRAM);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&budget_ms.to_be_bytes());
                out.extend_from_slice(&(data.len() as u16).to_be_bytes());
                out.extend_from_slice(data);
            }
            Frame::Ack(a) => {
                out.push(ACK);
                out.extend_from_slice(&a.ack_seq.to_be_bytes());
                out.extend_from_slice(&a.next_block.to_be_bytes());
                let n = a.blocks.len().min(MAX_ACK_ENTRIES);
                out.push(n as u8);
                for b in &a.blocks[..n] {
                    out.extend_from_slice(&b.block.to_be_bytes());
                    out.extend_from_slice(&b.received.to_be_bytes());
                    out.extend_from_slice(&b.source_bits.to_be_bytes());
                }
                let m = a.paths.len().min(MAX_ACK_ENTRIES);
                out.push(m as u8);
                for p in &a.paths[..m] {
                    out.extend_from_slice(&p.path.to_be_bytes());
                    out.extend_from_slice(&p.last_seq.to_be_bytes());
                    out.extend_from_slice(&p.count.to_be_bytes());
                    out.extend_from_slice(&p.min_delay.to_be_bytes());
                }
            }
            Frame::Probe => out.push(PROBE),
            Frame::Resume { next_block, offset, recv_next, fresh } => {
                out.push(RESUME);
                out.extend_from_slice(&next_block.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&recv_next.to_be_bytes());
                out.push(*fresh as u8);
            }
            Frame::Close => out.push(CLOSE),
            Frame::PathClose { path } => {
                out.push(PATH_CLOSE);
                out.extend_from_slice(&path.to_be_bytes());
            }
        }
    }
}

/// An opened session packet body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body<'a> {
    /// The path it was sent on.
    pub path: u32,
    /// The packet's sequence number on the path.
    pub path_seq: u32,
    /// The sender's clock when it sealed the packet (microseconds, wrapping).
    pub sent_us: u32,
    /// The frames.
    pub frames: Vec<Frame<'a>>,
}

/// Writes the body header.
pub fn encode_header(path: u32, path_seq: u32, sent_us: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&path.to_be_bytes());
    out.extend_from_slice(&path_seq.to_be_bytes());
    out.extend_from_slice(&sent_us.to_be_bytes());
}

/// Pads a body (header and frames) to a multiple of 16 bytes.
pub fn pad(body: &mut Vec<u8>) {
    let n = body.len().next_multiple_of(16);
    body.resize(n, 0);
}

/// Parses an opened body. Any error rejects the whole packet (it authenticated, so an error
/// means a broken peer, not line noise).
pub fn parse_body(buf: &[u8]) -> Result<Body<'_>, FrameError> {
    let mut r = Reader { buf };
    let path = r.u32()?;
    let path_seq = r.u32()?;
    let sent_us = r.u32()?;
    let mut frames = Vec::new();
    while !r.buf.is_empty() {
        let t = r.u8()?;
        let f = match t {
            SYMBOL => {
                let block = r.u32()?;
                let offset = r.u64()?;
                let block_len = r.u32()?;
                let esi = r.u32()?;
                let len = r.u16()? as usize;
                if esi >= 1 << 24 {
                    return Err(FrameError::Malformed("symbol id beyond 24 bits"));
                }
                if len == 0 {
                    return Err(FrameError::Malformed("empty symbol"));
                }
                Frame::Symbol { block, offset, block_len, esi, data: r.take(len)? }
            }
            DATAGRAM => {
                let id = r.u32()?;
                let budget_ms = r.u16()?;
                let len = r.u16()? as usize;
                Frame::Datagram { id, budget_ms, data: r.take(len)? }
            }
            ACK => {
                let ack_seq = r.u32()?;
                let next_block = r.u32()?;
                let n = r.u8()? as usize;
                if n > MAX_ACK_ENTRIES {
                    return Err(FrameError::Malformed("too many block entries"));
                }
                let mut blocks = Vec::with_capacity(n);
                for _ in 0..n {
                    blocks.push(BlockAck { block: r.u32()?, received: r.u16()?, source_bits: r.u64()? });
                }
                let m = r.u8()? as usize;
                if m > MAX_ACK_ENTRIES {
                    return Err(FrameError::Malformed("too many path reports"));
                }
                let mut paths = Vec::with_capacity(m);
                for _ in 0..m {
                    paths.push(PathReport { path: r.u32()?, last_seq: r.u32()?, count: r.u32()?, min_delay: r.u32()? });
                }
                Frame::Ack(Ack { ack_seq, next_block, blocks, paths })
            }
            0 => {
                if r.buf.iter().any(|b| *b != 0) {
                    return Err(FrameError::Malformed("padding not zero"));
                }
                break;
            }
            PROBE => Frame::Probe,
            RESUME => {
                let (next_block, offset, recv_next) = (r.u32()?, r.u64()?, r.u32()?);
                let fresh = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(FrameError::Malformed("fresh flag not 0 or 1")),
                };
                Frame::Resume { next_block, offset, recv_next, fresh }
            }
            CLOSE => Frame::Close,
            PATH_CLOSE => Frame::PathClose { path: r.u32()? },
            other => return Err(FrameError::UnknownType(other)),
        };
        frames.push(f);
    }
    Ok(Body { path, path_seq, sent_us, frames })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip() {
        let frames = vec![
            Frame::Symbol { block: 7, offset: 1 << 40, block_len: 3000, esi: 70, data: &[1, 2, 3] },
            Frame::Datagram { id: 9, budget_ms: 150, data: b"voice" },
            Frame::Ack(Ack {
                ack_seq: 3,
                next_block: 5,
                blocks: vec![BlockAck { block: 6, received: DECODED, source_bits: u64::MAX }],
                paths: vec![PathReport { path: 2, last_seq: 99, count: 98, min_delay: 0xffff_fff0 }],
            }),
            Frame::Probe,
            Frame::Resume { next_block: 4, offset: 4096, recv_next: 2, fresh: true },
            Frame::Close,
            Frame::PathClose { path: 1 },
        ];
        let mut buf = Vec::new();
        encode_header(3, 44, 0xdead_beef, &mut buf);
        for f in &frames {
            f.encode(&mut buf);
        }
        let body = parse_body(&buf).unwrap();
        assert_eq!((body.path, body.path_seq, body.sent_us), (3, 44, 0xdead_beef));
        assert_eq!(body.frames, frames);
        for cut in 0..buf.len() {
            // Every strict prefix either parses to fewer frames or is a typed error.
            if let Ok(b) = parse_body(&buf[..cut]) {
                assert!(b.frames.len() < frames.len());
            }
        }
    }

    proptest! {
        #[test]
        fn random_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_body(&bytes);
        }
    }
}
