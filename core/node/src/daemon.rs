//! `skyroute node`: a node on real sockets with its identity in a data directory, static peers
//! from the configuration, and the control socket. Stops cleanly on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand_core::OsRng;
use skyroute_proto::SecretKey;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::config::{Bind, Config, DEFAULT_PORT, DEFAULT_QUIC_PORT};
use crate::control::{self, Reply, Request};
use crate::driver::{NodeError, NodeHandle, Options, RunningNode};
use crate::keyfile;
use crate::service::transfer::Source;
use crate::vpn::{ClientTunnel, GatewayUplink, TunnelRequest};

/// The VPN client of this daemon, if one is up (one at a time).
type VpnSlot = std::sync::Arc<VpnState>;

/// The daemon's VPN client: the tunnel, and the data directory where it keeps what it must
/// restore after a crash (the host's DNS configuration).
struct VpnState {
    dir: PathBuf,
    tunnel: tokio::sync::Mutex<Option<ClientTunnel>>,
}

/// Requests longer than this are refused (the control API's messages are small).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Loads the identity from `<data dir>/identity.key`, creating it on first start.
pub fn identity(data_dir: &Path) -> Result<SecretKey, keyfile::KeyFileError> {
    let path = data_dir.join("identity.key");
    if path.exists() {
        return keyfile::read(&path);
    }
    let key = SecretKey::generate(&mut OsRng);
    keyfile::write(&path, &key, false)?;
    Ok(key)
}

/// The log filter: `RUST_LOG` if set and valid, else `level` (the config's), else info. The
/// syntax is `level` or `target=level,...` (tracing-subscriber's `Targets`: no regular
/// expressions, so the library carries no regex engine).
pub fn log_filter(level: Option<&str>) -> tracing_subscriber::filter::Targets {
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| f.parse().ok())
        .or_else(|| level.and_then(|l| l.parse().ok()))
        .unwrap_or_else(|| tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO))
}

/// Sets up `tracing` output on stderr with [`log_filter`] (feature `log`; without it, a
/// no-op: the embedding application installs its own subscriber).
pub fn init_logging(level: Option<&str>) {
    #[cfg(feature = "log")]
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let _ = tracing_subscriber::registry().with(log_filter(level)).with(fmt).try_init();
    }
    #[cfg(not(feature = "log"))]
    let _ = level;
}

/// Starts the node; a transport left at its default takes the default port or the next free
/// one (logged); QUIC left at its default is off when the library is built without `quic`. (The daemon's and the platform bindings' way to start a node from a
/// configuration.)
pub async fn start(key: SecretKey, config: &Config, data_dir: &Path) -> std::io::Result<RunningNode> {
    let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
    let pick = |b: Bind, port: u16, offset: u16| match b {
        Bind::Off => None,
        Bind::At(a) => Some(a),
        Bind::Default => Some(any(port + offset)),
    };
    let mut last = None;
    for offset in 0..100u16 {
        let o = Options {
            identity: key.clone(),
            node: config.node.clone(),
            session: config.session.clone(),
            udp: pick(config.udp, DEFAULT_PORT, offset),
            tcp: pick(config.tcp, DEFAULT_PORT, offset),
            // A default QUIC listener means "if QUIC is built"; an explicit address without the
            // `quic` feature fails at start with an error that names it.
            quic: match config.quic {
                Bind::Default if !cfg!(feature = "quic") => None,
                b => pick(b, DEFAULT_QUIC_PORT, offset * 2),
            },
            data_dir: Some(data_dir.to_path_buf()),
            topology: config.topology.clone(),
            gateway: config.gateway.as_ref().map(|g| g.service_for(&key.public_key())),
            discovery: config.discovery,
            dht: config.dht.clone(),
            escrow: config.escrow.clone(),
            interfaces: config.interfaces.clone(),
        };
        match RunningNode::spawn(o).await {
            Ok(n) => {
                if offset > 0 {
                    tracing::warn!("default ports taken, using the next free ones: {}", n.listen.list().join(", "));
                }
                return Ok(n);
            }
            // Only a default port may move; an explicit one that is taken is an error.
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && [config.udp, config.tcp, config.quic].contains(&Bind::Default) =>
            {
                last = Some(e)
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

/// Runs the daemon until a signal; returns the exit code.
pub fn run(data_dir: PathBuf, config: Option<PathBuf>) -> i32 {
    let config = match config.map(|p| Config::load(&p)).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: config: {e}");
            return 2;
        }
    };
    init_logging(config.log.as_deref());
    if let Err(e) = std::fs::create_dir_all(&data_dir) {
        eprintln!("error: {}: {e}", data_dir.display());
        return 1;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700));
    }
    let key = match identity(&data_dir) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: identity: {e}");
            return 1;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return 1;
        }
    };
    rt.block_on(serve(data_dir, config, key))
}

async fn serve(data_dir: PathBuf, config: Config, key: SecretKey) -> i32 {
    let public_key = key.public_key();
    let mut node = match start(key, &config, &data_dir).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: listen: {e}");
            return 1;
        }
    };
    // A gateway's uplink (TUN and NAT) lives as long as the daemon.
    let _uplink = match (&config.gateway, node.uplink.take()) {
        (Some(g), Some(port)) => match GatewayUplink::start(g, &public_key, port) {
            Ok(u) => Some(u),
            Err(e) => {
                eprintln!("error: {e}");
                let _ = node.stop().await;
                return 1;
            }
        },
        _ => None,
    };
    let vpn = VpnSlot::new(VpnState { dir: data_dir.clone(), tunnel: Default::default() });
    for p in &config.peers {
        let _ = node.connect(p.key, p.addr);
    }
    let sock = control::socket_path(&data_dir);
    let _ = std::fs::remove_file(&sock);
    let listener = match UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: control socket {}: {e}", sock.display());
            return 1;
        }
    };
    tracing::info!(
        "public key {} address {} listening on {} control {}",
        node.public_key,
        node.public_key.address(),
        node.listen.list().join(", "),
        sock.display()
    );
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: signals: {e}");
            return 1;
        }
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            // Events are for applications on the node; the daemon itself only keeps them moving.
            _ = node.events.recv() => {}
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    // Each client on its own task: a stalled one holds up nothing else.
                    tokio::spawn(handle_client(node.handle(), vpn.clone(), stream));
                }
            }
        }
    }
    let _ = std::fs::remove_file(&sock);
    if let Some(t) = vpn.tunnel.lock().await.take() {
        t.stop(&node).await;
    }
    tracing::info!("stopping: closing sessions and links");
    match node.stop().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// How long one request may take (a transfer of a large file can take a while).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// A client that sends nothing for this long is dropped (unless it serves a channel).
const IDLE_CLIENT: Duration = Duration::from_secs(60);

async fn handle_client(node: NodeHandle, vpn: VpnSlot, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut service: Option<tokio::sync::mpsc::Receiver<control::ServiceMessage>> = None;
    loop {
        // A registered service may stay quiet as long as it likes; other clients may not.
        let idle = if service.is_some() { REQUEST_TIMEOUT } else { IDLE_CLIENT };
        let line = tokio::select! {
            l = tokio::time::timeout(idle, next_line(&mut lines)) => match l {
                Ok(Some(l)) => l,
                _ => return,
            },
            Some(m) = recv_service(&mut service) => {
                let text = serde_json::to_string(&m).unwrap_or_default() + "\n";
                if write.write_all(text.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let reply = match line {
            Err(e) => Reply::error(e),
            Ok(line) => match serde_json::from_str::<Request>(&line) {
                Ok(Request::Register { channel }) => match node.register(channel).await {
                    Ok(rx) => {
                        service = Some(rx);
                        Reply::ok()
                    }
                    Err(e) => Reply::error(e),
                },
                Ok(req) => tokio::time::timeout(REQUEST_TIMEOUT, answer(&node, &vpn, req))
                    .await
                    .unwrap_or_else(|_| Reply::error("timed out")),
                Err(e) => Reply::error(format!("bad request: {e}")),
            },
        };
        let text = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into()) + "\n";
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The next request line; an over-long one is an error (and the rest of it is skipped).
async fn next_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
) -> Option<Result<String, String>> {
    match lines.next_line().await {
        Ok(Some(l)) if l.len() > MAX_REQUEST_BYTES => {
            Some(Err(format!("request longer than {MAX_REQUEST_BYTES} bytes")))
        }
        Ok(Some(l)) => Some(Ok(l)),
        Ok(None) => None,
        Err(e) => Some(Err(format!("bad request: {e}"))),
    }
}

async fn recv_service(
    s: &mut Option<tokio::sync::mpsc::Receiver<control::ServiceMessage>>,
) -> Option<control::ServiceMessage> {
    match s {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn answer(node: &NodeHandle, vpn: &VpnSlot, req: Request) -> Reply {
    match answer_inner(node, vpn, req).await {
        Ok(r) => r,
        Err(e) => Reply::error(e),
    }
}

async fn answer_inner(node: &NodeHandle, vpn: &VpnSlot, req: Request) -> Result<Reply, ControlError> {
    let resolve = |p: String| async move { node.resolve(&p).await };
    Ok(match req {
        Request::Status => Reply { status: Some(node.status().await?), ..Reply::ok() },
        Request::Connect { key, addr } => {
            let key = skyroute_proto::PublicKey::from_hex(&key)
                .map_err(|_| ControlError::BadRequest("key: not a public key".into()))?;
            let addr = addr.parse().map_err(|e| ControlError::BadRequest(format!("addr: {e}")))?;
            node.connect(key, addr)?;
            Reply::ok()
        }
        Request::Ping { peer, count, interval_ms } => {
            let peer = resolve(peer).await?;
            let interval = Duration::from_millis(interval_ms.clamp(1, 60_000));
            let r = node.ping(peer, count, interval).await?;
            Reply { ping: Some(r), ..Reply::ok() }
        }
        Request::Echo { peer, data } => {
            let peer = resolve(peer).await?;
            let data = hex::decode(data).map_err(|e| ControlError::BadRequest(format!("data: not hex: {e}")))?;
            let back = node.echo(peer, data).await?;
            Reply { data: Some(hex::encode(back)), ..Reply::ok() }
        }
        Request::Send { peer, file, bytes } => {
            let peer = resolve(peer).await?;
            let source = match (file, bytes) {
                (Some(f), None) => Source::File(f.into()),
                (None, Some(n)) => Source::Bytes(n),
                _ => return Err(ControlError::BadRequest("give either file or bytes".into())),
            };
            let r = node.transfer(peer, source).await?;
            Reply { ok: r.ok, error: r.error.clone(), transfer: Some(r), ..Default::default() }
        }
        Request::Received => Reply { received: Some(node.received().await?), ..Reply::ok() },
        Request::Message { peer, channel, data } => {
            let peer = resolve(peer).await?;
            let data = hex::decode(data).map_err(|e| ControlError::BadRequest(format!("data: not hex: {e}")))?;
            node.message(peer, channel, data).await?;
            Reply::ok()
        }
        Request::Lookup { target, connect } => {
            let target = target.parse::<crate::driver::LookupTarget>()?;
            let r = node.lookup(target, connect).await?;
            Reply { lookup: Some(r), ..Reply::ok() }
        }
        Request::Register { .. } => {
            return Err(ControlError::BadRequest("register is answered by the connection handler".into()))
        }
        Request::VpnUp { gateway, routes, prefixes, tun, kill_switch } => {
            let mut slot = vpn.tunnel.lock().await;
            if slot.is_some() {
                return Err(NodeError::TunnelExists.into());
            }
            if routes.is_some_and(|r| !(1..=8).contains(&r)) {
                return Err(ControlError::BadRequest("routes: must be between 1 and 8".into()));
            }
            let (prefixes, prefixes6) = crate::vpn::prefixes(&prefixes).map_err(crate::vpn::VpnError::from)?;
            let req = TunnelRequest {
                gateway: if gateway == "nearest" { node.nearest_gateway().await? } else { resolve(gateway).await? },
                routes,
                prefixes,
                prefixes6,
                tun: tun.unwrap_or_else(|| crate::vpn::DEFAULT_CLIENT_TUN.into()),
                kill_switch,
                state_dir: Some(vpn.dir.clone()),
            };
            let t = ClientTunnel::start(node, &req).await?;
            let report = t.report(node.status().await?.tunnel);
            *slot = Some(t);
            Reply { vpn: Some(report), ..Reply::ok() }
        }
        Request::VpnDown => match vpn.tunnel.lock().await.take() {
            Some(t) => {
                t.stop(node).await;
                Reply::ok()
            }
            None => {
                // A kill switch a crashed run left would keep the host sealed, and its DNS
                // would point into a tunnel that is gone: `vpn down` undoes both even with no
                // tunnel up.
                crate::netconf::KillSwitch::clear();
                crate::netconf::Dns::restore_stale(&vpn.dir);
                return Err(ControlError::NoTunnel);
            }
        },
        Request::VpnStatus => match vpn.tunnel.lock().await.as_ref() {
            Some(t) => Reply { vpn: Some(t.report(node.status().await?.tunnel)), ..Reply::ok() },
            None => return Err(ControlError::NoTunnel),
        },
    })
}

/// One request to a running node over its control socket (what the CLI does).
pub fn request(data_dir: &Path, req: &Request, timeout: Duration) -> Result<Reply, ControlError> {
    use std::io::{BufRead, Write};
    let sock = control::socket_path(data_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&sock)
        .map_err(|e| ControlError::NotRunning { dir: data_dir.display().to_string(), reason: e.to_string() })?;
    let io = |e: std::io::Error| ControlError::Io(e.to_string());
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let line = serde_json::to_string(req).map_err(|e| ControlError::BadRequest(e.to_string()))? + "\n";
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).map_err(io)?;
    serde_json::from_str(&line).map_err(|e| ControlError::BadReply(e.to_string()))
}

/// `skyroute status`: asks a running node over its control socket.
pub fn status(data_dir: &Path) -> Result<control::Status, ControlError> {
    let reply = request(data_dir, &Request::Status, Duration::from_secs(5))?;
    match (reply.ok, reply.status, reply.error) {
        (true, Some(s), _) => Ok(s),
        (_, _, e) => Err(ControlError::Refused(e.unwrap_or_else(|| "no status".into()))),
    }
}

/// Why a control request failed: on the node's side, the text of a reply's `error`; on the
/// client's ([`request`], [`status`]), why there was no good reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The node refused or failed the request.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The VPN client could not start.
    #[error(transparent)]
    Vpn(#[from] crate::vpn::VpnError),
    /// A field of the request is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// `vpn down` or `vpn status` with no tunnel up.
    #[error("no tunnel is up")]
    NoTunnel,
    /// No node answers on the data directory's control socket.
    #[error("no node running in {dir} ({reason})")]
    NotRunning {
        /// The data directory.
        dir: String,
        /// The socket error.
        reason: String,
    },
    /// Reading or writing the control socket failed.
    #[error("control socket: {0}")]
    Io(String),
    /// The node's answer does not parse.
    #[error("bad reply: {0}")]
    BadReply(String),
    /// The node answered with an error (its text).
    #[error("{0}")]
    Refused(String),
}
