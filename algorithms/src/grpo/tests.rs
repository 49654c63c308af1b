use burn::tensor::Device;
use kaizen_core::{FinishReason, Segment, WeightsVersion};

use super::*;

/// A `[n]` tensor of `values` (shared with the other modules' tests).
pub(crate) fn tensor(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// The values of a `[n]` tensor.
pub(crate) fn values(t: Tensor<1>) -> Vec<f32> {
    t.try_to_vec_as::<f32>().unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (a, b) in got.iter().zip(want) {
        assert!((a - b).abs() <= tol, "{got:?} vs {want:?}");
    }
}

// The hand-computed batch: 3 sequences of 3, 1 and 2 tokens, ε = 0.2, ε_high = 0.28.
//   ratio      1     1.5    0.5    0.6    0.7    1.25
//   A          1     1      1     −2      0.5    0.5
//   surr1      1     1.5    0.5   −1.2    0.35   0.625
//   surr2      1     1.28   0.8   −1.6    0.4    0.625
//   pg        −1    −1.28  −0.5    1.6   −0.35  −0.625
//   clipped          high          low
const OLD: f32 = -1.0;
const ROWS: [usize; 6] = [0, 0, 0, 1, 2, 2];
const RATIOS: [f32; 6] = [1.0, 1.5, 0.5, 0.6, 0.7, 1.25];
const ADV: [f32; 6] = [1.0, 1.0, 1.0, -2.0, 0.5, 0.5];
const STEP: StepNormalizers = StepNormalizers {
    num_sequences: 3,
    num_tokens: 6,
    max_completion_length: 4,
};

fn dapo_clip_higher(loss_type: LossType) -> GrpoLossConfig {
    GrpoLossConfig {
        epsilon_high: Some(0.28),
        loss_type,
        ..GrpoLossConfig::default()
    }
}

fn hand_batch<'a>(logprobs: Tensor<1>, device: &Device) -> GrpoBatch<'a> {
    GrpoBatch {
        logprobs,
        old_logprobs: Some(tensor(&[OLD; 6], device)),
        behavior_logprobs: None,
        advantages: tensor(&ADV, device),
        ref_logprobs: None,
        entropy: None,
        rows: &ROWS,
        turns: None,
    }
}

fn hand_logprobs() -> Vec<f32> {
    RATIOS.iter().map(|r| OLD + r.ln()).collect()
}

#[test]
fn each_loss_type_matches_hand_computed_values() {
    let device = Device::flex();
    // Sequence sums −2.78, 1.6, −0.975 (means −0.92667, 1.6, −0.4875); total −2.155.
    for (loss_type, want) in [
        (LossType::Grpo, (-2.78 / 3.0 + 1.6 - 0.975 / 2.0) / 3.0),
        (LossType::Bnpo, -2.155 / 6.0),
        (LossType::Dapo, -2.155 / 6.0),
        (LossType::DrGrpo, -2.155 / (3.0 * 4.0)),
    ] {
        let batch = hand_batch(tensor(&hand_logprobs(), &device), &device);
        let out = grpo_loss(batch, &STEP, &dapo_clip_higher(loss_type)).unwrap();
        let loss = values(out.loss)[0];
        assert!(
            (loss - want).abs() < 1e-6,
            "{loss_type:?}: {loss} vs {want}"
        );
        let m = out.metrics;
        assert_eq!(m.loss, loss);
        assert_eq!(m.pg_loss, loss, "no KL, no entropy: loss is the pg loss");
        assert_close(
            &[m.clip_frac_low, m.clip_frac_high, m.clip_frac],
            &[1.0 / 6.0, 1.0 / 6.0, 2.0 / 6.0],
            1e-7,
        );
        assert_close(&[m.ratio_mean, m.ratio_max], &[0.925, 1.5], 1e-6);
        let k3: f32 = RATIOS.iter().map(|r| r - 1.0 - r.ln()).sum::<f32>() / 6.0;
        assert!((m.approx_kl - k3).abs() < 1e-6);
        assert_eq!(
            (m.kl, m.entropy, m.tis_weight_mean, m.logprob_gap_mean),
            (None, None, None, None)
        );
        assert_eq!(m.num_tokens, 6);
    }
}

#[test]
fn clipped_tokens_get_no_gradient() {
    let device = Device::flex().autodiff();
    let logprobs = tensor(&hand_logprobs(), &device).require_grad();
    let out = grpo_loss(
        hand_batch(logprobs.clone(), &device),
        &STEP,
        &dapo_clip_higher(LossType::Dapo),
    )
    .unwrap();
    let grads = out.loss.backward();
    let g = values(logprobs.grad(&grads).unwrap());
    // d/dlogp of −ratio·A/T is −A·ratio/T where unclipped, 0 where clipped: token 1
    // (ratio 1.5 > 1.28, A > 0) and token 3 (ratio 0.6 < 0.8, A < 0).
    let want = [-1.0 / 6.0, 0.0, -0.5 / 6.0, 0.0, -0.35 / 6.0, -0.625 / 6.0];
    assert_close(&g, &want, 1e-6);
    assert_eq!(g[1], 0.0);
    assert_eq!(g[3], 0.0);
}

/// Guards against the clip acting on the forward value only (issue 14.3): a trained token
/// with a huge log-ratio gave a finite loss but a NaN gradient (`0 · exp(∞)`) with a
/// positive advantage, and an infinite loss with a negative one. Now both are finite, and
/// the gradient is exactly 0 where the clip (or the log-ratio bound) is active.
#[test]
fn huge_log_ratios_give_finite_losses_and_zero_gradients() {
    let device = Device::flex().autodiff();
    let step = StepNormalizers {
        num_sequences: 4,
        num_tokens: 4,
        max_completion_length: 8,
    };
    // log-ratios 1000 (A > 0), 1000 (A < 0), −1000 (A < 0), −1000 (A > 0).
    let old = [-1000.5f32, -1000.5, -0.5, -0.5];
    let logp = [-0.5f32, -0.5, -1000.5, -1000.5];
    let adv = [1.0f32, -1.0, -1.0, 1.0];
    let run = |config: &GrpoLossConfig| {
        let logprobs = tensor(&logp, &device).require_grad();
        let batch = GrpoBatch {
            logprobs: logprobs.clone(),
            old_logprobs: Some(tensor(&old, &device)),
            behavior_logprobs: Some(tensor(&old, &device)),
            advantages: tensor(&adv, &device),
            ref_logprobs: Some(tensor(&old, &device)),
            entropy: None,
            rows: &[0, 1, 2, 3],
            turns: None,
        };
        let out = grpo_loss(batch, &step, config).unwrap();
        let loss = values(out.loss.clone())[0];
        let g = values(logprobs.grad(&out.loss.backward()).unwrap());
        (loss, g, out.metrics)
    };
    for loss_type in [LossType::Grpo, LossType::Dapo] {
        let config = GrpoLossConfig {
            loss_type,
            tis_cap: Some(2.0),
            ..GrpoLossConfig::default()
        };
        let (loss, g, m) = run(&config);
        assert!(loss.is_finite(), "{loss_type:?}: loss {loss}");
        // Token 0: ratio clipped at 1.2 (A > 0), no gradient. Token 1: A < 0, unclipped
        // PPO term −A·ratio with the ratio at its bound e^20: finite, no gradient beyond
        // the bound. Tokens 2 and 3: ratio e^−20, clipped at 0.8 for A < 0 (no gradient),
        // unclipped for A > 0 (gradient −A·ratio/T ≈ −5e−10).
        assert_eq!(&g[..3], &[0.0, 0.0, 0.0], "{loss_type:?}: {g:?}");
        assert!(g[3].is_finite() && g[3].abs() < 1e-8, "{g:?}");
        let bound = LOG_RATIO_BOUND.exp();
        let want = (-1.2 + bound + 0.8 - (-LOG_RATIO_BOUND).exp()) / 4.0;
        assert!((loss - want).abs() / want < 1e-6, "{loss} vs {want}");
        assert!(m.approx_kl.is_finite() && m.ratio_max.is_finite(), "{m:?}");
    }
    // With two-sided clipping (TRL `delta`) the negative-advantage loss is bounded by delta.
    let config = GrpoLossConfig {
        delta: Some(4.0),
        ..GrpoLossConfig::default()
    };
    let (loss, g, _) = run(&config);
    assert!(g.iter().all(|x| x.is_finite()));
    assert_eq!(g[1], 0.0);
    let want = (-1.2 + 4.0 + 0.8 - (-LOG_RATIO_BOUND).exp()) / 4.0;
    assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
    // With the KL to a far reference as well (β > 0): finite loss and gradient.
    let config = GrpoLossConfig {
        beta: 0.1,
        ..GrpoLossConfig::default()
    };
    let (loss, g, m) = run(&config);
    assert!(
        loss.is_finite() && g.iter().all(|x| x.is_finite()),
        "{loss} {g:?}"
    );
    assert!(m.kl.unwrap().is_finite());
    let bad = GrpoLossConfig {
        delta: Some(1.1),
        ..GrpoLossConfig::default()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("delta"));
}

#[test]
fn ratio_outside_the_range_on_the_other_side_keeps_its_gradient() {
    // Ratio 1.5 with A < 0 and ratio 0.6 with A > 0 are not clipped: min picks surr1.
    let device = Device::flex().autodiff();
    let logprobs = tensor(&[OLD + 1.5f32.ln(), OLD + 0.6f32.ln()], &device).require_grad();
    let batch = GrpoBatch {
        logprobs: logprobs.clone(),
        old_logprobs: Some(tensor(&[OLD, OLD], &device)),
        behavior_logprobs: None,
        advantages: tensor(&[-1.0, 1.0], &device),
        ref_logprobs: None,
        entropy: None,
        rows: &[0, 1],
        turns: None,
    };
    let step = StepNormalizers {
        num_sequences: 2,
        num_tokens: 2,
        max_completion_length: 8,
    };
    let out = grpo_loss(batch, &step, &dapo_clip_higher(LossType::Dapo)).unwrap();
    assert!((values(out.loss.clone())[0] - (1.5 - 0.6) / 2.0).abs() < 1e-6);
    assert_eq!(out.metrics.clip_frac, 0.0);
    let g = values(logprobs.grad(&out.loss.backward()).unwrap());
    assert_close(&g, &[1.5 / 2.0, -0.6 / 2.0], 1e-6);
}

#[test]
fn eos_token_counts_in_the_per_sequence_mean() {
    // Two completions as sampled, each ending in EOS (id 2). Every completion token is in
    // the flat list, EOS included, so a `grpo` sequence mean divides by 3 and by 2.
    let segment = |tokens: Vec<u32>, logprobs: Vec<f32>| Segment {
        agent: "solver".into(),
        thread: 0,
        prompt_tokens: vec![1, 5],
        completion_tokens: tokens,
        behavior_logprobs: logprobs,
        trainable: true,
        temperature: 1.0,
        weights_version: WeightsVersion(0),
        finish_reason: FinishReason::Eos,
        self_certainty: None,
    };
    let segments = [
        segment(vec![7, 8, 2], vec![-0.5, -1.0, -0.1]),
        segment(vec![9, 2], vec![-2.0, -0.3]),
    ];
    let advantages = [1.0f32, -1.0];
    let mut rows = Vec::new();
    let (mut behaviour, mut adv) = (Vec::new(), Vec::new());
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s.completion_tokens.last(), Some(&2));
        rows.extend(std::iter::repeat_n(i, s.completion_tokens.len()));
        behaviour.extend(&s.behavior_logprobs);
        adv.extend(std::iter::repeat_n(
            advantages[i],
            s.completion_tokens.len(),
        ));
    }
    let device = Device::flex().autodiff();
    let logprobs = tensor(&behaviour, &device).require_grad();
    let batch = GrpoBatch {
        logprobs: logprobs.clone(),
        old_logprobs: None,
        behavior_logprobs: Some(tensor(&behaviour, &device)),
        advantages: tensor(&adv, &device),
        ref_logprobs: None,
        entropy: None,
        rows: &rows,
        turns: None,
    };
    let step = StepNormalizers {
        num_sequences: 2,
        num_tokens: 5,
        max_completion_length: 16,
    };
    let config = GrpoLossConfig {
        loss_type: LossType::Grpo,
        ..GrpoLossConfig::default()
    };
    let out = grpo_loss(batch, &step, &config).unwrap();
    // On-policy: ratio 1, L = 1/2 (−1 + 1) = 0 exactly (issue 14.5: per-token weights
    // 1/(S·|o_i|) rounded in f32 gave 4.5e-8); ∂L/∂logp_t = −A_i / (S · |o_i|).
    assert_eq!(values(out.loss.clone())[0], 0.0);
    assert_eq!(out.metrics.loss, 0.0);
    let g = values(logprobs.grad(&out.loss.backward()).unwrap());
    let (a, b) = (-1.0 / 6.0, 1.0 / 4.0);
    assert_close(&g, &[a, a, a, b, b], 1e-7);
    assert_eq!(out.metrics.logprob_gap_max, Some(0.0));
    assert_eq!(out.metrics.ratio_max, 1.0);
}

#[test]
fn kl_turn_weights_scale_the_penalty_per_turn() {
    // Three tokens of one thread: two of turn 0, one of turn 1; dapo (T = 3), on-policy,
    // zero advantages, so the loss is the KL term alone: (β/T) Σ_t w(turn_t) k3_t.
    let device = Device::flex();
    let logp = [-1.0f32, -2.0, -0.5];
    let reference = [logp[0] + 0.1, logp[1] - 0.2, logp[2] + 0.3];
    let k3 = |d: f32| d.exp() - d - 1.0;
    let kl = [k3(0.1), k3(-0.2), k3(0.3)];
    let step = StepNormalizers {
        num_sequences: 1,
        num_tokens: 3,
        max_completion_length: 4,
    };
    let loss = |weights: Vec<f32>, turns: Option<&[u32]>| {
        let config = GrpoLossConfig {
            beta: 0.5,
            kl_turn_weights: weights,
            ..GrpoLossConfig::default()
        };
        let batch = GrpoBatch {
            logprobs: tensor(&logp, &device),
            old_logprobs: None,
            behavior_logprobs: None,
            advantages: tensor(&[0.0, 0.0, 0.0], &device),
            ref_logprobs: Some(tensor(&reference, &device)),
            entropy: None,
            rows: &[0, 0, 0],
            turns,
        };
        values(grpo_loss(batch, &step, &config).unwrap().loss)[0]
    };
    let turns: &[u32] = &[0, 0, 1];
    let all = 0.5 * (kl[0] + kl[1] + kl[2]) / 3.0;
    assert!((loss(vec![], Some(turns)) - all).abs() < 1e-6);
    // SCoRe stage I: the first turn only.
    let first = 0.5 * (kl[0] + kl[1]) / 3.0;
    assert!((loss(vec![1.0, 0.0], Some(turns)) - first).abs() < 1e-6);
    // The last entry applies to later turns; without turns every token is turn 0.
    assert!((loss(vec![2.0], Some(turns)) - 2.0 * all).abs() < 1e-6);
    assert!((loss(vec![1.0, 0.0], None) - all).abs() < 1e-6);
    let bad = GrpoLossConfig {
        kl_turn_weights: vec![1.0, -1.0],
        ..GrpoLossConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("kl_turn_weights")
    );
}

#[test]
fn pg_turn_weights_scale_the_policy_gradient_per_turn() {
    // Three tokens of one thread (turns 0, 0, 1), on-policy, dapo (T = 3): with no KL the
    // loss is −1/T Σ_t u(turn_t) A_t and the gradient −u(turn_t) A_t / T.
    let device = Device::flex().autodiff();
    let adv = [1.0f32, -2.0, 0.5];
    let step = StepNormalizers {
        num_sequences: 1,
        num_tokens: 3,
        max_completion_length: 4,
    };
    let run = |weights: Vec<f32>| {
        let logprobs = tensor(&[-1.0, -2.0, -0.5], &device).require_grad();
        let config = GrpoLossConfig {
            pg_turn_weights: weights,
            ..GrpoLossConfig::default()
        };
        let batch = GrpoBatch {
            logprobs: logprobs.clone(),
            old_logprobs: None,
            behavior_logprobs: None,
            advantages: tensor(&adv, &device),
            ref_logprobs: None,
            entropy: None,
            rows: &[0, 0, 0],
            turns: Some(&[0, 0, 1]),
        };
        let out = grpo_loss(batch, &step, &config).unwrap();
        let loss = values(out.loss.clone())[0];
        (loss, values(logprobs.grad(&out.loss.backward()).unwrap()))
    };
    let (all, g) = run(vec![]);
    assert!((all - (-(1.0 - 2.0 + 0.5) / 3.0)).abs() < 1e-6);
    assert_close(&g, &[-1.0 / 3.0, 2.0 / 3.0, -0.5 / 3.0], 1e-6);
    // SCoRe stage I: the first attempt gets no policy gradient.
    let (second, g) = run(vec![0.0, 1.0]);
    assert!((second - (-0.5 / 3.0)).abs() < 1e-6);
    assert_close(&g, &[0.0, 0.0, -0.5 / 3.0], 1e-6);
    let bad = GrpoLossConfig {
        pg_turn_weights: vec![f32::NAN],
        ..GrpoLossConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("pg_turn_weights")
    );
}

#[test]
fn kl_penalty_entropy_bonus_and_truncated_importance_weights() {
    // One sequence of 2 tokens, dapo (T = 2). Learner-recomputed old log-probs exceed the
    // sampler's by ln 2 and ln 0.5: TIS weights min(2, 1.5) = 1.5 and 0.5.
    let device = Device::flex();
    let logp = [-1.0f32, -2.0];
    let behaviour = [logp[0] - 2f32.ln(), logp[1] - 0.5f32.ln()];
    let reference = [logp[0] + 0.1, logp[1] - 0.2];
    let config = GrpoLossConfig {
        beta: 0.5,
        entropy_coef: 0.1,
        tis_cap: Some(1.5),
        ..GrpoLossConfig::default()
    };
    let batch = GrpoBatch {
        logprobs: tensor(&logp, &device),
        old_logprobs: Some(tensor(&logp, &device)),
        behavior_logprobs: Some(tensor(&behaviour, &device)),
        advantages: tensor(&[1.0, -1.0], &device),
        ref_logprobs: Some(tensor(&reference, &device)),
        entropy: Some(tensor(&[2.0, 1.0], &device)),
        rows: &[0, 0],
        turns: None,
    };
    let step = StepNormalizers {
        num_sequences: 1,
        num_tokens: 2,
        max_completion_length: 4,
    };
    let out = grpo_loss(batch, &step, &config).unwrap();
    // pg = [−1 · 1.5, +1 · 0.5]; k3(log r) = e^{log r} − log r − 1 with log r = 0.1, −0.2.
    let pg_loss = (-1.5 + 0.5) / 2.0;
    let kl = ((0.1f32.exp() - 1.1) + ((-0.2f32).exp() - 0.8)) / 2.0;
    let want = pg_loss + 0.5 * kl - 0.1 * 1.5;
    let m = out.metrics;
    assert!((values(out.loss)[0] - want).abs() < 1e-6);
    assert!((m.loss - want).abs() < 1e-6);
    assert!((m.pg_loss - pg_loss).abs() < 1e-6);
    assert!((m.kl.unwrap() - kl).abs() < 1e-6);
    assert_eq!(m.entropy, Some(1.5));
    assert!((m.tis_weight_mean.unwrap() - 1.0).abs() < 1e-6);
    assert!((m.logprob_gap_mean.unwrap() - 2f32.ln()).abs() < 1e-6);
    assert!((m.logprob_gap_max.unwrap() - 2f32.ln()).abs() < 1e-6);
    assert_eq!(m.approx_kl, 0.0);
}

/// A two-parameter "policy": `logp_t = x_t · θ − 1`, entropy `H_t = exp(y_t · θ)`.
struct Toy {
    x: Vec<[f32; 2]>,
    y: Vec<[f32; 2]>,
    old: Vec<f32>,
    behaviour: Vec<f32>,
    reference: Vec<f32>,
    advantages: Vec<f32>,
    rows: Vec<usize>,
}

const THETA: [f32; 2] = [0.3, -0.2];

impl Toy {
    fn new() -> Self {
        let x = vec![
            [1.0, 2.0],
            [-1.5, 0.5],
            [2.5, -1.0],
            [0.2, 0.1],
            [-2.0, -2.0],
            [3.0, 1.0],
            [0.5, -3.0],
            [-1.0, 1.5],
            [2.0, 2.5],
        ];
        let y: Vec<[f32; 2]> = x.iter().map(|[a, b]| [0.3 * b, -0.2 * a]).collect();
        let theta_old = [0.22, -0.05];
        let old: Vec<f32> = x
            .iter()
            .map(|[a, b]| a * theta_old[0] + b * theta_old[1] - 1.0)
            .collect();
        let shift = [0.3, -0.4, 0.05, 0.0, 0.2, -0.1, 0.6, -0.25, 0.1];
        let behaviour = old.iter().zip(shift).map(|(o, s)| o - s).collect();
        let reference = old
            .iter()
            .zip(shift)
            .map(|(o, s)| o + 0.5 * s - 0.1)
            .collect();
        let rows = vec![0, 0, 0, 0, 1, 1, 2, 3, 3];
        let per_row = [1.0, -0.5, 0.8, -1.2];
        let advantages = rows.iter().map(|&r| per_row[r]).collect();
        Self {
            x,
            y,
            old,
            behaviour,
            reference,
            advantages,
            rows,
        }
    }

    /// Loss, gradient with respect to θ and metrics, summed over the micro-batches between
    /// consecutive `cuts` (token indices).
    fn run(&self, cuts: &[usize], config: &GrpoLossConfig) -> (f32, Vec<f32>, GrpoMetrics) {
        let device = Device::flex().autodiff();
        let theta = tensor(&THETA, &device).require_grad();
        let step = StepNormalizers {
            num_sequences: 4,
            num_tokens: self.rows.len(),
            max_completion_length: 5,
        };
        let linear = |f: &[[f32; 2]]| {
            let m = f.len();
            let flat: Vec<f32> = f.iter().flatten().copied().collect();
            let f = Tensor::<2>::from_data(TensorData::new(flat, [m, 2]), &device);
            f.matmul(theta.clone().reshape([2, 1])).reshape([m])
        };
        let (mut loss, mut grad, mut metrics) = (0.0f32, vec![0.0f32; 2], None::<GrpoMetrics>);
        for cut in cuts.windows(2) {
            let r = cut[0]..cut[1];
            let batch = GrpoBatch {
                logprobs: linear(&self.x[r.clone()]) - 1.0,
                old_logprobs: Some(tensor(&self.old[r.clone()], &device)),
                behavior_logprobs: Some(tensor(&self.behaviour[r.clone()], &device)),
                advantages: tensor(&self.advantages[r.clone()], &device),
                ref_logprobs: Some(tensor(&self.reference[r.clone()], &device)),
                entropy: Some(linear(&self.y[r.clone()]).exp()),
                rows: &self.rows[r],
                turns: None,
            };
            let out = grpo_loss(batch, &step, config).unwrap();
            loss += values(out.loss.clone())[0];
            let g = values(theta.grad(&out.loss.backward()).unwrap());
            grad.iter_mut().zip(g).for_each(|(a, b)| *a += b);
            metrics = Some(match metrics {
                Some(m) => m.merge(out.metrics),
                None => out.metrics,
            });
        }
        (loss, grad, metrics.unwrap())
    }
}

#[test]
fn gradient_accumulation_split_does_not_change_loss_or_gradient() {
    let toy = Toy::new();
    let splits: [&[usize]; 3] = [&[0, 9], &[0, 4, 9], &[0, 4, 7, 9]];
    for loss_type in [
        LossType::Grpo,
        LossType::Bnpo,
        LossType::Dapo,
        LossType::DrGrpo,
    ] {
        for kl_estimator in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
            let config = GrpoLossConfig {
                epsilon_high: Some(0.28),
                beta: 0.04,
                kl_estimator,
                loss_type,
                entropy_coef: 0.01,
                tis_cap: Some(1.2),
                ..GrpoLossConfig::default()
            };
            let (loss, grad, metrics) = toy.run(splits[0], &config);
            assert!(
                metrics.clip_frac > 0.0,
                "the toy batch must exercise clipping"
            );
            assert!(grad.iter().all(|g| g.abs() > 1e-3), "{grad:?}");
            for cuts in &splits[1..] {
                let (l, g, m) = toy.run(cuts, &config);
                assert!(
                    (l - loss).abs() < 1e-6,
                    "{loss_type:?} {cuts:?}: {l} vs {loss}"
                );
                assert_close(&g, &grad, 1e-6);
                assert_eq!(m.num_tokens, metrics.num_tokens);
                assert_close(
                    &[
                        m.pg_loss,
                        m.clip_frac,
                        m.ratio_mean,
                        m.ratio_max,
                        m.approx_kl,
                    ],
                    &[
                        metrics.pg_loss,
                        metrics.clip_frac,
                        metrics.ratio_mean,
                        metrics.ratio_max,
                        metrics.approx_kl,
                    ],
                    1e-6,
                );
                assert_close(
                    &[
                        m.kl.unwrap(),
                        m.entropy.unwrap(),
                        m.tis_weight_mean.unwrap(),
                        m.logprob_gap_max.unwrap(),
                    ],
                    &[
                        metrics.kl.unwrap(),
                        metrics.entropy.unwrap(),
                        metrics.tis_weight_mean.unwrap(),
                        metrics.logprob_gap_max.unwrap(),
                    ],
                    1e-6,
                );
            }
        }
    }
}

#[test]
fn inconsistent_inputs_are_errors_naming_them() {
    let device = Device::flex();
    let ok = || hand_batch(tensor(&hand_logprobs(), &device), &device);
    let config = GrpoLossConfig::default();

    let mut short = ok();
    short.advantages = tensor(&ADV[..5], &device);
    let err = grpo_loss(short, &STEP, &config).unwrap_err();
    assert!(err.to_string().contains("`advantages` has 5"), "{err}");

    let mut rows = ok();
    rows.rows = &ROWS[..4];
    assert!(matches!(
        grpo_loss(rows, &STEP, &config),
        Err(Error::Length { input: "rows", .. })
    ));

    let empty = GrpoBatch {
        logprobs: tensor(&[], &device),
        old_logprobs: None,
        behavior_logprobs: None,
        advantages: tensor(&[], &device),
        ref_logprobs: None,
        entropy: None,
        rows: &[],
        turns: None,
    };
    assert!(matches!(
        grpo_loss(empty, &STEP, &config),
        Err(Error::NoTokens)
    ));

    let kl = GrpoLossConfig {
        beta: 0.1,
        ..config.clone()
    };
    let err = grpo_loss(ok(), &STEP, &kl).unwrap_err();
    assert!(
        err.to_string().contains("`ref_logprobs` is required"),
        "{err}"
    );
    let bonus = GrpoLossConfig {
        entropy_coef: 0.1,
        ..config.clone()
    };
    assert!(matches!(
        grpo_loss(ok(), &STEP, &bonus),
        Err(Error::MissingInput {
            input: "entropy",
            ..
        })
    ));

    let micro_step = StepNormalizers {
        num_tokens: 4,
        ..STEP
    };
    let err = grpo_loss(ok(), &micro_step, &config).unwrap_err();
    assert!(err.to_string().contains("`num_tokens` = 4"), "{err}");
    let two_rows = StepNormalizers {
        num_sequences: 2,
        ..STEP
    };
    assert!(matches!(
        grpo_loss(ok(), &two_rows, &config),
        Err(Error::Normalizer {
            field: "num_sequences",
            in_batch: 3,
            ..
        })
    ));
    let dr = GrpoLossConfig {
        loss_type: LossType::DrGrpo,
        ..config.clone()
    };
    let no_length = StepNormalizers {
        max_completion_length: 0,
        ..STEP
    };
    assert!(matches!(
        grpo_loss(ok(), &no_length, &dr),
        Err(Error::Normalizer {
            field: "max_completion_length",
            ..
        })
    ));

    let bad = GrpoLossConfig {
        epsilon: -0.1,
        ..config.clone()
    };
    let err = grpo_loss(ok(), &STEP, &bad).unwrap_err();
    assert!(err.to_string().contains("`epsilon` = -0.1"), "{err}");
    let bad = GrpoLossConfig {
        tis_cap: Some(0.0),
        ..config.clone()
    };
    assert!(matches!(
        bad.validate(),
        Err(Error::Config {
            field: "tis_cap",
            ..
        })
    ));
}

#[test]
fn config_reads_trl_names_from_toml() {
    let c: GrpoLossConfig = toml::from_str(
        "epsilon = 0.2\nepsilon_high = 0.28\nbeta = 0.04\nkl_estimator = \"k1\"\n\
         loss_type = \"dr_grpo\"\nentropy_coef = 0.001\ntis_cap = 2.0\ndelta = 4.0\n\
         importance_sampling_level = \"sequence\"",
    )
    .unwrap();
    assert_eq!(c.epsilon_high(), 0.28);
    assert_eq!(c.kl_estimator, KlEstimator::K1);
    assert_eq!(c.loss_type, LossType::DrGrpo);
    assert_eq!(c.tis_cap, Some(2.0));
    assert_eq!(c.delta, Some(4.0));
    assert_eq!(
        c.importance_sampling_level,
        ImportanceSamplingLevel::Sequence
    );
    let d: GrpoLossConfig = toml::from_str("").unwrap();
    assert_eq!(d, GrpoLossConfig::default());
    assert_eq!(d.epsilon_high(), 0.2);
    assert_eq!(d.loss_type, LossType::Dapo);
    let err = toml::from_str::<GrpoLossConfig>("clip_eps = 0.2").unwrap_err();
    assert!(err.to_string().contains("clip_eps"), "{err}");
}
