//! QUIC (quinn): link packets ride as unreliable QUIC datagrams, one connection per peer
//! address. QUIC's own TLS is only a carrier here: the certificate is self-signed and not
//! checked, because the link handshake inside authenticates the peer by its secp256k1 key and
//! encrypts end to end between neighbours anyway. QUIC brings what UDP lacks on some networks:
//! a connection middleboxes recognise, congestion control, and path MTU discovery.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::mpsc;

use super::{Addr, Inbound, CONN_QUEUE};

const ALPN: &[u8] = b"skyroute/1";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections with nothing heard for this long close (links send keepalives well within it).
const IDLE: Duration = Duration::from_secs(30);
/// Accepted connections (and handshakes in progress) held at once.
pub const MAX_CONNS: usize = 256;

/// The QUIC transport: one endpoint that accepts and dials.
#[derive(Clone)]
pub struct Quic {
    endpoint: quinn::Endpoint,
    /// The local interface the endpoint's socket is bound to (dialling only), if any.
    on: Option<skyroute_proto::Interface>,
    inbound: mpsc::Sender<Inbound>,
    /// Packets larger than the connection's datagram limit (dropped).
    pub too_large: Arc<AtomicU64>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// UDP payload QUIC packets use: fits an Ethernet path (1472), and with zero-length connection
/// ids (21 bytes of QUIC header and tag, 9 of datagram frame) leaves exactly the default link
/// MTU (1440) for a link packet. Pinned, not discovered: a link packet must always fit, and
/// black-hole detection under congestion would otherwise shrink it below that for a minute.
pub const QUIC_MTU: u16 = 1470;

/// Zero-length connection ids: connections are told apart by address (links roam themselves,
/// QUIC migration is not needed), and every byte goes to the link packet.
struct NoConnectionIds;

impl quinn::ConnectionIdGenerator for NoConnectionIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&[])
    }
    fn cid_len(&self) -> usize {
        0
    }
    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.min_mtu(QUIC_MTU);
    t.initial_mtu(QUIC_MTU);
    t.mtu_discovery_config(None);
    // The link layer recovers its own losses; a loss-based controller (Cubic) would read the
    // random loss of a radio link as congestion and collapse. BBR paces by measured bandwidth.
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    t.max_idle_timeout(IDLE.try_into().ok());
    t.datagram_receive_buffer_size(Some(4 << 20));
    t.datagram_send_buffer_size(1 << 20);
    // No streams are used.
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

fn server_config() -> Result<quinn::ServerConfig, String> {
    let cert = rcgen::generate_simple_self_signed(vec!["skyroute".into()]).map_err(|e| e.to_string())?;
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport_config());
    cfg.max_incoming(MAX_CONNS);
    Ok(cfg)
}

fn client_config() -> Result<quinn::ClientConfig, String> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

impl Quic {
    /// Binds `addr` and starts accepting.
    pub fn start(addr: SocketAddr, inbound: mpsc::Sender<Inbound>) -> std::io::Result<Quic> {
        let server = server_config().map_err(std::io::Error::other)?;
        let mut config = quinn::EndpointConfig::default();
        config.cid_generator(|| Box::new(NoConnectionIds));
        let socket = std::net::UdpSocket::bind(addr)?;
        super::mark(&socket);
        let mut endpoint = quinn::Endpoint::new(config, Some(server), socket, Arc::new(quinn::TokioRuntime))?;
        endpoint.set_default_client_config(client_config().map_err(std::io::Error::other)?);
        let q = Quic { endpoint, on: None, inbound, too_large: Arc::new(AtomicU64::new(0)) };
        let acceptor = q.clone();
        tokio::spawn(async move {
            while let Some(incoming) = acceptor.endpoint.accept().await {
                let (tx, too_large) = (acceptor.inbound.clone(), acceptor.too_large.clone());
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                        Ok(Ok(conn)) => {
                            let (out_tx, out_rx) = mpsc::channel(CONN_QUEUE);
                            if tx.send(Inbound::Connected(Addr::Quic(remote), out_tx)).await.is_ok() {
                                run(conn, Addr::Quic(remote), out_rx, tx, too_large).await;
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, "quic: handshake failed: {e}"),
                        Err(_) => tracing::debug!(%remote, "quic: handshake timed out"),
                    }
                });
            }
        });
        Ok(q)
    }

    /// A dialling-only endpoint whose socket is bound to `net` (its connections' packets come
    /// from `Addr::QuicOn(on, ..)`).
    pub fn bound(
        net: &super::iface::Network,
        on: skyroute_proto::Interface,
        inbound: mpsc::Sender<Inbound>,
    ) -> std::io::Result<Quic> {
        let mut config = quinn::EndpointConfig::default();
        config.cid_generator(|| Box::new(NoConnectionIds));
        let socket = super::iface::bind_udp(net).map_err(std::io::Error::other)?;
        let mut endpoint = quinn::Endpoint::new(config, None, socket, Arc::new(quinn::TokioRuntime))?;
        endpoint.set_default_client_config(client_config().map_err(std::io::Error::other)?);
        Ok(Quic { endpoint, on: Some(on), inbound, too_large: Arc::new(AtomicU64::new(0)) })
    }

    /// The endpoint's local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// A queue for packets to `addr`; the connection is opened in the background.
    pub fn dial(&self, addr: SocketAddr) -> mpsc::Sender<Bytes> {
        let (out_tx, out_rx) = mpsc::channel(CONN_QUEUE);
        let (endpoint, tx, too_large) = (self.endpoint.clone(), self.inbound.clone(), self.too_large.clone());
        let a = match self.on {
            Some(i) => Addr::QuicOn(i, addr),
            None => Addr::Quic(addr),
        };
        tokio::spawn(async move {
            let conn = match endpoint.connect(addr, "skyroute") {
                Ok(c) => tokio::time::timeout(HANDSHAKE_TIMEOUT, c).await,
                Err(e) => {
                    let _ = tx.send(Inbound::Closed(a, format!("connect: {e}"))).await;
                    return;
                }
            };
            match conn {
                Ok(Ok(conn)) => run(conn, a, out_rx, tx, too_large).await,
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

    /// Closes every connection (at shutdown).
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
    }
}

async fn run(
    conn: quinn::Connection,
    addr: Addr,
    mut out: mpsc::Receiver<Bytes>,
    inbound: mpsc::Sender<Inbound>,
    too_large: Arc<AtomicU64>,
) {
    let reader = async {
        loop {
            match conn.read_datagram().await {
                Ok(d) => {
                    if inbound.send(Inbound::Packet(addr, d.to_vec())).await.is_err() {
                        return "node stopped".to_string();
                    }
                }
                Err(e) => return e.to_string(),
            }
        }
    };
    let writer = async {
        while let Some(p) = out.recv().await {
            // Waits while QUIC's congestion control holds datagrams back: the queue in front
            // fills and the driver drops there, newest first, so old packets are not
            // discarded after the link layer counted them sent.
            if let Err(e) = conn.send_datagram_wait(p).await {
                if matches!(e, quinn::SendDatagramError::ConnectionLost(_)) {
                    return e.to_string();
                }
                // Too large for this path: a lost packet, counted.
                too_large.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%addr, "quic: datagram not sent: {e}");
            }
        }
        "closed".to_string()
    };
    let why = tokio::select! {
        w = reader => w,
        w = writer => w,
    };
    drop(out);
    conn.close(0u32.into(), b"");
    tracing::debug!(%addr, why, "quic: connection closed");
    let _ = inbound.send(Inbound::Closed(addr, why)).await;
}

/// Accepts any server certificate (the link handshake authenticates the peer), but still
/// checks that the handshake is signed by the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
