//! The learner's update: gradient accumulation does not change the step; AdamW matches
//! `torch.optim.AdamW`'s formula; advantages reach the right tokens.

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use common::{batch, config, learner_for, segment, weights};
use kaizen_algorithms::{AdvantageConfig, GrpoLossConfig, LossType};
use kaizen_core::{Outcome, Trajectory, WeightsVersion};
use kaizen_learner::{
    AdamW, AdamWConfig, Learner, LearnerConfig, ObjectiveConfig, Schedule, SchedulerType,
};
use kaizen_model::Llama;

fn learner(accumulation: usize, loss_type: LossType) -> Learner {
    learner_with(
        LearnerConfig {
            gradient_accumulation_steps: accumulation,
            max_completion_length: 8,
            ..LearnerConfig::default()
        },
        loss_type,
    )
}

fn learner_with(learner_config: LearnerConfig, loss_type: LossType) -> Learner {
    learner_for(
        ObjectiveConfig::grpo(
            GrpoLossConfig {
                loss_type,
                ..GrpoLossConfig::default()
            },
            AdvantageConfig::default(),
        ),
        learner_config,
    )
}

#[test]
fn gradient_accumulation_does_not_change_the_step() {
    for loss_type in [LossType::Grpo, LossType::Dapo, LossType::DrGrpo] {
        let mut one = learner(1, loss_type);
        let before = weights(&one);
        let m1 = one.rl_step(&batch(), WeightsVersion(0)).unwrap();
        for parts in [2, 3] {
            let mut split = learner(parts, loss_type);
            let m = split.rl_step(&batch(), WeightsVersion(0)).unwrap();
            let (a, b) = (weights(&one), weights(&split));
            let diff = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(
                diff < 1e-5,
                "{loss_type:?} split in {parts}: weights differ by {diff}"
            );
            assert!((m["grad_norm"] - m1["grad_norm"]).abs() < 1e-4 * m1["grad_norm"].max(1.0));
            assert!((m["loss"] - m1["loss"]).abs() < 1e-5);
        }
        let moved = before
            .iter()
            .zip(weights(&one))
            .any(|(x, y)| (x - y).abs() > 1e-6);
        assert!(moved, "the step changes the weights");
        assert_eq!(m1["zero_signal_groups"], 1.0, "group 2 has equal rewards");
        // Group 2 (equal rewards) and the sample of group 0 whose reward is the group mean.
        assert_eq!(m1["zero_signal_samples"], 3.0);
    }
}

/// Computing each group's shared prompt once gives the step that scoring every sample in full
/// gives.
#[test]
fn sharing_the_prompt_prefix_does_not_change_the_step() {
    let mut shared = learner(2, LossType::Dapo);
    let mut full = learner_with(
        LearnerConfig {
            gradient_accumulation_steps: 2,
            max_completion_length: 8,
            share_prompt_prefix: false,
            ..LearnerConfig::default()
        },
        LossType::Dapo,
    );
    let a = shared.rl_step(&batch(), WeightsVersion(0)).unwrap();
    let b = full.rl_step(&batch(), WeightsVersion(0)).unwrap();
    let diff = weights(&shared)
        .iter()
        .zip(weights(&full))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-6, "weights differ by {diff}");
    assert!((a["loss"] - b["loss"]).abs() < 1e-6);
    assert!((a["grad_norm"] - b["grad_norm"]).abs() < 1e-4 * b["grad_norm"]);
}

#[test]
fn stale_samples_are_dropped_and_counted() {
    let mut l = learner(1, LossType::Dapo);
    let mut trajectories = batch();
    for t in &mut trajectories[..3] {
        t.segments[0].weights_version = WeightsVersion(0);
    }
    for t in &mut trajectories[3..] {
        t.segments[0].weights_version = WeightsVersion(2);
    }
    let m = l.rl_step(&trajectories, WeightsVersion(2)).unwrap();
    assert_eq!(m["dropped_stale"], 3.0);
    assert_eq!(m["samples"], 7.0);
}

/// Collects every parameter's values.
struct Values(Vec<Vec<f32>>);

impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(
            param
                .val()
                .into_data()
                .convert::<f32>()
                .try_into_vec()
                .unwrap(),
        );
    }
}

#[test]
fn adamw_matches_the_torch_formula_for_two_steps() {
    // Hand-computed with torch.optim.AdamW semantics for a single scalar-like check: after the
    // first step with lr, every parameter moves by lr·sign(g) (m̂/√v̂ = g/|g|), weight decay 0.
    let device = Device::default().autodiff();
    let model = Llama::init(&config(), &device, 3).unwrap();
    let mut before = Values(Vec::new());
    model.visit(&mut before);
    let mut l = Learner::new(
        model,
        AdamW::new(AdamWConfig {
            max_grad_norm: 0.0,
            adam_epsilon: 1e-12,
            ..AdamWConfig::default()
        }),
        Schedule {
            lr: 1e-3,
            warmup_steps: 0,
            total_steps: 10,
            kind: SchedulerType::Constant,
        },
        LearnerConfig::default(),
        GrpoLossConfig::default(),
        AdvantageConfig::default(),
    );
    l.rl_step(&batch(), WeightsVersion(0)).unwrap();
    let mut after = Values(Vec::new());
    l.model().visit(&mut after);
    let mut moved = 0;
    for (b, a) in before.0.iter().zip(&after.0) {
        for (x, y) in b.iter().zip(a) {
            let d = (x - y).abs();
            if d > 0.0 {
                assert!((d - 1e-3).abs() < 2e-5, "first AdamW step moves by lr: {d}");
                moved += 1;
            }
        }
    }
    assert!(moved > 1000, "most parameters get a gradient ({moved})");
    assert_eq!(l.steps(), 1);
}

/// A learner's optimizer holds zero moments for every parameter before its first step (so
/// that the first step's buffers, not the moments, are what the second step reuses), under
/// the same names the first update gives them.
#[test]
fn the_optimizer_moments_exist_before_the_first_step_under_the_steps_names() {
    let mut l = learner(1, LossType::Dapo);
    let (step, before) = l.optimizer().state();
    assert_eq!(step, 0);
    assert!(!before.is_empty());
    assert!(
        before.iter().all(|(_, t)| t.data.iter().all(|&x| x == 0.0)),
        "reserved moments are zero"
    );
    let count: usize = before.iter().map(|(_, t)| t.data.len()).sum();
    let mut params = Values(Vec::new());
    l.model().visit(&mut params);
    let n: usize = params.0.iter().map(Vec::len).sum();
    assert_eq!(count, 2 * n, "two moments for every parameter value");
    l.rl_step(&batch(), WeightsVersion(0)).unwrap();
    let (step, after) = l.optimizer().state();
    assert_eq!(step, 1);
    let names = |s: &[(String, kaizen_model::HostTensor)]| {
        s.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&after), names(&before));
    assert!(
        after.iter().any(|(_, t)| t.data.iter().any(|&x| x != 0.0)),
        "the step wrote into the reserved moments"
    );
}

/// kaizen's CPU training pass (the default) and burn's autodiff give the same step.
#[test]
fn the_cpu_training_pass_gives_burns_step() {
    let mut cpu = learner(2, LossType::Dapo);
    let mut burn = learner_with(
        LearnerConfig {
            gradient_accumulation_steps: 2,
            max_completion_length: 8,
            cpu_kernels: false,
            ..LearnerConfig::default()
        },
        LossType::Dapo,
    );
    for _ in 0..2 {
        let a = cpu.rl_step(&batch(), WeightsVersion(0)).unwrap();
        let b = burn.rl_step(&batch(), WeightsVersion(0)).unwrap();
        assert!(
            (a["loss"] - b["loss"]).abs() < 1e-5,
            "{} vs {}",
            a["loss"],
            b["loss"]
        );
        assert!((a["grad_norm"] - b["grad_norm"]).abs() < 1e-4 * b["grad_norm"]);
        assert!((a["entropy"] - b["entropy"]).abs() < 1e-4);
    }
    let diff = weights(&cpu)
        .iter()
        .zip(weights(&burn))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-5, "weights differ by {diff}");
}

/// Two-turn conversations (answer, feedback, revised answer) in one thread.
fn two_turn_batch() -> Vec<Trajectory> {
    let rewards = [[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]];
    rewards
        .iter()
        .enumerate()
        .map(|(i, r)| Trajectory {
            id: i as u64,
            env: "t".into(),
            seed: 0,
            group_id: 0,
            segments: vec![
                segment(vec![1, 2, 3], &[10 + i as u32, 20]),
                segment(vec![30, 31], &[40 + i as u32, 41, 20]),
            ],
            outcome: Outcome::single("a", r.to_vec()),
        })
        .collect()
}

/// `loss.kl_turn_weights` reaches the loss per turn: on the second step (the first moves the
/// policy away from the reference), the KL part of the loss splits exactly into its turns.
#[test]
fn kl_turn_weights_weigh_each_turn() {
    let loss_at_step_2 = |kl_turn_weights: Vec<f32>| {
        let device = Device::default().autodiff();
        let model = Llama::init(&config(), &device, 7).unwrap();
        let mut l = Learner::new(
            model,
            AdamW::new(AdamWConfig::default()),
            Schedule {
                lr: 1e-2,
                warmup_steps: 0,
                total_steps: 10,
                kind: SchedulerType::Constant,
            },
            LearnerConfig {
                max_completion_length: 8,
                ..LearnerConfig::default()
            },
            GrpoLossConfig {
                beta: 0.5,
                kl_turn_weights,
                ..GrpoLossConfig::default()
            },
            AdvantageConfig::default(),
        );
        l.rl_step(&two_turn_batch(), WeightsVersion(0)).unwrap();
        l.rl_step(&two_turn_batch(), WeightsVersion(0)).unwrap()["loss"]
    };
    let none = loss_at_step_2(vec![0.0]);
    let first = loss_at_step_2(vec![1.0, 0.0]) - none;
    let second = loss_at_step_2(vec![0.0, 1.0]) - none;
    let both = loss_at_step_2(vec![1.0]) - none;
    assert!(first > 1e-6 && second > 1e-6, "{first} {second}");
    assert!(
        (first + second - both).abs() < 1e-5 * both.max(1e-3),
        "{first} + {second} vs {both}"
    );
}
