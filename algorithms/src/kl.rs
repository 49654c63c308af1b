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
//!
//! # Bounded for any gap
//!
//! k3 exponentiates the log-ratio: once the policy has drifted far from the reference
//! (`log r` in the tens), `exp` overflows f32 and the KL, the loss and the gradient become
//! `inf`. [`kl_estimate`] therefore continues `exp` by its tangent beyond
//! `log r = `[`KL_LOG_RATIO_BOUND`]:
//!
//! ```text
//! exp_b(x) = exp(x)                      x ≤ B
//!          = exp(B) · (1 + (x − B))      x > B          (B = KL_LOG_RATIO_BOUND = 20)
//! k3       = exp_b(log r) − log r − 1
//! ```
//!
//! `exp_b` is continuous with a continuous derivative at `B`, so below the bound the values
//! and gradients are exactly k3's, and above it the estimate keeps growing (linearly) and its
//! gradient keeps pushing the policy back toward the reference with a finite slope
//! `exp(B) − 1`. (Clamping `log r` instead would flip the gradient's sign beyond the bound, and
//! clamping the result, as veRL's `low_var_kl` does, would drop the penalty's gradient where it
//! matters most.) For `log r → −∞` k3 has no overflow (`exp → 0`).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Where `k3`'s `exp(log r)` is continued by its tangent (see the module docs): `exp(20) ≈
/// 4.9e8`, far above any log-ratio a working run sees, far below f32's overflow at 88.7.
pub const KL_LOG_RATIO_BOUND: f32 = 20.0;

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
/// k1 = −log r,   k2 = ½ (log r)²,   k3 = exp_b(log r) − log r − 1
/// ```
///
/// where `exp_b` is `exp` up to [`KL_LOG_RATIO_BOUND`] and its tangent beyond, so the estimate
/// and its gradient are finite for any finite gap (module docs).
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
        KlEstimator::K3 => bounded_exp(log_r.clone(), KL_LOG_RATIO_BOUND) - log_r - 1.0,
    }
}

/// `exp(x)` for `x ≤ bound`, `exp(bound) · (1 + x − bound)` above: finite with a finite
/// gradient for any finite `x`, bit-identical to `exp` below the bound.
fn bounded_exp<const D: usize>(x: Tensor<D>, bound: f32) -> Tensor<D> {
    let clamped = x.clone().clamp_max(bound);
    // (x − bound) above the bound, 0 elsewhere (filled, not subtracted: no −∞ − (−∞) = NaN
    // for x = −∞, and no gradient at or below the bound).
    let at_or_below = x.clone().lower_equal_elem(bound);
    let excess = (x - bound).mask_fill(at_or_below, 0.0);
    clamped.exp() * (excess + 1.0)
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

    /// Guards against the KL penalty overflowing (issue 14.2): once the policy drifts far from
    /// the reference, k3's `exp(log r)` was `inf` and so were the loss and the gradient. Now
    /// they are finite for any gap, unchanged for small gaps, and the gradient still points
    /// back toward the reference.
    #[test]
    fn k3_stays_finite_for_any_gap_and_is_unchanged_for_small_ones() {
        let device = Device::flex().autodiff();
        // log r = ref − logp: 0.5, 19.9, 20, 25, 100, 1000, −1000.
        let logp = [-1.0f32, -20.0, -21.0, -30.0, -101.0, -1001.0, -0.1];
        let reference = [-0.5f32, -0.1, -1.0, -5.0, -1.0, -1.0, -1000.1];
        let logq = tensor(&logp, &device).require_grad();
        let k3 = kl_estimate(logq.clone(), tensor(&reference, &device), KlEstimator::K3);
        let v = values(k3.clone());
        let g = values(logq.grad(&k3.sum().backward()).unwrap());
        assert!(v.iter().chain(&g).all(|x| x.is_finite()), "{v:?} {g:?}");
        let exact = |lr: f32| lr.exp() - lr - 1.0;
        assert_eq!(v[0], exact(0.5), "bit-identical below the bound");
        assert!((v[1] - exact(19.9)).abs() / exact(19.9) < 1e-6);
        assert!((g[0] - (1.0 - 0.5f32.exp())).abs() < 1e-6);
        // Beyond the bound: tangent continuation, slope exp(B) − 1 in log r.
        let b = KL_LOG_RATIO_BOUND;
        let tangent = |lr: f32| b.exp() * (1.0 + lr - b) - lr - 1.0;
        for (i, lr) in [(3, 25.0f32), (4, 100.0), (5, 1000.0)] {
            assert!(
                (v[i] - tangent(lr)).abs() / tangent(lr) < 1e-5,
                "{i}: {v:?}"
            );
            assert!(
                (g[i] - (1.0 - b.exp())).abs() / b.exp() < 1e-6,
                "{i}: gradient {g:?} must keep pushing log π_θ up"
            );
        }
        assert!(
            v[3] < v[4] && v[4] < v[5],
            "still increasing in the gap: {v:?}"
        );
        // log r = −1000: exp underflows to 0, k3 = 999, gradient 1.
        assert!((v[6] - 999.0).abs() < 1e-3);
        assert!((g[6] - 1.0).abs() < 1e-6);
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
