//! Prints a hex example of every packet and frame (the examples in WIRE.md come from here).
//! `cargo run -p skyroute-proto --example wire_examples`

use std::time::Instant;

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use skyroute_proto::frame::Frame;
use skyroute_proto::wire::Packet;
use skyroute_proto::{Node, NodeConfig, RouteId, SecretKey};
#[path = "../tests/common/mod.rs"]
mod common;
use common::next_tx;

fn show(name: &str, bytes: &[u8]) {
    println!("{name} ({} bytes):", bytes.len());
    for chunk in bytes.chunks(32) {
        println!("    {}", hex::encode(chunk));
    }
}

fn main() {
    let mut rng = ChaCha20Rng::seed_from_u64(2026);
    let a = SecretKey::generate(&mut rng);
    let b = SecretKey::generate(&mut rng);
    println!("node A public key {}  address {}", a.public_key(), a.public_key().address());
    println!("node B public key {}  address {}", b.public_key(), b.public_key().address());
    let now = Instant::now();
    let mut na: Node<u8> = Node::new(a, NodeConfig::default(), Box::new(ChaCha20Rng::seed_from_u64(1)));
    let mut nb: Node<u8> = Node::new(b.clone(), NodeConfig::default(), Box::new(ChaCha20Rng::seed_from_u64(2)));
    na.connect(now, b.public_key(), 1);
    let mut init = next_tx(&mut na, now).unwrap().1;
    show("HandshakeInit", &init);
    nb.handle_datagram(now, 0, &mut init);
    let mut resp = next_tx(&mut nb, now).unwrap().1;
    show("HandshakeResp", &resp);
    na.handle_datagram(now, 1, &mut resp);
    let data = next_tx(&mut na, now).unwrap().1;
    assert!(matches!(Packet::parse(&data), Ok(Packet::Data(_))));
    show("Data (carrying one PING frame, padded to 16)", &data);

    let e = [0x02; 33];
    let proof = [0xab; 16];
    let r = |n| RouteId::new(n).unwrap();
    let frames = [
        ("PING", Frame::Ping),
        ("PROBE", Frame::Probe),
        ("REKEY", Frame::Rekey { epoch: 5, ephemeral: &e }),
        ("REKEY_ACK", Frame::RekeyAck { epoch: 5, ephemeral: &e }),
        ("CLOSE", Frame::Close { reason: 0 }),
        (
            "ACK",
            Frame::Ack(skyroute_proto::forward::ack::AckFrame { largest: 1000, delay_us: 250, bitmap: [0xff; 32] }),
        ),
        ("ROUTE_DATA", Frame::RouteData { route: r(0x1122_3344), class: 1, offset: 4096, payload: b"hello" }),
        ("MAX_DATA", Frame::MaxData { route: r(0x1122_3344), class: 1, limit: 1 << 20 }),
        ("ROUTE_SETUP", Frame::RouteSetup { route: r(0x0a0b_0c0d), ephemeral: &e, direct: false }),
        ("ROUTE_SETUP_DIRECT", Frame::RouteSetup { route: r(0x0a0b_0c0d), ephemeral: &e, direct: true }),
        ("ROUTE_SETUP_OK", Frame::RouteSetupOk { route: r(0x0a0b_0c0d), hop_route: r(0x5566_7788), proof: &proof }),
        ("ROUTE_ERROR", Frame::RouteError { route: r(0x1122_3344), code: 1 }),
        ("ROUTE_CLOSE", Frame::RouteClose { route: r(0x1122_3344) }),
    ];
    for (name, f) in frames {
        let mut v = Vec::new();
        f.encode(&mut v);
        show(name, &v);
    }
}
