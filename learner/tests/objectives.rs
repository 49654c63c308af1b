//! The learner's algorithms other than GRPO, one step at a time: PPO with a value head, DPO on
//! online pairs, NFT. Each test checks a number that follows from the algorithm's algebra.

mod common;

use common::{batch, learner_for, learner_with_adam, max_diff, schedule, weights};
use kaizen_algorithms::{
    AdvantageConfig, CriticKind, DpoConfig, GrpoLossConfig, LossType, NftConfig, PpoConfig,
    ScaleRewards,
};
use kaizen_core::{Outcome, WeightsVersion};
use kaizen_learner::{
    AdamW, AdamWConfig, Algorithm, Critic, Learner, LearnerConfig, ObjectiveConfig,
};
use kaizen_model::Llama;

fn learner(objective: ObjectiveConfig, learner: LearnerConfig) -> Learner {
    learner_for(objective, learner)
}

fn learner_config(parts: usize, cpu_kernels: bool) -> LearnerConfig {
    LearnerConfig {
        gradient_accumulation_steps: parts,
        max_completion_length: 8,
        cpu_kernels,
        ..LearnerConfig::default()
    }
}

fn ppo(ppo: PpoConfig) -> ObjectiveConfig {
    ObjectiveConfig {
        algorithm: Algorithm::Ppo,
        ppo,
        ..ObjectiveConfig::default()
    }
}

/// PPO on the CPU training pass (value head forward and backward included) and on burn's
/// autodiff give the same step, and micro-batching does not change it.
#[test]
fn ppo_steps_agree_across_passes_and_splits() {
    let objective = ppo(PpoConfig::default());
    let mut cpu = learner(objective.clone(), learner_config(1, true));
    let mut burn = learner(objective.clone(), learner_config(1, false));
    let mut split = learner(objective, learner_config(3, true));
    let before = weights(&cpu);
    for _ in 0..2 {
        let a = cpu.rl_step(&batch(), WeightsVersion(0)).unwrap();
        let b = burn.rl_step(&batch(), WeightsVersion(0)).unwrap();
        let c = split.rl_step(&batch(), WeightsVersion(0)).unwrap();
        for m in [&b, &c] {
            assert!((a["loss"] - m["loss"]).abs() < 1e-5, "{a:?} vs {m:?}");
            assert!((a["ppo/vf_loss"] - m["ppo/vf_loss"]).abs() < 1e-5);
            assert!((a["grad_norm"] - m["grad_norm"]).abs() < 1e-4 * a["grad_norm"]);
        }
        assert!(a["ppo/vf_loss"] > 0.0, "{a:?}");
        // Every sample is trained (equal rewards still teach the critic).
        assert_eq!(a["trained_tokens"], 19.0);
    }
    // Two AdamW steps at lr 1e-2 (first steps move by ±lr whatever the gradient's size, so
    // float differences in tiny gradient entries show): within 1% of one step.
    let d = max_diff(&weights(&cpu), &weights(&burn));
    assert!(d < 1e-4, "{d}");
    assert!(max_diff(&weights(&cpu), &weights(&split)) < 1e-4);
    // The value head is among the trained weights: it moved.
    let head = |l: &Learner| {
        l.policy()
            .to_named()
            .into_iter()
            .find(|(name, _)| name == "v_head.summary.weight")
            .map(|(_, t)| t.data)
            .unwrap()
    };
    let fresh = learner(ppo(PpoConfig::default()), learner_config(1, true));
    assert!(max_diff(&head(&cpu), &head(&fresh)) > 1e-4);
    assert!(max_diff(&before, &weights(&cpu)) > 1e-4);
}

/// With `gamma = lam = 1`, no KL and no whitening, GAE's return at every token of a one-turn
/// episode is the episode's reward: the token mean of the returns is `Σ_i |o_i| r_i / T`.
#[test]
fn ppo_returns_are_the_rewards_with_gamma_and_lambda_one() {
    let mut l = learner(
        ppo(PpoConfig {
            gamma: 1.0,
            lam: 1.0,
            kl_coef: 0.0,
            whiten_advantages: false,
            ..PpoConfig::default()
        }),
        learner_config(2, true),
    );
    let m = l.rl_step(&batch(), WeightsVersion(0)).unwrap();
    let want = (3.0 * 1.0 + 4.0 * 0.5 + 1.0 + 2.0 + 2.0) / 19.0;
    assert!((m["ppo/returns_mean"] - want).abs() < 1e-6, "{m:?}");
    // A_t = R − V_t, so mean(A) = mean(R) − mean(V_old).
    let adv = m["ppo/returns_mean"] - m["ppo/values_old_mean"];
    assert!((m["ppo/advantages_mean"] - adv).abs() < 1e-5);
    // PPO without kl_coef or beta keeps no reference.
    assert!(l.reference().is_none());
}

/// The KL in the reward: with `kl_coef > 0` the learner keeps a reference, and on the first step
/// (policy = reference) the logged KL is the behaviour log-probs minus the reference's.
#[test]
fn ppo_puts_the_kl_in_the_reward() {
    let mut l = learner(
        ppo(PpoConfig {
            kl_coef: 0.1,
            ..PpoConfig::default()
        }),
        learner_config(1, true),
    );
    assert!(l.reference().is_some());
    let m = l.rl_step(&batch(), WeightsVersion(0)).unwrap();
    // Behaviour log-probs are −1 here, so k1 = −1 − log π_ref: positive iff π_ref < e^−1.
    assert!(m["ppo/kl_in_reward"].is_finite(), "{m:?}");
    assert!(m["ppo/kl_in_reward"] != 0.0);
}

/// A PPO learner with a separate critic initialised from the policy.
fn with_critic(cpu_kernels: bool) -> Learner {
    let objective = ppo(PpoConfig {
        critic: CriticKind::Separate,
        kl_coef: 0.0,
        ..PpoConfig::default()
    });
    assert!(!objective.needs_value_head() && objective.needs_critic());
    let mut l = learner(objective, learner_config(2, cpu_kernels));
    let critic =
        Critic::from_policy(l.model(), 5, AdamW::new(AdamWConfig::default()), schedule()).unwrap();
    l.set_critic(critic);
    l
}

fn named(model: &Llama) -> Vec<(String, Vec<f32>)> {
    model
        .to_named()
        .into_iter()
        .map(|(n, t)| (n, t.data))
        .collect()
}

/// A separate critic: the policy keeps no value head, the critic starts as a copy of the
/// policy's weights, and one step trains both (each its own optimizer): the policy through the
/// surrogate, the critic's value head and trunk through the value loss. The CPU pass and burn's
/// autodiff agree, so each model gets its own gradient from the one backward pass.
#[test]
fn ppo_with_a_separate_critic_trains_both_models() {
    let mut cpu = with_critic(true);
    let mut burn = with_critic(false);
    assert!(cpu.policy().value_head.is_none());
    let critic_before = named(&cpu.critic().unwrap().model);
    let policy_before = named(&cpu.policy());
    // The critic's trunk starts equal to the policy's.
    for (name, values) in &policy_before {
        let c = critic_before.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(&c.1, values, "{name}");
    }
    for _ in 0..2 {
        let a = cpu.rl_step(&batch(), WeightsVersion(0)).unwrap();
        let b = burn.rl_step(&batch(), WeightsVersion(0)).unwrap();
        assert!(
            a["ppo/critic_grad_norm"] > 0.0 && a["ppo/vf_loss"] > 0.0,
            "{a:?}"
        );
        for key in ["loss", "ppo/vf_loss"] {
            assert!(
                (a[key] - b[key]).abs() < 1e-5,
                "{key}: {} vs {}",
                a[key],
                b[key]
            );
        }
        for key in ["grad_norm", "ppo/critic_grad_norm"] {
            assert!(
                (a[key] - b[key]).abs() < 1e-4 * a[key],
                "{key}: {} vs {}",
                a[key],
                b[key]
            );
        }
    }
    let moved = |before: &[(String, Vec<f32>)], after: &[(String, Vec<f32>)], name: &str| {
        let b = &before.iter().find(|(n, _)| n == name).unwrap().1;
        let a = &after.iter().find(|(n, _)| n == name).unwrap().1;
        max_diff(a, b) > 1e-4
    };
    let critic_after = named(&cpu.critic().unwrap().model);
    let policy_after = named(&cpu.policy());
    assert!(moved(
        &critic_before,
        &critic_after,
        "v_head.summary.weight"
    ));
    assert!(moved(
        &critic_before,
        &critic_after,
        "model.layers.0.mlp.up_proj.weight"
    ));
    assert!(moved(
        &policy_before,
        &policy_after,
        "model.layers.0.mlp.up_proj.weight"
    ));
    // They trained apart: the copies differ now.
    let name = "model.layers.0.mlp.up_proj.weight";
    assert!(
        moved(&policy_after, &critic_after, name),
        "the policy and the critic share no parameter"
    );
}

fn dpo() -> ObjectiveConfig {
    ObjectiveConfig {
        algorithm: Algorithm::Dpo,
        dpo: DpoConfig::default(),
        ..ObjectiveConfig::default()
    }
}

/// Online DPO: one pair per group with a reward spread (groups 0 and 1), none for group 2; the
/// first step starts at the reference, so the loss is `ln 2` exactly and the margins 0; the
/// step then ranks each chosen response above its rejected one.
#[test]
fn dpo_pairs_each_groups_best_and_worst_and_learns_the_preference() {
    let mut l = learner(dpo(), learner_config(1, true));
    let first = l.rl_step(&batch(), WeightsVersion(0)).unwrap();
    assert_eq!(first["dpo/pairs"], 2.0);
    assert!(
        (first["loss"] - std::f64::consts::LN_2).abs() < 1e-6,
        "{first:?}"
    );
    assert!(first["dpo/rewards_margins"].abs() < 1e-6);
    assert_eq!(first["dpo/chosen_reward_mean"], 1.0);
    let second = l.rl_step(&batch(), WeightsVersion(0)).unwrap();
    assert!(second["dpo/rewards_margins"] > 0.0, "{second:?}");
    assert_eq!(second["dpo/rewards_accuracies"], 1.0);
    assert!(second["loss"] < std::f64::consts::LN_2);
}

/// A DPO pair never straddles two micro-batches: splitting the step gives the same update.
#[test]
fn dpo_micro_batches_keep_pairs_together() {
    let mut one = learner(dpo(), learner_config(1, true));
    let mut two = learner(dpo(), learner_config(2, true));
    let a = one.rl_step(&batch(), WeightsVersion(0)).unwrap();
    let b = two.rl_step(&batch(), WeightsVersion(0)).unwrap();
    assert!((a["loss"] - b["loss"]).abs() < 1e-6);
    assert!((a["grad_norm"] - b["grad_norm"]).abs() < 1e-5 * a["grad_norm"]);
    let d = max_diff(&weights(&one), &weights(&two));
    assert!(d < 1e-5, "{d}");
}

/// NFT on-policy with `normalize = "negative_rate"` is Dr. GRPO: the NFT step equals GRPO's
/// with `scale_rewards = "none"` (advantage `r − r̂`) and the same token aggregation, also on a
/// batch with a group without signal (it counts in both normalisers).
#[test]
fn nft_on_policy_is_dr_grpo() {
    let signal = batch();
    // Adam's first step moves a weight by lr·g/(|g| + ε): with the usual ε (1e-8), gradients
    // equal up to rounding move near-zero-gradient weights by visibly different amounts (1.1e-5
    // here at lr 1e-2); ε = 1e-4 keeps those updates proportional to the gradient (1.2e-6).
    let adam = || AdamWConfig {
        adam_epsilon: 1e-4,
        ..AdamWConfig::default()
    };
    let mut nft = learner_with_adam(
        ObjectiveConfig {
            algorithm: Algorithm::Nft,
            nft: NftConfig {
                loss_type: LossType::Dapo,
                ..NftConfig::default()
            },
            ..ObjectiveConfig::default()
        },
        learner_config(2, true),
        adam(),
    );
    let mut grpo = learner_with_adam(
        ObjectiveConfig::grpo(
            GrpoLossConfig {
                loss_type: LossType::Dapo,
                ..GrpoLossConfig::default()
            },
            AdvantageConfig {
                scale_rewards: ScaleRewards::None,
                ..AdvantageConfig::default()
            },
        ),
        learner_config(2, true),
        adam(),
    );
    let a = nft.rl_step(&signal, WeightsVersion(0)).unwrap();
    let b = grpo.rl_step(&signal, WeightsVersion(0)).unwrap();
    assert!(
        (a["grad_norm"] - b["grad_norm"]).abs() < 1e-4 * b["grad_norm"],
        "{} vs {}",
        a["grad_norm"],
        b["grad_norm"]
    );
    let d = max_diff(&weights(&nft), &weights(&grpo));
    assert!(d < 1e-5, "{d}");
    // Group 2's answers are all right: no signal, skipped and counted.
    assert_eq!(a["nft/skipped_samples"], 2.0);
    assert_eq!(a["trained_tokens"], b["trained_tokens"]);
}

/// NFT needs verdicts: a reward outside [0, 1] is an error that names it.
#[test]
fn nft_rejects_rewards_that_are_not_verdicts() {
    let mut l = learner(
        ObjectiveConfig {
            algorithm: Algorithm::Nft,
            ..ObjectiveConfig::default()
        },
        learner_config(1, true),
    );
    let mut bad = batch();
    bad[0].outcome = Outcome::single("a", vec![2.0]);
    let err = l.rl_step(&bad, WeightsVersion(0)).unwrap_err().to_string();
    assert!(
        err.contains("NFT verdicts") && err.contains("[0, 1]") && err.contains("environment `t`"),
        "{err}"
    );
}
