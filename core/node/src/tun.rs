//! A TUN device as a packet port: what the kernel routes into the device comes out of the
//! port, what goes into the port is written to the kernel. This is how the VPN client and the
//! gateway use a real interface on Linux (mobile platforms hand over their own fd or packets).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::driver::PacketPort;

/// An open TUN device (tun-rs; feature `tun`).
#[cfg(feature = "tun")]
pub type Device = tun_rs::AsyncDevice;

/// Without the `tun` feature no device can be opened: [`open`] always fails, so no `Device`
/// value exists.
#[cfg(not(feature = "tun"))]
#[derive(Debug)]
pub enum Device {}

/// Largest packet read from the device.
const MAX_PACKET: usize = 65_535;

/// Creates TUN device `name` with `address/prefix_len` (and `address6`, if given) and `mtu`,
/// up, without packet information headers (plain IP packets). Needs CAP_NET_ADMIN. Android
/// apps cannot create TUN devices (the VpnService hands out an fd: [`pump_fd`]), and a build
/// without the `tun` feature has none.
pub fn open(
    name: &str,
    address: Ipv4Addr,
    prefix_len: u8,
    address6: Option<(Ipv6Addr, u8)>,
    mtu: u16,
) -> io::Result<Device> {
    #[cfg(all(feature = "tun", not(target_os = "android")))]
    {
        let mut b = tun_rs::DeviceBuilder::new().name(name).ipv4(address, prefix_len, None);
        if let Some((a, l)) = address6 {
            b = b.ipv6(a, l);
        }
        b = b.mtu(mtu).packet_information(false).enable(true);
        // TCP segmentation and checksum offloads (virtio-net header): the kernel hands over
        // up to 64 KiB of one TCP flow in one read, and takes coalesced segments in one
        // write ([`pump`] splits and merges); Linux only.
        #[cfg(target_os = "linux")]
        {
            b = b.offload(true);
        }
        b.build_async()
    }
    #[cfg(not(all(feature = "tun", not(target_os = "android"))))]
    {
        let _ = (name, address, prefix_len, address6, mtu);
        let why = if cfg!(feature = "tun") {
            "no TUN devices on Android: use the VpnService fd (pump_fd)"
        } else {
            "built without the `tun` feature: no TUN device (use a packet fd)"
        };
        Err(io::Error::new(io::ErrorKind::Unsupported, why))
    }
}

/// Moves packets between `dev` and `port` until the port closes or the device fails. On
/// Linux the device has TCP offloads: one read brings up to 64 KiB of a TCP flow, split here
/// into packets of the tunnel MTU (checksums filled in), and the packets waiting to go out
/// are written in batches whose TCP segments of one flow are merged into one write (GRO).
#[cfg(all(feature = "tun", target_os = "linux"))]
pub async fn pump(dev: Device, mut port: PacketPort) -> io::Result<()> {
    use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};
    let seg = usize::from(dev.mtu().unwrap_or(1500)).max(1500) + 64;
    let mut raw = vec![0u8; VIRTIO_NET_HDR_LEN + MAX_PACKET];
    let mut segs = vec![vec![0u8; seg]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut gro = GROTable::default();
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(IDEAL_BATCH_SIZE);
    loop {
        tokio::select! {
            r = dev.recv_multiple(&mut raw, &mut segs, &mut sizes, 0) => {
                let n = match r {
                    Ok(n) => n,
                    // A packet that cannot be split (malformed offload metadata: tun-rs says
                    // `Other`; the read itself succeeded) is dropped.
                    Err(e) if e.kind() == io::ErrorKind::Other => {
                        tracing::debug!("tun: unreadable packet: {e}");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                for (s, len) in segs.iter().zip(&sizes).take(n) {
                    if port.tx.send(s[..*len].to_vec()).await.is_err() {
                        return Ok(());
                    }
                }
            }
            p = port.rx.recv() => {
                let Some(p) = p else { return Ok(()) };
                batch.clear();
                batch.push(with_vnet_room(p));
                while batch.len() < IDEAL_BATCH_SIZE {
                    match port.rx.try_recv() {
                        Ok(p) => batch.push(with_vnet_room(p)),
                        Err(_) => break,
                    }
                }
                // Packets the kernel refuses (malformed) are dropped; the tunnel goes on.
                if let Err(e) = dev.send_multiple(&mut gro, &mut batch, VIRTIO_NET_HDR_LEN).await {
                    tracing::debug!("tun: packets refused by the kernel: {e}");
                }
            }
        }
    }
}

/// `p` behind room for the virtio-net header `send_multiple` writes in front of it.
#[cfg(all(feature = "tun", target_os = "linux"))]
fn with_vnet_room(p: Vec<u8>) -> Vec<u8> {
    let mut v = Vec::with_capacity(tun_rs::VIRTIO_NET_HDR_LEN + p.len());
    v.resize(tun_rs::VIRTIO_NET_HDR_LEN, 0);
    v.extend_from_slice(&p);
    v
}

/// Moves packets between `dev` and `port` until the port closes or the device fails.
#[cfg(all(feature = "tun", not(target_os = "linux")))]
pub async fn pump(dev: Device, mut port: PacketPort) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        tokio::select! {
            r = dev.recv(&mut buf) => {
                let n = r?;
                if port.tx.send(buf[..n].to_vec()).await.is_err() {
                    return Ok(());
                }
            }
            p = port.rx.recv() => match p {
                Some(p) => {
                    // A packet the kernel refuses (malformed) is dropped; the tunnel goes on.
                    if let Err(e) = dev.send(&p).await {
                        tracing::debug!("tun: packet refused by the kernel: {e}");
                    }
                }
                None => return Ok(()),
            },
        }
    }
}

/// Without the `tun` feature there is no device to pump.
#[cfg(not(feature = "tun"))]
pub async fn pump(dev: Device, _port: PacketPort) -> io::Result<()> {
    match dev {}
}

/// How packets are framed on a platform's tunnel file descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One IP packet per read and write (Linux TUN with IFF_NO_PI, Android's VpnService).
    Plain,
    /// A 4-byte address family before each packet (Apple's utun).
    AfHeader,
}

/// Address families in a utun header (Darwin's numbers).
const AF_INET: u32 = 2;
const AF_INET6: u32 = 30;

/// Moves packets between a platform's tunnel `fd` (taken over and closed at the end) and
/// `port`, until either closes. This is the packet interface for an fd the platform owns:
/// Android's VpnService hands one out, iOS's utun has one behind NEPacketTunnelFlow.
pub async fn pump_fd(fd: std::os::fd::OwnedFd, framing: Framing, mut port: PacketPort) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    set_nonblocking(&fd)?;
    // SAFETY: `fd` is owned, open, and moves into the AsyncFd, which keeps it until dropped.
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
        .map_err(|e| io::Error::other(e.to_string()))?;
    let head = if framing == Framing::AfHeader { 4 } else { 0 };
    let mut buf = vec![0u8; MAX_PACKET + head];
    let mut out = Vec::with_capacity(MAX_PACKET + head);
    loop {
        tokio::select! {
            r = fd.async_io(Interest::READABLE, |f| sys_io(unsafe {
                // SAFETY: `buf` is valid for `buf.len()` bytes and `f` is an open descriptor.
                libc::read(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
            })) => {
                let n = r?;
                if n == 0 {
                    return Ok(());
                }
                if n <= head {
                    continue;
                }
                if port.tx.send(buf[head..n].to_vec()).await.is_err() {
                    return Ok(());
                }
            }
            p = port.rx.recv() => {
                let Some(p) = p else { return Ok(()) };
                out.clear();
                if head > 0 {
                    let af = if p.first().is_some_and(|b| b >> 4 == 6) { AF_INET6 } else { AF_INET };
                    out.extend_from_slice(&af.to_be_bytes());
                }
                out.extend_from_slice(&p);
                let r = fd.async_io(Interest::WRITABLE, |f| sys_io(unsafe {
                    // SAFETY: `out` is valid for `out.len()` bytes and `f` is an open descriptor.
                    libc::write(f.as_raw_fd(), out.as_ptr().cast(), out.len())
                })).await;
                if let Err(e) = r {
                    tracing::debug!("tunnel fd: packet not written: {e}");
                }
            }
        }
    }
}

/// A read or write result as `io::Result`.
fn sys_io(n: libc::ssize_t) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn set_nonblocking(fd: &std::os::fd::OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on an open descriptor with integer arguments only.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
