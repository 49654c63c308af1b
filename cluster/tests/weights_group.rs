//! An actor process (`run_actor`, in a thread) that joins the coordinator's weights group:
//! `InProcessGroups` stands in for NCCL. The actor says it can join, answers the invite,
//! receives a new version by the group's broadcast (no chunks), and plays the episodes stamped
//! with that version with it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use kaizen_cluster::{ActorOptions, job_fingerprint, run_actor};
use kaizen_core::WeightsVersion;
use kaizen_envs::Registry;
use kaizen_learner::{JobConfig, load_policy};
use kaizen_transport::wire::{Coordinator, CoordinatorConfig, InProcessGroups, WeightsGroups};
use kaizen_transport::{EpisodeTask, Rollouts, WeightSink};

const JOB: &str = "[run]\nexperiment = \"weights-group\"\nmax_steps = 1\n\
                   [model]\nsource = \"tiny\"\n\
                   [[env]]\nname = \"self_correct\"\n\
                   [sampling]\nmax_completion_length = 4\n\
                   [actors]\ncount = 1\n";

fn task(id: u64) -> EpisodeTask {
    EpisodeTask {
        id,
        group_id: 0,
        env: 0,
        seed: 7,
        sample: id as u32,
        sampling_seed: id,
        sampling: Default::default(),
        hint_turns: Vec::new(),
        search: None,
    }
}

#[test]
fn an_actor_process_receives_a_version_by_the_groups_broadcast_and_plays_with_it() {
    let (config, resolved) = JobConfig::parse(JOB, Path::new("job.toml"), &[]).unwrap();
    let fingerprint = job_fingerprint(&resolved);
    let device = Device::default();
    let policy = load_policy(&config, &device).unwrap();
    let timeout = Duration::from_secs(20);
    let groups = InProcessGroups::new(timeout);
    let coordinator = Coordinator::start(
        CoordinatorConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            peer_timeout: timeout,
            results_capacity: 16,
            max_message_bytes: 64 << 20,
            weights_chunk_bytes: 64 << 10,
            env_names: vec!["self_correct".into()],
            job_fingerprint: fingerprint.clone(),
            shutdown_grace: Duration::from_secs(5),
            weights_groups: Some(Arc::new(groups.clone())),
        },
        &policy.model,
        WeightsVersion(0),
    )
    .unwrap();
    let address = coordinator.local_addr().to_string();
    let actor_groups: Arc<dyn WeightsGroups> = Arc::new(groups.clone());
    let actor = std::thread::spawn(move || {
        let (config, _) = JobConfig::parse(JOB, Path::new("job.toml"), &[]).unwrap();
        run_actor(
            &config,
            ActorOptions {
                coordinator: address,
                name: "actor-under-test".into(),
                fingerprint,
                device: Device::default(),
                decode: None,
                registry: Registry::with_builtins(),
                weights_groups: Some(actor_groups),
            },
        )
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while coordinator.stats().weights_group_capable < 1 {
        assert!(Instant::now() < deadline, "{:?}", coordinator.stats());
        std::thread::sleep(Duration::from_millis(20));
    }

    // A new version (other weights), delivered by the group.
    let next = kaizen_model::Llama::init(policy.model.config(), &device, 99).unwrap();
    let sink = coordinator.weights();
    assert_eq!(sink.publish(next).unwrap(), WeightsVersion(1));
    let stats = coordinator.stats();
    assert_eq!(
        (
            stats.weights_groups_formed,
            stats.weights_by_group,
            stats.weights_group_failures
        ),
        (1, 1, 0),
        "{stats:?}"
    );

    // Episodes stamped with version 1 are played with it.
    coordinator.submit_all(vec![task(1), task(2)]).unwrap();
    for _ in 0..2 {
        let report = coordinator.recv().unwrap();
        let trajectory = report.result.expect("an episode, not a fault");
        assert!(!trajectory.segments.is_empty());
        for segment in &trajectory.segments {
            assert_eq!(segment.weights_version, WeightsVersion(1));
        }
    }
    let leftover = Box::new(coordinator).shutdown();
    assert!(leftover.is_empty(), "{} episodes left", leftover.len());
    let summary = actor.join().unwrap().unwrap();
    assert_eq!(summary.weight_versions, 2, "{summary:?}");
}
