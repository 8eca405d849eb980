//! Fountain coding through the session layer against bare `raptorq`, same data, same run.
//! `cargo bench -p skyroute-proto --bench fec` ends with the ratio docs/measurements.md reports:
//! session encode+decode / bare raptorq encode+decode (goal >= 0.8).
//!
//! Both sides code one 32 KiB block (32 symbols of 1 KiB), lose 4 source symbols and decode
//! from the rest plus 6 repair symbols. The session side also frames each symbol (SYMBOL frame
//! encode and parse) as it travels; encryption is left out of both (it is the link bench's).

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use raptorq::{EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockDecoder, SourceBlockEncoder};
use skyroute_proto::session::fec::{BlockDecoder, BlockEncoder};
use skyroute_proto::session::wire::{encode_header, parse_body, Frame};

mod common;

const T: usize = 1024;
const K: usize = 32;
const LOST: [u32; 4] = [3, 9, 17, 30];
const REPAIR: u32 = 6;

fn data() -> Vec<u8> {
    (0..T * K).map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8).collect()
}

fn esis() -> impl Iterator<Item = u32> {
    (0..K as u32).filter(|e| !LOST.contains(e)).chain(K as u32..K as u32 + REPAIR)
}

fn bench(c: &mut Criterion) {
    let d = data();
    let mut g = c.benchmark_group("fec_32k");
    g.throughput(Throughput::Bytes(d.len() as u64));
    g.bench_function("raptorq", |b| {
        b.iter(|| {
            let cfg = ObjectTransmissionInformation::new(d.len() as u64, T as u16, 1, 1, 1);
            let enc = SourceBlockEncoder::new(0, &cfg, &d);
            let mut packets: Vec<EncodingPacket> = enc
                .source_packets()
                .into_iter()
                .filter(|p| !LOST.contains(&p.payload_id().encoding_symbol_id()))
                .collect();
            packets.extend(enc.repair_packets(0, REPAIR));
            let mut dec = SourceBlockDecoder::new(0, &cfg, d.len() as u64);
            let mut out = None;
            for p in packets {
                let (id, data) = p.split();
                if let Some(v) = dec.decode([EncodingPacket::new(PayloadId::new(0, id.encoding_symbol_id()), data)]) {
                    out = Some(v);
                    break;
                }
            }
            assert_eq!(out.as_deref(), Some(&d[..]));
        })
    });
    g.bench_function("session", |b| {
        b.iter(|| {
            let mut enc = BlockEncoder::new(&d, T).unwrap();
            let mut dec = BlockDecoder::new(d.len() as u32, T).unwrap();
            let mut out = None;
            let mut buf = Vec::with_capacity(T + 64);
            for esi in esis() {
                let sym = enc.symbol(esi);
                buf.clear();
                encode_header(1, esi, 0, &mut buf);
                Frame::Symbol { block: 7, offset: 0, block_len: d.len() as u32, esi, data: &sym }.encode(&mut buf);
                let body = parse_body(&buf).unwrap();
                let Frame::Symbol { esi, data, .. } = &body.frames[0] else { unreachable!() };
                if let Some(v) = dec.push(*esi, data).unwrap() {
                    out = Some(v);
                    break;
                }
            }
            assert_eq!(black_box(out).as_deref(), Some(&d[..]));
        })
    });
    g.finish();
}

fn main() {
    let (root, mut c) = common::setup();
    bench(&mut c);
    c.final_summary();
    let m = |n: &str| common::mean_ns(&root, "fec_32k", n);
    println!("\n== skyroute fec benchmark ratio (same run, 32 KiB blocks, 4 of 32 source symbols lost) ==");
    if let (Some(bare), Some(ours)) = (m("raptorq"), m("session")) {
        println!("{:<52} {:>6.2}   (goal >= 0.8)", "session encode+decode / bare raptorq", bare / ours);
        println!("{:<52} {:>6.0}   MB/s per core", "session coding throughput", (T * K) as f64 / ours * 1e3);
    }
}
