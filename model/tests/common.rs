//! Shared helpers for the model tests.
#![allow(dead_code)]

use burn::tensor::{Device, Int, Tensor, TensorData};
use kaizen_model::{Llama, LlamaConfig, ScoreBatch};

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

/// Two GRPO groups sharing their prompts, rows of different lengths, a multi-turn row (scored,
/// context, scored) and rows with unscored tokens after their last scored one.
pub fn score_batch() -> ScoreBatch {
    let prompt_a: Vec<u32> = vec![11, 12, 13, 14, 15, 16, 17];
    let prompt_b: Vec<u32> = vec![40, 41, 42, 43];
    let mut sequences = Vec::new();
    let mut loss_masks = Vec::new();
    let mut push = |prompt: &[u32], completion: &[u32], trailing: usize| {
        let mut seq = prompt.to_vec();
        seq.extend_from_slice(completion);
        seq.extend(std::iter::repeat_n(7, trailing));
        let mut mask = vec![false; prompt.len()];
        mask.extend(std::iter::repeat_n(true, completion.len()));
        mask.extend(std::iter::repeat_n(false, trailing));
        sequences.push(seq);
        loss_masks.push(mask);
    };
    push(&prompt_a, &[101, 102, 103, 104, 105], 0);
    push(&prompt_a, &[120, 121], 2);
    push(&prompt_a, &[130, 131, 132, 133, 134, 135, 136, 137], 0);
    push(&prompt_b, &[200, 201, 202], 0);
    push(&prompt_b, &[210], 3);
    // A second turn: answer, feedback (context), revised answer.
    let mut seq = prompt_b.clone();
    seq.extend([220, 221, 222, 50, 51, 52, 223, 224]);
    let mut mask = vec![false; prompt_b.len()];
    mask.extend([true, true, true, false, false, false, true, true]);
    sequences.push(seq);
    loss_masks.push(mask);
    ScoreBatch {
        sequences,
        loss_masks,
    }
}

/// The CPU model's logits for `sequence`, `[len, vocab]`.
pub fn cpu_logits(model: &Llama, sequence: &[u32]) -> Vec<f32> {
    let data: Vec<i64> = sequence.iter().map(|&t| i64::from(t)).collect();
    let n = data.len();
    let input = Tensor::<2, Int>::from_data(TensorData::new(data, [1, n]), &model.device());
    model
        .forward(input)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}
