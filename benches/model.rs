//! Model throughput benches (criterion): generation, GRPO-group generation with and without a
//! shared prefill, and teacher-forced forward + backward.
//!
//! Config (issue #3): hidden 256, 4 layers, 4 heads, 2 KV heads, MLP 768, vocab 512.
//! Run: `cargo bench --bench model` (add `--features ndarray` to also measure burn's NdArray
//! backend). Every bench runs on each CPU backend compiled in; throughput is in tokens.

use std::hint::black_box;

use burn::tensor::Device;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kaizen_model::{
    GenerateOptions, GenerationRequest, Llama, LlamaConfig, SamplingParams, ScoreBatch, generate,
    score,
};

#[allow(clippy::vec_init_then_push)] // one push per CPU backend compiled in
fn backends() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut out = Vec::new();
    #[cfg(feature = "flex")]
    out.push(("flex", Device::flex()));
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)]
    out.push(("ndarray", Device::ndarray()));
    out
}

fn config() -> LlamaConfig {
    LlamaConfig::tiny(512)
}

fn prompt(len: usize, salt: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 31 + salt * 17) % 500) as u32)
        .collect()
}

fn sampling(max_new_tokens: usize, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        max_new_tokens,
        seed,
        ..SamplingParams::default()
    }
}

fn bench_generate(c: &mut Criterion) {
    let mut group = c.benchmark_group("generate");
    group.sample_size(10);
    let (batch, prompt_len, new) = (32, 32, 64);
    group.throughput(Throughput::Elements((batch * new) as u64));
    for (name, device) in backends() {
        let model = Llama::init(&config(), &device, 0).expect("valid config");
        let requests: Vec<_> = (0..batch)
            .map(|b| GenerationRequest {
                session: None,
                prompt: prompt(prompt_len, b),
                params: sampling(new, b as u64),
            })
            .collect();
        group.bench_function(BenchmarkId::new("b32_p32_n64", name), |bench| {
            bench.iter(|| {
                black_box(generate(&model, None, &requests, &GenerateOptions::default()).unwrap())
            })
        });
    }
    group.finish();
}

fn bench_generate_group(c: &mut Criterion) {
    let mut group = c.benchmark_group("generate_group");
    group.sample_size(10);
    let (g, prompt_len, new) = (8, 256, 16);
    group.throughput(Throughput::Elements((g * new) as u64));
    for (name, device) in backends() {
        let model = Llama::init(&config(), &device, 0).expect("valid config");
        let requests: Vec<_> = (0..g)
            .map(|i| GenerationRequest {
                session: None,
                prompt: prompt(prompt_len, 0),
                params: sampling(new, i as u64),
            })
            .collect();
        for share in [true, false] {
            let options = GenerateOptions {
                share_prefill: share,
                ..GenerateOptions::default()
            };
            let id = if share {
                "shared_prefill"
            } else {
                "separate_prefill"
            };
            group.bench_function(
                BenchmarkId::new(format!("g8_p256_n16/{id}"), name),
                |bench| {
                    bench.iter(|| black_box(generate(&model, None, &requests, &options).unwrap()))
                },
            );
        }
    }
    group.finish();
}

fn bench_score_backward(c: &mut Criterion) {
    let mut group = c.benchmark_group("score_backward");
    group.sample_size(10);
    let (batch, seq) = (8, 256);
    group.throughput(Throughput::Elements((batch * seq) as u64));
    for (name, device) in backends() {
        let device = device.autodiff();
        let model = Llama::init(&config(), &device, 0).expect("valid config");
        let scores = ScoreBatch {
            sequences: (0..batch).map(|b| prompt(seq, b)).collect(),
            loss_masks: (0..batch)
                .map(|_| (0..seq).map(|t| t > 0).collect())
                .collect(),
        };
        group.bench_function(BenchmarkId::new("b8_s256", name), |bench| {
            bench.iter(|| {
                let s = score(&model, &scores, 1.0, false).unwrap();
                black_box(s.logprobs.mean().backward())
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_generate,
    bench_generate_group,
    bench_score_backward
);
criterion_main!(benches);
