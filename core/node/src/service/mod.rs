//! Services on channels of a session (the seed's "daemon services architecture").
//!
//! Messages are framed by `skyroute_proto::channel` (`u32 length | u16 channel | payload`) on
//! a session's reliable stream. Channel 0 is node control; the node ships three services:
//!
//! - [`ECHO`]: a request is answered with the same bytes (tests, reachability);
//! - [`PING`]: round-trip time over the session;
//! - [`TRANSFER`]: a file or a byte count, hashed on both ends, throughput reported.
//!
//! The node's own protocols use channel 4 (the VPN), 5 (link announcements) and 6 (the DHT).
//!
//! Other channels belong to services that register over the control socket; a message for a
//! channel nobody serves is answered on channel 0 with an error.
//!
//! Small messages are typed (serde, JSON); transfer chunks are raw bytes behind a tag byte.

pub mod transfer;

use serde::{Deserialize, Serialize};
use skyroute_proto::channel::{self, ChannelError, Deframer};
use skyroute_proto::PublicKey;

pub use skyroute_proto::channel::CONTROL;
/// Channel of the echo service.
pub const ECHO: u16 = 1;
/// Channel of the ping service.
pub const PING: u16 = 2;
/// Channel of the file transfer service.
pub const TRANSFER: u16 = 3;

/// Channels below this are the node's own; services register on the others.
pub const FIRST_FREE_CHANNEL: u16 = 16;

/// A request/reply exchange with an id (echo and ping).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Exchange {
    /// A request.
    Request {
        /// The request id.
        id: u64,
        /// The payload.
        data: Vec<u8>,
    },
    /// The answer to request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// The payload (echo: the request's).
        data: Vec<u8>,
    },
}

/// Node control messages (channel 0).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// A message arrived for a channel that no service serves.
    NoService {
        /// The channel.
        channel: u16,
    },
}

/// A service message as JSON bytes.
pub fn encode_json<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these plain types cannot fail; an empty message would be refused by the peer.
    serde_json::to_vec(msg).unwrap_or_default()
}

/// One session's channel state: bytes to write to its stream, and the deframer for what it
/// reads.
pub struct Conn {
    /// The peer at the other end.
    pub peer: PublicKey,
    deframer: Deframer,
    out: Vec<u8>,
    out_pos: usize,
    /// The next stream offset we expect (a restarted peer may send some bytes again).
    rx_offset: u64,
    /// Messages received, by channel number class (for status).
    pub messages_in: u64,
    /// Messages sent.
    pub messages_out: u64,
}

impl Conn {
    /// Channel state for a new session with `peer`.
    pub fn new(peer: PublicKey) -> Self {
        Conn {
            peer,
            deframer: Deframer::default(),
            out: Vec::new(),
            out_pos: 0,
            rx_offset: 0,
            messages_in: 0,
            messages_out: 0,
        }
    }

    /// Queues a message for the stream.
    pub fn send(&mut self, channel: u16, payload: &[u8]) {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        channel::encode(channel, payload, &mut self.out);
        self.messages_out += 1;
    }

    /// Queued stream bytes not yet taken by the session.
    pub fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// The queued bytes, for the session to take some.
    pub fn unsent(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// The session took `n` bytes.
    pub fn advance(&mut self, n: usize) {
        self.out_pos += n;
        if self.out_pos > 1 << 20 && self.out_pos * 2 > self.out.len() {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Stream bytes in; whole messages out through `f`. An error means the stream is corrupt
    /// (the session must close).
    pub fn receive(&mut self, offset: u64, data: &[u8], mut f: impl FnMut(u16, &[u8])) -> Result<(), ChannelError> {
        let end = offset + data.len() as u64;
        if end <= self.rx_offset {
            return Ok(());
        }
        // Bytes we already have are skipped; the session never leaves a gap.
        let skip = self.rx_offset.saturating_sub(offset) as usize;
        self.rx_offset = end;
        self.deframer.push(&data[skip..]);
        while let Some((channel, payload)) = self.deframer.next_message()? {
            self.messages_in += 1;
            f(channel, payload);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_round_trip() {
        let key = skyroute_proto::SecretKey::generate(&mut rand_core::OsRng).public_key();
        let mut a = Conn::new(key);
        let mut b = Conn::new(key);
        a.send(ECHO, &encode_json(&Exchange::Request { id: 7, data: b"hi".to_vec() }));
        a.send(TRANSFER, &[1, 2, 3]);
        let bytes = a.unsent().to_vec();
        a.advance(bytes.len());
        assert_eq!(a.queued(), 0);
        let mut got = Vec::new();
        b.receive(0, &bytes[..5], |c, p| got.push((c, p.to_vec()))).unwrap();
        // A resent overlap is skipped.
        b.receive(3, &bytes[3..], |c, p| got.push((c, p.to_vec()))).unwrap();
        b.receive(0, &bytes, |c, p| got.push((c, p.to_vec()))).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            serde_json::from_slice::<Exchange>(&got[0].1).unwrap(),
            Exchange::Request { id: 7, data: b"hi".to_vec() }
        );
        assert_eq!(got[1], (TRANSFER, vec![1, 2, 3]));
    }
}
