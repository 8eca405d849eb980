//! The node's TOML configuration. Every field is optional; a bad one is reported in one line
//! that names it.
//!
//! ```toml
//! listen = "127.0.0.1:7070"      # UDP; default: 0.0.0.0:7070, or the next free port
//! [[peers]]                      # static neighbours, dialled and kept up
//! key = "02ab...33 bytes hex"
//! addr = "192.0.2.1:7070"
//! [forward]
//! route_buffer_bytes = 1048576
//! memory_budget_bytes = 536870912
//! max_in_flight = 256             # unacknowledged datagrams per link
//! ```

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use skyroute_proto::{NodeConfig, PublicKey};

/// The default UDP port; the daemon tries the next ones when it is taken.
pub const DEFAULT_PORT: u16 = 7070;

/// Unacknowledged datagrams per link on real sockets. The driver does not pace yet, and a
/// sender that may keep thousands in flight overruns socket buffers and then resends them all;
/// 256 full datagrams per round trip is about 37 MB/s at 10 ms.
pub const REAL_MAX_IN_FLIGHT: usize = 256;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Option<String>,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    forward: RawForward,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    key: String,
    addr: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    route_buffer_bytes: Option<usize>,
    realtime_buffer_bytes: Option<usize>,
    memory_budget_bytes: Option<usize>,
    max_in_flight: Option<usize>,
}

/// A static neighbour.
#[derive(Debug, Clone)]
pub struct Peer {
    pub key: PublicKey,
    pub addr: SocketAddr,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; `None` means the default port (or the next free one).
    pub listen: Option<SocketAddr>,
    pub peers: Vec<Peer>,
    pub node: NodeConfig,
}

/// A configuration error, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Syntax(String),
    #[error("{field}: {message}")]
    Field { field: String, message: String },
}

fn field(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field { field: field.into(), message: message.into() }
}

impl Default for Config {
    fn default() -> Self {
        // The same defaults as an empty file.
        Config::parse("").unwrap_or_else(|_| Config { listen: None, peers: Vec::new(), node: NodeConfig::default() })
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: Raw =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.message().to_string() + &span(text, e.span())))?;
        let listen = raw
            .listen
            .map(|l| l.parse::<SocketAddr>().map_err(|_| field("listen", format!("not an address and port: {l:?}"))))
            .transpose()?;
        let peers =
            raw.peers
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let key = PublicKey::from_hex(&p.key).map_err(|_| {
                        field(format!("peers[{i}].key"), "not a compressed secp256k1 public key (66 hex digits)")
                    })?;
                    let addr = p.addr.parse().map_err(|_| {
                        field(format!("peers[{i}].addr"), format!("not an address and port: {:?}", p.addr))
                    })?;
                    Ok(Peer { key, addr })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
        let mut node = NodeConfig::default();
        let f = &mut node.forward;
        f.max_in_flight = REAL_MAX_IN_FLIGHT;
        if let Some(v) = raw.forward.max_in_flight {
            if !(16..=65_536).contains(&v) {
                return Err(field("forward.max_in_flight", "must be between 16 and 65536"));
            }
            f.max_in_flight = v;
        }
        if let Some(v) = raw.forward.route_buffer_bytes {
            if !(64 * 1024..=1 << 30).contains(&v) {
                return Err(field("forward.route_buffer_bytes", "must be between 65536 and 1073741824"));
            }
            f.route_buffer_bytes = v;
        }
        if let Some(v) = raw.forward.realtime_buffer_bytes {
            if !(64 * 1024..=1 << 30).contains(&v) {
                return Err(field("forward.realtime_buffer_bytes", "must be between 65536 and 1073741824"));
            }
            f.realtime_buffer_bytes = v;
        }
        if let Some(v) = raw.forward.memory_budget_bytes {
            if v < 2 * (f.route_buffer_bytes + f.realtime_buffer_bytes) {
                return Err(field("forward.memory_budget_bytes", "must hold at least one route (both directions)"));
            }
            f.memory_budget_bytes = v;
        }
        Ok(Config { listen, peers, node })
    }
}

/// " (line L)" for a byte span in `text`.
fn span(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| format!(" (line {})", text[..s.start.min(text.len())].lines().count().max(1))).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let e = |t: &str| Config::parse(t).unwrap_err().to_string();
        assert!(e("listen = \"nope\"").starts_with("listen:"));
        assert!(e("[[peers]]\nkey = \"00\"\naddr = \"127.0.0.1:1\"").starts_with("peers[0].key:"));
        let k = "02".to_string() + &"11".repeat(32);
        let bad_addr = format!("[[peers]]\nkey = \"{k}\"\naddr = \"x\"");
        assert!(e(&bad_addr).starts_with("peers[0].addr:") || e(&bad_addr).starts_with("peers[0].key:"));
        assert!(e("[forward]\nroute_buffer_bytes = 5").starts_with("forward.route_buffer_bytes:"));
        assert!(e("colour = 3").contains("colour"), "unknown fields are named: {}", e("colour = 3"));
        assert!(e("listen = ").contains("line 1"));
        let ok = Config::parse("listen = \"127.0.0.1:0\"\n[forward]\nroute_buffer_bytes = 131072").unwrap();
        assert_eq!(ok.node.forward.route_buffer_bytes, 131072);
    }
}
