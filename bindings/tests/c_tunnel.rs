//! The C ABI's tunnel calls from Rust (what firmware calls through the header): a gateway
//! with IPv6 and DNS, a client node and tunnel started through the C functions, its IPv6
//! address and DNS servers read back, and an IPv6 packet through the tunnel and back.
#![cfg(all(feature = "c", feature = "uniffi"))]

use std::ffi::{CStr, CString};
use std::net::Ipv6Addr;
use std::os::raw::c_char;
use std::time::{Duration, Instant};

use skyroute_ffi::api::Node;
use skyroute_ffi::c::*;
use skyroute_proto::vpn::{ip, ip6};

const LOCAL: &str = "[listen]\nudp = \"127.0.0.1:0\"\ntcp = \"off\"\nquic = \"off\"\n";

fn text(buf: &[u8]) -> String {
    CStr::from_bytes_until_nul(buf).expect("a NUL").to_str().expect("UTF-8").to_string()
}

#[test]
fn a_tunnel_through_the_c_abi_carries_ipv6_and_reports_its_address_and_dns() {
    let dir = std::env::temp_dir().join(format!("skyroute-c-tunnel-{}", std::process::id()));
    let gateway = Node::start(
        format!(
            "{LOCAL}[gateway]\nopen = true\npool = \"10.81.0.0/16\"\npool6 = \"fd81:1:2:3::/64\"\ndns = [\"10.81.0.53\", \"fd81::53\"]\n"
        ),
        dir.join("gw").display().to_string(),
        None,
        None,
    )
    .expect("gateway starts");
    let uplink = gateway.gateway_uplink().expect("the gateway's uplink");
    let gw_udp = gateway.listen_addresses().into_iter().find(|a| a.starts_with("udp://")).expect("a UDP address");

    let config =
        CString::new(format!("{LOCAL}[[peers]]\nkey = \"{}\"\naddr = \"{gw_udp}\"\n", gateway.public_key())).unwrap();
    let data_dir = CString::new(dir.join("client").display().to_string()).unwrap();
    let mut node = 0u64;
    // SAFETY: NUL-terminated strings and a writable handle.
    assert_eq!(unsafe { skyroute_node_start(config.as_ptr(), data_dir.as_ptr(), &mut node) }, SKYROUTE_OK);
    let key = CString::new(gateway.public_key()).unwrap();
    let mut tunnel = 0u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    // The link comes up in the background: retry the start until it does.
    // SAFETY: as above.
    while unsafe { skyroute_tunnel_start(node, key.as_ptr(), 1, &mut tunnel) } != SKYROUTE_OK {
        assert!(Instant::now() < deadline, "the tunnel never started");
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut buf = [0u8; 64];
    let mut plen = 0u8;
    // SAFETY: `buf` holds 64 bytes; `plen` is writable.
    let rc = unsafe { skyroute_tunnel_address6(tunnel, buf.as_mut_ptr().cast::<c_char>(), buf.len(), &mut plen) };
    assert_eq!(rc, SKYROUTE_OK);
    let me: Ipv6Addr = text(&buf).parse().expect("an IPv6 address");
    assert_eq!((&me.segments()[..4], plen), (&[0xfd81, 1, 2, 3][..], 64), "{me}/{plen} from the pool");
    // Too small a buffer: a typed error, nothing written past it.
    // SAFETY: `buf` holds at least 4 bytes.
    let rc = unsafe { skyroute_tunnel_address6(tunnel, buf.as_mut_ptr().cast::<c_char>(), 4, std::ptr::null_mut()) };
    assert_eq!(rc, SKYROUTE_ERR_BUFFER);

    let mut needed = 0usize;
    // SAFETY: null buffer of length 0 asks for the size only.
    let rc = unsafe { skyroute_tunnel_dns(tunnel, std::ptr::null_mut(), 0, &mut needed) };
    assert_eq!(rc, SKYROUTE_ERR_BUFFER);
    let mut dns = vec![0u8; needed];
    // SAFETY: `dns` holds `needed` bytes.
    let rc = unsafe { skyroute_tunnel_dns(tunnel, dns.as_mut_ptr().cast::<c_char>(), dns.len(), &mut needed) };
    assert_eq!(rc, SKYROUTE_OK);
    assert_eq!(text(&dns), "10.81.0.53\nfd81::53");

    // An IPv6 UDP packet through the tunnel; the internet side echoes it.
    let far: Ipv6Addr = "2001:db8::9".parse().unwrap();
    let echo = std::thread::spawn(move || {
        while let Ok(Some(p)) = uplink.recv_packet(5000) {
            if let Ok(h) = ip6::parse(&p) {
                let _ = uplink.send_packet(ip6::build(h.dst, h.src, h.next_header, &p[40..]));
                return true;
            }
        }
        false
    });
    let mut udp = vec![0u8; 8];
    udp[..2].copy_from_slice(&4000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    udp[4..6].copy_from_slice(&16u16.to_be_bytes());
    udp.extend_from_slice(b"by the C ABI");
    let packet = ip6::build(me, far, ip::PROTO_UDP, &udp);
    // SAFETY: `packet` is valid for its length.
    assert_eq!(unsafe { skyroute_tunnel_send(tunnel, packet.as_ptr(), packet.len()) }, SKYROUTE_OK);
    let mut back = vec![0u8; 2048];
    let mut len = 0usize;
    // SAFETY: `back` holds 2048 bytes; `len` is writable.
    let rc = unsafe { skyroute_tunnel_recv(tunnel, back.as_mut_ptr(), back.len(), &mut len, 5000) };
    assert_eq!(rc, SKYROUTE_OK);
    let h = ip6::parse(&back[..len]).expect("an IPv6 reply");
    assert_eq!((h.src, h.dst), (far, me));
    assert!(back[..len].ends_with(b"by the C ABI"));
    assert!(echo.join().unwrap(), "the gateway forwarded the IPv6 packet");

    assert_eq!(skyroute_tunnel_stop(tunnel), SKYROUTE_OK);
    assert_eq!(skyroute_node_stop(node), SKYROUTE_OK);
    assert_eq!((skyroute_free(tunnel), skyroute_free(node)), (SKYROUTE_OK, SKYROUTE_OK));
    gateway.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
