//! Recorded link capacity: Mahimahi packet-delivery traces.
//!
//! A trace file lists one millisecond timestamp per line; each line is an opportunity to
//! deliver one 1500-byte packet across the link, repeated numbers meaning several packets in
//! that millisecond, and the whole trace repeating when it ends (its period is its last
//! timestamp). This is the format of the cellular traces recorded with Saturator (Winstein et
//! al., NSDI 2013) and replayed by `mm-link`.
//!
//! [`TraceQueue`] is the link's bottleneck: a FIFO of configurable depth that drops at the tail
//! and drains only at the trace's opportunities, each worth [`OPPORTUNITY_BYTES`] (a packet
//! may use what is left of one opportunity and the next, as in `mm-link`).

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

/// Bytes one delivery opportunity carries.
pub const OPPORTUNITY_BYTES: u32 = 1500;

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("trace has no delivery opportunities")]
    Empty,
    #[error("line {line}: {text:?} is not a millisecond timestamp")]
    BadLine { line: usize, text: String },
    #[error("line {line}: timestamp {value} ms comes before the previous one ({previous} ms)")]
    NotMonotone { line: usize, value: u64, previous: u64 },
    #[error("trace ends at 0 ms: its period would be empty")]
    ZeroPeriod,
}

/// A parsed trace: opportunity times within one period, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Name to report (the file's name).
    pub name: String,
    ms: Vec<u64>,
    period: u64,
}

impl Trace {
    /// Parses Mahimahi text. Blank lines are skipped; anything else must be a whole number
    /// of milliseconds, never smaller than the line before.
    pub fn parse(name: &str, text: &str) -> Result<Trace, TraceError> {
        let mut ms = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let t = raw.trim();
            if t.is_empty() {
                continue;
            }
            let value: u64 =
                t.parse().map_err(|_| TraceError::BadLine { line: i + 1, text: t.chars().take(40).collect() })?;
            if let Some(&previous) = ms.last() {
                if value < previous {
                    return Err(TraceError::NotMonotone { line: i + 1, value, previous });
                }
            }
            ms.push(value);
        }
        let period = *ms.last().ok_or(TraceError::Empty)?;
        if period == 0 {
            return Err(TraceError::ZeroPeriod);
        }
        Ok(Trace { name: name.to_string(), ms, period })
    }

    /// Reads and parses a trace file.
    pub fn load(path: &Path) -> Result<Trace, TraceError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io { file: file.clone(), source })?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(file);
        Trace::parse(&name, &text)
    }

    /// Length of one period of the trace.
    pub fn period(&self) -> Duration {
        Duration::from_millis(self.period)
    }

    /// Average capacity over one period, in bytes per second.
    pub fn bytes_per_s(&self) -> f64 {
        self.ms.len() as f64 * OPPORTUNITY_BYTES as f64 * 1000.0 / self.period as f64
    }

    /// The millisecond of opportunity number `i` (counting through the repetitions).
    fn at(&self, i: u64) -> u64 {
        let n = self.ms.len() as u64;
        (i / n) * self.period + self.ms[(i % n) as usize]
    }

    /// The number of the first opportunity at or after millisecond `t`.
    fn first_from(&self, t: u64) -> u64 {
        let n = self.ms.len() as u64;
        let (base, within) = (t / self.period, t % self.period);
        // Timestamps equal to the period belong to the end of a repetition, which is the
        // start of the next: opportunity `k * n + j` is at `k * period + ms[j]`.
        let j = self.ms.partition_point(|&m| m < within) as u64;
        let mut i = base * n + j;
        // `within` is 0 at a period boundary: the previous repetition's last opportunities
        // (at `ms == period`) fall exactly on `t` too.
        while i > 0 && self.at(i - 1) >= t {
            i -= 1;
        }
        i
    }

    /// The millisecond of the first opportunity at or after millisecond `t`.
    pub fn next_at(&self, t: u64) -> u64 {
        self.at(self.first_from(t))
    }

    /// Opportunities in milliseconds `from..to`.
    pub fn count(&self, from: u64, to: u64) -> u64 {
        if to <= from {
            return 0;
        }
        self.first_from(to) - self.first_from(from)
    }

    /// Stretches with no opportunity of at least `min` within `0..end`: when the link carried
    /// nothing (the recorded outages).
    pub fn outages(&self, min: Duration, end: Duration) -> Vec<(Duration, Duration)> {
        let (min, end) = (min.as_millis() as u64, end.as_millis() as u64);
        let mut out = Vec::new();
        let mut last = 0;
        let mut i = 0;
        loop {
            let t = self.at(i);
            if t >= end {
                if end - last >= min {
                    out.push((Duration::from_millis(last), Duration::from_millis(end)));
                }
                return out;
            }
            if t - last >= min {
                out.push((Duration::from_millis(last), Duration::from_millis(t)));
            }
            last = t;
            i += 1;
        }
    }
}

/// One direction of a trace-driven link: the bottleneck queue and where the trace stands.
#[derive(Debug, Clone)]
pub struct TraceQueue {
    trace: std::sync::Arc<Trace>,
    /// Packets the queue holds at most (the one being delivered included).
    pub depth: usize,
    /// The next opportunity not yet used.
    next: u64,
    /// Bytes left of opportunity `next - 1` (usable only by a packet already waiting then).
    left: u32,
    /// Departure times (ms since the start) of the packets in the queue.
    departures: VecDeque<u64>,
}

impl TraceQueue {
    pub fn new(trace: std::sync::Arc<Trace>, depth: usize) -> Self {
        TraceQueue { trace, depth: depth.max(1), next: 0, left: 0, departures: VecDeque::new() }
    }

    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// A packet of `bytes` reaches the queue at `now` (since the start): returns when it
    /// leaves the link, or `None` if the queue is full (dropped at the tail).
    pub fn enqueue(&mut self, now: Duration, bytes: usize) -> Option<Duration> {
        let t = now.as_millis() as u64;
        while self.departures.front().is_some_and(|&d| d <= t) {
            self.departures.pop_front();
        }
        if self.departures.len() >= self.depth {
            return None;
        }
        let mut need = bytes.max(1) as u64;
        let mut leave = t;
        // What is left of the last opportunity serves this packet only if the packet was
        // already here when it came (otherwise it went unused).
        if self.left > 0 && self.next > 0 && self.trace.at(self.next - 1) >= t {
            let used = need.min(self.left as u64);
            need -= used;
            self.left -= used as u32;
            leave = self.trace.at(self.next - 1);
        } else {
            self.left = 0;
        }
        self.next = self.next.max(self.trace.first_from(t));
        while need > 0 {
            let used = need.min(OPPORTUNITY_BYTES as u64);
            need -= used;
            self.left = OPPORTUNITY_BYTES - used as u32;
            leave = self.trace.at(self.next);
            self.next += 1;
        }
        self.departures.push_back(leave);
        Some(Duration::from_millis(leave))
    }

    /// Packets waiting at `now`.
    pub fn len_at(&self, now: Duration) -> usize {
        let t = now.as_millis() as u64;
        self.departures.iter().filter(|&&d| d > t).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    proptest! {
        /// Any bytes: a typed error or a trace whose opportunities never go back in time and
        /// whose queue answers; never a panic.
        #[test]
        fn random_text_parses_or_fails_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200), digits in proptest::collection::vec(0u64..5000, 0..40)) {
            let _ = Trace::parse("r", &String::from_utf8_lossy(&bytes));
            let mut sorted = digits.clone();
            sorted.sort();
            let text: String = sorted.iter().map(|d| format!("{d}\n")).collect();
            match Trace::parse("d", &text) {
                Ok(t) => {
                    prop_assert!(t.bytes_per_s() > 0.0);
                    let mut q = TraceQueue::new(Arc::new(t), 4);
                    let mut last = Duration::ZERO;
                    for i in 0..20u64 {
                        if let Some(leave) = q.enqueue(Duration::from_millis(i * 3), 700) {
                            prop_assert!(leave >= last && leave >= Duration::from_millis(i * 3));
                            last = leave;
                        }
                    }
                }
                Err(e) => prop_assert!(matches!(e, TraceError::Empty | TraceError::ZeroPeriod), "{e}"),
            }
        }
    }

    #[test]
    fn parsing_names_the_bad_line() {
        assert!(matches!(Trace::parse("t", ""), Err(TraceError::Empty)));
        assert!(matches!(Trace::parse("t", "\n  \n"), Err(TraceError::Empty)));
        assert!(matches!(Trace::parse("t", "0\n0\n"), Err(TraceError::ZeroPeriod)));
        let e = Trace::parse("t", "1\n2\nx3\n4").unwrap_err();
        assert!(matches!(e, TraceError::BadLine { line: 3, .. }), "{e}");
        assert!(e.to_string().contains("line 3"), "{e}");
        assert!(matches!(Trace::parse("t", "1\n-2\n"), Err(TraceError::BadLine { line: 2, .. })));
        assert!(matches!(Trace::parse("t", "1\n2.5\n"), Err(TraceError::BadLine { line: 2, .. })));
        let e = Trace::parse("t", "5\n7\n6\n").unwrap_err();
        assert!(matches!(e, TraceError::NotMonotone { line: 3, value: 6, previous: 7 }), "{e}");
        assert!(e.to_string().contains("line 3"), "{e}");
        let t = Trace::parse("t", "1\n1\n3\n\n4\n").unwrap();
        assert_eq!(t.period(), Duration::from_millis(4));
        assert_eq!(t.bytes_per_s(), 4.0 * 1500.0 * 1000.0 / 4.0);
        let e = Trace::load(Path::new("/nonexistent/trace.down")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/trace.down"), "{e}");
    }

    #[test]
    fn opportunities_repeat_with_the_period() {
        // "1": one packet every millisecond (12 Mbit/s), the example of mahimahi's README.
        let t = Trace::parse("t", "1").unwrap();
        assert_eq!(t.count(1, 1001), 1000);
        assert_eq!(t.count(0, 1000), 999, "the first opportunity is at 1 ms");
        assert_eq!(t.count(500, 1500), 1000);
        let t = Trace::parse("t", "2\n2\n10").unwrap();
        assert_eq!((t.at(0), t.at(1), t.at(2), t.at(3), t.at(5)), (2, 2, 10, 12, 20));
        assert_eq!(t.first_from(10), 2);
        assert_eq!(t.first_from(11), 3);
        assert_eq!(t.first_from(20), 5);
        assert_eq!((t.next_at(0), t.next_at(3), t.next_at(10), t.next_at(13)), (2, 10, 10, 20));
        assert_eq!(t.count(0, 100), 29, "the 30th is at 100 ms");
        assert_eq!(
            t.outages(Duration::from_millis(8), Duration::from_millis(30)),
            vec![
                (Duration::from_millis(2), Duration::from_millis(10)),
                (Duration::from_millis(12), Duration::from_millis(20)),
                (Duration::from_millis(22), Duration::from_millis(30)),
            ]
        );
    }

    #[test]
    fn the_queue_drains_at_opportunities_and_drops_at_the_tail() {
        let t = Arc::new(Trace::parse("t", "10\n10\n20").unwrap());
        let mut q = TraceQueue::new(t, 3);
        let ms = Duration::from_millis;
        assert_eq!(q.enqueue(ms(0), 1500), Some(ms(10)));
        assert_eq!(q.enqueue(ms(0), 1500), Some(ms(10)));
        assert_eq!(q.enqueue(ms(0), 1500), Some(ms(20)));
        assert_eq!(q.enqueue(ms(0), 100), None, "full: dropped at the tail");
        assert_eq!(q.len_at(ms(10)), 1);
        // Small packets share an opportunity; a big one spans two.
        assert_eq!(q.enqueue(ms(15), 700), Some(ms(30)));
        assert_eq!(q.enqueue(ms(15), 700), Some(ms(30)));
        // Opportunities at 30 (two: the repetition of 10, 10) and 40: 100 bytes left of the
        // first, 900 of the second; the next packet takes the 600 left and 900 at 40.
        assert_eq!(q.enqueue(ms(21), 1000), Some(ms(30)));
        assert_eq!(q.enqueue(ms(21), 1500), None, "full again");
        assert_eq!(q.enqueue(ms(30), 1500), Some(ms(40)));
        // Leftover of an opportunity that passed while the queue was empty is not used.
        let t = Arc::new(Trace::parse("t", "10\n20").unwrap());
        let mut q = TraceQueue::new(t, 8);
        assert_eq!(q.enqueue(ms(0), 100), Some(ms(10)));
        assert_eq!(q.enqueue(ms(15), 100), Some(ms(20)));
    }
}
