//! Per-hop acknowledgement: the ack frame's bitmap, loss detection, the retransmission timer.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use skyroute_proto::forward::ack::{AckFrame, AckReceiver, AckSender, Sent, ACK_BITMAP_BITS};

#[test]
fn receiver_bitmap_reports_what_arrived() {
    let now = Instant::now();
    let mut r = AckReceiver::default();
    for c in [0u64, 1, 2, 5, 7, 300] {
        r.on_datagram(c, true, now, Duration::from_millis(5));
    }
    r.on_datagram(299, true, now, Duration::from_millis(5));
    let f = r.take_frame(now).unwrap();
    let got: Vec<u64> = f.acked().collect();
    assert_eq!(got, vec![300, 299], "0..7 are more than 256 below the largest");
}

proptest! {
    #[test]
    fn ack_frame_lists_exactly_the_received_counters_in_range(counters in proptest::collection::btree_set(0u64..2000, 1..300)) {
        let now = Instant::now();
        let mut r = AckReceiver::default();
        for c in &counters {
            r.on_datagram(*c, true, now, Duration::ZERO);
        }
        let f = r.take_frame(now).unwrap();
        let largest = *counters.iter().max().unwrap();
        let expect: std::collections::BTreeSet<u64> =
            counters.iter().copied().filter(|c| largest - c <= ACK_BITMAP_BITS).collect();
        let got: std::collections::BTreeSet<u64> = f.acked().collect();
        prop_assert_eq!(&got, &expect);
        for c in 0..2000u64 {
            prop_assert_eq!(f.covers(c), expect.contains(&c));
        }
    }
}

#[test]
fn sender_detects_loss_by_threshold_and_timeout() {
    let t0 = Instant::now();
    let mut s: AckSender<u32> =
        AckSender::new(Duration::from_millis(100), Duration::from_millis(50), Duration::from_secs(5));
    for c in 0..10u64 {
        s.on_sent(c, Sent { time: t0, size: 100, eliciting: true, probes: 0, refs: vec![c as u32] });
    }
    let mut bitmap = [0u8; 32];
    bitmap[0] = 0b0000_0011; // 8 and 7
    let settled = s.on_ack(&AckFrame { largest: 9, delay_us: 0, bitmap }, t0 + Duration::from_millis(20));
    assert_eq!(settled.acked.len(), 3);
    let lost: Vec<u32> = settled.lost.iter().flat_map(|x| x.refs.clone()).collect();
    assert_eq!(lost, vec![0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(s.in_flight(), 0);
    // Unknown ack: ignored and counted.
    let again = s.on_ack(&AckFrame { largest: 9, delay_us: 0, bitmap }, t0 + Duration::from_millis(30));
    assert!(again.acked.is_empty() && again.lost.is_empty());
    assert_eq!(s.unknown_acks, 1);
    // Timeout with backoff.
    s.on_sent(10, Sent { time: t0, size: 1, eliciting: true, probes: 0, refs: vec![10] });
    let rto = s.rto();
    assert!(s.on_timeout(t0 + rto / 2).is_empty());
    assert_eq!(s.on_timeout(t0 + rto).len(), 1);
    assert_eq!(s.rto(), (rto * 2).min(Duration::from_secs(5)));
    s.on_sent(11, Sent { time: t0, size: 1, eliciting: true, probes: 0, refs: vec![11] });
    s.on_timeout(t0 + Duration::from_secs(60));
    s.on_sent(12, Sent { time: t0, size: 1, eliciting: true, probes: 0, refs: vec![12] });
    s.on_timeout(t0 + Duration::from_secs(60));
    assert_eq!(s.rto(), (rto * 4).min(Duration::from_secs(5)), "backoff capped at 4x");
}

#[test]
fn receiver_estimates_the_loss_it_sees() {
    let now = Instant::now();
    let d = Duration::from_millis(5);
    let mut r = AckReceiver::default();
    assert_eq!(r.loss_estimate(), 0.0, "nothing to judge by");
    for c in 0..20u64 {
        r.on_datagram(c * 10, true, now, d);
    }
    // 19 of the 190 counters below the largest arrived.
    assert!(r.loss_estimate() > 0.85, "{}", r.loss_estimate());
    let mut clean = AckReceiver::default();
    for c in 0..1000u64 {
        clean.on_datagram(c, true, now, d);
    }
    assert_eq!(clean.loss_estimate(), 0.0);
    let mut half = AckReceiver::default();
    for c in (0..1000u64).step_by(2) {
        half.on_datagram(c, true, now, d);
    }
    assert!((half.loss_estimate() - 0.5).abs() < 0.01, "{}", half.loss_estimate());
    let young = {
        let mut y = AckReceiver::default();
        y.on_datagram(0, true, now, d);
        y.on_datagram(20, true, now, d);
        y
    };
    assert_eq!(young.loss_estimate(), 0.0, "fewer than 32 counters: no estimate");
    // A copy of the ack names the same datagrams and leaves the receiver's state alone.
    let copy = half.frame(now).unwrap();
    let taken = half.take_frame(now).unwrap();
    assert_eq!(copy.acked().collect::<Vec<_>>(), taken.acked().collect::<Vec<_>>());
}
