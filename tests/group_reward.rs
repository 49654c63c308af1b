//! A user's group reward (`kaizen_envs::rewards::GroupReward`), registered by name and chosen
//! by `[grpo] reward_source = "group"`, sees every whole group and its rewards are trained on.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use kaizen_envs::Registry;
use kaizen_envs::rewards::{GroupMember, GroupReward, MemberVerdict};
use kaizen_learner::{JobConfig, TrainOptions, train};

mod common;

/// Rewards every turn of a group's first member 1 and the others 0; rejects the second member
/// (it becomes a fault) and logs `first` and `group_size` for the rest.
struct FirstMember;

impl GroupReward for FirstMember {
    fn relabel(&self, group: &mut [GroupMember<'_>]) -> Vec<MemberVerdict> {
        let size = group.len() as f64;
        group
            .iter_mut()
            .enumerate()
            .map(|(i, m)| {
                if i == 1 {
                    return Err("the second sample is rejected".into());
                }
                let reward = if i == 0 { 1.0 } else { 0.0 };
                for rewards in m.trajectory.outcome.rewards.values_mut() {
                    rewards.iter_mut().for_each(|r| *r = reward);
                }
                Ok(BTreeMap::from([
                    ("first".to_string(), f64::from(reward)),
                    ("group_size".to_string(), size),
                ]))
            })
            .collect()
    }
}

/// The values of `key` in `run`'s metrics, in step order.
fn series(run: &Path, key: &str) -> Vec<f64> {
    common::metrics(run)
        .into_iter()
        .filter(|((k, _), _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn a_registered_group_reward_sees_whole_groups_and_is_trained_on() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/self_correct_tiny.toml");
    let sets: Vec<String> = [
        format!("tracking.runs_dir={:?}", tmp.path().display().to_string()),
        "run.max_steps=2".into(),
        "sft.steps=10".into(),
        "grpo.num_generations=4".into(),
        "grpo.prompts_per_step=3".into(),
        "grpo.reward_source=\"group\"".into(),
        "grpo.group_reward=\"first_member\"".into(),
        "eval.at_start=false".into(),
        "eval.at_end=false".into(),
    ]
    .into();
    let (job, resolved) = JobConfig::load(&config, &sets).unwrap();
    let options = |registry: Registry| TrainOptions {
        device: Default::default(),
        stop: Arc::new(AtomicBool::new(false)),
        progress: false,
        registry,
        resume: None,
        launcher: Arc::new(kaizen_cluster::LocalLauncher::default()),
        collective: None,
        backend: None,
    };

    // Not registered: the run does not start, and the error names the group reward.
    let err = train(
        job.clone(),
        resolved.clone(),
        options(Registry::with_builtins()),
    )
    .err()
    .unwrap();
    let message = format!("{err:#}");
    assert!(
        message.contains("unknown group reward `first_member`"),
        "{message}"
    );

    let mut registry = Registry::with_builtins();
    registry
        .register_group_reward("first_member", Arc::new(FirstMember))
        .unwrap();
    assert!(
        registry
            .register_group_reward("first_member", Arc::new(FirstMember))
            .is_err()
    );
    let summary = train(job, resolved, options(registry)).unwrap();
    let run = summary.run_dir;
    // Per group of 4: one rejected (a fault), one rewarded 1 on every turn, two rewarded 0.
    assert_eq!(series(&run, "faults"), vec![3.0, 3.0]);
    for r in series(&run, "reward/mean") {
        assert!((r - 1.0 / 3.0).abs() < 1e-9, "reward/mean {r}");
    }
    for f in series(&run, "env/first") {
        assert!((f - 1.0 / 3.0).abs() < 1e-9, "env/first {f}");
    }
    assert_eq!(series(&run, "env/group_size"), vec![4.0, 4.0]);
}
