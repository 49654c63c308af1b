//! Decoding from bf16 projections (`DecodeWeights::Bf16`: weights and each product's inputs
//! rounded to bfloat16, f32 sums; AMX tiles where the CPU has them): one model whatever the
//! batch (a row decodes the same alone as among 20, across AMX's 16-row tiles), and a small,
//! measured gap to the f32 model the learner trains.

mod common;

use common::{device, tiny_model};
use kaizen_model::{
    DecodeWeights, GenerateOptions, GenerationRequest, SamplingParams, ScoreBatch, generate, score,
};

fn request(i: usize) -> GenerationRequest {
    GenerationRequest {
        session: None,
        prompt: (0..3 + i % 7)
            .map(|t| (t * 5 + i * 11) as u32 % 256)
            .collect(),
        params: SamplingParams {
            temperature: 1.0,
            max_new_tokens: 24,
            seed: 40 + i as u64,
            ..SamplingParams::default()
        },
    }
}

fn bf16() -> GenerateOptions {
    GenerateOptions {
        decode_weights: DecodeWeights::Bf16,
        ..GenerateOptions::default()
    }
}

#[test]
fn a_bf16_row_decodes_the_same_alone_and_among_twenty() {
    let model = tiny_model(&device(), 33);
    let requests: Vec<GenerationRequest> = (0..20).map(request).collect();
    let together = generate(&model, None, &requests, &bf16()).unwrap();
    for i in [0, 7, 19] {
        let alone = generate(&model, None, &requests[i..=i], &bf16()).unwrap();
        assert_eq!(alone[0].tokens, together[i].tokens, "row {i}: tokens");
        let gap = common::max_abs_diff(&alone[0].logprobs, &together[i].logprobs);
        assert!(
            gap < 1e-4,
            "row {i}: log-probs alone vs in the batch differ by {gap}"
        );
    }
}

#[test]
fn bf16_behaviour_logprobs_are_close_to_the_f32_models() {
    let model = tiny_model(&device(), 34);
    let requests: Vec<GenerationRequest> = (0..6).map(request).collect();
    let gens = generate(&model, None, &requests, &bf16()).unwrap();
    let mut batch = ScoreBatch::default();
    for (r, g) in requests.iter().zip(&gens) {
        batch
            .sequences
            .push([r.prompt.clone(), g.tokens.clone()].concat());
        let mut mask = vec![false; r.prompt.len()];
        mask.extend(vec![true; g.tokens.len()]);
        batch.loss_masks.push(mask);
    }
    let f32_scores: Vec<f32> = score(&model, &batch, 1.0, false)
        .unwrap()
        .logprobs
        .into_data()
        .try_to_vec()
        .unwrap();
    let behaviour: Vec<f32> = gens.iter().flat_map(|g| g.logprobs.clone()).collect();
    assert_eq!(f32_scores.len(), behaviour.len());
    let gap = common::max_abs_diff(&f32_scores, &behaviour);
    let mean = common::mean_abs_diff(&f32_scores, &behaviour);
    assert!(gap > 0.0, "rounding to bf16 changes the model");
    // This random model's logits are sharp (initializer_range 0.2); SmolLM2's gap is in
    // BENCHMARKS.md.
    assert!(
        gap < 0.5 && mean < 0.05,
        "bf16 vs f32 log-prob gap max {gap}, mean {mean}"
    );
}
