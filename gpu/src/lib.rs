//! # kaizen-gpu
//!
//! kaizen on NVIDIA GPUs, through [cudarc](https://docs.rs/cudarc): every CUDA library (the
//! driver, NVRTC, cuBLAS, NCCL) is loaded at run time, so this crate builds and links on a
//! machine without CUDA, and on such a machine its constructors return
//! [`GpuError::Library`] naming the library and what to put on `LD_LIBRARY_PATH` — they never
//! panic.
//!
//! - [`NcclCollective`]: the data-parallel learner's [`kaizen_learner::Collective`] over NCCL
//!   (all-reduce in buckets, all-gather), plus [`NcclCollective::broadcast`] for weights.
//!   Ranks meet through a 128-byte [`NcclId`] that rank 0 creates and sends to the others over
//!   the job's existing channel ([`NcclCollective::over`]: the MPI group of the learner ranks).
//! - [`kernels`]: the CUDA C sources of the forward pass (embedding, RMSNorm, rotary
//!   embedding, KV append, causal attention, SwiGLU, residual add), compiled by NVRTC at run
//!   time for the device's architecture.
//! - [`GpuLlama`]: the Llama-family forward pass on one GPU (those kernels plus cuBLAS SGEMM
//!   for the projections), with its own KV cache, for logits parity with the CPU path and
//!   greedy decoding.
//! - [`train`]: the learner's training pass on one GPU (forward keeping its activations,
//!   hand-written backward, fused AdamW), written once over [`train::TrainOps`] and run on
//!   CUDA ([`train::CudaOps`]) or, for tests without a GPU, on the host
//!   ([`train::HostOps`]).
//! - [`batch_decode`]: batched sampling (GRPO groups prefilled once, every row decoded
//!   together, temperature/top-p sampling with behaviour log-probs on the device), and
//!   [`actor_rows`]: that sampler as an actor engine's [`kaizen_actors::DecodeDevice`]
//!   (`actors.device = "cuda"`).
//! - [`device_check`]: the checks `scripts/device/check.sh` runs on a GPU machine (environment,
//!   logits parity, training-pass parity and a GRPO step, NCCL bandwidth, decode tokens/s,
//!   the actors' decode engine on a multi-turn workload), as one JSON summary.
//!
//! What is tested where: docs/gpu.md.
#![warn(missing_docs)]

pub mod actor_rows;
pub mod batch_decode;
pub mod decode_kernels;
pub mod decode_ops;
pub mod device_check;
mod error;
pub mod kernels;
mod launch;
mod layer_weights;
mod libraries;
mod llama;
mod nccl;
pub mod sample;
pub mod train;

pub use error::GpuError;
pub use libraries::{Library, cuda_context, require};
pub use llama::{GpuKvCache, GpuLlama};
pub use nccl::{DEFAULT_BUCKET_ELEMS, NcclCollective, NcclId};
