//! The learner's training pass on a GPU: a forward over a [`kaizen_model::ScoreBatch`] that
//! returns per-token log-probs (the loss is built on them on the host), the hand-written
//! backward that turns `∂loss/∂logp` into every parameter's gradient, and a fused AdamW update —
//! f32 throughout, products on cuBLAS SGEMM, everything else NVRTC kernels.
//!
//! The pass is written once, in [`TrainModel`] (`pass.rs`), over the operations of
//! [`TrainOps`] (`ops.rs`), which two backends implement:
//!
//! - [`CudaOps`] (`cuda.rs`): the kernels of `kernels.rs` and cuBLAS, on one stream;
//! - [`HostOps`] (`host.rs`): the same operations in plain Rust, index for index, with SGEMM
//!   computed literally from cuBLAS's column-major arguments — so that the driver (buffer
//!   shapes, strides, the products' transposes, where most bugs live) is tested without a GPU
//!   against `kaizen_model::CpuScorePass` (`tests/train_pass.rs`).
//!
//! It mirrors `CpuScorePass` operation by operation, except that rows are scored in full
//! (`packing.rs`: no shared-prompt prefixes) and that it has no value head or entropy.
//! AdamW (`adamw.rs`) follows `kaizen_learner::AdamW`'s fused update and clipping.
//! [`PassBackend`] (`backend.rs`) makes the pass the learner's `kaizen_learner::TrainBackend`;
//! its data-parallel gradient sum runs in buckets ([`GradBuckets`], `buckets.rs`).

mod adamw;
mod backend;
mod buckets;
mod cuda;
mod host;
pub mod kernels;
mod ops;
mod packing;
mod pass;

pub use adamw::AdamWState;
pub use backend::PassBackend;
pub use buckets::{Bucket, DEFAULT_BUCKET_BYTES, GradBuckets};
pub use cuda::CudaOps;
pub use host::HostOps;
pub(crate) use ops::fits;
pub use ops::{
    AdamWStep, AttentionRows, AttentionSaved, AttentionShape, Buffer, Gemm, TrainOps, Transpose,
};
pub use pass::{Activations, TrainModel, Weights, layout};
