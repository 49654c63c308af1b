//! The network transport: gRPC between a job's coordinator (learner rank 0) and its actor
//! processes. Schema: `transport/proto/kaizen.proto`.

/// Messages and service generated from `proto/kaizen.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("kaizen.v1");
}

mod convert;
mod coordinator;
mod group;
mod group_hub;
mod group_receiver;
mod weights;

pub use convert::{
    report_from_proto, report_message, report_to_proto, task_from_proto, task_to_proto,
};
pub use coordinator::{Coordinator, CoordinatorConfig, CoordinatorStats, CoordinatorWeights};
pub use group::{
    BACKOFF_PUBLISHES, InProcessGroups, MAX_BACKOFF_PUBLISHES, MAX_GROUP_FAILURES, WeightsGroup,
    WeightsGroups, bounded,
};
pub use group_receiver::WeightsReceiver;
pub use weights::{AssembledWeights, EncodedWeights, WeightsAssembler, extend_le, read_le};

/// Version of the wire protocol; peers with another version are refused at join.
/// 2: `JoinReply.max_message_bytes`.
pub const PROTOCOL_VERSION: u32 = 2;

/// HTTP/2 flow-control window per stream, both ends: large enough that a weights stream is
/// not throttled by round trips (h2's default is 64 KiB).
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;

/// HTTP/2 flow-control window per connection, both ends.
pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// A client endpoint for the coordinator at `address` (`host:port`), with kaizen's transport
/// settings (no Nagle delay, wide flow-control windows).
///
/// # Errors
/// [`crate::Error::Network`] for an address that is not a valid URI authority.
pub fn endpoint(
    address: &str,
    connect_timeout: std::time::Duration,
) -> Result<tonic::transport::Endpoint, crate::Error> {
    let uri = format!("http://{address}");
    Ok(tonic::transport::Endpoint::from_shared(uri.clone())
        .map_err(|e| crate::Error::Network(format!("coordinator address {uri:?}: {e}")))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES))
}
