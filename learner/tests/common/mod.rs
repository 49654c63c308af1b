//! What the learner's tests share: a small model, a batch of one-turn trajectories in three
//! groups, and readers of a learner's weights.
#![allow(dead_code)]

use burn::tensor::Device;
use kaizen_core::{FinishReason, Outcome, Segment, Trajectory, WeightsVersion};
use kaizen_learner::{
    AdamW, AdamWConfig, Learner, LearnerConfig, ObjectiveConfig, Schedule, SchedulerType,
};
use kaizen_model::{Llama, LlamaConfig};

/// A 2-layer model small enough for many steps per test.
pub fn config() -> LlamaConfig {
    let mut c = LlamaConfig::tiny(64);
    c.hidden_size = 32;
    c.intermediate_size = 64;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.initializer_range = 0.2;
    c
}

/// A trainable turn of agent `a` on thread 0: `prompt`, then `completion` with behaviour
/// log-probs −1, sampled at temperature 1 by weights version 0.
pub fn segment(prompt: Vec<u32>, completion: &[u32]) -> Segment {
    Segment {
        agent: "a".into(),
        thread: 0,
        prompt_tokens: prompt,
        completion_tokens: completion.to_vec(),
        behavior_logprobs: vec![-1.0; completion.len()],
        trainable: true,
        temperature: 1.0,
        weights_version: WeightsVersion(0),
        finish_reason: FinishReason::Eos,
        self_certainty: None,
    }
}

/// A one-turn episode of group `group`: a 4-token prompt, `completion` with behaviour
/// log-probs −1, one reward.
pub fn trajectory(id: u64, group: u64, completion: &[u32], reward: f32) -> Trajectory {
    Trajectory {
        id,
        env: "t".into(),
        seed: group,
        group_id: group,
        segments: vec![segment(vec![1, 2, 3, (group % 50) as u32 + 4], completion)],
        outcome: Outcome::single("a", vec![reward]),
    }
}

/// Groups 0 and 1 have a spread of rewards, group 2 has equal rewards.
pub fn batch() -> Vec<Trajectory> {
    vec![
        trajectory(0, 0, &[5, 6, 7], 1.0),
        trajectory(1, 0, &[8, 9], 0.0),
        trajectory(2, 0, &[10, 11, 12, 13], 0.5),
        trajectory(3, 1, &[14], 1.0),
        trajectory(4, 1, &[15, 16, 17, 18, 19], 0.0),
        trajectory(5, 2, &[20, 21], 1.0),
        trajectory(6, 2, &[22, 23], 1.0),
    ]
}

/// Every weight of the learner's policy, flattened in export order.
pub fn weights(l: &Learner) -> Vec<f32> {
    l.policy()
        .to_named()
        .into_iter()
        .flat_map(|(_, t)| t.data)
        .collect()
}

/// The largest absolute difference between two equally long slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A constant learning rate of 1e-2 over 10 steps.
pub fn schedule() -> Schedule {
    Schedule {
        lr: 1e-2,
        warmup_steps: 0,
        total_steps: 10,
        kind: SchedulerType::Constant,
    }
}

/// A learner for `objective` on [`config`]'s model (seed 7, a value head when the objective
/// needs one), AdamW without clipping, [`schedule`].
pub fn learner_for(objective: ObjectiveConfig, learner: LearnerConfig) -> Learner {
    learner_with_adam(objective, learner, AdamWConfig::default())
}

/// [`learner_for`] with the given AdamW settings (clipping always off).
pub fn learner_with_adam(
    objective: ObjectiveConfig,
    learner: LearnerConfig,
    adam: AdamWConfig,
) -> Learner {
    let device = Device::default().autodiff();
    let mut model = Llama::init(&config(), &device, 7).unwrap();
    if objective.needs_value_head() {
        model = model.with_value_head(11).unwrap();
    }
    Learner::with_objective(
        model,
        AdamW::new(AdamWConfig {
            max_grad_norm: 0.0,
            ..adam
        }),
        schedule(),
        learner,
        objective,
    )
}
