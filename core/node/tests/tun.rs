//! A real TUN device as a packet port (root only: skipped with a message otherwise).

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use skyroute::driver::PacketPort;
use skyroute_proto::vpn::ip;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
        && std::path::Path::new("/dev/net/tun").exists()
}

/// The kernel routes a UDP packet into the TUN; the port hands it to us; our answer written
/// back reaches the sending socket.
#[tokio::test]
async fn a_tun_device_carries_ip_packets_both_ways() {
    if !is_root() {
        eprintln!("SKIPPED: creating a TUN device needs root and /dev/net/tun");
        return;
    }
    let n = (std::process::id() % 200) as u8 + 20;
    let name = format!("skyt{}", std::process::id() % 100_000);
    let (me, far) = (Ipv4Addr::new(10, 99, n, 1), Ipv4Addr::new(10, 99, n, 2));
    let dev = skyroute::tun::open(&name, me, 24, None, 1400).expect("TUN device");
    let (mut ours, port) = PacketPort::pair(64);
    let pump = tokio::spawn(skyroute::tun::pump(dev, port));

    let sock = UdpSocket::bind((me, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let from_port = sock.local_addr().unwrap().port();
    sock.send_to(b"through the tunnel", (far, 9999)).unwrap();
    let p = loop {
        let p = tokio::time::timeout(Duration::from_secs(5), ours.rx.recv()).await.expect("packet").unwrap();
        // The kernel may send other things (e.g. IPv6 router solicitations are off: IPv4 only).
        if ip::parse(&p).is_ok_and(|h| h.protocol == ip::PROTO_UDP && h.dst == far) {
            break p;
        }
    };
    let h = ip::parse(&p).unwrap();
    assert_eq!(h.src, me);
    assert_eq!(&p[h.header_len + 8..], b"through the tunnel");
    // Answer from `far`: swap addresses and ports, UDP checksum 0 (allowed over IPv4).
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&9999u16.to_be_bytes());
    udp[2..4].copy_from_slice(&from_port.to_be_bytes());
    udp[4..6].copy_from_slice(&(8 + 6u16).to_be_bytes());
    udp.extend_from_slice(b"answer");
    ours.tx.send(ip::build(far, me, ip::PROTO_UDP, &udp)).await.unwrap();
    let mut buf = [0u8; 64];
    let (got, from) =
        tokio::task::spawn_blocking(move || sock.recv_from(&mut buf).map(|(n, f)| (buf[..n].to_vec(), f)))
            .await
            .unwrap()
            .expect("the answer arrives");
    assert_eq!(got, b"answer");
    assert_eq!(from, (far, 9999).into());
    drop(ours);
    let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
}
