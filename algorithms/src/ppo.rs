//! PPO's critic side: per-token rewards, generalised advantage estimation and the clipped value
//! loss. The policy side is the clipped surrogate of [`crate::grpo_loss`] fed with these
//! per-token advantages.
//!
//! PPO ([Schulman et al. 2017](https://arxiv.org/abs/1707.06347)) as used for language models
//! (Ouyang et al. 2022; TRL's `PPOTrainer`, OpenRLHF): every trained token is an action, the
//! state before it is scored by a value head `V`, and rewards arrive at the end of each turn.
//! For one conversation thread, its trained tokens `t = 0 … T−1` in order (the environment's
//! text between turns is context, not actions):
//!
//! ```text
//! r_t = reward of turn k          if t is the last token of turn k, else 0
//!       − kl_coef · (log π_θ(x_t) − log π_ref(x_t))      with the KL in the reward (k1)
//! δ_t = r_t + γ · V_{t+1} − V_t                            V_T = 0 (the episode ends)
//! A_t = δ_t + γ · λ · A_{t+1}                              A_T = 0          (GAE, Schulman 2016)
//! R_t = A_t + V_t                                          the value target
//! ```
//!
//! and the value loss, clipped around the values the advantages were computed with
//! (`V_old`) as TRL and OpenRLHF clip it:
//!
//! ```text
//! Ṽ_t     = clamp(V_t, V_old,t − cliprange_value, V_old,t + cliprange_value)
//! vf_loss = ½ · Σ_t w_t · max((V_t − R_t)², (Ṽ_t − R_t)²)     w_t: the step's token weights
//! ```
//!
//! Names follow TRL's `PPOConfig` (`gamma`, `lam`, `vf_coef`, `cliprange_value`, `kl_coef`);
//! `whiten_advantages` is OpenRLHF's advantage whitening over the batch (TRL always whitens).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::grpo::read;

/// Where PPO's value head lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CriticKind {
    /// On the policy's trunk: one model, the value loss trains the shared layers too (TRL's
    /// `AutoModelForCausalLMWithValueHead`).
    #[default]
    Shared,
    /// A separate critic model initialised from the policy, with its own optimizer (TRL
    /// `PPOTrainer`'s `value_model`, OpenRLHF's critic): twice the learner's compute.
    Separate,
}

/// Hyper-parameters of PPO's critic (TRL `PPOConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    /// Discount per token (TRL default 1.0).
    pub gamma: f32,
    /// GAE's λ (TRL default 0.95).
    pub lam: f32,
    /// Weight of the value loss in the total loss (TRL default 0.1).
    pub vf_coef: f32,
    /// Clip range of the value prediction around the old value (TRL default 0.2).
    pub cliprange_value: f32,
    /// Whiten the advantages over the batch before the policy loss (OpenRLHF's default; TRL
    /// always does).
    pub whiten_advantages: bool,
    /// Put the KL to the reference into the per-token reward (`r_t −= kl_coef · k1_t`, TRL's
    /// `kl_coef`, default 0.05) instead of the loss; 0 = off (use `loss.beta` for a KL loss).
    pub kl_coef: f32,
    /// Shared trunk or separate critic model.
    pub critic: CriticKind,
    /// Peak learning rate of a separate critic (OpenRLHF `critic_learning_rate`); unset: the
    /// policy's `optim.learning_rate`. Same schedule shape.
    pub critic_learning_rate: Option<f64>,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            gamma: 1.0,
            lam: 0.95,
            vf_coef: 0.1,
            cliprange_value: 0.2,
            whiten_advantages: true,
            kl_coef: 0.05,
            critic: CriticKind::Shared,
            critic_learning_rate: None,
        }
    }
}

impl PpoConfig {
    /// Checks every field's range.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field, value: f32, expected| Error::Config {
            field,
            value: f64::from(value),
            expected,
        };
        for (field, value) in [("gamma", self.gamma), ("lam", self.lam)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(bad(field, value, "a value in [0, 1]"));
            }
        }
        for (field, value) in [
            ("vf_coef", self.vf_coef),
            ("cliprange_value", self.cliprange_value),
            ("kl_coef", self.kl_coef),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(bad(field, value, "a finite value >= 0"));
            }
        }
        if let Some(lr) = self.critic_learning_rate
            && !(lr.is_finite() && lr >= 0.0)
        {
            return Err(Error::Config {
                field: "critic_learning_rate",
                value: lr,
                expected: "a finite value >= 0",
            });
        }
        Ok(())
    }
}

/// The per-token rewards of one thread's trained tokens: each turn's reward on its last token,
/// minus `kl_coef · (log π_θ − log π_ref)` on every token when `kl` (that log-ratio per token)
/// is given.
///
/// # Shapes
/// `turn_lengths: [K]` (trained tokens of each turn, in order), `turn_rewards: [K]`,
/// `kl: [Σ turn_lengths]` → `[Σ turn_lengths]`.
///
/// # Errors
/// [`Error::Length`] when the lengths disagree, [`Error::NonFiniteReward`] for a NaN or
/// infinite reward, [`Error::Config`] (`turn_lengths`) for a turn without trained tokens
/// (its reward would have no token to land on).
pub fn token_rewards(
    turn_lengths: &[usize],
    turn_rewards: &[f32],
    kl: Option<&[f32]>,
    kl_coef: f32,
) -> Result<Vec<f32>, Error> {
    check_len(
        "turn_rewards",
        turn_rewards.len(),
        "turn_lengths",
        turn_lengths.len(),
    )?;
    if let Some((index, &value)) = turn_rewards
        .iter()
        .enumerate()
        .find(|(_, r)| !r.is_finite())
    {
        return Err(Error::NonFiniteReward { index, value });
    }
    if let Some(&len) = turn_lengths.iter().find(|&&l| l == 0) {
        return Err(Error::Config {
            field: "turn_lengths",
            value: len as f64,
            expected: "at least one trained token per turn",
        });
    }
    let total: usize = turn_lengths.iter().sum();
    let mut rewards = vec![0.0f32; total];
    let mut end = 0;
    for (&len, &r) in turn_lengths.iter().zip(turn_rewards) {
        end += len;
        rewards[end - 1] += r;
    }
    if let Some(kl) = kl {
        check_len("kl", kl.len(), "tokens of the turns", total)?;
        for (r, k) in rewards.iter_mut().zip(kl) {
            *r -= kl_coef * k;
        }
    }
    Ok(rewards)
}

/// Generalised advantage estimation over one thread's trained tokens (module docs): returns
/// `(advantages, returns)`, computed backwards in f64.
///
/// # Shapes
/// `rewards: [T]`, `values: [T]` → two `[T]`.
///
/// # Errors
/// [`Error::Length`] when `values` is not `[T]`.
pub fn gae(
    rewards: &[f32],
    values: &[f32],
    gamma: f32,
    lam: f32,
) -> Result<(Vec<f32>, Vec<f32>), Error> {
    check_len("values", values.len(), "rewards", rewards.len())?;
    let n = rewards.len();
    let (gamma, lam) = (f64::from(gamma), f64::from(lam));
    let mut advantages = vec![0.0f32; n];
    let mut returns = vec![0.0f32; n];
    let (mut next_value, mut next_advantage) = (0.0f64, 0.0f64);
    for t in (0..n).rev() {
        let v = f64::from(values[t]);
        let delta = f64::from(rewards[t]) + gamma * next_value - v;
        let a = delta + gamma * lam * next_advantage;
        advantages[t] = a as f32;
        returns[t] = (a + v) as f32;
        next_value = v;
        next_advantage = a;
    }
    Ok((advantages, returns))
}

/// What [`value_loss`] returns.
#[derive(Debug, Clone)]
pub struct ValueLossOutput {
    /// This micro-batch's share of the step's value loss, `[1]` (before `vf_coef`).
    pub loss: Tensor<1>,
    /// The value of `loss`.
    pub vf_loss: f32,
    /// Fraction of tokens where the clipped term was the larger (TRL `vf_clipfrac`).
    pub vf_clipfrac: f32,
    /// Mean of the predicted values.
    pub value_mean: f32,
}

/// The clipped value loss of one micro-batch (module docs), each token weighted by `weights`
/// (the step's aggregation weights, e.g. `1/T` for a token mean, so micro-batch losses add up
/// to the step's).
///
/// # Shapes
/// `values` (differentiable), `old_values`, `returns`, `weights`: all `[n]`; the loss is `[1]`.
///
/// # Errors
/// [`Error::Length`] when a tensor is not `[n]`, [`Error::NoTokens`] for `n = 0`,
/// [`Error::Read`] when metrics cannot be read back.
pub fn value_loss(
    values: Tensor<1>,
    old_values: Tensor<1>,
    returns: Tensor<1>,
    weights: Tensor<1>,
    cliprange_value: f32,
) -> Result<ValueLossOutput, Error> {
    let [n] = values.dims();
    for (name, t) in [
        ("old_values", &old_values),
        ("returns", &returns),
        ("weights", &weights),
    ] {
        check_len(name, t.dims()[0], "values", n)?;
    }
    if n == 0 {
        return Err(Error::NoTokens);
    }
    let c = f64::from(cliprange_value);
    let clipped = old_values.clone() + (values.clone() - old_values).clamp(-c, c);
    let vf_losses1 = (values.clone() - returns.clone()).square();
    let vf_losses2 = (clipped - returns).square();
    let larger = vf_losses2.clone().greater(vf_losses1.clone());
    let per_token = vf_losses1.max_pair(vf_losses2);
    let loss = (per_token * weights).sum() * 0.5;
    let larger = larger.float().mean();
    Ok(ValueLossOutput {
        vf_loss: read("vf_loss", loss.clone().detach())?[0],
        vf_clipfrac: read("vf_clipfrac", larger)?[0],
        value_mean: read("values", values.detach().mean())?[0],
        loss,
    })
}

fn check_len(
    input: &'static str,
    actual: usize,
    reference: &'static str,
    expected: usize,
) -> Result<(), Error> {
    if actual == expected {
        Ok(())
    } else {
        Err(Error::Length {
            input,
            reference,
            expected,
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;
    use crate::grpo::tests::{tensor, values};

    #[test]
    fn gae_matches_hand_computed_values() {
        // Three tokens, reward 1 on the last; V = 0.5, 0.2, 0.8; γ = 0.9, λ = 0.5.
        //   δ_2 = 1 − 0.8 = 0.2                   A_2 = 0.2
        //   δ_1 = 0 + 0.9·0.8 − 0.2 = 0.52        A_1 = 0.52 + 0.45·0.2 = 0.61
        //   δ_0 = 0 + 0.9·0.2 − 0.5 = −0.32       A_0 = −0.32 + 0.45·0.61 = −0.0455
        let (a, r) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.2, 0.8], 0.9, 0.5).unwrap();
        let want_a = [-0.0455f32, 0.61, 0.2];
        let want_r = [0.4545f32, 0.81, 1.0];
        for i in 0..3 {
            assert!((a[i] - want_a[i]).abs() < 1e-6, "{a:?}");
            assert!((r[i] - want_r[i]).abs() < 1e-6, "{r:?}");
        }
        // λ = 1, γ = 1: A_t = Σ_{s≥t} r_s − V_t (Monte Carlo returns minus the baseline).
        let (a, r) = gae(&[0.0, 2.0, 1.0], &[1.0, 0.5, 0.25], 1.0, 1.0).unwrap();
        assert_eq!(r, vec![3.0, 3.0, 1.0]);
        assert_eq!(a, vec![2.0, 2.5, 0.75]);
        assert!(gae(&[1.0], &[], 1.0, 1.0).is_err());
    }

    #[test]
    fn token_rewards_put_each_turns_reward_on_its_last_token_and_the_kl_on_all() {
        // Two turns of 2 and 3 tokens, rewards 0 and 1; then k1 per token with kl_coef 0.1.
        let r = token_rewards(&[2, 3], &[0.0, 1.0], None, 0.0).unwrap();
        assert_eq!(r, vec![0.0, 0.0, 0.0, 0.0, 1.0]);
        let kl = [0.5, -1.0, 0.0, 2.0, 1.0];
        let r = token_rewards(&[2, 3], &[0.5, 1.0], Some(&kl), 0.1).unwrap();
        let want = [-0.05f32, 0.6, 0.0, -0.2, 0.9];
        for (g, w) in r.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{r:?}");
        }
        assert!(matches!(
            token_rewards(&[2], &[0.0, 1.0], None, 0.0),
            Err(Error::Length { .. })
        ));
        assert!(matches!(
            token_rewards(&[1], &[f32::NAN], None, 0.0),
            Err(Error::NonFiniteReward { index: 0, .. })
        ));
        assert!(matches!(
            token_rewards(&[2, 0], &[0.0, 1.0], None, 0.0),
            Err(Error::Config {
                field: "turn_lengths",
                ..
            })
        ));
    }

    #[test]
    fn value_loss_takes_the_larger_of_the_clipped_and_unclipped_errors() {
        // Old values 0, 0, 0; returns 1, 1, −1; new values 0.5, −0.5, 0.1; clip 0.2; weights 1/3.
        //   token 0: unclipped (0.5−1)² = 0.25, clipped (0.2−1)² = 0.64 → 0.64 (clipped larger)
        //   token 1: (−0.5−1)² = 2.25, clipped (−0.2−1)² = 1.44 → 2.25
        //   token 2: (0.1+1)² = 1.21, clipped 0.1 → the same 1.21
        //   loss = ½ · (0.64 + 2.25 + 1.21) / 3
        let device = Device::flex().autodiff();
        let v = tensor(&[0.5, -0.5, 0.1], &device).require_grad();
        let out = value_loss(
            v.clone(),
            tensor(&[0.0; 3], &device),
            tensor(&[1.0, 1.0, -1.0], &device),
            tensor(&[1.0 / 3.0; 3], &device),
            0.2,
        )
        .unwrap();
        let want = 0.5 * (0.64 + 2.25 + 1.21) / 3.0;
        assert!((out.vf_loss - want).abs() < 1e-6, "{}", out.vf_loss);
        assert!((out.vf_clipfrac - 1.0 / 3.0).abs() < 1e-6);
        assert!((out.value_mean - 0.1 / 3.0 * 1.0).abs() < 1e-6);
        // Gradient: token 0 is clipped (no gradient), tokens 1 and 2 get (V − R)/3.
        let g = values(v.grad(&out.loss.backward()).unwrap());
        let want = [0.0, -1.5 / 3.0, 1.1 / 3.0];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
    }

    #[test]
    fn config_uses_trl_names_and_checks_ranges() {
        let c: PpoConfig =
            toml::from_str("gamma = 0.99\nlam = 0.9\nvf_coef = 0.5\ncliprange_value = 0.1")
                .unwrap();
        assert_eq!(
            (c.gamma, c.lam, c.vf_coef, c.cliprange_value),
            (0.99, 0.9, 0.5, 0.1)
        );
        assert!(c.validate().is_ok());
        let bad = PpoConfig {
            lam: 1.5,
            ..PpoConfig::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("`lam`"));
        assert!(toml::from_str::<PpoConfig>("lambda = 0.9").is_err());
    }
}
