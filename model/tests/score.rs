//! Teacher-forced scoring agrees with the sampler; gradients reach every parameter.

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use common::{device, tiny_config, tiny_model};
use kaizen_model::{
    GenerateOptions, GenerationRequest, Llama, SamplingParams, ScoreBatch, generate, score,
};

fn sample_and_score(temperature: f32) {
    let model = tiny_model(&device(), 21);
    let prompts: Vec<Vec<u32>> = vec![vec![5, 6, 7], (0..12).map(|i| i * 3).collect(), vec![250]];
    let requests: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| GenerationRequest {
            prompt: p.clone(),
            params: SamplingParams {
                temperature,
                max_new_tokens: 30,
                seed: 3 + i as u64,
                ..SamplingParams::default()
            },
        })
        .collect();
    let options = GenerateOptions {
        entropy: true,
        ..GenerateOptions::default()
    };
    let gens = generate(&model, None, &requests, &options).unwrap();
    let mut batch = ScoreBatch::default();
    for (p, g) in prompts.iter().zip(&gens) {
        let mut seq = p.clone();
        seq.extend(&g.tokens);
        let mut mask = vec![false; p.len()];
        mask.extend(vec![true; g.tokens.len()]);
        batch.sequences.push(seq);
        batch.loss_masks.push(mask);
    }
    let scores = score(&model, &batch, temperature, true).unwrap();
    let scored = scores.logprobs.into_data().try_to_vec::<f32>().unwrap();
    let entropy = scores
        .entropy
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let sampled: Vec<f32> = gens.iter().flat_map(|g| g.logprobs.clone()).collect();
    let sampled_entropy: Vec<f32> = gens.iter().flat_map(|g| g.entropies.clone()).collect();
    assert_eq!(scored.len(), sampled.len());
    let gap = common::max_abs_diff(&scored, &sampled);
    assert!(
        gap < 1e-4,
        "T={temperature}: sampler/learner log-prob gap {gap}"
    );
    let gap = common::max_abs_diff(&entropy, &sampled_entropy);
    assert!(gap < 1e-4, "T={temperature}: entropy gap {gap}");
}

#[test]
fn scored_logprobs_equal_generation_logprobs_at_temperature_1() {
    sample_and_score(1.0);
}

#[test]
fn scored_logprobs_equal_generation_logprobs_at_temperature_0_7() {
    sample_and_score(0.7);
}

/// Collects the gradient norm of every float parameter.
struct GradNorms<'a> {
    grads: &'a burn::tensor::Gradients,
    norms: Vec<f32>,
    missing: usize,
}

impl ModuleVisitor for GradNorms<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        match param.val().grad(self.grads) {
            Some(g) => self.norms.push(g.square().sum().into_scalar::<f32>()),
            None => self.missing += 1,
        }
    }
}

#[test]
fn gradients_reach_every_parameter() {
    let mut config = tiny_config();
    config.value_head = true;
    let device = device().autodiff();
    let model = Llama::init(&config, &device, 5).unwrap();
    let batch = ScoreBatch {
        sequences: vec![vec![1, 2, 3, 4, 5, 6], vec![7, 8, 9]],
        loss_masks: vec![
            vec![false, false, true, true, true, true],
            vec![false, true, true],
        ],
    };
    let scores = score(&model, &batch, 0.8, true).unwrap();
    let loss = scores.logprobs.sum().neg()
        + scores.entropy.unwrap().sum() * 0.01
        + scores.values.unwrap().square().sum();
    let grads = loss.backward();
    let mut visitor = GradNorms {
        grads: &grads,
        norms: Vec::new(),
        missing: 0,
    };
    model.visit(&mut visitor);
    assert_eq!(visitor.missing, 0, "parameters without gradient");
    // embed + lm_head; per layer: 2 norms, q/k/v weights and biases, o, 3 MLP; final norm;
    // value head weight and bias.
    let expected = 2 + 2 * (2 + 6 + 1 + 3) + 1 + 2;
    assert_eq!(visitor.norms.len(), expected);
    assert!(
        visitor.norms.iter().all(|n| n.is_finite() && *n > 0.0),
        "{:?}",
        visitor.norms
    );
}

#[test]
fn invalid_score_input_is_an_error() {
    let model = tiny_model(&device(), 1);
    let bad = ScoreBatch {
        sequences: vec![vec![1, 2]],
        loss_masks: vec![vec![true, true]],
    };
    assert!(
        score(&model, &bad, 1.0, false)
            .unwrap_err()
            .to_string()
            .contains("first token")
    );
    let bad = ScoreBatch {
        sequences: vec![vec![1, 2]],
        loss_masks: vec![vec![false]],
    };
    assert!(
        score(&model, &bad, 1.0, false)
            .unwrap_err()
            .to_string()
            .contains("loss-mask")
    );
    let ok = ScoreBatch {
        sequences: vec![vec![1, 2]],
        loss_masks: vec![vec![false, true]],
    };
    assert!(
        score(&model, &ok, 0.0, false)
            .unwrap_err()
            .to_string()
            .contains("temperature")
    );
}
