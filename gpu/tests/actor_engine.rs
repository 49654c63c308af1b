//! The actors' decode engine sampling through the GPU's batched sampler
//! (`kaizen_gpu::actor_rows::GpuDevice`) built on `HostOps` — the host mirror of the CUDA
//! kernels — against the same engine on kaizen's CPU decoding: the same greedy tokens, EOS
//! handling, finish reasons and text over multi-turn conversations, behaviour log-probs of
//! sampled tokens equal to the CPU model's scores of them, each new weights version uploaded
//! and stamped, and the options the GPU sampler lacks refused by name. No GPU needed.

#[path = "../../model/tests/common.rs"]
mod model_common;

use std::sync::Arc;

use burn::tensor::Device;
use kaizen_actors::{Completion, DecodeDevice, ServingEngine};
use kaizen_core::{FinishReason, WeightsVersion};
use kaizen_gpu::actor_rows::GpuDevice;
use kaizen_gpu::train::HostOps;
use kaizen_model::{
    DecodeWeights, GenerateOptions, GenerationRequest, Policy, SamplingParams, token_logprobs,
};
use model_common::cpu_logits;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn policy(seed: u64) -> Policy {
    Policy::tiny(&Device::default(), seed).unwrap()
}

fn host_device() -> Option<Arc<dyn DecodeDevice>> {
    Some(Arc::new(GpuDevice::new(|| Ok(HostOps)).unwrap()))
}

/// An engine decoding `policy` on the CPU (`device = None`) or on `device`.
fn engine(
    policy: &Policy,
    eos: Vec<u32>,
    decode_weights: DecodeWeights,
    device: Option<Arc<dyn DecodeDevice>>,
) -> ServingEngine {
    let options = GenerateOptions {
        eos_token_ids: eos,
        decode_weights,
        ..GenerateOptions::default()
    };
    let tokenizer = Arc::new(policy.tokenizer.clone());
    ServingEngine::spawn_on(policy.model.clone(), tokenizer, options, device).unwrap()
}

fn params(temperature: f32, top_p: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_p,
        max_new_tokens: 10,
        seed,
        ..SamplingParams::default()
    }
}

/// The first turn of four conversations: a GRPO group of three sharing a prompt, and a lone
/// prompt of another length.
fn first_turn(policy: &Policy, params: impl Fn(u64) -> SamplingParams) -> Vec<GenerationRequest> {
    let texts = ["2 + 3 =", "2 + 3 =", "name a colour:", "2 + 3 ="];
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| GenerationRequest {
            prompt: policy.tokenizer.encode(text, false).unwrap(),
            params: params(i as u64),
            session: Some(i as u64),
        })
        .collect()
}

/// The next turn of each conversation: its prompt, the tokens sampled, and the environment's
/// answer.
fn next_turn(
    policy: &Policy,
    requests: &[GenerationRequest],
    completions: &[Completion],
    turn: usize,
) -> Vec<GenerationRequest> {
    let answer = policy
        .tokenizer
        .encode(&format!("\nuser: try again ({turn})\n"), false)
        .unwrap();
    requests
        .iter()
        .zip(completions)
        .map(|(r, c)| {
            let mut prompt = r.prompt.clone();
            prompt.extend(&c.generation.tokens);
            prompt.extend(&answer);
            GenerationRequest {
                prompt,
                params: SamplingParams {
                    seed: r.params.seed + 100,
                    ..r.params.clone()
                },
                session: r.session,
            }
        })
        .collect()
}

/// Three turns of the conversations on `engine`, each turn's requests admitted together;
/// every turn's requests and completions.
fn converse(
    rt: &tokio::runtime::Runtime,
    policy: &Policy,
    engine: &ServingEngine,
    params: impl Fn(u64) -> SamplingParams,
) -> Vec<(Vec<GenerationRequest>, Vec<Completion>)> {
    let mut requests = first_turn(policy, params);
    let mut turns = Vec::new();
    for turn in 0..3 {
        let completions: Vec<Completion> = rt
            .block_on(engine.complete(requests.clone()))
            .into_iter()
            .map(|c| c.unwrap())
            .collect();
        let next = next_turn(policy, &requests, &completions, turn);
        turns.push((std::mem::replace(&mut requests, next), completions));
    }
    turns
}

#[test]
fn greedy_multi_turn_completions_equal_the_cpu_engines() {
    let policy = policy(3);
    let rt = runtime();
    let greedy = |seed| params(0.0, 1.0, seed);
    let cpu = engine(&policy, vec![], DecodeWeights::F32, None);
    let free = converse(&rt, &policy, &cpu, greedy);
    // Two ids the free run samples end rows early: EOS handling, ragged rows.
    let eos = vec![
        free[0].1[0].generation.tokens[3],
        free[1].1[2].generation.tokens[5],
    ];
    for eos in [vec![], eos] {
        let cpu = engine(&policy, eos.clone(), DecodeWeights::F32, None);
        let gpu = engine(&policy, eos.clone(), DecodeWeights::F32, host_device());
        let want = converse(&rt, &policy, &cpu, greedy);
        let got = converse(&rt, &policy, &gpu, greedy);
        let mut ended = 0;
        for (turn, ((requests, want), (_, got))) in want.iter().zip(&got).enumerate() {
            for (r, (w, g)) in want.iter().zip(got).enumerate() {
                // Tokens, log-probs (0: greedy), finish reason, text, entropies: all of it.
                assert_eq!(
                    g.generation, w.generation,
                    "eos {eos:?}, turn {turn}, row {r}"
                );
                assert_eq!(g.version, WeightsVersion(0));
                let n = g.generation.tokens.len();
                assert!(n <= requests[r].params.max_new_tokens);
                if g.generation.finish_reason == FinishReason::Eos {
                    assert!(eos.contains(&g.generation.tokens[n - 1]));
                    ended += 1;
                }
            }
        }
        assert_eq!(
            ended > 0,
            !eos.is_empty(),
            "eos {eos:?}: {ended} rows ended"
        );
    }
}

/// Largest gap, over three sampled turns, between each token's behaviour log-prob and the CPU
/// model's score of that token in its whole sequence.
fn sampled_logprob_gap(temperature: f32, top_p: f32) -> f32 {
    let policy = policy(3);
    let rt = runtime();
    let gpu = engine(&policy, vec![], DecodeWeights::F32, host_device());
    let turns = converse(&rt, &policy, &gpu, |seed| params(temperature, top_p, seed));
    let vocab = policy.model.config().vocab_size;
    let mut gap = 0.0f32;
    let mut distinct = Vec::new();
    for (requests, completions) in &turns {
        for (request, c) in requests.iter().zip(completions) {
            let g = &c.generation;
            assert_eq!(g.logprobs.len(), g.tokens.len());
            assert_eq!(
                g.tokens.len(),
                10,
                "no EOS: every row runs to max_new_tokens"
            );
            assert_eq!(g.finish_reason, FinishReason::Length);
            let mut sequence = request.prompt.clone();
            sequence.extend(&g.tokens);
            let logits = cpu_logits(&policy.model, &sequence);
            let p = request.prompt.len();
            for (i, (&token, &lp)) in g.tokens.iter().zip(&g.logprobs).enumerate() {
                let row = &logits[(p - 1 + i) * vocab..(p + i) * vocab];
                let expected = if top_p >= 1.0 {
                    let scaled: Vec<f32> = row.iter().map(|l| l / temperature).collect();
                    token_logprobs(&scaled, token, 0).logprob
                } else {
                    // kaizen's sampler draws some token `a` of the same kept set; log p differs
                    // by the tempered logit gap.
                    let params = params(temperature, top_p, 0);
                    let mut rng = ChaCha8Rng::seed_from_u64(i as u64);
                    let s = kaizen_model::sample(row, &params, &mut rng);
                    s.logprob + (row[token as usize] - row[s.token as usize]) / temperature
                };
                gap = gap.max((lp - expected).abs());
            }
            distinct.push(g.tokens.clone());
        }
    }
    // The rows of the group draw from their own streams.
    let first = &turns[0].1;
    assert_ne!(first[0].generation.tokens, first[1].generation.tokens);
    gap
}

#[test]
fn sampled_behaviour_logprobs_equal_the_cpu_models_scores() {
    for (temperature, top_p) in [(1.0f32, 1.0f32), (0.7, 1.0), (0.8, 0.9)] {
        let gap = sampled_logprob_gap(temperature, top_p);
        assert!(gap < 1e-4, "T {temperature}, top_p {top_p}: gap {gap}");
    }
}

#[test]
fn each_weights_version_is_uploaded_and_stamped() {
    let (first, second) = (policy(3), policy(4));
    let rt = runtime();
    let gpu = engine(&first, vec![], DecodeWeights::F32, host_device());
    let request = first_turn(&first, |seed| params(0.0, 1.0, seed)).remove(2);
    let before = rt.block_on(gpu.complete(vec![request.clone()])).remove(0);
    assert_eq!(before.unwrap().version, WeightsVersion(0));
    assert_eq!(gpu.publish(second.model.clone()), WeightsVersion(1));
    let after = rt
        .block_on(gpu.complete(vec![request.clone()]))
        .remove(0)
        .unwrap();
    assert_eq!(after.version, WeightsVersion(1));
    let cpu = engine(&second, vec![], DecodeWeights::F32, None);
    let want = rt.block_on(cpu.complete(vec![request])).remove(0).unwrap();
    assert_eq!(
        after.generation, want.generation,
        "decoded with the new weights"
    );
}

#[test]
fn options_the_gpu_sampler_lacks_are_refused_by_name() {
    let policy = policy(3);
    let rt = runtime();
    let gpu = engine(&policy, vec![], DecodeWeights::F32, host_device());
    let base = first_turn(&policy, |seed| params(1.0, 1.0, seed)).remove(0);
    let with = |f: &dyn Fn(&mut SamplingParams)| {
        let mut r = base.clone();
        f(&mut r.params);
        r
    };
    let cases: [(GenerationRequest, &str); 4] = [
        (with(&|p| p.top_k = 5), "`top_k`"),
        (with(&|p| p.min_p = 0.1), "`min_p`"),
        (with(&|p| p.stop = vec!["\n".into()]), "`stop`"),
        (with(&|p| p.top_logprobs = Some(2)), "`top_logprobs`"),
    ];
    for (request, name) in cases {
        // A refused request is answered alone; the others in its admission proceed.
        let answers = rt.block_on(gpu.complete(vec![request, base.clone()]));
        let e = answers[0].as_ref().unwrap_err();
        assert!(e.contains(name) && e.contains("actors.device"), "{e}");
        assert!(answers[1].is_ok());
    }
    for (weights, name) in [(DecodeWeights::Int8, "int8"), (DecodeWeights::Bf16, "bf16")] {
        let gpu = engine(&policy, vec![], weights, host_device());
        let e = rt.block_on(gpu.complete(vec![base.clone()])).remove(0);
        let e = e.unwrap_err();
        assert!(
            e.contains(&format!("`actors.decode_weights = \"{name}\"`")),
            "{e}"
        );
    }
}
