//! Per-token estimators of the KL divergence between two policies from sampled tokens.
//!
//! Only the log-probs of the tokens actually sampled are known, not whole distributions, so the
//! KL divergence is estimated by Monte Carlo ([Schulman, "Approximating KL
//! divergence"](http://joschu.net/blog/kl-approx.html)). For tokens `x ~ q` and the ratio
//! `r = p(x) / q(x)`, each estimator's mean over tokens estimates `KL(q ‖ p)`:
//!
//! ```text
//! k1 = −log r                 unbiased, high variance, can be negative per token
//! k2 = ½ (log r)²             biased (low when q ≈ p), low variance, ≥ 0
//! k3 = (r − 1) − log r        unbiased, low variance, ≥ 0 per token (GRPO's choice)
//! ```

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Which KL estimator to use (the `k1`/`k2`/`k3` of Schulman's note).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `k1 = log q − log p`.
    K1,
    /// `k2 = ½ (log q − log p)²`.
    K2,
    /// `k3 = exp(log p − log q) − (log p − log q) − 1` (the GRPO paper's, TRL's default).
    #[default]
    K3,
}

/// Per-token estimate of `KL(q ‖ p)` from tokens sampled from `q`, given their log-probs
/// `sampled_logprobs = log q(x)` and `other_logprobs = log p(x)`; with `log r = log p − log q`:
///
/// ```text
/// k1 = −log r,   k2 = ½ (log r)²,   k3 = exp(log r) − log r − 1
/// ```
///
/// For the GRPO penalty `KL(π_θ ‖ π_ref)` pass `(log π_θ, log π_ref)`, which gives TRL's
/// `exp(ref − logp) − (ref − logp) − 1` for k3. Differentiable in both inputs.
///
/// # Shapes
/// Both inputs and the output: `[d_1, …, d_D]` (typically `[n]` over scored tokens).
///
/// # Panics
/// When the two shapes differ (a programmer error: both come from the same token list).
pub fn kl_estimate<const D: usize>(
    sampled_logprobs: Tensor<D>,
    other_logprobs: Tensor<D>,
    estimator: KlEstimator,
) -> Tensor<D> {
    assert_eq!(
        sampled_logprobs.dims(),
        other_logprobs.dims(),
        "kl_estimate: log-prob shapes differ"
    );
    let log_r = other_logprobs - sampled_logprobs;
    match estimator {
        KlEstimator::K1 => log_r.neg(),
        KlEstimator::K2 => log_r.square().mul_scalar(0.5),
        KlEstimator::K3 => log_r.clone().exp() - log_r - 1.0,
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::grpo::tests::{tensor, values};

    #[test]
    fn estimators_match_their_formulas() {
        let device = Device::flex();
        let logq = [-1.0f32, -0.5, -2.0, -0.3];
        let logp = [-1.5f32, -0.5, -1.0, -0.9];
        for (est, f) in [
            (KlEstimator::K1, (|lr: f32| -lr) as fn(f32) -> f32),
            (KlEstimator::K2, |lr| 0.5 * lr * lr),
            (KlEstimator::K3, |lr| lr.exp() - lr - 1.0),
        ] {
            let got = values(kl_estimate(
                tensor(&logq, &device),
                tensor(&logp, &device),
                est,
            ));
            for i in 0..logq.len() {
                let want = f(logp[i] - logq[i]);
                assert!((got[i] - want).abs() < 1e-6, "{est:?} {i}: {got:?}");
            }
        }
    }

    #[test]
    fn k1_sign_follows_the_log_ratio_and_k3_is_never_negative() {
        let device = Device::flex();
        // q gives the sampled token more mass than p: k1 > 0; less mass: k1 < 0.
        let logq = tensor(&[-0.1, -3.0, -1.0], &device);
        let logp = tensor(&[-2.0, -0.2, -1.0], &device);
        let k1 = values(kl_estimate(logq.clone(), logp.clone(), KlEstimator::K1));
        assert!(k1[0] > 0.0 && k1[1] < 0.0 && k1[2] == 0.0, "{k1:?}");
        let k3 = values(kl_estimate(logq.clone(), logp.clone(), KlEstimator::K3));
        assert!(k3.iter().all(|&k| k >= 0.0), "{k3:?}");
        assert_eq!(k3[2], 0.0);
        // k3 at log r = 2.8: e^2.8 − 2.8 − 1.
        assert!((k3[1] - (2.8f32.exp() - 3.8)).abs() < 1e-5);
        let k2 = values(kl_estimate(logq, logp, KlEstimator::K2));
        assert!((k2[0] - 0.5 * 1.9 * 1.9).abs() < 1e-6);
    }

    #[test]
    fn k3_is_differentiable_with_the_analytic_gradient() {
        // d/d log q of exp(log p − log q) − (log p − log q) − 1 = 1 − exp(log p − log q).
        let device = Device::flex().autodiff();
        let logq = tensor(&[-1.0, -0.2], &device).require_grad();
        let logp = tensor(&[-0.5, -0.9], &device);
        let kl = kl_estimate(logq.clone(), logp, KlEstimator::K3).sum();
        let grads = kl.backward();
        let g = values(logq.grad(&grads).unwrap());
        let want = [1.0 - 0.5f32.exp(), 1.0 - (-0.7f32).exp()];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
    }
}
