//! UDP: one link packet per datagram, sent and received in batches where the OS allows
//! (`quinn-udp`: GSO sends consecutive equal-sized packets to one peer in one system call,
//! GRO and `recvmmsg` read several at once).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Largest batch sent in one call (below the 64 KiB datagram limit GSO works within).
const MAX_BATCH_BYTES: usize = 60_000;
/// Socket buffers asked for: room for bursts at a few Gbit/s.
const SOCKET_BUFFER: usize = 4 << 20;
/// Receive buffers (each can hold a GRO batch).
const RECV_BUFS: usize = 4;
const RECV_BUF_BYTES: usize = 65_536;

/// The UDP transport: one socket, GSO/GRO batches through quinn-udp.
pub struct Udp {
    socket: UdpSocket,
    state: UdpSocketState,
    batch: Vec<u8>,
    dst: Option<SocketAddr>,
    segment: usize,
    segments: usize,
    /// The last packet was shorter than the segment size: the batch is closed.
    closed: bool,
    recv_bufs: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
}

impl Udp {
    /// Binds the socket at `addr`.
    pub fn bind(addr: SocketAddr) -> io::Result<Udp> {
        let std = std::net::UdpSocket::bind(addr)?;
        super::mark(&std);
        std.set_nonblocking(true)?;
        let state = UdpSocketState::new((&std).into())?;
        let _ = state.set_send_buffer_size((&std).into(), SOCKET_BUFFER);
        let _ = state.set_recv_buffer_size((&std).into(), SOCKET_BUFFER);
        Ok(Udp {
            socket: UdpSocket::from_std(std)?,
            state,
            batch: Vec::with_capacity(MAX_BATCH_BYTES + 2048),
            dst: None,
            segment: 0,
            segments: 0,
            closed: false,
            recv_bufs: vec![vec![0u8; RECV_BUF_BYTES]; RECV_BUFS],
            metas: vec![RecvMeta::default(); RECV_BUFS],
        })
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Adds a packet to the batch, sending the batch first if the packet cannot join it.
    /// Errors are the OS refusing a send (a lost packet).
    pub async fn push(&mut self, dst: SocketAddr, packet: &[u8]) -> io::Result<()> {
        let fits = self.dst == Some(dst)
            && !self.closed
            && packet.len() <= self.segment
            && self.segments < self.state.max_gso_segments()
            && self.batch.len() + packet.len() <= MAX_BATCH_BYTES;
        let mut r = Ok(());
        if !fits {
            r = self.flush().await;
            self.dst = Some(dst);
            self.segment = packet.len();
        }
        self.batch.extend_from_slice(packet);
        self.segments += 1;
        self.closed = packet.len() < self.segment;
        r
    }

    /// Sends the batch.
    pub async fn flush(&mut self) -> io::Result<()> {
        let Some(dst) = self.dst.take() else { return Ok(()) };
        let t = Transmit {
            destination: dst,
            ecn: None,
            contents: &self.batch,
            segment_size: (self.segments > 1).then_some(self.segment),
            src_ip: None,
        };
        let r = loop {
            self.socket.writable().await?;
            match self.socket.try_io(Interest::WRITABLE, || self.state.send((&self.socket).into(), &t)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => break r,
            }
        };
        self.batch.clear();
        self.segments = 0;
        self.closed = false;
        r
    }

    /// Waits for datagrams; hands each to `f` (several per call when the OS batches).
    pub async fn recv(&mut self, mut f: impl FnMut(SocketAddr, &mut [u8])) -> io::Result<()> {
        loop {
            self.socket.readable().await?;
            let mut slices: Vec<IoSliceMut<'_>> = self.recv_bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let metas = &mut self.metas;
            let state = &self.state;
            let socket = &self.socket;
            match socket.try_io(Interest::READABLE, || state.recv(socket.into(), &mut slices, metas)) {
                Ok(n) => {
                    drop(slices);
                    for (meta, buf) in self.metas.iter().zip(self.recv_bufs.iter_mut()).take(n) {
                        let stride = meta.stride.max(1);
                        for chunk in buf[..meta.len].chunks_mut(stride) {
                            f(meta.addr, chunk);
                        }
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches of equal packets, a short last one, and a change of destination all arrive as
    /// the packets they were.
    #[tokio::test]
    async fn batches_arrive_as_separate_packets() {
        let mut a = Udp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut b = Udp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut c = Udp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (bb, cc) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        let mut sent_b = Vec::new();
        for i in 0..50u8 {
            let len = if i == 20 { 100 } else { 1440 };
            sent_b.push(vec![i; len]);
        }
        for p in &sent_b {
            a.push(bb, p).await.unwrap();
        }
        a.push(cc, &[9; 33]).await.unwrap();
        a.flush().await.unwrap();
        let mut got = Vec::new();
        while got.len() < sent_b.len() {
            b.recv(|_, d| got.push(d.to_vec())).await.unwrap();
        }
        assert_eq!(got, sent_b);
        let mut got_c = Vec::new();
        c.recv(|_, d| got_c.push(d.to_vec())).await.unwrap();
        assert_eq!(got_c, vec![vec![9u8; 33]]);
    }
}
