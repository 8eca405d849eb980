//! The skyroute node library: the tokio driver around `skyroute-proto` (transports, services,
//! the daemon and its control socket, the VPN's TUN and host configuration, the discovery and
//! payment drivers). All protocol logic lives in `skyroute-proto`; the command line is
//! `skyroute-cli`, the simulator `skyroute-sim`, the escrow `skyroute-escrow`.
//!
//! Features (all default): `quic` (QUIC links: quinn, rustls, rcgen), `tun` (a TUN device
//! for `vpn up` and the gateway's uplink: tun-rs), `log` (log lines on stderr). Firmware and
//! mobile builds leave out what they do not use; see the README's size table.

#![warn(missing_docs)]

pub mod config;
pub mod control;
pub mod daemon;
pub mod driver;
pub mod keyfile;
pub mod netconf;
pub mod service;
pub mod transport;
pub mod tun;
pub mod vpn;
