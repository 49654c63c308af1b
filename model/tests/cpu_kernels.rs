//! kaizen's CPU kernels compute what burn's ops compute: the same model with the kernels on and
//! off (`Llama::with_cpu_kernels`) gives the same logits, KV-cache states, tokens and log-probs.

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use common::{device, max_abs_diff, tiny_config};
use kaizen_model::{
    DecodeBatch, GenerateOptions, GenerationRequest, Llama, LlamaConfig, SamplingParams, generate,
};

/// The test configs: Qwen2-style (q/k/v bias, untied head) and Llama-style (tied, no bias).
fn configs() -> Vec<LlamaConfig> {
    vec![
        tiny_config(),
        LlamaConfig {
            attention_bias: false,
            tie_word_embeddings: true,
            num_key_value_heads: 1,
            ..tiny_config()
        },
    ]
}

/// The same weights, with kaizen's kernels and with burn's ops.
fn both(config: &LlamaConfig, seed: u64) -> (Llama, Llama) {
    let fast = Llama::init(config, &device(), seed).unwrap();
    assert!(fast.uses_cpu_kernels(), "kernels are on by default");
    let burn = fast.clone().with_cpu_kernels(false);
    (fast, burn)
}

fn tokens(rows: &[Vec<u32>]) -> Tensor<2, Int> {
    let data: Vec<i64> = rows.iter().flatten().map(|&t| t as i64).collect();
    Tensor::from_data(
        TensorData::new(data, [rows.len(), rows[0].len()]),
        &device(),
    )
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn full_forward_logits_equal_burn_ops() {
    for config in configs() {
        let (fast, burn) = both(&config, 31);
        let rows: Vec<Vec<u32>> = (0..3)
            .map(|b| (0..21).map(|i| ((i * 7 + b * 50) % 290) as u32).collect())
            .collect();
        let diff = max_abs_diff(
            &values(fast.forward(tokens(&rows))),
            &values(burn.forward(tokens(&rows))),
        );
        assert!(diff < 1e-4, "logits differ by {diff}");
    }
}

#[test]
fn kv_cache_decoding_on_kernels_equals_burn_full_forward() {
    for config in configs() {
        let (fast, burn) = both(&config, 32);
        let h = config.hidden_size;
        // Two left-padded rows: row 1 starts 5 columns later.
        let seq: Vec<u32> = (0..70).map(|i| (i * 37 % 290) as u32).collect();
        let short = seq[5..].to_vec();
        let full = [
            values(burn.forward(tokens(std::slice::from_ref(&seq)))),
            values(burn.forward(tokens(std::slice::from_ref(&short)))),
        ];
        let vocab = config.vocab_size;
        let mut cache = fast.new_cache(vec![0, 5]);
        let mut padded_short = vec![0; 5];
        padded_short.extend_from_slice(&short[..7]);
        let hidden = fast.forward_hidden(
            tokens(&[seq[..12].to_vec(), padded_short]),
            &[],
            Some(&mut cache),
        );
        let last = |hidden: Tensor<3>| {
            let [rows, s, _] = hidden.dims();
            values(fast.logits(hidden.slice([0..rows, s - 1..s, 0..h]).reshape([rows, h])))
        };
        let mut logits = last(hidden);
        // Decode past a 64-column chunk boundary.
        for (col, &token) in seq.iter().enumerate().skip(12) {
            for (row, position) in [(0, col - 1), (1, col - 6)] {
                let want = &full[row][position * vocab..(position + 1) * vocab];
                let got = &logits[row * vocab..(row + 1) * vocab];
                let diff = max_abs_diff(got, want);
                assert!(
                    diff < 1e-4,
                    "row {row} column {col}: logits differ by {diff}"
                );
            }
            let next = vec![vec![token], vec![token]];
            logits = last(fast.forward_hidden(tokens(&next), &[], Some(&mut cache)));
        }
        assert_eq!(cache.len(), seq.len());
    }
}

#[test]
fn continuous_batching_on_kernels_gives_burn_tokens_and_logprobs() {
    for config in configs() {
        let (fast, burn) = both(&config, 33);
        let options = GenerateOptions {
            entropy: true,
            ..GenerateOptions::default()
        };
        let requests: Vec<GenerationRequest> = [3usize, 17, 1, 9, 17]
            .iter()
            .enumerate()
            .map(|(i, &len)| GenerationRequest {
                session: None,
                prompt: (0..len).map(|t| ((t * 13 + i) % 280) as u32).collect(),
                params: SamplingParams {
                    temperature: if i % 2 == 0 { 0.0 } else { 0.8 },
                    max_new_tokens: 6 + 4 * i,
                    seed: i as u64,
                    ..SamplingParams::default()
                },
            })
            .collect();
        let want = generate(&burn, None, &requests, &options).unwrap();
        // The same requests admitted over time on the kernels (rows finish, are compacted and
        // new ones are appended to the host KV cache).
        let mut batch = DecodeBatch::new(fast.clone(), None, options.clone());
        batch
            .add(vec![(0, requests[0].clone()), (1, requests[1].clone())])
            .unwrap();
        let mut got = vec![None; requests.len()];
        let mut next = 2;
        while batch.active() > 0 || next < requests.len() {
            if next < requests.len() {
                batch
                    .add(vec![(next as u64, requests[next].clone())])
                    .unwrap();
                next += 1;
            }
            batch.step();
            for (id, g) in batch.take_finished() {
                got[id as usize] = Some(g);
            }
        }
        for (i, (g, w)) in got.into_iter().zip(&want).enumerate() {
            let g = g.unwrap();
            assert_eq!(g.tokens, w.tokens, "request {i}");
            let gap = max_abs_diff(&g.logprobs, &w.logprobs);
            assert!(gap < 1e-4, "request {i}: log-probs differ by {gap}");
            let gap = max_abs_diff(&g.entropies, &w.entropies);
            assert!(gap < 1e-4, "request {i}: entropies differ by {gap}");
        }
    }
}

#[test]
fn autodiff_models_use_burn_ops() {
    // Under autodiff the kernels never run: the forward pass stays differentiable.
    let model = Llama::init(&tiny_config(), &device().autodiff(), 34).unwrap();
    let logits = model.forward(tokens(&[vec![1, 2, 3]]).to_device(&device().autodiff()));
    let grads = logits.sum().backward();
    let embed_grad = model.embed_tokens.grad(&grads);
    assert!(embed_grad.is_some(), "gradients reach the embedding");
}
