//! Channels: service messages multiplexed over one session's reliable stream.
//!
//! Every message is framed as `u32 length (big endian) | u16 channel | payload`, where `length`
//! counts the payload bytes only. Channel 0 is node control; services register on the others
//! (the runtime's echo, ping and transfer services use 1, 2 and 3).
//!
//! [`Deframer`] takes stream bytes in whatever pieces the session delivers them and returns
//! whole messages. A length above the limit is a protocol error: the stream cannot be
//! resynchronised, so the caller closes the session and counts it.

/// Node control.
pub const CONTROL: u16 = 0;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 6;

/// The default largest payload a deframer accepts.
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;

/// Appends one framed message to `out`.
pub fn encode(channel: u16, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(payload);
}

/// One framed message as a new buffer.
pub fn framed(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(channel, payload, &mut out);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
/// A service message that cannot be framed.
pub enum ChannelError {
    #[error("message of {len} bytes exceeds the limit of {max}")]
    /// Longer than the deframer's limit.
    TooLong {
        /// The message's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Reassembles messages from stream bytes.
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    /// Start of unread bytes in `buf`.
    pos: usize,
    max: usize,
    failed: Option<ChannelError>,
}

impl Default for Deframer {
    fn default() -> Self {
        Deframer::new(DEFAULT_MAX_MESSAGE)
    }
}

impl Deframer {
    /// A deframer that refuses messages longer than `max_message`.
    pub fn new(max_message: usize) -> Self {
        Deframer { buf: Vec::new(), pos: 0, max: max_message, failed: None }
    }

    /// Adds stream bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes held for an incomplete message.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next whole message, `None` if more bytes are needed. After an error every call
    /// returns the same error.
    pub fn next_message(&mut self) -> Result<Option<(u16, &[u8])>, ChannelError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let rest = &self.buf[self.pos..];
        if rest.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > self.max {
            let e = ChannelError::TooLong { len, max: self.max };
            self.failed = Some(e);
            return Err(e);
        }
        if rest.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let channel = u16::from_be_bytes([rest[4], rest[5]]);
        let start = self.pos + HEADER_LEN;
        self.pos = start + len;
        Ok(Some((channel, &self.buf[start..start + len])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout() {
        assert_eq!(framed(3, b"hi"), [0, 0, 0, 2, 0, 3, b'h', b'i']);
        let mut d = Deframer::new(8);
        d.push(&[0, 0, 0, 9, 0, 1]);
        assert_eq!(d.next_message(), Err(ChannelError::TooLong { len: 9, max: 8 }));
        assert_eq!(d.next_message(), Err(ChannelError::TooLong { len: 9, max: 8 }));
    }

    proptest! {
        /// Messages survive any split of the stream into pieces.
        #[test]
        fn any_split(msgs in proptest::collection::vec((any::<u16>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
                     cuts in proptest::collection::vec(1usize..200, 1..50)) {
            let mut stream = Vec::new();
            for (c, p) in &msgs {
                encode(*c, p, &mut stream);
            }
            let mut d = Deframer::new(1000);
            let mut got = Vec::new();
            let mut at = 0;
            let mut i = 0;
            while at < stream.len() {
                let n = cuts[i % cuts.len()].min(stream.len() - at);
                d.push(&stream[at..at + n]);
                at += n;
                i += 1;
                while let Some((c, p)) = d.next_message().unwrap() {
                    got.push((c, p.to_vec()));
                }
            }
            prop_assert_eq!(got, msgs);
            prop_assert_eq!(d.pending(), 0);
        }

        /// Random bytes never panic; messages returned stay within the limit.
        #[test]
        fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut d = Deframer::new(512);
            d.push(&data);
            for _ in 0..2000 {
                match d.next_message() {
                    Ok(Some((_, p))) => prop_assert!(p.len() <= 512),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
