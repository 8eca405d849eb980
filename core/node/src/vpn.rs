//! The VPN on a Linux host, around the node's packet ports: a gateway's TUN uplink with NAT,
//! and a client's TUN with its routes (`skyroute vpn up`). Platforms without a TUN of ours
//! (Android's VpnService, iOS's utun, firmware) use [`crate::tun::fd_port`] or a
//! [`PacketPort`] directly with [`NodeHandle::tunnel_up`].

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use skyroute_proto::PublicKey;
use tokio::task::JoinHandle;

use crate::config;
use crate::control::VpnReport;
use crate::driver::{NodeHandle, PacketPort};
use crate::netconf::{self, Dns, KillSwitch, Nat, Routes, Routes6};
use crate::tun;

/// Packets queued between a TUN and the node.
const PORT_QUEUE: usize = 4096;
/// How long `vpn up` waits for the gateway's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The default TUN device of a client.
pub const DEFAULT_CLIENT_TUN: &str = "skyvpn0";

/// Why the VPN on this host could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VpnError {
    /// The TUN device could not be opened (root or CAP_NET_ADMIN, or the `tun` feature).
    #[error("TUN {device}: {reason} (needs root or CAP_NET_ADMIN)")]
    Tun {
        /// The device name.
        device: String,
        /// The system's error.
        reason: String,
    },
    /// NAT or routes could not be set up (`nft`, `ip`).
    #[error("{what}: {reason}")]
    HostConfig {
        /// "gateway NAT" or "routes".
        what: &'static str,
        /// The tool's error.
        reason: String,
    },
    /// The gateway did not answer within the time `vpn up` waits.
    #[error("the gateway did not answer in time")]
    Timeout,
    /// The node refused or failed the tunnel.
    #[error(transparent)]
    Node(#[from] crate::driver::NodeError),
    /// A bad device name.
    #[error(transparent)]
    Name(#[from] config::IfNameError),
    /// A bad `--prefix`.
    #[error(transparent)]
    Prefix(#[from] netconf::PrefixError),
}

/// A gateway's internet side: the TUN its clients' packets leave through, and the NAT.
pub struct GatewayUplink {
    pump: JoinHandle<std::io::Result<()>>,
    /// Dropped after the TUN is gone.
    _nat: Option<Nat>,
}

impl GatewayUplink {
    /// Opens the gateway's TUN (the pool's first address), pumps it to the node's `uplink`
    /// port, and sets up NAT out of the configured uplink.
    pub fn start(cfg: &config::Gateway, key: &PublicKey, uplink: PacketPort) -> Result<GatewayUplink, VpnError> {
        let s = &cfg.service_for(key);
        let address = Ipv4Addr::from(u32::from(s.pool) + 1);
        let address6 = s.address6().zip(s.pool6.map(|p| p.1));
        let dev = tun::open(&cfg.tun, address, s.prefix_len, address6, s.mtu)
            .map_err(|e| VpnError::Tun { device: cfg.tun.clone(), reason: e.to_string() })?;
        let nat = if cfg.nat {
            Some(
                Nat::setup(&cfg.tun, (s.pool, s.prefix_len), s.pool6, cfg.uplink.as_deref(), cfg.reach_host)
                    .map_err(|e| VpnError::HostConfig { what: "gateway NAT", reason: e.to_string() })?,
            )
        } else {
            None
        };
        tracing::info!(tun = %cfg.tun, %address, ?address6, uplink = ?cfg.uplink, nat = cfg.nat, "gateway: uplink up");
        Ok(GatewayUplink { pump: tokio::spawn(tun::pump(dev, uplink)), _nat: nat })
    }
}

impl Drop for GatewayUplink {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// What `vpn up` asks for.
#[derive(Debug, Clone)]
pub struct TunnelRequest {
    /// The gateway's key.
    pub gateway: PublicKey,
    /// Disjoint routes for the tunnel's session.
    pub routes: Option<usize>,
    /// IPv4 prefixes into the tunnel; with `prefixes6`, both empty: everything (full tunnel).
    pub prefixes: Vec<(Ipv4Addr, u8)>,
    /// IPv6 prefixes into the tunnel (a split tunnel's IPv6 networks).
    pub prefixes6: Vec<(Ipv6Addr, u8)>,
    /// Seal the host while the tunnel is up or reconnecting (see [`KillSwitch`]).
    pub kill_switch: bool,
    /// Where the host's DNS configuration is kept while the tunnel's is in place (so a crash
    /// can be undone); None: the tunnel's DNS servers are not installed.
    pub state_dir: Option<std::path::PathBuf>,
    /// The TUN device to create.
    pub tun: String,
}

/// A client's tunnel on this host: the TUN, its routes and the pump between it and the node.
/// Dropping it removes the routes and the device (the node's tunnel ends when the port
/// closes).
pub struct ClientTunnel {
    pump: JoinHandle<std::io::Result<()>>,
    routes: Option<Routes>,
    /// A full tunnel captures all IPv6 too (none leaves outside it).
    routes6: Option<Routes6>,
    /// The tunnel's DNS servers, installed for the host (restored on drop).
    dns: Option<Dns>,
    /// The DNS servers the gateway offered.
    dns_servers: Vec<String>,
    /// Dropped last, after the routes and the device.
    kill_switch: Option<KillSwitch>,
    tun: String,
}

impl ClientTunnel {
    /// Starts the node's tunnel to the gateway, then the TUN with the address and MTU it
    /// gets, then the routes.
    pub async fn start(node: &NodeHandle, req: &TunnelRequest) -> Result<ClientTunnel, VpnError> {
        config::check_ifname(&req.tun)?;
        // The kill switch goes on first (nothing leaks while the tunnel comes up), replacing
        // one a crashed run left; without it, a stale one is removed.
        let kill_switch = if req.kill_switch {
            Some(
                KillSwitch::setup(&req.tun)
                    .map_err(|e| VpnError::HostConfig { what: "kill switch", reason: e.to_string() })?,
            )
        } else {
            KillSwitch::clear();
            None
        };
        let (outer, inner) = PacketPort::pair(PORT_QUEUE);
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, node.tunnel_up(req.gateway, req.routes, inner))
            .await
            .map_err(|_| VpnError::Timeout)??;
        let up = async {
            let address6 = answer.v6.map(|v6| (v6.address, v6.prefix_len));
            let dev = tun::open(&req.tun, answer.address, answer.prefix_len, address6, tun_mtu(&answer))
                .map_err(|e| VpnError::Tun { device: req.tun.clone(), reason: e.to_string() })?;
            let pump = tokio::spawn(tun::pump(dev, outer));
            let full = req.prefixes.is_empty() && req.prefixes6.is_empty();
            let routes = Routes::setup(&req.tun, &req.prefixes, full).and_then(|r| {
                let r6 = if full || !req.prefixes6.is_empty() {
                    Some(Routes6::setup(&req.tun, &req.prefixes6, full)?)
                } else {
                    None
                };
                Ok((r, r6))
            });
            let routes = routes.and_then(|(r, r6)| {
                let dns = match &req.state_dir {
                    Some(dir) if !answer.dns.is_empty() => Some(Dns::setup(&req.tun, &answer.dns, dir)?),
                    _ => None,
                };
                Ok((r, r6, dns))
            });
            match routes {
                Ok((routes, routes6, dns)) => Ok(ClientTunnel {
                    pump,
                    routes: Some(routes),
                    routes6,
                    dns,
                    dns_servers: answer.dns.iter().map(|d| d.to_string()).collect(),
                    kill_switch,
                    tun: req.tun.clone(),
                }),
                Err(e) => {
                    pump.abort();
                    Err(VpnError::HostConfig { what: "routes and DNS", reason: e.to_string() })
                }
            }
        };
        match up.await {
            Ok(t) => {
                tracing::info!(tun = %req.tun, address = %answer.address, "tunnel: up");
                Ok(t)
            }
            Err(e) => {
                let _ = node.tunnel_down().await;
                Err(e)
            }
        }
    }

    /// Takes the tunnel down: routes first (so nothing more is routed into it), then the
    /// node's side and the device.
    pub async fn stop(mut self, node: &NodeHandle) {
        drop(self.dns.take());
        drop(self.routes.take());
        drop(self.routes6.take());
        self.pump.abort();
        let _ = node.tunnel_down().await;
        drop(self.kill_switch.take());
        tracing::info!(tun = %self.tun, "tunnel: down");
    }

    /// This tunnel's part of `vpn status`.
    pub fn report(&self, tunnel: Option<crate::control::TunnelStatus>) -> VpnReport {
        let mut routes: Vec<String> = match &self.routes {
            Some(r) if r.full() => vec!["0.0.0.0/0".into()],
            Some(r) => r.prefixes.iter().map(|(a, l)| format!("{a}/{l}")).collect(),
            None => Vec::new(),
        };
        if let Some(r6) = &self.routes6 {
            routes.extend(r6.prefixes.iter().map(|(a, l)| format!("{a}/{l}")));
        }
        VpnReport {
            interface: self.tun.clone(),
            routes,
            kill_switch: self.kill_switch.is_some(),
            dns: self.dns_servers.clone(),
            tunnel,
        }
    }
}

impl Drop for ClientTunnel {
    /// Dropped without `stop` (the daemon failing): routes go (their own drop), the TUN with
    /// the pump.
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// The MTU of a client's TUN: the tunnel's, but with IPv6 never below IPv6's minimum (1280;
/// the kernel refuses an IPv6 address on a smaller link). IPv4 packets between the tunnel MTU
/// and that are fragmented or answered with "fragmentation needed" by the client, IPv6 ones
/// ride the bulk stream.
pub fn tun_mtu(a: &skyroute_proto::vpn::Assignment) -> u16 {
    if a.v6.is_some() {
        a.mtu.max(skyroute_proto::vpn::ip6::MIN_MTU)
    } else {
        a.mtu
    }
}

/// Parses `--prefix` values: IPv4 (`a.b.c.d/len`) and IPv6 (`x:x::x/len`) networks apart.
pub fn prefixes(list: &[String]) -> Result<(Vec<(Ipv4Addr, u8)>, Vec<(Ipv6Addr, u8)>), netconf::PrefixError> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for p in list {
        if p.contains(':') {
            v6.push(netconf::parse_prefix6(p)?);
        } else {
            v4.push(netconf::parse_prefix(p)?);
        }
    }
    Ok((v4, v6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_split_into_ipv4_and_ipv6_networks() {
        let list: Vec<String> = ["10.1.0.0/16", "fd00:205::/64", "192.168.1.7/32"].map(String::from).to_vec();
        let (v4, v6) = prefixes(&list).expect("valid prefixes");
        assert_eq!(v4, vec![(Ipv4Addr::new(10, 1, 0, 0), 16), (Ipv4Addr::new(192, 168, 1, 7), 32)]);
        assert_eq!(v6, vec![("fd00:205::".parse().expect("an address"), 64)]);
        assert!(prefixes(&["fd00::/129".to_string()]).is_err());
        assert!(prefixes(&["10.0.0.0/33".to_string()]).is_err());
        assert_eq!(prefixes(&[]).expect("empty"), (Vec::new(), Vec::new()));
    }
}
