//! A TUN device as a packet port: what the kernel routes into the device comes out of the
//! port, what goes into the port is written to the kernel. This is how the VPN client and the
//! gateway use a real interface on Linux (mobile platforms hand over their own fd or packets).

use std::io;
use std::net::Ipv4Addr;

use tun_rs::{AsyncDevice, DeviceBuilder};

use crate::driver::PacketPort;

/// Largest packet read from the device.
const MAX_PACKET: usize = 65_535;

/// Creates TUN device `name` with `address/prefix_len` and `mtu`, up, without packet
/// information headers (plain IP packets). Needs CAP_NET_ADMIN.
pub fn open(name: &str, address: Ipv4Addr, prefix_len: u8, mtu: u16) -> io::Result<AsyncDevice> {
    DeviceBuilder::new()
        .name(name)
        .ipv4(address, prefix_len, None)
        .mtu(mtu)
        .packet_information(false)
        .enable(true)
        .build_async()
}

/// Moves packets between `dev` and `port` until the port closes or the device fails.
pub async fn pump(dev: AsyncDevice, mut port: PacketPort) -> io::Result<()> {
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
