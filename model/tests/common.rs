//! Shared helpers for the model tests.
#![allow(dead_code)]

use burn::tensor::Device;
use kaizen_model::{Llama, LlamaConfig};

/// A small random model whose logits are peaked enough that greedy choices are stable under
/// float reordering (weights ~ N(0, 0.2²)).
pub fn tiny_model(device: &Device, seed: u64) -> Llama {
    Llama::init(&tiny_config(), device, seed).unwrap()
}

pub fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 300,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: None,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 256,
        tie_word_embeddings: false,
        attention_bias: true,
        value_head: false,
        initializer_range: 0.2,
    }
}

pub fn device() -> Device {
    Device::default()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Mean of `|a_i - b_i|` (lengths must match and be non-zero).
pub fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert!(a.len() == b.len() && !a.is_empty());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}
