//! The GPU training pass's driver ([`TrainModel`]) run on [`HostOps`] — the CPU mirror of its
//! CUDA kernels, SGEMM computed from cuBLAS's own arguments — computes what
//! `kaizen_model::CpuScorePass` computes: the same log-probs and every parameter's gradient;
//! and its AdamW step is `kaizen_learner::AdamW`'s. No GPU needed: this checks the driver's
//! sequence of operations, shapes, strides and product transposes on every CI run.

#[path = "../../model/tests/common.rs"]
mod model_common;

use burn::tensor::{Device, Tensor, TensorData};
use kaizen_gpu::train::{HostOps, TrainModel};
use kaizen_learner::{AdamW, AdamWConfig};
use kaizen_model::{CpuGrads, CpuScorePass, Llama, LlamaConfig, ScoreBatch, ScoreOptions};
use model_common::{score_batch as batch, tiny_config};

/// The upstream gradient `∂loss/∂logp_i` of `loss = Σ a_i logp_i`: fixed, distinct weights.
fn loss_weights(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i as f32 + 1.0) * 0.731).sin()).collect()
}

fn host(t: Tensor<1>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Largest log-prob gap and largest per-parameter `‖Δg‖ / ‖g‖` of the driver on `HostOps`
/// against `CpuScorePass` (which shares prompts when `share_prefixes`; the driver scores each
/// row in full).
fn compare(config: &LlamaConfig, temperature: f32, share_prefixes: bool) -> (f32, f32) {
    let device = Device::default().autodiff();
    let model = Llama::init(config, &device, 9).unwrap();
    let batch = batch();
    let options = ScoreOptions {
        temperature,
        with_entropy: false,
        share_prefixes,
    };
    let (scores, pass) = CpuScorePass::forward(&model, &batch, &options)
        .unwrap()
        .expect("the CPU pass applies to a float32 flex model under autodiff");
    let reference_logprobs = host(scores.logprobs.clone());
    let n = reference_logprobs.len();
    let a = loss_weights(n);
    let weights = Tensor::<1>::from_data(TensorData::new(a.clone(), [n]), &device);
    let grads = (scores.logprobs.clone() * weights).sum().backward();
    let mut into = CpuGrads::new(&model).unwrap();
    pass.backward(&grads, &mut into).unwrap();
    let reference_grads: Vec<Vec<f32>> = into.into_host().map(|(_, g)| g).collect();

    let gpu = TrainModel::new(HostOps, config, &model.to_named()).unwrap();
    let (logprobs, act) = gpu.forward(&batch, temperature).unwrap();
    assert_eq!(act.scored_tokens(), n);
    let lp_gap = logprobs
        .iter()
        .zip(&reference_logprobs)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(lp_gap < 1e-4, "log-probs differ by {lp_gap}");
    let mut ours = gpu.zero_grads().unwrap();
    gpu.backward(act, &a, &mut ours).unwrap();
    let ours = gpu.download(&ours).unwrap();
    assert_eq!(
        ours.len(),
        reference_grads.len(),
        "one gradient per parameter"
    );
    let mut worst = 0.0f32;
    for ((name, got), expected) in ours.iter().zip(&reference_grads) {
        assert_eq!(got.len(), expected.len(), "{name}: size");
        let norm = expected.iter().map(|v| v * v).sum::<f32>().sqrt();
        let err = got
            .iter()
            .zip(expected)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt();
        assert!(norm > 0.0, "{name}: zero reference gradient");
        assert!(
            err <= 1e-3 * norm + 1e-6,
            "{name}: |Δ| {err:.3e} vs |g| {norm:.3e} (T {temperature})"
        );
        worst = worst.max(err / norm);
    }
    eprintln!(
        "tied {}, bias {}, kv {}, T {temperature}, shared {share_prefixes}: log-prob gap \
         {lp_gap:.2e}, worst gradient |Δ|/|g| {worst:.2e}",
        config.tie_word_embeddings, config.attention_bias, config.num_key_value_heads
    );
    (lp_gap, worst)
}

/// GQA (4 query heads over 2), q/k/v biases, an untied head, temperature 0.7; the CPU pass
/// shares the GRPO groups' prompts, the driver scores every row in full.
#[test]
fn host_driver_matches_the_cpu_pass_untied_with_biases_and_shared_prompts() {
    compare(&tiny_config(), 0.7, true);
}

/// Tied embeddings (the head's gradient lands in the embedding beside the lookup's), no
/// biases, one key-value head for all four query heads, temperature 1.3, no prefix sharing.
#[test]
fn host_driver_matches_the_cpu_pass_tied_without_biases() {
    let mut config = tiny_config();
    config.tie_word_embeddings = true;
    config.attention_bias = false;
    config.num_key_value_heads = 1;
    compare(&config, 1.3, false);
    compare(&config, 1.0, true);
}

/// Wider heads (d = 32, two per key-value head) and three layers.
#[test]
fn host_driver_matches_the_cpu_pass_with_wider_heads() {
    let mut config = tiny_config();
    config.num_attention_heads = 2;
    config.num_key_value_heads = 1;
    config.num_hidden_layers = 3;
    compare(&config, 0.9, true);
}

/// Bad input is an error naming it, never a panic: a value head, misshaped weights, a wrong
/// number of upstream gradients, a batch without scored tokens.
#[test]
fn host_driver_rejects_bad_input() {
    let config = tiny_config();
    let device = Device::default();
    let model = Llama::init(&config, &device, 1).unwrap();
    let mut named = model.to_named();
    let mut valued = config.clone();
    valued.value_head = true;
    let e = TrainModel::new(HostOps, &valued, &named).err().unwrap();
    assert!(e.to_string().contains("value head"), "{e}");
    let gpu = TrainModel::new(HostOps, &config, &named).unwrap();
    let (logprobs, act) = gpu.forward(&batch(), 1.0).unwrap();
    let mut grads = gpu.zero_grads().unwrap();
    let e = gpu.backward(act, &logprobs[1..], &mut grads).err().unwrap();
    assert!(e.to_string().contains("gradients for"), "{e}");
    let unscored = ScoreBatch {
        sequences: vec![vec![1, 2]],
        loss_masks: vec![vec![false, false]],
    };
    let e = gpu.forward(&unscored, 1.0).err().unwrap();
    assert!(e.to_string().contains("no scored token"), "{e}");
    let e = gpu.forward(&batch(), 0.0).err().unwrap();
    assert!(e.to_string().contains("temperature"), "{e}");
    named.retain(|(n, _)| n != "model.norm.weight");
    let e = TrainModel::new(HostOps, &config, &named).err().unwrap();
    assert!(
        e.to_string().contains("`model.norm.weight` is missing"),
        "{e}"
    );
}

/// Two AdamW steps of the driver (host ops) against `kaizen_learner::AdamW::step_host` on the
/// same gradients: decay on matrices only, clipping by the global norm (forced: the gradients'
/// norm is far above `max_grad_norm`), bias corrections of steps 1 and 2.
#[test]
fn host_adamw_matches_the_learner_adamw() {
    let config = tiny_config();
    let device = Device::default().autodiff();
    let mut model = Llama::init(&config, &device, 3).unwrap();
    let adamw_config = AdamWConfig {
        weight_decay: 0.1,
        max_grad_norm: 0.5,
        ..AdamWConfig::default()
    };
    let lr = 1e-2;
    let mut gpu = TrainModel::new(HostOps, &config, &model.to_named()).unwrap();
    let mut state = gpu.adamw_state().unwrap();
    let mut reference = AdamW::new(adamw_config.clone());
    for step in 0..2 {
        let ids: Vec<_> = CpuGrads::new(&model)
            .unwrap()
            .into_host()
            .map(|(id, g)| (id, g.len()))
            .collect();
        let grads: Vec<Vec<f32>> = ids
            .iter()
            .enumerate()
            .map(|(p, (_, len))| {
                (0..*len)
                    .map(|i| (((i * 7 + p * 13 + step * 5) % 17) as f32 - 8.0) / 4.0)
                    .collect()
            })
            .collect();
        let mut ours = gpu.zero_grads().unwrap();
        for (buf, g) in ours.tensors_mut().into_iter().zip(&grads) {
            buf.copy_from_slice(g);
        }
        let report = gpu
            .adamw_step(&ours, &mut state, &adamw_config, lr)
            .unwrap();
        let host_grads = ids.iter().map(|(id, _)| *id).zip(grads).collect();
        let (next, expected) = reference.step_host(model, host_grads, lr);
        model = next;
        assert!(expected.clip_scale < 1.0, "clipping is exercised");
        assert!((report.grad_norm - expected.grad_norm).abs() <= 1e-9 * expected.grad_norm);
        assert!((report.clip_scale - expected.clip_scale).abs() <= 1e-12);
    }
    assert_eq!(state.step_count(), 2);
    let expected: std::collections::HashMap<String, Vec<f32>> = model
        .to_named()
        .into_iter()
        .map(|(n, t)| (n, t.data))
        .collect();
    let mut worst = 0.0f32;
    for (name, got) in gpu.download_weights().unwrap() {
        let want = &expected[&name];
        let gap = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(gap <= 1e-6, "{name}: parameters differ by {gap}");
        worst = worst.max(gap);
    }
    eprintln!("AdamW, two steps: largest parameter gap {worst:.2e}");
}
