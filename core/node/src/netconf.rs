//! The host's network configuration for the VPN on Linux, through `ip` and `nft`: a gateway's
//! NAT (masquerade of the client pool out of its uplink) and a client's routes into its TUN.
//! Each piece is set up by one call and torn down when its value is dropped, so a failed or
//! stopped daemon leaves no rules behind. Everything here needs CAP_NET_ADMIN.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::transport::SOCKET_MARK;

/// Why the host could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A tool is not installed (the tool, its Debian package).
    #[error("`{0}` not found: install it (Debian: apt-get install -y {1})")]
    Missing(&'static str, &'static str),
    /// A tool ran and failed.
    #[error("`{command}` failed: {message}")]
    Failed {
        /// The command line.
        command: String,
        /// What the tool printed on stderr.
        message: String,
    },
    /// Running the tool failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A prefix that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The part after `/` is not a number.
    #[error("not a prefix length: {0:?}")]
    Length(String),
    /// The part before `/` is not an IPv4 address.
    #[error("not an IPv4 address: {0:?}")]
    Address(String),
    /// The length is over 32.
    #[error("prefix length over 32: {0:?}")]
    TooLong(String),
}

/// The package that provides each tool.
fn package(tool: &'static str) -> &'static str {
    match tool {
        "nft" => "nftables",
        "ip" => "iproute2",
        _ => tool,
    }
}

/// Runs `tool args`, feeding `stdin` if given; an error carries the tool's own message.
fn run(tool: &'static str, args: &[&str], stdin: Option<&str>) -> Result<(), NetError> {
    let mut cmd = Command::new(tool);
    cmd.args(args).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(NetError::Missing(tool, package(tool))),
        Err(e) => return Err(e.into()),
    };
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(NetError::Failed {
        command: format!("{tool} {}", args.join(" ")),
        message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// An IPv4 prefix `a.b.c.d/len` (a bare address is a /32).
pub fn parse_prefix(s: &str) -> Result<(Ipv4Addr, u8), PrefixError> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().map_err(|_| PrefixError::Length(s.into()))?),
        None => (s, 32),
    };
    let a: Ipv4Addr = a.parse().map_err(|_| PrefixError::Address(s.into()))?;
    if len > 32 {
        return Err(PrefixError::TooLong(s.into()));
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok((Ipv4Addr::from(u32::from(a) & mask), len))
}

/// An IPv6 prefix `a:b::/len` (a bare address is a /128).
pub fn parse_prefix6(s: &str) -> Result<(Ipv6Addr, u8), PrefixError> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().map_err(|_| PrefixError::Length(s.into()))?),
        None => (s, 128),
    };
    let a: Ipv6Addr = a.parse().map_err(|_| PrefixError::Address(s.into()))?;
    if len > 128 {
        return Err(PrefixError::TooLong(s.into()));
    }
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
    Ok((Ipv6Addr::from(u128::from(a) & mask), len))
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IP6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// A gateway's NAT: packets from the client pool that the kernel forwards out of the uplink
/// leave with the uplink's address (nftables masquerade), and clients cannot reach the
/// gateway host itself unless allowed. Removed on drop, with IP forwarding as it was.
pub struct Nat {
    table: String,
    forward_was: Option<String>,
    /// IPv6 forwarding as it was, when the NAT covers an IPv6 pool too.
    forward6_was: Option<String>,
    ipv6: bool,
}

impl Nat {
    /// `tun`: the gateway's TUN device; `uplink`: the interface towards the internet (`None`:
    /// any but the TUN).
    pub fn setup(
        tun: &str,
        pool: (Ipv4Addr, u8),
        pool6: Option<(Ipv6Addr, u8)>,
        uplink: Option<&str>,
        reach_host: bool,
    ) -> Result<Nat, NetError> {
        let table = format!("skyroute_{}", tun.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        let out = match uplink {
            Some(u) => format!("oifname \"{u}\""),
            None => format!("oifname != \"{tun}\""),
        };
        let host = if reach_host { String::new() } else { format!("iifname \"{tun}\" drop;") };
        run("nft", &["-f", "-"], Some(&nat_table("ip", &table, &format!("{}/{}", pool.0, pool.1), &out, &host)))?;
        let forward_was = std::fs::read_to_string(IP_FORWARD).ok();
        let mut nat = Nat { table, forward_was, forward6_was: None, ipv6: false };
        if let Some((net, len)) = pool6 {
            // NAT66 the same way: the client pool leaves with the uplink's IPv6 address.
            run("nft", &["-f", "-"], Some(&nat_table("ip6", &nat.table, &format!("{net}/{len}"), &out, &host)))?;
            nat.ipv6 = true;
            nat.forward6_was = std::fs::read_to_string(IP6_FORWARD).ok();
            std::fs::write(IP6_FORWARD, "1\n")?;
        }
        std::fs::write(IP_FORWARD, "1\n")?;
        tracing::info!(table = %nat.table, "gateway: NAT set up (nftables masquerade)");
        Ok(nat)
    }

    /// The nftables table holding the NAT rules.
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        if let Err(e) = run("nft", &["delete", "table", "ip", &self.table], None) {
            tracing::warn!("gateway: removing the NAT table: {e}");
        }
        if let Some(v) = &self.forward_was {
            let _ = std::fs::write(IP_FORWARD, v);
        }
        if self.ipv6 {
            if let Err(e) = run("nft", &["delete", "table", "ip6", &self.table], None) {
                tracing::warn!("gateway: removing the NAT66 table: {e}");
            }
            if let Some(v) = &self.forward6_was {
                let _ = std::fs::write(IP6_FORWARD, v);
            }
        }
    }
}

/// The host's resolver configuration.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Where the host's own resolv.conf is kept while the tunnel's is in place (in the data dir).
const RESOLV_SAVED: &str = "resolv.conf.saved";

/// The tunnel's DNS servers installed for the host: through systemd-resolved on the tunnel's
/// link where it manages the host's DNS (`resolvectl dns` and the `~.` routing domain, so every
/// name goes to them), else by writing /etc/resolv.conf, whose previous content is kept in the
/// data directory and written back on drop, or by the next `vpn up`/`vpn down` after a crash.
pub struct Dns {
    how: DnsHow,
}

enum DnsHow {
    Resolved(String),
    ResolvConf(PathBuf),
}

fn systemd_resolved() -> bool {
    std::fs::read_link(RESOLV_CONF).is_ok_and(|t| t.to_string_lossy().contains("systemd/resolve"))
        && Path::new("/run/systemd/resolve").exists()
}

impl Dns {
    /// Installs `servers` for the tunnel on `tun`; `state` keeps the host's configuration.
    pub fn setup(tun: &str, servers: &[IpAddr], state: &Path) -> Result<Dns, NetError> {
        Dns::restore_stale(state);
        let list: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        if systemd_resolved() {
            let mut args = vec!["dns", tun];
            args.extend(list.iter().map(|s| s.as_str()));
            run("resolvectl", &args, None)?;
            run("resolvectl", &["domain", tun, "~."], None)?;
            tracing::info!(tun, servers = ?list, "tunnel: DNS set (systemd-resolved)");
            return Ok(Dns { how: DnsHow::Resolved(tun.to_string()) });
        }
        let saved = state.join(RESOLV_SAVED);
        let current = std::fs::read(RESOLV_CONF).unwrap_or_default();
        std::fs::write(&saved, &current)?;
        let text: String = std::iter::once(format!("# written by skyroute vpn up ({tun}); restored by vpn down\n"))
            .chain(list.iter().map(|s| format!("nameserver {s}\n")))
            .collect();
        // In place, not renamed over: /etc/resolv.conf may be a mount point (network namespaces).
        std::fs::write(RESOLV_CONF, text)?;
        tracing::info!(tun, servers = ?list, "tunnel: DNS set (/etc/resolv.conf)");
        Ok(Dns { how: DnsHow::ResolvConf(saved) })
    }

    /// Writes back a resolv.conf a crashed run kept in `state` (nothing if there is none).
    pub fn restore_stale(state: &Path) {
        let saved = state.join(RESOLV_SAVED);
        if let Ok(text) = std::fs::read(&saved) {
            match std::fs::write(RESOLV_CONF, text) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&saved);
                    tracing::info!("tunnel: the host's resolv.conf restored");
                }
                Err(e) => tracing::warn!("tunnel: restoring resolv.conf: {e}"),
            }
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        match &self.how {
            DnsHow::Resolved(tun) => {
                let _ = run("resolvectl", &["revert", tun], None);
            }
            DnsHow::ResolvConf(saved) => {
                if let Some(state) = saved.parent() {
                    Dns::restore_stale(state);
                }
            }
        }
    }
}

/// The nftables table of the kill switch.
pub const KILL_SWITCH_TABLE: &str = "skyroute_killswitch";

/// The kill switch of a VPN client: while it exists nothing leaves this host but the node's
/// own underlay packets (they carry [`SOCKET_MARK`]), packets into the tunnel, loopback, and
/// the ICMPv6 neighbour and router discovery the underlay needs. It stays while the tunnel is
/// up or reconnecting, is removed on drop (`vpn down`, the daemon exiting), and outlives a
/// crash, so the host stays sealed until the next `vpn up` or `vpn down` replaces or removes
/// it ([`KillSwitch::clear`]). (DHCP clients send on packet sockets, which nftables does not
/// see, so leases keep renewing.)
pub struct KillSwitch {
    _private: (),
}

impl KillSwitch {
    /// Seals the host but for `tun` and the node's marked sockets (replacing a stale table).
    pub fn setup(tun: &str) -> Result<KillSwitch, NetError> {
        let t = KILL_SWITCH_TABLE;
        let script = format!(
            "add table inet {t}\ndelete table inet {t}\n\
             table inet {t} {{\n\
               chain output {{ type filter hook output priority filter; policy drop; \
                 oifname \"lo\" accept; meta mark {SOCKET_MARK:#x} accept; oifname \"{tun}\" accept; \
                 icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} accept; \
                 counter; }}\n\
             }}\n"
        );
        run("nft", &["-f", "-"], Some(&script))?;
        tracing::info!(tun, "tunnel: kill switch on");
        Ok(KillSwitch { _private: () })
    }

    /// Removes a kill switch, ours or one a crashed run left (no error if there is none).
    pub fn clear() {
        let script = format!("add table inet {t}\ndelete table inet {t}\n", t = KILL_SWITCH_TABLE);
        match run("nft", &["-f", "-"], Some(&script)) {
            // Without nftables there is no kill switch to remove.
            Ok(()) | Err(NetError::Missing(..)) => {}
            Err(e) => tracing::warn!("tunnel: removing the kill switch: {e}"),
        }
    }
}

impl Drop for KillSwitch {
    fn drop(&mut self) {
        KillSwitch::clear();
        tracing::info!("tunnel: kill switch off");
    }
}

/// The nft script of a gateway's NAT table for one family (`ip` or `ip6`): the pool leaves
/// masqueraded through `out`, and `host` (a drop rule, or nothing) guards the host's own
/// input. "add" then "delete" first clears a table a crashed run left behind.
fn nat_table(family: &str, table: &str, pool: &str, out: &str, host: &str) -> String {
    format!(
        "add table {family} {table}\ndelete table {family} {table}\n\
         table {family} {table} {{\n\
           chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; \
             {family} saddr {pool} {out} masquerade; }}\n\
           chain input {{ type filter hook input priority filter; policy accept; {host} }}\n\
         }}\n"
    )
}

/// The routing table a VPN client's routes live in.
pub const ROUTE_TABLE: u32 = SOCKET_MARK;
/// Priorities of the client's two policy rules.
const RULE_SUPPRESS: u32 = 20_999;
const RULE_TUNNEL: u32 = 21_000;

/// A VPN client's routes: every listed prefix (or everything) goes into the TUN, except the
/// node's own sockets, which carry the firewall mark [`SOCKET_MARK`] and so keep using the
/// main table (the underlay never enters the tunnel). In full-tunnel mode the main table
/// still wins for everything more specific than its default route (the local networks).
/// Removed on drop.
pub struct Routes {
    /// The prefixes routed into the TUN (empty: everything).
    pub prefixes: Vec<(Ipv4Addr, u8)>,
    full: bool,
}

/// The IPv6 half of the tunnel's routes: in a full tunnel `::/0` into the TUN under the same
/// policy rules, so no IPv6 leaves outside the tunnel (with IPv6 from the gateway it is
/// carried; without, the client answers "unreachable" and applications fall back to IPv4 at
/// once); in a split tunnel the `--prefix` IPv6 networks. Removed on drop.
pub struct Routes6 {
    /// The prefixes routed into the TUN (`::/0` in a full tunnel).
    pub prefixes: Vec<(Ipv6Addr, u8)>,
}

impl Routes6 {
    /// Routes `prefixes` (`full`: all IPv6) into `tun` except the node's own marked sockets.
    pub fn setup(tun: &str, prefixes: &[(Ipv6Addr, u8)], full: bool) -> Result<Routes6, NetError> {
        Routes6::remove();
        let list = if full { vec![(Ipv6Addr::UNSPECIFIED, 0)] } else { prefixes.to_vec() };
        // Built first, so a failure part-way removes what was set up (its drop).
        let r = Routes6 { prefixes: list.clone() };
        add_policy("-6", tun, list.iter().map(|(a, l)| format!("{a}/{l}")), full)?;
        tracing::info!(tun, full, "tunnel: IPv6 routes set up");
        Ok(r)
    }

    fn remove() {
        remove_policy("-6");
    }
}

impl Drop for Routes6 {
    fn drop(&mut self) {
        Routes6::remove();
        tracing::info!("tunnel: IPv6 routes removed");
    }
}

impl Routes {
    /// Routes `prefixes` (`full`: all IPv4) into `tun` except the node's own marked sockets.
    pub fn setup(tun: &str, prefixes: &[(Ipv4Addr, u8)], full: bool) -> Result<Routes, NetError> {
        let list = if full { vec![(Ipv4Addr::UNSPECIFIED, 0)] } else { prefixes.to_vec() };
        // Whatever a crashed run left behind goes first.
        let routes = Routes { prefixes: list.clone(), full };
        routes.remove();
        add_policy("-4", tun, list.iter().map(|(a, l)| format!("{a}/{l}")), full)?;
        tracing::info!(tun, full, "tunnel: routes set up");
        Ok(routes)
    }

    /// Whether this is a full tunnel (everything goes into the TUN).
    pub fn full(&self) -> bool {
        self.full
    }

    fn remove(&self) {
        remove_policy("-4");
    }
}

/// Routes `prefixes` of one family (`-4` or `-6`) into `tun` in the client's table, looked up
/// for every packet not marked as the node's own; `full`: the main table's default route is
/// suppressed too (as wg-quick does), so nothing of that family bypasses the TUN.
fn add_policy(family: &str, tun: &str, prefixes: impl Iterator<Item = String>, full: bool) -> Result<(), NetError> {
    let table = ROUTE_TABLE.to_string();
    for p in prefixes {
        run("ip", &[family, "route", "replace", &p, "dev", tun, "table", &table], None)?;
    }
    let (mark, prio) = (SOCKET_MARK.to_string(), RULE_TUNNEL.to_string());
    run("ip", &[family, "rule", "add", "not", "fwmark", &mark, "table", &table, "priority", &prio], None)?;
    if full {
        let prio = RULE_SUPPRESS.to_string();
        run("ip", &[family, "rule", "add", "table", "main", "suppress_prefixlength", "0", "priority", &prio], None)?;
    }
    Ok(())
}

/// Removes the client's policy rules and its routing table for one family (`-4` or `-6`).
fn remove_policy(family: &str) {
    for prio in [RULE_TUNNEL, RULE_SUPPRESS] {
        // Delete until none is left (several if runs overlapped).
        for _ in 0..8 {
            if run("ip", &[family, "rule", "del", "priority", &prio.to_string()], None).is_err() {
                break;
            }
        }
    }
    let _ = run("ip", &[family, "route", "flush", "table", &ROUTE_TABLE.to_string()], None);
}

impl Drop for Routes {
    fn drop(&mut self) {
        self.remove();
        tracing::info!("tunnel: routes removed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(parse_prefix("10.1.2.3/8").unwrap(), (Ipv4Addr::new(10, 0, 0, 0), 8));
        assert_eq!(parse_prefix("192.0.2.1").unwrap(), (Ipv4Addr::new(192, 0, 2, 1), 32));
        assert_eq!(parse_prefix("0.0.0.0/0").unwrap(), (Ipv4Addr::UNSPECIFIED, 0));
        for bad in ["10.0.0.0/33", "10.0.0/8", "x", "10.0.0.0/", "::1/128"] {
            assert!(parse_prefix(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_prefix6("fd00:1:2:3::9/64").unwrap(), ("fd00:1:2:3::".parse().unwrap(), 64));
        assert_eq!(parse_prefix6("2001:db8::1").unwrap(), ("2001:db8::1".parse().unwrap(), 128));
        for bad in ["fd00::/129", "10.0.0.0/8", "fd00::/", "x"] {
            assert!(parse_prefix6(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_tool_is_named_with_its_package() {
        let e = run("skyroute-no-such-tool", &[], None).unwrap_err();
        assert!(e.to_string().contains("not found: install it"), "{e}");
    }
}
