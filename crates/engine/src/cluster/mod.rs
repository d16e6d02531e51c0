//! One job attempt across several worker processes (Flink's TaskManagers): which worker runs which
//! subtask ([`Placement`]), how the workers of an attempt find each other ([`ClusterNode`]: worker 0
//! hosts the job coordinator, the others join it), how records cross process boundaries (one TCP
//! connection per remote channel, a bounded buffer at each end, so backpressure crosses the network),
//! and how the coordinator reaches the tasks of the other workers (one control link per worker).
//!
//! Any worker that disappears ends the attempt: its links close, the coordinator fails the attempt
//! and cancels every task, and the caller (the operator) starts a new attempt from the latest
//! complete checkpoint. Nothing here decides about snapshots; it only moves the same messages the
//! single-process runtime moves over channels.

mod exchange;
mod link;
mod node;
mod placement;
pub mod wire;

pub(crate) use exchange::ChannelKey;
pub use node::{ClusterBinding, ClusterNode, ClusterSpec, Formed};
pub use placement::Placement;

use std::net::SocketAddr;

/// Why the workers of an attempt could not form or keep their cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The exchange port could not be opened.
    #[error("failed to listen on {addr} for the data exchange: {source}; is the port free?")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The worker layout is impossible.
    #[error("invalid worker layout: {0}")]
    Layout(String),
    /// Not every worker joined in time.
    #[error("the attempt could not start: workers {missing:?} did not join within {waited_s} s (are their pods running and is the coordinator address right?)")]
    FormTimeout { missing: Vec<u32>, waited_s: u64 },
    /// The coordinator could not be reached.
    #[error("cannot reach the job coordinator at {addr} within {waited_s} s: {reason}")]
    Unreachable {
        addr: String,
        waited_s: u64,
        reason: String,
    },
    /// The coordinator refused this worker.
    #[error("the job coordinator refused this worker: {0}")]
    Rejected(String),
    /// A protocol or connection error during formation.
    #[error("cluster link failed: {0}")]
    Io(#[from] std::io::Error),
}
