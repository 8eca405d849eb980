//! The local control API: one JSON request per line on a Unix socket in the data directory,
//! one JSON reply per line. The CLI (`skyroute status`) speaks it; so can any local service.
//!
//! Requests: `{"cmd":"status"}`. Replies: `{"ok":true,"status":{...}}` or
//! `{"ok":false,"error":"..."}` (also for malformed requests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The control socket's path in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A snapshot of a running node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub public_key: String,
    pub address: String,
    pub listen: Vec<String>,
    pub links: Vec<LinkStatus>,
    /// Route table entries (as source, relay or last hop).
    pub routes: usize,
    /// Bytes held in route buffers now, and reserved for them.
    pub buffered_bytes: usize,
    pub reserved_bytes: usize,
    /// Refused packets not tied to a link, by reason.
    pub rejected: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkStatus {
    pub peer: String,
    pub transport: String,
    pub addr: String,
    pub state: String,
    pub rtt_ms: Option<f64>,
    pub tx_packets: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub rekeys: u64,
    pub in_flight: usize,
    /// Refused packets by reason.
    pub rejected: BTreeMap<String, u64>,
}

impl Status {
    /// The human-readable form of `skyroute status`.
    pub fn table(&self) -> String {
        let mut out = format!(
            "public key  {}\naddress     {}\nlisten      {}\nroutes      {}\nbuffered    {} of {} bytes reserved\n",
            self.public_key,
            self.address,
            self.listen.join(", "),
            self.routes,
            self.buffered_bytes,
            self.reserved_bytes
        );
        out += &format!(
            "\n{:<16} {:<9} {:<22} {:<11} {:>8} {:>10} {:>10} {:>7}  rejected\n",
            "peer", "transport", "address", "state", "rtt ms", "tx pkts", "rx pkts", "rekeys"
        );
        for l in &self.links {
            let rejected: Vec<String> = l.rejected.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out += &format!(
                "{:<16} {:<9} {:<22} {:<11} {:>8} {:>10} {:>10} {:>7}  {}\n",
                &l.peer[..16.min(l.peer.len())],
                l.transport,
                l.addr,
                l.state,
                l.rtt_ms.map_or("-".to_string(), |r| format!("{r:.2}")),
                l.tx_packets,
                l.rx_packets,
                l.rekeys,
                if rejected.is_empty() { "-".to_string() } else { rejected.join(" ") }
            );
        }
        out
    }
}
