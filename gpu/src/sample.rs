//! The batched sampler's math, on the host: one row of logits → one token and its behaviour
//! log-prob, exactly as the `sample_rows` kernel (`decode_kernels.rs`) computes it, and the
//! per-row random stream. `decode_ops.rs` runs it for [`crate::train::HostOps`]; the CUDA
//! kernel follows it step for step.
//!
//! Semantics are `kaizen_model::sample`'s for temperature and top-p: with `T` the temperature,
//! `w_i = exp((l_i − max l) / T)`; top-p keeps the tokens `K` of largest `w` whose mass first
//! reaches `top_p · Σ w`; the token is drawn from `w` restricted to `K`, and its log-prob is
//! `(l_tok − max l) / T − log Σ_{j∈K} w_j`; `T = 0` is greedy (arg-max, lowest id on ties,
//! log-prob 0). Two departures, both for a GPU without a sort: the kept set is found by
//! bisecting a weight threshold (`{w ≥ τ}`, [`TOP_P_BISECTIONS`] halvings; it differs from
//! the sorted prefix only when weights tie at the cut or lie within `2⁻⁴⁰` of it), and the
//! draw walks the kept tokens in id order (the CPU walks them by decreasing weight when a
//! filter is on), so the same uniform can pick another token than the CPU sampler; the
//! distribution and every log-prob are the same.

/// Threads per block of `sample_rows`; the host mirror splits the vocabulary into the same
/// contiguous chunks, one per thread, so the draw sums in the same order.
pub const SAMPLE_THREADS: usize = 256;

/// Halvings of the top-p threshold search over `(0, 1]`.
pub const TOP_P_BISECTIONS: usize = 40;

/// How every row of a batch samples (TRL's `GRPOConfig` names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParams {
    /// Softmax temperature; `0` is greedy decoding.
    pub temperature: f32,
    /// Nucleus mass kept; `1` keeps every token.
    pub top_p: f32,
}

impl Default for SampleParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
        }
    }
}

/// The uniform in `[0, 1)` that row `seed` draws at `step`: SplitMix64 of
/// `seed + (step + 1) · φ` (φ the 64-bit golden ratio), top 24 bits (an f32 holds them exactly).
/// Counter-based, so a row's draws depend on its seed and step only, not on the batch.
pub fn uniform(seed: u64, step: u64) -> f32 {
    let mut z = seed.wrapping_add(step.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

/// The index of the largest logit, lowest on ties (`torch.argmax`, `kaizen_model::argmax`).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// Samples one row: `(token, behaviour log-prob)` for the uniform `u` (see the module docs).
/// `weights` is scratch of the row's length (the kernel's `[rows, vocab]` buffer).
///
/// # Panics
/// If `logits` is empty or `weights` is shorter.
pub fn sample_row(logits: &[f32], weights: &mut [f32], u: f32, params: SampleParams) -> (u32, f32) {
    assert!(!logits.is_empty() && weights.len() >= logits.len());
    if params.temperature == 0.0 {
        return (argmax(logits) as u32, 0.0);
    }
    let vocab = logits.len();
    let inv_t = 1.0 / params.temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0f64;
    for (w, &l) in weights.iter_mut().zip(logits) {
        *w = ((l - max) * inv_t).exp();
        total += f64::from(*w);
    }
    let weights = &weights[..vocab];
    // Largest τ with Σ_{w ≥ τ} w ≥ top_p · Σ w; τ = 0 keeps every token.
    let mut tau = 0.0f32;
    if params.top_p < 1.0 {
        let target = f64::from(params.top_p) * total;
        let mass = |t: f32| -> f64 {
            weights
                .iter()
                .filter(|&&w| w >= t)
                .map(|&w| f64::from(w))
                .sum()
        };
        let (mut lo, mut hi) = (0.0f32, 1.0f32);
        if mass(hi) >= target {
            lo = hi;
        } else {
            for _ in 0..TOP_P_BISECTIONS {
                let mid = 0.5 * (lo + hi);
                if mass(mid) >= target {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
        }
        tau = lo;
    }
    let kept = |w: f32| w > 0.0 && w >= tau;
    // Per-thread contiguous chunks, summed in order, as the kernel does.
    let chunk = vocab.div_ceil(SAMPLE_THREADS);
    let sums: Vec<f64> = weights
        .chunks(chunk)
        .map(|c| c.iter().filter(|&&w| kept(w)).map(|&w| f64::from(w)).sum())
        .collect();
    let kept_mass: f64 = sums.iter().sum();
    let target = f64::from(u) * kept_mass;
    let mut acc = 0.0f64;
    let mut token = None;
    let mut last = 0;
    'chunks: for (c, &sum) in sums.iter().enumerate() {
        if acc + sum <= target {
            acc += sum;
            continue;
        }
        for (i, &w) in weights.iter().enumerate().skip(c * chunk).take(chunk) {
            if kept(w) {
                acc += f64::from(w);
                last = i;
                if acc > target {
                    token = Some(i);
                    break 'chunks;
                }
            }
        }
    }
    // Rounding left `target` beyond the last sum: the last kept token.
    let token =
        token.unwrap_or_else(|| (0..vocab).rev().find(|&i| kept(weights[i])).unwrap_or(last));
    let score = f64::from((logits[token] - max) * inv_t);
    (token as u32, (score - kept_mass.ln()) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| (uniform(seed, i as u64) - 0.5) * 8.0)
            .collect()
    }

    #[test]
    fn uniforms_are_in_range_and_depend_on_seed_and_step() {
        let a: Vec<f32> = (0..1000).map(|s| uniform(7, s)).collect();
        assert!(a.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        assert_ne!(uniform(7, 3), uniform(8, 3));
        assert_eq!(uniform(7, 3), uniform(7, 3));
    }

    #[test]
    fn greedy_is_the_argmax_with_zero_logprob() {
        let l = vec![0.5, 2.0, 2.0, -1.0];
        let mut w = vec![0.0; 4];
        let params = SampleParams {
            temperature: 0.0,
            top_p: 1.0,
        };
        assert_eq!(sample_row(&l, &mut w, 0.3, params), (1, 0.0));
    }

    #[test]
    fn logprob_is_the_tempered_log_softmax_and_matches_kaizen_sampler() {
        let l = logits(1000, 1);
        let mut w = vec![0.0; l.len()];
        for t in [0.5f32, 1.0, 1.3] {
            for step in 0..20 {
                let params = SampleParams {
                    temperature: t,
                    top_p: 1.0,
                };
                let (tok, lp) = sample_row(&l, &mut w, uniform(3, step), params);
                let scaled: Vec<f32> = l.iter().map(|x| x / t).collect();
                let expected = kaizen_model::token_logprobs(&scaled, tok, 0).logprob;
                assert!((lp - expected).abs() < 1e-5, "T {t}: {lp} vs {expected}");
            }
        }
    }

    #[test]
    fn top_p_keeps_the_cpu_samplers_set_and_renormalises() {
        use rand_chacha_free::cpu_sample;
        let l = logits(500, 2);
        let mut w = vec![0.0; l.len()];
        for top_p in [0.3f32, 0.8, 0.95] {
            let params = SampleParams {
                temperature: 0.9,
                top_p,
            };
            for step in 0..30 {
                let (tok, lp) = sample_row(&l, &mut w, uniform(5, step), params);
                // kaizen's sampler draws some token `a` of the same kept set: log p(b) differs
                // from log p(a) by the tempered logit gap.
                let (a, lp_a) = cpu_sample(&l, 0.9, top_p, step);
                let expected = lp_a + (l[tok as usize] - l[a as usize]) / 0.9;
                assert!(
                    (lp - expected).abs() < 1e-4,
                    "top_p {top_p}: {lp} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn sampling_frequencies_follow_the_distribution() {
        let l = vec![0.0f32, 1.0, 2.0, 0.5];
        let mut w = vec![0.0; 4];
        let params = SampleParams::default();
        let mut counts = [0usize; 4];
        let n = 40_000;
        for step in 0..n {
            counts[sample_row(&l, &mut w, uniform(11, step), params).0 as usize] += 1;
        }
        let z: f32 = l.iter().map(|x| x.exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let p = l[i].exp() / z;
            let f = c as f32 / n as f32;
            assert!((f - p).abs() < 0.01, "token {i}: {f} vs {p}");
        }
    }

    /// kaizen's CPU sampler, seeded from `step`.
    mod rand_chacha_free {
        pub fn cpu_sample(l: &[f32], t: f32, top_p: f32, step: u64) -> (u32, f32) {
            let params = kaizen_model::SamplingParams {
                temperature: t,
                top_p,
                ..Default::default()
            };
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(step);
            let s = kaizen_model::sample(l, &params, &mut rng);
            (s.token, s.logprob)
        }
    }
}
