//! A FIFO of encoded frames in one contiguous buffer: frames are encoded straight into it and
//! copied out in one piece per packet, so queueing and bundling allocate nothing in steady state.

use std::collections::VecDeque;

use crate::frame::Frame;

/// Compact the buffer once this many consumed bytes sit in front of the live ones.
const COMPACT_AFTER_BYTES: usize = 64 * 1024;

#[derive(Debug, Default)]
/// Frames waiting for the next sealed packet, encoded back to back.
pub struct FrameQueue {
    buf: Vec<u8>,
    head: usize,
    lens: VecDeque<usize>,
}

impl FrameQueue {
    /// Appends `frame`.
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

    /// Whether no frame waits.
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

    /// Drops every waiting frame.
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
