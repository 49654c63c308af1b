//! Supervised fine-tuning: the negative log-likelihood of demonstration tokens.
//!
//! The warm start before RL (the "meta-skill" stage of SELF,
//! [Lu et al. 2023](https://arxiv.org/abs/2310.00533)): maximise `log π_θ` of the assistant tokens
//! of demonstrations. As in [`crate::grpo_loss`], tokens are a flat list of the trained tokens
//! only (system, user and environment tokens are absent, so there is no mask) and the mean is
//! taken over the tokens of the whole optimizer step, so micro-batch losses add up to the step
//! loss exactly.

use burn::tensor::Tensor;
use serde::Serialize;

use crate::Error;
use crate::grpo::read;

/// What [`sft_loss`] returns.
#[derive(Debug, Clone)]
pub struct SftOutput {
    /// This micro-batch's share of the step loss, `[1]`.
    pub loss: Tensor<1>,
    /// Diagnostics of this micro-batch; combine a step's with [`SftMetrics::merge`].
    pub metrics: SftMetrics,
}

/// Diagnostics of one SFT micro-batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SftMetrics {
    /// The value of [`SftOutput::loss`] (adds up over a step's micro-batches).
    pub loss: f32,
    /// Mean negative log-likelihood (nats per token) of this micro-batch's tokens.
    pub nll: f32,
    /// Number of tokens in the micro-batch.
    pub num_tokens: usize,
}

impl SftMetrics {
    /// The metrics of two micro-batches of the same step taken together.
    pub fn merge(self, other: Self) -> Self {
        let (a, b) = (self.num_tokens as f64, other.num_tokens as f64);
        let nll = (f64::from(self.nll) * a + f64::from(other.nll) * b) / (a + b).max(1.0);
        Self {
            loss: self.loss + other.loss,
            nll: nll as f32,
            num_tokens: self.num_tokens + other.num_tokens,
        }
    }
}

/// The token-mean negative log-likelihood of a micro-batch, normalised by the step:
///
/// ```text
/// loss = −1/T · Σ_t log π_θ(x_t)        T = `num_tokens` of the whole optimizer step
/// ```
///
/// # Shapes
/// `logprobs: [n]` (differentiable, from teacher-forced scoring); the loss is `[1]`.
///
/// # Errors
/// [`Error::NoTokens`] for `n = 0`, [`Error::Normalizer`] when `num_tokens < n`,
/// [`Error::Read`] when the metrics cannot be read back.
pub fn sft_loss(logprobs: Tensor<1>, num_tokens: usize) -> Result<SftOutput, Error> {
    let [n] = logprobs.dims();
    if n == 0 {
        return Err(Error::NoTokens);
    }
    if num_tokens < n {
        return Err(Error::Normalizer {
            field: "num_tokens",
            value: num_tokens,
            in_batch: n,
        });
    }
    let nll_sum = logprobs.sum().neg();
    let loss = nll_sum.clone() / num_tokens as f64;
    let nll = read("nll", nll_sum.detach())?[0] / n as f32;
    let metrics = SftMetrics {
        loss: read("loss", loss.clone().detach())?[0],
        nll,
        num_tokens: n,
    };
    Ok(SftOutput { loss, metrics })
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::grpo::tests::{tensor, values};

    #[test]
    fn loss_is_the_step_token_mean_nll() {
        let device = Device::flex().autodiff();
        let logprobs = tensor(&[-0.5, -1.0, -2.5], &device).require_grad();
        // This micro-batch holds 3 of the step's 4 tokens.
        let out = sft_loss(logprobs.clone(), 4).unwrap();
        assert!((out.metrics.loss - 4.0 / 4.0).abs() < 1e-6);
        assert!((out.metrics.nll - 4.0 / 3.0).abs() < 1e-6);
        assert_eq!(out.metrics.num_tokens, 3);
        let g = values(logprobs.grad(&out.loss.backward()).unwrap());
        assert_eq!(g, vec![-0.25; 3]);
    }

    #[test]
    fn micro_batches_add_up_to_the_step() {
        // logp_t = θ · x_t with a shared θ: gradients of the parts sum to the whole's.
        let x = [0.5f32, -1.0, 2.0, 0.25, -0.75];
        let run = |cuts: &[usize]| {
            let device = Device::flex().autodiff();
            let theta = tensor(&[-0.4], &device).require_grad();
            let (mut loss, mut grad, mut metrics) = (0.0, 0.0, None::<SftMetrics>);
            for cut in cuts.windows(2) {
                let xs = tensor(&x[cut[0]..cut[1]], &device);
                let out = sft_loss(xs * theta.clone(), x.len()).unwrap();
                loss += out.metrics.loss;
                grad += values(theta.grad(&out.loss.backward()).unwrap())[0];
                metrics = Some(metrics.map_or(out.metrics, |m| m.merge(out.metrics)));
            }
            (loss, grad, metrics.unwrap())
        };
        let (loss, grad, m) = run(&[0, 5]);
        // −θ · Σx / 5 = 0.4 · 1.0 / 5; d/dθ = −Σx / 5 = −0.2.
        assert!((loss - 0.08).abs() < 1e-7 && (grad + 0.2).abs() < 1e-7);
        for cuts in [&[0, 2, 5][..], &[0, 1, 3, 5]] {
            let (l, g, mm) = run(cuts);
            assert!((l - loss).abs() < 1e-6 && (g - grad).abs() < 1e-6);
            assert!((mm.nll - m.nll).abs() < 1e-6 && mm.num_tokens == 5);
        }
    }

    #[test]
    fn empty_batch_and_small_normaliser_are_errors() {
        let device = Device::flex();
        assert!(matches!(
            sft_loss(tensor(&[], &device), 3),
            Err(Error::NoTokens)
        ));
        let err = sft_loss(tensor(&[-1.0, -2.0], &device), 1).unwrap_err();
        assert!(err.to_string().contains("`num_tokens` = 1"), "{err}");
    }
}
