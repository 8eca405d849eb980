//! The `skyroute` command line (`skyroute-cli`): argument parsing, the demo, the impairment
//! proxy, progress bars and the moving car's plot. Everything a node does is in the node
//! library (`skyroute`); this crate only drives it, so a firmware or app build never links
//! clap, indicatif or plotters.

pub mod cli;
pub mod demo;
pub mod impair;
pub mod plot;
pub mod progress;
