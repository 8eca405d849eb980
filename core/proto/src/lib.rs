//! # skyroute-proto
//!
//! The sans-IO core of skyroute: no sockets, no threads, no clock reads, no global RNG. State
//! machines are fed `(now, bytes)` and timer expiries, use an injected RNG, and return datagrams
//! to send plus the next deadline (the quinn-proto pattern).
//!
//! Data flows one way through the layers: [`wire`] (outer packets) -> [`link`] (encrypted
//! neighbour links) -> [`frame`] (bundled frames) -> [`forward`] (store-and-forward: per-route
//! buffers, per-hop acks and retransmission, credit, QoS) -> [`route`] (source routes,
//! telescoping, end-to-end route messages) -> [`node`] -> [`session`] (end-to-end sessions
//! over several routes with RaptorQ coding) -> [`host`] (node, sessions and route graph as the
//! one object a driver talks to); and back.
//!
//! Imports run the same way: a module uses only modules below it in this order (bottom to
//! top), and `tests/layers.rs` fails on an import against it:
//!
//! Layer order: types -> identity -> crypto -> wire -> noise -> stats -> frame -> link -> forward
//! -> accounting -> route -> vlink -> node -> graph -> session -> host -> dht -> vpn -> channel
//!
//! [`types`] holds the ids and small values every layer shares; [`noise`] the handshake both
//! links and sessions run; [`graph`] the route finder both sessions and discovery use.

#![warn(missing_docs)]

pub mod accounting;
pub mod channel;
pub mod crypto;
pub mod dht;
pub mod forward;
pub mod frame;
pub mod graph;
pub mod host;
pub mod identity;
pub mod link;
pub mod node;
pub mod noise;
pub mod route;
pub mod session;
pub mod stats;
pub mod types;
pub mod vlink;
pub mod vpn;
pub mod wire;

pub use forward::{FlowStats, ForwardConfig};
pub use graph::{Graph, RouteFinder};
pub use host::{Host, HostConfig, HostEvent, NodeMut};
pub use identity::{Address, KeyError, PublicKey, SecretKey};
pub use link::{DownReason, LinkConfig, LinkState};
pub use node::{Event, LinkInfo, Node, NodeConfig, NodeStats};
pub use route::{AccountingConfig, AccountingStats, RouteConfig, RouteError, RouteEvent};
pub use session::{PathState, SessionConfig, SessionError, SessionEvent, SessionStats, Sessions, Strategy};
pub use stats::{LinkStats, Reject, RejectCounts};
pub use types::{Class, Dir, Endpoint, Interface, LinkId, RouteId, SessionId};
