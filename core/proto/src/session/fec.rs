//! Fountain coding of stream blocks with RaptorQ (RFC 6330, the `raptorq` crate).
//!
//! A block is up to [`MAX_K`] source symbols of `T` bytes (the last one zero-padded). The
//! encoder gives the source symbols (ESI `0..K`) and any number of repair symbols (ESI `K..`);
//! the decoder rebuilds the block from any `K` or a few more of them, whichever route they came
//! on. Inputs are checked here, before they reach `raptorq` (which asserts on bad sizes), so a
//! malformed symbol is a typed error, never a panic.

use raptorq::{EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockDecoder, SourceBlockEncoder};
use thiserror::Error;

/// Most source symbols per block (so the receiver's per-block bitmap fits a u64).
pub const MAX_K: usize = 64;
/// Highest ESI accepted (repair symbols beyond this are refused: a block never needs them).
pub const MAX_ESI: u32 = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
/// Why a block could not be coded.
pub enum FecError {
    #[error("symbol size {got} does not match the block's {want}")]
    /// A symbol of the wrong size.
    SymbolSize {
        /// Its size.
        got: usize,
        /// The block's symbol size.
        want: usize,
    },
    #[error("block length {0} out of range")]
    /// A block length of zero or over the limit.
    BlockLen(u32),
    #[error("symbol id {0} out of range")]
    /// A symbol id beyond what a block can need.
    Esi(u32),
}

fn config(t: usize, k: usize) -> ObjectTransmissionInformation {
    ObjectTransmissionInformation::new((t * k) as u64, t as u16, 1, 1, 1)
}

/// Number of source symbols for a block of `len` bytes.
pub fn symbols_for(len: usize, t: usize) -> usize {
    len.div_ceil(t).max(1)
}

/// RaptorQ encoder of one block: source symbols, then repair symbols on demand.
pub struct BlockEncoder {
    t: usize,
    k: usize,
    len: usize,
    padded: Vec<u8>,
    enc: Option<SourceBlockEncoder>,
}

impl BlockEncoder {
    /// `data` must be at most `MAX_K * t` bytes.
    pub fn new(data: &[u8], t: usize) -> Result<Self, FecError> {
        let k = symbols_for(data.len(), t);
        if data.is_empty() || k > MAX_K || t == 0 || t > u16::MAX as usize {
            return Err(FecError::BlockLen(data.len() as u32));
        }
        let mut padded = Vec::with_capacity(k * t);
        padded.extend_from_slice(data);
        padded.resize(k * t, 0);
        Ok(BlockEncoder { t, k, len: data.len(), padded, enc: None })
    }

    /// Source symbols in the block.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The block's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Source symbol `esi` (< K): a slice of the block, no coding needed.
    pub fn source(&self, esi: usize) -> &[u8] {
        &self.padded[esi * self.t..(esi + 1) * self.t]
    }

    /// Repair symbol `esi` (>= K). The intermediate symbols are computed on first use, so a
    /// block that never needs repair never pays for them.
    pub fn repair(&mut self, esi: u32) -> Vec<u8> {
        let (t, k) = (self.t, self.k);
        let enc = self.enc.get_or_insert_with(|| SourceBlockEncoder::new(0, &config(t, k), &self.padded));
        let mut p = enc.repair_packets(esi - k as u32, 1);
        p.pop().map(|p| p.split().1).unwrap_or_default()
    }

    /// Symbol `esi`, source or repair.
    pub fn symbol(&mut self, esi: u32) -> Vec<u8> {
        if (esi as usize) < self.k {
            self.source(esi as usize).to_vec()
        } else {
            self.repair(esi)
        }
    }
}

/// Rebuilds a block. Source symbols are kept in place; `raptorq` is only brought in once a
/// repair symbol arrives, so a block that arrives whole costs one copy and no decoding.
pub struct BlockDecoder {
    t: usize,
    k: usize,
    len: usize,
    /// Source symbols at their place (allocated on the first one).
    source: Vec<u8>,
    dec: Option<SourceBlockDecoder>,
    /// Distinct symbols received.
    pub received: u16,
    /// Source symbols received (bit i = ESI i).
    pub source_bits: u64,
    seen_repair: std::collections::BTreeSet<u32>,
}

impl BlockDecoder {
    /// A decoder for a block of `block_len` bytes in symbols of `t` bytes.
    pub fn new(block_len: u32, t: usize) -> Result<Self, FecError> {
        let len = block_len as usize;
        let k = symbols_for(len, t);
        if len == 0 || k > MAX_K || t == 0 || t > u16::MAX as usize {
            return Err(FecError::BlockLen(block_len));
        }
        Ok(BlockDecoder {
            t,
            k,
            len,
            source: Vec::new(),
            dec: None,
            received: 0,
            source_bits: 0,
            seen_repair: Default::default(),
        })
    }

    /// The block's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Source symbols in the block.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Adds a symbol. Returns the block once it decodes; duplicates are ignored (`Ok(None)`).
    pub fn push(&mut self, esi: u32, data: &[u8]) -> Result<Option<Vec<u8>>, FecError> {
        if data.len() != self.t {
            return Err(FecError::SymbolSize { got: data.len(), want: self.t });
        }
        if esi >= MAX_ESI {
            return Err(FecError::Esi(esi));
        }
        let fresh = if (esi as usize) < self.k {
            let bit = 1u64 << esi;
            let fresh = self.source_bits & bit == 0;
            self.source_bits |= bit;
            fresh
        } else {
            self.seen_repair.insert(esi)
        };
        if !fresh {
            return Ok(None);
        }
        self.received = self.received.saturating_add(1);
        let (t, k) = (self.t, self.k);
        if (esi as usize) < k {
            if self.source.is_empty() {
                self.source.resize(k * t, 0);
            }
            let at = esi as usize * t;
            self.source[at..at + t].copy_from_slice(data);
            let all = if k == 64 { u64::MAX } else { (1u64 << k) - 1 };
            if self.source_bits == all {
                let mut v = std::mem::take(&mut self.source);
                v.truncate(self.len);
                return Ok(Some(v));
            }
            let Some(dec) = &mut self.dec else { return Ok(None) };
            return Ok(finish(dec.decode([EncodingPacket::new(PayloadId::new(0, esi), data.to_vec())]), self.len));
        }
        let dec = match &mut self.dec {
            Some(d) => d,
            None => {
                // The first repair symbol: the decoder starts from the source symbols we hold.
                let mut d = SourceBlockDecoder::new(0, &config(t, k), (k * t) as u64);
                let held: Vec<EncodingPacket> = (0..k)
                    .filter(|i| self.source_bits & (1u64 << i) != 0)
                    .map(|i| EncodingPacket::new(PayloadId::new(0, i as u32), self.source[i * t..(i + 1) * t].to_vec()))
                    .collect();
                if !held.is_empty() {
                    // Fewer than K symbols so far: this cannot decode yet.
                    let _ = d.decode(held);
                }
                self.dec.insert(d)
            }
        };
        Ok(finish(dec.decode([EncodingPacket::new(PayloadId::new(0, esi), data.to_vec())]), self.len))
    }
}

fn finish(decoded: Option<Vec<u8>>, len: usize) -> Option<Vec<u8>> {
    decoded.map(|mut v| {
        v.truncate(len);
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn decodes_from_repair_only() {
        let d = data(10_000, 3);
        let mut e = BlockEncoder::new(&d, 1024).unwrap();
        let mut dec = BlockDecoder::new(d.len() as u32, 1024).unwrap();
        let k = e.k() as u32;
        let mut out = None;
        for esi in k..k + k + 4 {
            if let Some(v) = dec.push(esi, &e.symbol(esi)).unwrap() {
                out = Some(v);
                break;
            }
        }
        assert_eq!(out.unwrap(), d);
    }

    #[test]
    fn bad_symbols_are_typed_errors() {
        let mut dec = BlockDecoder::new(3000, 1024).unwrap();
        assert_eq!(dec.push(0, &[0; 10]), Err(FecError::SymbolSize { got: 10, want: 1024 }));
        assert_eq!(dec.push(MAX_ESI, &[0; 1024]), Err(FecError::Esi(MAX_ESI)));
        assert!(BlockDecoder::new(0, 1024).is_err());
        assert!(BlockDecoder::new(65 * 1024, 1024).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// For random loss: the block decodes once enough symbols arrived, and never to wrong data.
        #[test]
        fn decodes_whenever_enough_arrive(len in 1usize..20_000, seed: u8, lost in proptest::collection::vec(any::<bool>(), 96)) {
            let t = 512;
            let d = data(len, seed);
            let mut e = BlockEncoder::new(&d[..len.min(MAX_K * t)], t).unwrap();
            let d = &d[..len.min(MAX_K * t)];
            let k = e.k();
            let mut dec = BlockDecoder::new(d.len() as u32, t).unwrap();
            let mut got = 0;
            let mut decoded = None;
            for (esi, lost) in lost.iter().enumerate().take(k + 32) {
                if *lost { continue; }
                got += 1;
                if let Some(v) = dec.push(esi as u32, &e.symbol(esi as u32)).unwrap() {
                    decoded = Some(v);
                    break;
                }
            }
            if let Some(v) = decoded {
                prop_assert_eq!(&v[..], d);
                prop_assert!(got >= k);
            } else {
                // RaptorQ decodes from K symbols with high probability and K + 2 almost surely.
                prop_assert!(got < k + 2, "{} symbols of K = {} did not decode", got, k);
            }
        }
    }
}
