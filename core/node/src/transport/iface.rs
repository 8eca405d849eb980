//! Local network interfaces (radios): which exist, and UDP sockets bound to one of them.
//!
//! A phone sends an app's sockets over its default network only (WiFi whenever it is up), so
//! unless a socket is bound to the cellular network, LTE is never used while WiFi is up and two
//! "disjoint" routes share one radio. The node therefore opens one UDP socket per interface,
//! bound to it (Linux `SO_BINDTODEVICE`, Apple `IP_BOUND_IF`, Android `Network.bindSocket`
//! through [`set_bind_hook`]), and dials its neighbours over each (TCP ones from a socket
//! bound the same way, QUIC ones through an endpoint on such a socket): a link lives on one
//! interface and stays there.
//!
//! On Linux the node finds its interfaces itself ([`scan`]) and hears about changes from the
//! kernel ([`watch`], rtnetlink: event-driven, no polling); the platforms hand the set in
//! (`network_changed` in the bindings).

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// What kind of network an interface is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetKind {
    /// WiFi.
    Wifi,
    /// A cellular radio (LTE, 5G): usually metered.
    Cellular,
    /// Wired Ethernet.
    Ethernet,
    /// Anything else (VPN, USB tethering, unknown).
    Other,
}

impl NetKind {
    /// The kind's name in status and configuration (`wifi`, `cellular`...).
    pub fn name(self) -> &'static str {
        match self {
            NetKind::Wifi => "wifi",
            NetKind::Cellular => "cellular",
            NetKind::Ethernet => "ethernet",
            NetKind::Other => "other",
        }
    }
}

/// One network the node may send on: a Linux interface, an Android `Network`, an iOS
/// `NWInterface`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Stable while the network exists: the interface index on Linux, the `Network` handle
    /// on Android (`Network.getNetworkHandle()`), the interface index on iOS.
    pub id: u64,
    /// Interface name (`wlan0`, `rmnet0`, `en0`), for status and logs.
    pub name: String,
    /// What kind of network it is.
    pub kind: NetKind,
    /// Costs money per byte (cellular): sessions may keep bulk off it
    /// (`[session] bulk_on_metered = false`).
    pub metered: bool,
    /// Usable now. A network reported down (or no longer reported) takes its links down.
    pub up: bool,
    /// OS interface index (0: unknown), for `IP_BOUND_IF`.
    pub index: u32,
}

/// Binds a socket to a network the platform's way (Android: `Network.bindSocket(fd)` for the
/// handle in [`Network::id`]). Returns false if it could not (the socket is then not used).
pub type BindHook = Arc<dyn Fn(i32, &Network) -> bool + Send + Sync>;

static BIND_HOOK: std::sync::RwLock<Option<BindHook>> = std::sync::RwLock::new(None);

/// Sets (or with `None` clears) the [`BindHook`]; without one, sockets are bound with
/// `SO_BINDTODEVICE` (Linux, Android) or `IP_BOUND_IF` (Apple).
pub fn set_bind_hook(hook: Option<BindHook>) {
    if let Ok(mut h) = BIND_HOOK.write() {
        *h = hook;
    }
}

/// Why a socket could not be bound to its network.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("socket: {0}")]
    /// Creating or binding the socket failed.
    Io(#[from] io::Error),
    #[error("the platform refused to bind the socket to network {0}")]
    /// The platform's hook refused (Android's `Network.bindSocket`).
    Refused(String),
}

/// A UDP socket (IPv4, ephemeral port) whose packets leave through `net` only.
pub fn bind_udp(net: &Network) -> Result<std::net::UdpSocket, BindError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    bind_to(&s, net)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn bind_os(s: &socket2::Socket, net: &Network) -> io::Result<()> {
    s.bind_device(Some(net.name.as_bytes()))
}

#[cfg(any(target_os = "ios", target_os = "macos", target_os = "tvos", target_os = "watchos"))]
fn bind_os(s: &socket2::Socket, net: &Network) -> io::Result<()> {
    let index = std::num::NonZeroU32::new(net.index)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no interface index for {}", net.name)))?;
    s.bind_device_by_index_v4(Some(index))
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "ios",
    target_os = "macos",
    target_os = "tvos",
    target_os = "watchos"
)))]
fn bind_os(_: &socket2::Socket, net: &Network) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, format!("binding to {} is not supported here", net.name)))
}

/// A TCP socket (IPv4) whose connection will leave through `net` only.
pub fn bind_tcp(net: &Network) -> Result<tokio::net::TcpSocket, BindError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    bind_to(&s, net)?;
    s.set_nonblocking(true)?;
    Ok(tokio::net::TcpSocket::from_std_stream(s.into()))
}

/// Binds `s` to `net`: the platform's hook if set, else the OS's option.
fn bind_to(s: &socket2::Socket, net: &Network) -> Result<(), BindError> {
    super::mark(s);
    let hook = BIND_HOOK.read().ok().and_then(|h| h.clone());
    match hook {
        Some(hook) => {
            #[cfg(unix)]
            {
                use std::os::fd::AsRawFd;
                if !hook(s.as_raw_fd(), net) {
                    return Err(BindError::Refused(net.name.clone()));
                }
            }
            Ok(())
        }
        None => Ok(bind_os(s, net)?),
    }
}

/// An interface as the OS lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsInterface {
    /// The interface name.
    pub name: String,
    /// The interface index.
    pub index: u32,
    /// Administratively up and running (carrier).
    pub up: bool,
    /// A loopback interface.
    pub loopback: bool,
    /// Its IPv4 address, if any.
    pub ipv4: Option<Ipv4Addr>,
}

/// The interfaces with their first IPv4 address (getifaddrs).
#[cfg(unix)]
pub fn scan() -> io::Result<Vec<OsInterface>> {
    let mut out: Vec<OsInterface> = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
        let flags = ifa.ifa_flags;
        let ipv4 = if ifa.ifa_addr.is_null() {
            None
        } else {
            // SAFETY: ifa_addr points to a sockaddr; we read sa_family, and the sockaddr_in only
            // when the family says it is one.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            (family == libc::AF_INET).then(|| {
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
            })
        };
        let at = match out.iter().position(|i| i.name == name) {
            Some(at) => at,
            None => {
                let cname = std::ffi::CString::new(name.clone()).unwrap_or_default();
                // SAFETY: if_nametoindex reads a NUL-terminated string.
                let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
                out.push(OsInterface { name: name.clone(), index, up: false, loopback: false, ipv4: None });
                out.len() - 1
            }
        };
        let entry = &mut out[at];
        entry.up = flags & (libc::IFF_UP as u32) != 0 && flags & (libc::IFF_RUNNING as u32) != 0;
        entry.loopback = flags & (libc::IFF_LOOPBACK as u32) != 0;
        if entry.ipv4.is_none() {
            entry.ipv4 = ipv4;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(not(unix))]
pub fn scan() -> io::Result<Vec<OsInterface>> {
    Ok(Vec::new())
}

/// Interfaces that carry an IPv4 default route (`/proc/net/route`; empty elsewhere).
pub fn default_route_interfaces() -> BTreeSet<String> {
    let Ok(table) = std::fs::read_to_string("/proc/net/route") else { return BTreeSet::new() };
    parse_default_routes(&table)
}

fn parse_default_routes(table: &str) -> BTreeSet<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, dest) = (f.next()?, f.next()?);
            (dest == "00000000").then(|| name.to_string())
        })
        .collect()
}

/// What kind a Linux interface is, from sysfs and its name (cellular modems are metered).
pub fn guess_kind(name: &str) -> NetKind {
    if std::path::Path::new(&format!("/sys/class/net/{name}/wireless")).exists() || name.starts_with("wl") {
        NetKind::Wifi
    } else if ["wwan", "rmnet", "ccmni", "usb", "ppp"].iter().any(|p| name.starts_with(p)) {
        NetKind::Cellular
    } else if name.starts_with("eth") || name.starts_with("en") {
        NetKind::Ethernet
    } else {
        NetKind::Other
    }
}

/// Which interfaces a Linux node binds to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    /// None: every socket unbound, the OS routes (tests on loopback, embedders that do not
    /// want it).
    #[default]
    Off,
    /// Every up, non-loopback interface with an IPv4 default route, when there are two or
    /// more (with one, binding changes nothing and the sockets stay unbound).
    Auto,
    /// These interfaces (by name), whenever they are up.
    Named(Vec<String>),
    /// The platform hands the set in (`network_changed` in the bindings).
    Platform,
}

/// The networks `policy` selects now, from the OS's interfaces.
pub fn select(policy: &Policy, ifaces: &[OsInterface], defaults: &BTreeSet<String>) -> Vec<Network> {
    let chosen: Vec<&OsInterface> = match policy {
        Policy::Off | Policy::Platform => return Vec::new(),
        Policy::Auto => {
            let c: Vec<&OsInterface> = ifaces
                .iter()
                .filter(|i| i.up && !i.loopback && i.ipv4.is_some() && defaults.contains(&i.name))
                .collect();
            if c.len() < 2 {
                return Vec::new();
            }
            c
        }
        Policy::Named(names) => ifaces.iter().filter(|i| names.contains(&i.name)).collect(),
    };
    chosen
        .into_iter()
        .map(|i| {
            let kind = guess_kind(&i.name);
            Network {
                id: i.index as u64,
                name: i.name.clone(),
                kind,
                metered: kind == NetKind::Cellular,
                up: i.up && i.ipv4.is_some(),
                index: i.index,
            }
        })
        .collect()
}

/// Calls `changed` whenever the kernel reports an interface or IPv4 address change
/// (rtnetlink multicast groups), until `changed` returns false. Linux and Android only; a
/// no-op elsewhere.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn watch(mut changed: impl FnMut() -> bool + Send + 'static) -> io::Result<tokio::task::JoinHandle<()>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use tokio::io::unix::AsyncFd;
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, libc::NETLINK_ROUTE)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; zeroed is a valid start.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // rtnetlink multicast groups (linux/rtnetlink.h; Bionic's libc crate lacks the names).
    const RTMGRP_LINK: u32 = 0x1;
    const RTMGRP_IPV4_IFADDR: u32 = 0x10;
    const RTMGRP_IPV4_ROUTE: u32 = 0x40;
    sa.nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE;
    // SAFETY: bind with a valid sockaddr_nl and its size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the OwnedFd moves into the AsyncFd and stays open, the same descriptor, for as
    // long as the AsyncFd lives.
    let afd = unsafe { AsyncFd::register(fd) }?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let Ok(mut guard) = afd.readable().await else { return };
            // Drain everything queued: one change often comes as several messages.
            let mut any = false;
            loop {
                // SAFETY: recv into our buffer with its length.
                let n = unsafe { libc::recv(afd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    any = true;
                    continue;
                }
                if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                }
                break;
            }
            if any && !changed() {
                return;
            }
        }
    }))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn watch(_changed: impl FnMut() -> bool + Send + 'static) -> io::Result<tokio::task::JoinHandle<()>> {
    Ok(tokio::spawn(async {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_are_read_from_the_route_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
                     wlan0\t0001A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0\n\
                     wwan0\t00000000\t0102000A\t0003\t0\t0\t700\t00000000\t0\t0\t0\n\
                     docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(parse_default_routes(table), ["wlan0".to_string(), "wwan0".to_string()].into());
        assert!(parse_default_routes("").is_empty());
    }

    #[test]
    fn auto_binds_only_with_two_default_route_interfaces() {
        let i = |name: &str, index, up, lo| OsInterface {
            name: name.into(),
            index,
            up,
            loopback: lo,
            ipv4: Some(Ipv4Addr::new(10, 0, 0, index as u8)),
        };
        let all = vec![i("lo", 1, true, true), i("eth0", 2, true, false), i("wwan0", 3, true, false)];
        let one: BTreeSet<String> = ["eth0".to_string()].into();
        assert!(select(&Policy::Auto, &all, &one).is_empty(), "one interface: nothing to choose");
        let two: BTreeSet<String> = ["eth0".to_string(), "wwan0".to_string(), "lo".to_string()].into();
        let nets = select(&Policy::Auto, &all, &two);
        assert_eq!(nets.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["eth0", "wwan0"]);
        assert!(nets[1].metered && nets[1].kind == NetKind::Cellular && !nets[0].metered);
        // Named: whatever their routes; a named interface that is down is listed down.
        let mut down = all.clone();
        down[2].up = false;
        let nets = select(&Policy::Named(vec!["wwan0".into()]), &down, &BTreeSet::new());
        assert_eq!((nets.len(), nets[0].up, nets[0].id), (1, false, 3));
        assert!(select(&Policy::Off, &all, &two).is_empty());
    }

    /// A socket bound to the loopback interface reaches a loopback listener; one bound to an
    /// interface that does not exist is refused with an error, not a panic.
    #[tokio::test]
    async fn bound_sockets_send_through_their_interface() {
        let lo = scan().unwrap().into_iter().find(|i| i.loopback).unwrap();
        let net = |name: &str, index| Network {
            id: index as u64,
            name: name.into(),
            kind: NetKind::Other,
            metered: false,
            up: true,
            index,
        };
        let sock = match bind_udp(&net(&lo.name, lo.index)) {
            Ok(s) => s,
            Err(BindError::Io(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
                eprintln!("SKIPPED: SO_BINDTODEVICE needs CAP_NET_RAW on this kernel");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        sock.send_to(b"over lo", rx.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 16];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"over lo");
        assert!(bind_udp(&net("nonexistent0", 0)).is_err());
    }

    /// The loopback interface exists on every test machine and is found with its index.
    #[test]
    fn scan_finds_loopback() {
        let ifaces = scan().unwrap();
        let lo = ifaces.iter().find(|i| i.loopback).expect("a loopback interface");
        assert!(lo.index > 0 && lo.ipv4 == Some(Ipv4Addr::LOCALHOST), "{lo:?}");
    }
}
