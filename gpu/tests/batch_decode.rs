//! The batched GPU sampler's driver ([`BatchDecoder`]) run on [`HostOps`] — the CPU mirror of
//! its kernels — generates what kaizen's CPU generation generates: the same greedy tokens, EOS
//! handling and ragged rows as `kaizen_model::generate`, and behaviour log-probs equal to the
//! CPU model's for the tokens it sampled (temperature, top-p). No GPU needed: this checks the
//! driver's cache indexing (slots, positions, the prompt fork), row bookkeeping and the
//! sampler's math on every CI run.

#[path = "../../model/tests/common.rs"]
mod model_common;

use burn::tensor::Device;
use kaizen_gpu::batch_decode::{BatchDecoder, DecodeOptions, DecodeRequest, Finish};
use kaizen_gpu::sample::SampleParams;
use kaizen_gpu::train::HostOps;
use kaizen_model::{
    GenerateOptions, GenerationRequest, Llama, LlamaConfig, SamplingParams, generate,
    token_logprobs,
};
use model_common::cpu_logits;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// `model/tests/common.rs`'s tiny model (2 layers of width 64, 4 query heads over 2 key-value
/// heads); `tied` picks a tied output head without biases or an untied one with q/k/v biases.
fn tiny_config(tied: bool) -> LlamaConfig {
    LlamaConfig {
        tie_word_embeddings: tied,
        attention_bias: !tied,
        ..model_common::tiny_config()
    }
}

fn model(tied: bool) -> Llama {
    Llama::init(&tiny_config(tied), &Device::default(), 5).unwrap()
}

/// Two GRPO groups of 3 and 2 rows and a lone prompt of another length.
fn requests() -> Vec<DecodeRequest> {
    let prompts: [&[u32]; 6] = [
        &[11, 12, 13, 14, 15, 16, 17],
        &[40, 41, 42, 43],
        &[11, 12, 13, 14, 15, 16, 17],
        &[7, 8, 9, 10, 250, 251, 252, 253, 254, 2],
        &[11, 12, 13, 14, 15, 16, 17],
        &[40, 41, 42, 43],
    ];
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| DecodeRequest {
            prompt: p.to_vec(),
            seed: 100 + i as u64,
        })
        .collect()
}

fn options(temperature: f32, top_p: f32, eos: Vec<u32>) -> DecodeOptions {
    DecodeOptions {
        sample: SampleParams { temperature, top_p },
        max_new_tokens: 9,
        eos_token_ids: eos,
    }
}

/// kaizen's CPU generation, greedy.
fn cpu_greedy(model: &Llama, requests: &[DecodeRequest], eos: Vec<u32>) -> Vec<Vec<u32>> {
    let cpu: Vec<GenerationRequest> = requests
        .iter()
        .map(|r| GenerationRequest {
            prompt: r.prompt.clone(),
            params: SamplingParams::greedy(9),
            session: None,
        })
        .collect();
    let options = GenerateOptions {
        eos_token_ids: eos,
        ..Default::default()
    };
    generate(model, None, &cpu, &options)
        .unwrap()
        .into_iter()
        .map(|g| g.tokens)
        .collect()
}

#[test]
fn greedy_tokens_equal_kaizen_cpu_generation() {
    for tied in [false, true] {
        let model = model(tied);
        let decoder = BatchDecoder::new(HostOps, model.config(), &model.to_named()).unwrap();
        let requests = requests();
        let (ours, stats) = decoder
            .generate(&requests, &options(0.0, 1.0, vec![]))
            .unwrap();
        let expected = cpu_greedy(&model, &requests, vec![]);
        for (r, (got, want)) in ours.iter().zip(&expected).enumerate() {
            assert_eq!(&got.tokens, want, "tied {tied}, row {r}");
            assert!(got.logprobs.iter().all(|&l| l == 0.0));
            assert_eq!(got.finish, Finish::Length);
        }
        // Each distinct prompt prefilled once: 7 + 4 + 10 tokens.
        assert_eq!(stats.prefill_tokens, 21);
        assert_eq!(stats.decode_steps, 8);
        assert_eq!(stats.sampled_tokens, 6 * 9);
    }
}

#[test]
fn eos_ends_rows_at_different_lengths_as_on_the_cpu() {
    let model = model(false);
    let decoder = BatchDecoder::new(HostOps, model.config(), &model.to_named()).unwrap();
    let requests = requests();
    let free = cpu_greedy(&model, &requests, vec![]);
    // Row 1's third token and row 3's fifth end their rows (and any other row that meets them).
    let eos = vec![free[1][2], free[3][4]];
    let (ours, _) = decoder
        .generate(&requests, &options(0.0, 1.0, eos.clone()))
        .unwrap();
    let expected = cpu_greedy(&model, &requests, eos.clone());
    let mut lengths = Vec::new();
    for (r, (got, want)) in ours.iter().zip(&expected).enumerate() {
        assert_eq!(&got.tokens, want, "row {r}");
        let ended = got.tokens.last().is_some_and(|t| eos.contains(t));
        assert_eq!(got.finish == Finish::Eos, ended, "row {r}");
        lengths.push(got.tokens.len());
    }
    assert_eq!(lengths[1], 3);
    assert!(lengths[3] <= 5);
    assert!(
        lengths.contains(&9),
        "some row runs to max_new_tokens: {lengths:?}"
    );
}

/// Largest gap between each sampled token's behaviour log-prob and the CPU model's for the
/// same token (the whole sequence scored by the CPU path), and the number of distinct
/// completions.
fn sampled_logprob_gap(temperature: f32, top_p: f32) -> (f32, usize) {
    let model = model(false);
    let vocab = model.config().vocab_size;
    let decoder = BatchDecoder::new(HostOps, model.config(), &model.to_named()).unwrap();
    let requests = requests();
    let (ours, _) = decoder
        .generate(&requests, &options(temperature, top_p, vec![]))
        .unwrap();
    let mut gap = 0.0f32;
    for (request, got) in requests.iter().zip(&ours) {
        let mut sequence = request.prompt.clone();
        sequence.extend(&got.tokens);
        let logits = cpu_logits(&model, &sequence);
        let p = request.prompt.len();
        for (i, (&token, &lp)) in got.tokens.iter().zip(&got.logprobs).enumerate() {
            let row = &logits[(p - 1 + i) * vocab..(p + i) * vocab];
            let expected = if top_p >= 1.0 {
                let scaled: Vec<f32> = row.iter().map(|l| l / temperature).collect();
                token_logprobs(&scaled, token, 0).logprob
            } else {
                // kaizen's sampler draws some token `a` of the same kept set; log p differs
                // by the tempered logit gap.
                let params = SamplingParams {
                    temperature,
                    top_p,
                    ..Default::default()
                };
                let s =
                    kaizen_model::sample(row, &params, &mut ChaCha8Rng::seed_from_u64(i as u64));
                s.logprob + (row[token as usize] - row[s.token as usize]) / temperature
            };
            gap = gap.max((lp - expected).abs());
        }
    }
    let mut distinct: Vec<&Vec<u32>> = ours.iter().map(|c| &c.tokens).collect();
    distinct.sort();
    distinct.dedup();
    (gap, distinct.len())
}

#[test]
fn sampled_logprobs_equal_the_cpu_models_at_temperature() {
    for t in [0.7f32, 1.0, 1.3] {
        let (gap, distinct) = sampled_logprob_gap(t, 1.0);
        assert!(gap < 1e-4, "T {t}: gap {gap}");
        // Rows sharing a prompt draw from their own streams.
        assert_eq!(distinct, 6, "T {t}");
    }
}

#[test]
fn top_p_logprobs_are_renormalised_over_the_cpu_samplers_kept_set() {
    for top_p in [0.5f32, 0.9] {
        let (gap, _) = sampled_logprob_gap(0.8, top_p);
        assert!(gap < 1e-4, "top_p {top_p}: gap {gap}");
    }
}

#[test]
fn a_rows_tokens_do_not_depend_on_the_rest_of_the_batch() {
    let model = model(false);
    let decoder = BatchDecoder::new(HostOps, model.config(), &model.to_named()).unwrap();
    let requests = requests();
    let options = options(1.0, 0.9, vec![]);
    let (all, _) = decoder.generate(&requests, &options).unwrap();
    for (r, request) in requests.iter().enumerate() {
        let (alone, _) = decoder
            .generate(std::slice::from_ref(request), &options)
            .unwrap();
        assert_eq!(alone[0], all[r], "row {r}");
    }
}

#[test]
fn bad_requests_are_input_errors() {
    let model = model(false);
    let decoder = BatchDecoder::new(HostOps, model.config(), &model.to_named()).unwrap();
    let ok = options(1.0, 1.0, vec![]);
    let run = |requests: &[DecodeRequest], options: &DecodeOptions| {
        decoder.generate(requests, options).unwrap_err().to_string()
    };
    let one = |prompt: Vec<u32>| vec![DecodeRequest { prompt, seed: 0 }];
    assert!(run(&one(vec![]), &ok).contains("empty prompt"));
    assert!(run(&one(vec![300]), &ok).contains("token id 300"));
    assert!(run(&[], &ok).contains("0 requests"));
    let long = DecodeOptions {
        max_new_tokens: 250,
        ..ok.clone()
    };
    assert!(run(&one(vec![1; 10]), &long).contains("exceeds the context"));
    let bad_p = options(1.0, 0.0, vec![]);
    assert!(run(&one(vec![1]), &bad_p).contains("top_p"));
    let mut weights = model.to_named();
    weights.retain(|(n, _)| n != "model.norm.weight");
    let e = BatchDecoder::new(HostOps, model.config(), &weights)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model.norm.weight"), "{e}");
}
