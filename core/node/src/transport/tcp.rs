//! TCP: link packets framed as `u16 length | packet` on a stream, one connection per peer
//! address. Bytes that are not link packets are handed to the node like any datagram and
//! refused there (counted); a connection that sends nothing for [`IDLE`] is closed, and at most
//! [`MAX_CONNS`] accepted connections are held, so junk and stalled peers cost bounded memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use super::iface::Network;
use super::{Addr, Inbound, CONN_QUEUE};

/// A connection with nothing received for this long is closed (links send keepalives well
/// within it).
pub const IDLE: Duration = Duration::from_secs(30);

/// Accepted connections held at once.
pub const MAX_CONNS: usize = 256;

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The TCP transport: a listener and the dialler.
#[derive(Clone)]
pub struct Tcp {
    inbound: mpsc::Sender<Inbound>,
}

impl Tcp {
    /// Starts accepting on `listener`.
    pub fn start(listener: TcpListener, inbound: mpsc::Sender<Inbound>) -> Tcp {
        let slots = Arc::new(Semaphore::new(MAX_CONNS));
        let tx = inbound.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else { continue };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "tcp: connection refused, too many open");
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (out_tx, out_rx) = mpsc::channel(CONN_QUEUE);
                    let addr = Addr::Tcp(peer);
                    if tx.send(Inbound::Connected(addr, out_tx)).await.is_err() {
                        return;
                    }
                    run(stream, addr, out_rx, tx).await;
                    drop(permit);
                });
            }
        });
        Tcp { inbound }
    }

    /// A queue for packets to `addr`; the connection is opened in the background.
    pub fn dial(&self, addr: SocketAddr) -> mpsc::Sender<Bytes> {
        self.dial_from(Addr::Tcp(addr), None)
    }

    /// [`Tcp::dial`] from a socket bound to `net` (`a`: the peer as `Addr::TcpOn`, which its
    /// packets are reported from).
    pub fn dial_on(&self, a: Addr, net: Network) -> mpsc::Sender<Bytes> {
        self.dial_from(a, Some(net))
    }

    fn dial_from(&self, a: Addr, net: Option<Network>) -> mpsc::Sender<Bytes> {
        let (out_tx, out_rx) = mpsc::channel(CONN_QUEUE);
        let tx = self.inbound.clone();
        let addr = a.socket();
        tokio::spawn(async move {
            match tokio::time::timeout(DIAL_TIMEOUT, connect(addr, net.as_ref())).await {
                Ok(Ok(stream)) => run(stream, a, out_rx, tx).await,
                Ok(Err(e)) => {
                    let _ = tx.send(Inbound::Closed(a, format!("connect: {e}"))).await;
                }
                Err(_) => {
                    let _ = tx.send(Inbound::Closed(a, "connect: timed out".into())).await;
                }
            }
        });
        out_tx
    }
}

/// Opens a marked connection (see [`super::SOCKET_MARK`]), from a socket bound to `net` if
/// given.
async fn connect(addr: SocketAddr, net: Option<&Network>) -> std::io::Result<TcpStream> {
    let socket = match net {
        // Marked (and protected) as it is bound.
        Some(net) => super::iface::bind_tcp(net).map_err(std::io::Error::other)?,
        None => {
            let s = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            super::mark(&s);
            s
        }
    };
    socket.connect(addr).await
}

/// Runs one connection until either side ends it.
async fn run(stream: TcpStream, addr: Addr, mut out: mpsc::Receiver<Bytes>, inbound: mpsc::Sender<Inbound>) {
    let _ = stream.set_nodelay(true);
    let (mut read, write) = stream.into_split();
    let reader = async {
        let mut buf = vec![0u8; super::MAX_PACKET];
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(IDLE, read.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return format!("read: {e}"),
                Err(_) => return "idle".to_string(),
            }
            let n = u16::from_be_bytes(len) as usize;
            match tokio::time::timeout(IDLE, read.read_exact(&mut buf[..n])).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return format!("read: {e}"),
                Err(_) => return "stalled mid-packet".to_string(),
            }
            if inbound.send(Inbound::Packet(addr, buf[..n].to_vec())).await.is_err() {
                return "node stopped".into();
            }
        }
    };
    let writer = async {
        let mut w = BufWriter::with_capacity(64 * 1024, write);
        while let Some(p) = out.recv().await {
            let mut next = Some(p);
            // Write what is queued, then flush once.
            while let Some(p) = next {
                if p.len() > super::MAX_PACKET {
                    next = out.try_recv().ok();
                    continue;
                }
                if w.write_all(&(p.len() as u16).to_be_bytes()).await.is_err() || w.write_all(&p).await.is_err() {
                    return "write failed".to_string();
                }
                next = out.try_recv().ok();
            }
            if w.flush().await.is_err() {
                return "write failed".to_string();
            }
        }
        "closed".to_string()
    };
    let why = tokio::select! {
        w = reader => w,
        w = writer => w,
    };
    // The queue closes first, so the pool sees this connection gone when `Closed` arrives.
    drop(out);
    tracing::debug!(%addr, why, "tcp: connection closed");
    let _ = inbound.send(Inbound::Closed(addr, why)).await;
}
