//! A FIFO of encoded frames in one contiguous buffer: frames are encoded straight into it and
//! copied out in one piece per packet, so queueing and bundling allocate nothing in steady state.

use std::collections::VecDeque;

use crate::frame::Frame;

/// Compact the buffer once this many consumed bytes sit in front of the live ones.
const COMPACT_AFTER_BYTES: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct FrameQueue {
    buf: Vec<u8>,
    head: usize,
    lens: VecDeque<usize>,
}

impl FrameQueue {
    pub fn push(&mut self, frame: &Frame<'_>) {
        let before = self.buf.len();
        frame.encode(&mut self.buf);
        self.lens.push_back(self.buf.len() - before);
    }

    /// Queues bytes that already are one encoded frame.
    pub fn push_encoded(&mut self, frame: &[u8]) {
        self.buf.extend_from_slice(frame);
        self.lens.push_back(frame.len());
    }

    /// Queued bytes.
    pub fn bytes(&self) -> usize {
        self.buf.len() - self.head
    }

    /// Queued frames.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Appends whole frames to `out` while they fit in `room` bytes; returns the bytes moved.
    pub fn drain_into(&mut self, out: &mut Vec<u8>, room: usize) -> usize {
        let mut moved = 0;
        while let Some(&l) = self.lens.front() {
            if moved + l > room {
                break;
            }
            moved += l;
            self.lens.pop_front();
        }
        out.extend_from_slice(&self.buf[self.head..self.head + moved]);
        self.head += moved;
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
        } else if self.head >= COMPACT_AFTER_BYTES && self.head * 2 >= self.buf.len() {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        moved
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.head = 0;
        self.lens.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keeps_frames_whole_and_in_order(sizes in proptest::collection::vec(1usize..300, 0..200), room in 300usize..2000) {
            let mut q = FrameQueue::default();
            let mut expected = Vec::new();
            for (i, s) in sizes.iter().enumerate() {
                let f = vec![i as u8; *s];
                q.push_encoded(&f);
                expected.extend_from_slice(&f);
            }
            let mut got = Vec::new();
            while !q.is_empty() {
                let before = got.len();
                let n = q.drain_into(&mut got, room);
                prop_assert!(n > 0 && n <= room);
                prop_assert_eq!(got.len() - before, n);
            }
            prop_assert_eq!(got, expected);
            prop_assert_eq!(q.bytes(), 0);
        }
    }
}

/// Data frames assembled straight into packet buffers: each frame is encoded once, into the
/// packet that will carry it (header space reserved in front), and the packet is later padded
/// and sealed in place. Buffers are recycled, so steady-state sending does not allocate.
#[derive(Debug)]
pub struct Assembler {
    ready: VecDeque<Vec<u8>>,
    open: Vec<u8>,
    spare: Vec<Vec<u8>>,
    bytes: usize,
    header: usize,
    cap: usize,
    mtu: usize,
}

/// Most recycled buffers kept.
const SPARE_BUFFERS: usize = 8;

impl Assembler {
    /// `header` bytes are reserved in front of every packet; `cap` bounds the frames per packet.
    pub fn new(header: usize, cap: usize, mtu: usize) -> Self {
        Assembler { ready: VecDeque::new(), open: Vec::new(), spare: Vec::new(), bytes: 0, header, cap, mtu }
    }

    fn room_for(&mut self, len: usize) -> bool {
        if len > self.cap {
            return false;
        }
        if !self.open.is_empty() && self.open.len() - self.header + len > self.cap {
            self.ready.push_back(std::mem::take(&mut self.open));
        }
        if self.open.is_empty() {
            self.open = self.spare.pop().unwrap_or_else(|| Vec::with_capacity(self.mtu));
            self.open.clear();
            self.open.resize(self.header, 0);
        }
        self.bytes += len;
        true
    }

    /// Queues a frame; false if it can never fit in a packet.
    pub fn push(&mut self, frame: &Frame<'_>) -> bool {
        if !self.room_for(frame.encoded_len()) {
            return false;
        }
        frame.encode(&mut self.open);
        true
    }

    /// Queues bytes that are already one encoded frame; false if too large for a packet.
    pub fn push_encoded(&mut self, frame: &[u8]) -> bool {
        if !self.room_for(frame.len()) {
            return false;
        }
        self.open.extend_from_slice(frame);
        true
    }

    /// Queued frame bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The next packet: header space followed by whole frames (not yet padded or sealed).
    pub fn take(&mut self) -> Option<Vec<u8>> {
        let p = match self.ready.pop_front() {
            Some(p) => p,
            None if !self.open.is_empty() => std::mem::take(&mut self.open),
            None => return None,
        };
        self.bytes -= p.len() - self.header;
        Some(p)
    }

    /// Returns a buffer for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && buf.capacity() >= self.mtu {
            self.spare.push(buf);
        }
    }

    pub fn clear(&mut self) {
        self.ready.clear();
        self.open.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod assembler_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn packs_whole_frames_in_order_within_cap(sizes in proptest::collection::vec(1usize..400, 0..100), cap in 400usize..1400) {
            let mut a = Assembler::new(16, cap, 1500);
            let mut expected = Vec::new();
            for (i, s) in sizes.iter().enumerate() {
                let f = vec![i as u8; *s];
                prop_assert!(a.push_encoded(&f));
                expected.extend_from_slice(&f);
            }
            prop_assert!(!a.push_encoded(&vec![0; cap + 1]));
            let mut got = Vec::new();
            while let Some(p) = a.take() {
                prop_assert!(p.len() - 16 <= cap && p.len() > 16);
                got.extend_from_slice(&p[16..]);
                a.recycle(p);
            }
            prop_assert_eq!(got, expected);
            prop_assert_eq!(a.bytes(), 0);
        }
    }
}
