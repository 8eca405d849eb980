//! Shared by the protocol crate's tests, benches and examples (included with `#[path]`).

use skyroute_proto::{Endpoint, Node};

/// The node's next datagram on any link and where it goes.
pub fn next_tx<A: Endpoint>(n: &mut Node<A>, now: std::time::Instant) -> Option<(A, Vec<u8>)> {
    let mut buf = Vec::new();
    let dst = n.poll_transmit(now, None, &mut buf)?;
    Some((dst, buf))
}
