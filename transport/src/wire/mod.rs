//! The network transport: gRPC between a job's coordinator (learner rank 0) and its actor
//! processes. Schema: `transport/proto/kaizen.proto`.

/// Messages and service generated from `proto/kaizen.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("kaizen.v1");
}

mod convert;
mod coordinator;
mod weights;

pub use convert::{report_from_proto, report_to_proto, task_from_proto, task_to_proto};
pub use coordinator::{Coordinator, CoordinatorConfig, CoordinatorStats, CoordinatorWeights};
pub use weights::{AssembledWeights, EncodedWeights, WeightsAssembler};

/// Version of the wire protocol; peers with another version are refused at join.
pub const PROTOCOL_VERSION: u32 = 1;
