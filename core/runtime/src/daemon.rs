//! `skyroute node`: a node on real sockets with its identity in a data directory, static peers
//! from the configuration, and the control socket. Stops cleanly on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rand_core::OsRng;
use skyroute_proto::SecretKey;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::config::{Config, DEFAULT_PORT};
use crate::control::{self, Reply, Request};
use crate::keyfile;
use crate::udp::{NodeHandle, UdpNode};

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

async fn bind(listen: Option<SocketAddr>, key: SecretKey, config: &Config) -> std::io::Result<UdpNode> {
    if let Some(addr) = listen {
        return UdpNode::spawn(key, config.node.clone(), addr).await;
    }
    let mut last = None;
    for port in DEFAULT_PORT..DEFAULT_PORT + 100 {
        match UdpNode::spawn(key.clone(), config.node.clone(), SocketAddr::from(([0, 0, 0, 0], port))).await {
            Ok(n) => {
                if port != DEFAULT_PORT {
                    eprintln!("skyroute node: udp port {DEFAULT_PORT} is taken, using {port}");
                }
                return Ok(n);
            }
            Err(e) => last = Some(e),
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
    let mut node = match bind(config.listen, key, &config).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: listen: {e}");
            return 1;
        }
    };
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
    eprintln!(
        "skyroute node: public key {} address {} listening on udp {} control {}",
        node.public_key,
        node.public_key.address(),
        node.local_addr,
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
                    let handle = node.handle();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(60), handle_client(handle, stream)).await;
                    });
                }
            }
        }
    }
    let _ = std::fs::remove_file(&sock);
    eprintln!("skyroute node: stopped");
    match node.stop().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

async fn handle_client(node: NodeHandle, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_REQUEST_BYTES as u64)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Status) => match node.status().await {
                Ok(s) => Reply { ok: true, status: Some(s), error: None },
                Err(e) => Reply { ok: false, status: None, error: Some(e.to_string()) },
            },
            Err(e) => Reply { ok: false, status: None, error: Some(format!("bad request: {e}")) },
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into());
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// `skyroute status`: asks a running node over its control socket.
pub fn status(data_dir: &Path) -> Result<control::Status, String> {
    use std::io::{BufRead, Write};
    let sock = control::socket_path(data_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&sock)
        .map_err(|e| format!("no node running in {} ({e})", data_dir.display()))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).map_err(|e| e.to_string())?;
    stream.write_all(b"{\"cmd\":\"status\"}\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).map_err(|e| e.to_string())?;
    let reply: Reply = serde_json::from_str(&line).map_err(|e| format!("bad reply: {e}"))?;
    match (reply.ok, reply.status, reply.error) {
        (true, Some(s), _) => Ok(s),
        (_, _, e) => Err(e.unwrap_or_else(|| "no status".into())),
    }
}
