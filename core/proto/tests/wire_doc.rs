//! The hex examples in WIRE.md decode as what they claim to be.

use skyroute_proto::frame::Frame;
use skyroute_proto::wire::Packet;
use skyroute_proto::PublicKey;

/// (name, bytes) of every "NAME:" or "NAME (..):" line followed by a ``` block of hex.
fn examples() -> Vec<(String, Vec<u8>)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../WIRE.md")).unwrap();
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    for i in 0..lines.len().saturating_sub(1) {
        if lines[i + 1] != "```" || !lines[i].ends_with(':') || lines[i].starts_with('|') {
            continue;
        }
        let name = lines[i].trim_end_matches(':').split([' ', '(']).next().unwrap().to_string();
        let hex: String = lines[i + 2..].iter().take_while(|l| **l != "```").map(|l| l.trim()).collect();
        if let Ok(bytes) = hex::decode(&hex) {
            out.push((name, bytes));
        }
    }
    out
}

#[test]
fn wire_md_examples_decode() {
    let ex = examples();
    assert!(ex.len() >= 12, "found {} examples", ex.len());
    for (name, bytes) in ex {
        match name.as_str() {
            "HandshakeInit" => assert!(matches!(Packet::parse(&bytes), Ok(Packet::HandshakeInit(_)))),
            "HandshakeResp" => assert!(matches!(Packet::parse(&bytes), Ok(Packet::HandshakeResp(_)))),
            "CookieReply" => assert!(matches!(Packet::parse(&bytes), Ok(Packet::CookieReply(_)))),
            "Data" => assert!(matches!(Packet::parse(&bytes), Ok(Packet::Data(_)))),
            "ROUTE_SETUP_DIRECT" => {
                let mut rd: &[u8] = &bytes;
                let f = Frame::decode(&mut rd).unwrap().unwrap();
                assert!(matches!(f, Frame::RouteSetup { direct: true, .. }) && rd.is_empty(), "{f:?}");
            }
            frame => {
                let mut rd: &[u8] = &bytes;
                let f = Frame::decode(&mut rd).unwrap().unwrap();
                assert!(rd.is_empty(), "{frame}: one frame, nothing left");
                let kind = format!("{f:?}").split([' ', '{', '(']).next().unwrap().to_string();
                let expected: String = frame.split('_').map(|w| w[..1].to_string() + &w[1..].to_lowercase()).collect();
                assert_eq!(kind, expected, "{frame}");
            }
        }
    }
}

#[test]
fn wire_md_address_example_matches() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../WIRE.md")).unwrap();
    let line = doc.lines().find(|l| l.contains("node A public key")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let pk = words.iter().position(|w| *w == "key").map(|i| words[i + 1]).unwrap();
    let addr = words.iter().position(|w| *w == "address").map(|i| words[i + 1].trim_end_matches('`')).unwrap();
    assert_eq!(PublicKey::from_hex(pk).unwrap().address().to_string(), addr);
}
