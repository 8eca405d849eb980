//! # skyroute-proto
//!
//! The sans-IO core of skyroute: no sockets, no threads, no clock reads, no global RNG. State
//! machines are fed `(now, bytes)` and timer expiries, use an injected RNG, and return datagrams
//! to send plus the next deadline (the quinn-proto pattern).
//!
//! Layers, in the order data flows: [`wire`] (outer packets) -> [`link`] (encrypted neighbour
//! links) -> [`frame`] (bundled frames) -> [`forward`] (store-and-forward: per-route buffers,
//! per-hop acks and retransmission, credit, QoS) -> [`route`] (source routes, telescoping,
//! end-to-end route messages) -> [`node`] (the object a driver talks to) -> [`session`]
//! (end-to-end sessions over several routes with RaptorQ coding, driven next to the node).

pub mod accounting;
pub mod channel;
pub mod crypto;
pub mod dht;
pub mod forward;
pub mod frame;
pub mod host;
pub mod identity;
pub mod link;
pub mod node;
pub mod route;
pub mod session;
pub mod stats;
pub mod vlink;
pub mod vpn;
pub mod wire;

pub use forward::{Class, Dir, FlowStats, ForwardConfig};
pub use host::{Host, HostConfig, HostEvent, NodeMut};
pub use identity::{Address, KeyError, PublicKey, SecretKey};
pub use link::{DownReason, Endpoint, Interface, LinkConfig, LinkId, LinkState};
pub use node::{Event, LinkInfo, Node, NodeConfig, NodeStats};
pub use route::{AccountingConfig, AccountingStats, RouteConfig, RouteError, RouteEvent, RouteId};
pub use session::{
    Graph, PathState, RouteFinder, SessionConfig, SessionError, SessionEvent, SessionId, SessionStats, Sessions,
    Strategy,
};
pub use stats::{LinkStats, Reject, RejectCounts};
