//! Sliding-window replay protection (as WireGuard, RFC 6479 style): remembers which of the last
//! [`WINDOW`] counters were seen. One window per receive key, so it carries over a rekey by
//! keeping the previous key (and its window) during the grace period.

/// Counters this far behind the highest seen are refused as too old.
pub const WINDOW: u64 = 2048;
const WORDS: usize = (WINDOW / 64) as usize;

#[derive(Debug, Clone)]
/// A sliding window of received counters: each counter is accepted once, older than the
/// window never.
pub struct ReplayWindow {
    /// One past the highest counter accepted so far.
    next: u64,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow { next: 0, bits: [0; WORDS] }
    }
}

impl ReplayWindow {
    /// One past the highest counter accepted so far.
    pub fn highest(&self) -> u64 {
        self.next
    }

    /// Whether `counter` would be accepted (not too old, not seen). Does not record it.
    pub fn check(&self, counter: u64) -> bool {
        if counter >= self.next {
            return true;
        }
        if self.next - counter > WINDOW {
            return false;
        }
        let bit = counter % WINDOW;
        self.bits[(bit / 64) as usize] & (1 << (bit % 64)) == 0
    }

    /// Records `counter` after the packet authenticated. Returns false if it was a replay.
    pub fn update(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter >= self.next {
            // Clear the bits of counters we jump over (they become "not seen").
            let jump = counter - self.next + 1;
            if jump >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                for c in self.next..=counter {
                    let bit = c % WINDOW;
                    self.bits[(bit / 64) as usize] &= !(1 << (bit % 64));
                }
            }
            self.next = counter + 1;
        }
        let bit = counter % WINDOW;
        self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_each_once_and_rejects_old() {
        let mut w = ReplayWindow::default();
        assert!(w.update(0));
        assert!(!w.update(0));
        assert!(w.update(5));
        assert!(w.update(3), "reordered but inside the window");
        assert!(!w.update(3));
        assert!(w.update(5000));
        assert!(!w.check(5000 - WINDOW - 1), "too old");
        assert!(w.update(5000 - WINDOW + 1));
    }

    proptest! {
        #[test]
        fn matches_a_set_model(counters in proptest::collection::vec(0u64..6000, 0..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::BTreeSet::new();
            let mut top: Option<u64> = None;
            for c in counters {
                let fresh = !seen.contains(&c) && top.is_none_or(|t| c + WINDOW > t);
                prop_assert_eq!(w.update(c), fresh, "counter {}", c);
                if fresh { seen.insert(c); top = Some(top.map_or(c, |t| t.max(c))); }
            }
        }
    }
}
