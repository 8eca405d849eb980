//! The skyroute runtime: the tokio driver around `skyroute-proto` (transports, services, the
//! VPN's TUN and host configuration), the `skyroute` daemon and CLI, and the deterministic
//! simulator. All protocol logic lives in `skyroute-proto`.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod driver;
pub mod escrow;
pub mod impair;
pub mod keyfile;
pub mod netconf;
pub mod plot;
pub mod progress;
pub mod service;
/// The simulator (its own crate, `skyroute-sim`, which needs no sockets, TLS or CLI).
pub use skyroute_sim as sim;
pub mod transport;
pub mod tun;
pub mod vpn;
