//! The skyroute runtime: the deterministic simulator driver and the CLI (the tokio transports
//! come next). All protocol logic lives in `skyroute-proto`.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod driver;
pub mod impair;
pub mod keyfile;
pub mod progress;
pub mod service;
pub mod sim;
pub mod transport;
pub mod tun;
