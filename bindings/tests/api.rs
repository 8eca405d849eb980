//! The uniffi API from Rust (what the Kotlin and Swift bindings call): a gateway and a client
//! node, a tunnel carrying packets through the packet calls, then moved onto a platform fd
//! (a socket pair stands in for Android's VpnService fd), and the typed errors of bad calls.

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skyroute_ffi::api::{LogLevel, NetworkInfo, NetworkKind, Node, NodeListener, SocketProtector, TunFraming};
use skyroute_ffi::core::{NodeEvent, SkyrouteError};
use skyroute_proto::vpn::ip;

const LOCAL: &str = "[listen]\nudp = \"127.0.0.1:0\"\ntcp = \"off\"\nquic = \"off\"\n";

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<NodeEvent>>,
    logs: Mutex<usize>,
    protected: Mutex<Vec<i32>>,
    refused_binds: Mutex<Vec<u64>>,
}

impl NodeListener for Recorder {
    fn on_event(&self, event: NodeEvent) {
        self.events.lock().unwrap().push(event);
    }
    fn on_log(&self, _level: LogLevel, _message: String) {
        *self.logs.lock().unwrap() += 1;
    }
}

impl SocketProtector for Recorder {
    fn protect(&self, fd: i32) -> bool {
        self.protected.lock().unwrap().push(fd);
        true
    }
    /// Refuses: a network the platform cannot bind to gets no socket and no links.
    fn bind_to_network(&self, _fd: i32, network: u64) -> bool {
        self.refused_binds.lock().unwrap().push(network);
        false
    }
}

fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn udp(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    ip::build(src, dst, ip::PROTO_UDP, &u)
}

#[test]
fn a_tunnel_through_the_api_by_calls_then_on_an_fd() {
    let dir = std::env::temp_dir().join(format!("skyroute-api-{}", std::process::id()));
    let gateway = Node::start(
        format!("{LOCAL}[gateway]\nopen = true\npool = \"10.79.0.0/16\"\n"),
        dir.join("gw").display().to_string(),
        None,
        None,
    )
    .unwrap();
    let uplink = gateway.gateway_uplink().unwrap();
    let gw_udp = gateway.listen_addresses().into_iter().find(|a| a.starts_with("udp://")).unwrap();
    let rec = Arc::new(Recorder::default());
    let client = Node::start(
        format!("{LOCAL}[[peers]]\nkey = \"{}\"\naddr = \"{gw_udp}\"\n", gateway.public_key()),
        dir.join("client").display().to_string(),
        Some(rec.clone()),
        Some(rec.clone()),
    )
    .unwrap();
    assert!(!rec.protected.lock().unwrap().is_empty(), "the protector saw the socket");
    wait("link up", || rec.events.lock().unwrap().iter().any(|e| matches!(e, NodeEvent::LinkUp { .. })));

    let tunnel = client.start_tunnel(gateway.public_key(), 1).unwrap();
    let me: std::net::Ipv4Addr = tunnel.address().parse().unwrap();
    let internet = std::net::Ipv4Addr::new(192, 0, 2, 9);
    // The internet side answers everything.
    let echo = std::thread::spawn(move || {
        let mut n = 0;
        while let Ok(Some(p)) = uplink.recv_packet(3000) {
            let h = ip::parse(&p).unwrap();
            uplink.send_packet(udp(h.dst, h.src, &p[h.header_len + 8..])).unwrap();
            n += 1;
        }
        n
    });
    tunnel.send_packet(udp(me, internet, b"by call")).unwrap();
    let back = tunnel.recv_packet(5000).unwrap().expect("a reply by call");
    assert!(back.ends_with(b"by call"));

    // Onto an fd: the platform's end of a datagram socket pair.
    let (platform, ours) = UnixDatagram::pair().unwrap();
    tunnel.attach_fd(ours.into_raw_fd(), TunFraming::Plain).unwrap();
    assert!(matches!(tunnel.send_packet(vec![0x45; 20]), Err(SkyrouteError::InvalidArgument { .. })), "calls end");
    assert!(matches!(tunnel.attach_fd(0, TunFraming::Plain), Err(SkyrouteError::InvalidArgument { .. })));
    platform.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..5u8 {
        platform.send(&udp(me, internet, &[i; 300])).unwrap();
        let n = platform.recv(&mut buf).expect("a reply on the fd");
        assert_eq!(&buf[n - 300..n], &[i; 300]);
    }
    let stats = tunnel.stats().unwrap();
    assert!(stats.packets_out >= 6 && stats.packets_in >= 6, "{stats:?}");

    // Bad calls: typed errors.
    let bad = |r: Result<(), SkyrouteError>| r.unwrap_err();
    assert!(matches!(
        Node::start("[listen]\nudp = \"x\"".into(), dir.join("bad").display().to_string(), None, None).err(),
        Some(SkyrouteError::BadConfig { .. })
    ));
    assert!(matches!(bad(client.connect("zz".into(), "127.0.0.1:1".into())), SkyrouteError::InvalidArgument { .. }));
    assert!(matches!(client.start_tunnel("nobody".into(), 1).err(), Some(SkyrouteError::InvalidArgument { .. })));
    assert!(matches!(
        client.start_tunnel_fd(gateway.public_key(), 1, 987_654, TunFraming::Plain).err(),
        Some(SkyrouteError::InvalidArgument { .. })
    ));
    let cell =
        NetworkInfo { id: 7, name: "rmnet0".into(), kind: NetworkKind::Cellular, metered: true, up: true, index: 0 };
    client.network_changed(vec![cell]).unwrap();
    wait("the refused bind is counted", || client.status().unwrap().json.contains("\"bind_errors\":1"));
    assert_eq!(*rec.refused_binds.lock().unwrap(), vec![7]);
    assert!(
        !client.status().unwrap().json.contains("\"interface\":\"rmnet0\""),
        "no link on a network it could not bind"
    );
    tunnel.stop().unwrap();
    assert_eq!(tunnel.stop().unwrap_err(), SkyrouteError::Stopped);
    wait("tunnel down event", || rec.events.lock().unwrap().contains(&NodeEvent::TunnelDown));
    client.stop().unwrap();
    assert_eq!(client.stop().unwrap_err(), SkyrouteError::Stopped);
    assert!(matches!(client.status().err(), Some(SkyrouteError::Stopped)));
    assert!(*rec.logs.lock().unwrap() > 0, "log lines reached the listener");
    gateway.stop().unwrap();
    assert!(echo.join().unwrap() >= 6);
    let _ = std::fs::remove_dir_all(&dir);
}
