//! # kaizen-model
//!
//! The policy kaizen trains: a Llama-family decoder written with burn, and everything needed to
//! sample from it and to score samples for learning.
//!
//! - [`LlamaConfig`] (Hugging Face names) builds a [`Llama`] on any burn device.
//! - [`KvCache`] holds keys/values for incremental decoding; [`generate`] runs batched,
//!   ragged, seeded sampling with behaviour log-probs, sharing the prefill of identical
//!   prompts (GRPO groups).
//! - [`score`] recomputes the same log-probs teacher-forced, differentiably, for the learner.
#![warn(missing_docs)]

mod attention;
mod chat;
mod config;
mod cpu_forward;
mod cpu_kernels;
mod cpu_train;
mod dequant;
mod error;
mod generate;
mod gguf;
mod gguf_llama;
mod gguf_tokenizer;
mod hf;
mod kv_cache;
mod linear;
mod llama;
mod mlp;
mod policy;
mod prefix_cache;
mod rms_norm;
mod rope;
mod sampler;
mod score;
mod tokenizer;
mod weights;

pub use attention::Attention;
pub use chat::{ChatTemplate, ChatThread, SMOLLM2_DEFAULT_SYSTEM};
pub use config::LlamaConfig;
pub use cpu_forward::with_host_values;
pub use cpu_train::{CpuGrads, CpuScorePass, TrainProducts};
pub use dequant::{GgmlType, dequantize};
pub use error::{Error, Result};
pub use generate::{
    DecodeBatch, DecodeWeights, GenerateOptions, Generation, GenerationRequest, GenerationStats,
    generate,
};
pub use gguf::{GgufFile, MetaValue, TensorInfo};
pub use gguf_llama::{gguf_chat_template, gguf_config, load_gguf_model, unpermute_rows};
pub use gguf_tokenizer::gguf_tokenizer;
pub use hf::{hf_config, read_hf_weights};
pub use kv_cache::KvCache;
pub use linear::Linear;
pub use llama::{DecoderLayer, Llama};
pub use mlp::Mlp;
pub use policy::{Policy, smollm2_path};
pub use prefix_cache::{PrefixCache, PrefixCacheStats};
pub use rms_norm::RmsNorm;
pub use rope::Rope;
pub use sampler::{
    MAX_TOP_LOGPROBS, Sampled, SamplingParams, TokenLogprobs, argmax, sample, token_logprobs,
};
pub use score::{ScoreBatch, ScoreOptions, Scores, score, score_with, shared_prefix};
pub use tokenizer::{Tokenizer, byte_to_unicode};
pub use weights::{HostTensor, TensorSource, read_safetensors, write_safetensors};
