//! Decoding from int8 projections: the behaviour log-probs are those of the model actually
//! sampled from (the dequantised one, `Llama::with_int8_projections`), and the gap to the f32
//! model the learner trains is the quantisation's, small and measured.

mod common;

use common::{device, tiny_model};
use kaizen_model::{
    DecodeWeights, GenerateOptions, GenerationRequest, Llama, SamplingParams, ScoreBatch, generate,
    score,
};

fn requests() -> (Vec<Vec<u32>>, Vec<GenerationRequest>) {
    let prompts: Vec<Vec<u32>> = vec![vec![5, 6, 7], (0..12).map(|i| i * 3).collect(), vec![250]];
    let requests = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| GenerationRequest {
            session: None,
            prompt: p.clone(),
            params: SamplingParams {
                temperature: 1.0,
                max_new_tokens: 30,
                seed: 3 + i as u64,
                ..SamplingParams::default()
            },
        })
        .collect();
    (prompts, requests)
}

/// Teacher-forced log-probs of the completions under `model`.
fn scored(model: &Llama, prompts: &[Vec<u32>], completions: &[Vec<u32>]) -> Vec<f32> {
    let mut batch = ScoreBatch::default();
    for (p, c) in prompts.iter().zip(completions) {
        let mut seq = p.clone();
        seq.extend(c);
        let mut mask = vec![false; p.len()];
        mask.extend(vec![true; c.len()]);
        batch.sequences.push(seq);
        batch.loss_masks.push(mask);
    }
    let s = score(model, &batch, 1.0, false).unwrap();
    s.logprobs.into_data().try_to_vec::<f32>().unwrap()
}

fn check(tied: bool) {
    let mut model = tiny_model(&device(), 31);
    if tied {
        model = kaizen_model::Llama::init(
            &kaizen_model::LlamaConfig {
                tie_word_embeddings: true,
                ..common::tiny_config()
            },
            &device(),
            31,
        )
        .unwrap();
    }
    let (prompts, requests) = requests();
    let int8 = GenerateOptions {
        decode_weights: DecodeWeights::Int8,
        ..GenerateOptions::default()
    };
    let gens = generate(&model, None, &requests, &int8).unwrap();
    let completions: Vec<Vec<u32>> = gens.iter().map(|g| g.tokens.clone()).collect();
    let behaviour: Vec<f32> = gens.iter().flat_map(|g| g.logprobs.clone()).collect();
    // Exact for the model sampled from.
    let sampled_model = model.with_int8_projections().unwrap();
    let exact = scored(&sampled_model, &prompts, &completions);
    let gap = common::max_abs_diff(&exact, &behaviour);
    assert!(
        gap < 1e-4,
        "tied={tied}: int8 decode vs its dequantised model: {gap}"
    );
    // The f32 model differs by the quantisation only.
    let f32_scores = scored(&model, &prompts, &completions);
    let gap = common::max_abs_diff(&f32_scores, &behaviour);
    let mean = common::mean_abs_diff(&f32_scores, &behaviour);
    assert!(gap > 0.0, "quantisation changes the model");
    // This random model's logits are sharp (initializer_range 0.2); SmolLM2's gap is in
    // BENCHMARKS.md.
    assert!(
        gap < 0.5 && mean < 0.05,
        "tied={tied}: int8 vs f32 log-prob gap max {gap}, mean {mean}"
    );
}

#[test]
fn int8_behaviour_logprobs_are_the_dequantised_models_untied() {
    check(false);
}

#[test]
fn int8_behaviour_logprobs_are_the_dequantised_models_tied() {
    check(true);
}
