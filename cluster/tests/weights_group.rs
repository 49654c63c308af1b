//! An actor process (`run_actor`, in a thread) that joins the coordinator's weights group:
//! `InProcessGroups` stands in for NCCL. The actor says it can join, answers the invite,
//! receives a new version by the group's broadcast (no chunks), and plays the episodes stamped
//! with that version with it. An actor whose weights stream fails (here: a broadcast that
//! delivers corrupted values, refused by the checksum) reconnects and gets the version again
//! instead of leaving the episodes stamped with it waiting forever.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use kaizen_cluster::{ActorOptions, job_fingerprint, run_actor};
use kaizen_core::WeightsVersion;
use kaizen_envs::Registry;
use kaizen_learner::{JobConfig, load_policy};
use kaizen_transport::wire::{
    Coordinator, CoordinatorConfig, InProcessGroups, WeightsGroup, WeightsGroups,
};
use kaizen_transport::{EpisodeReport, EpisodeTask, Error, Rollouts, WeightSink};

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

/// A coordinator with weights groups `groups` and an actor process (in a thread) joining them
/// with `actor_groups`; returns both once the actor is group-capable.
fn start(
    groups: InProcessGroups,
    actor_groups: Arc<dyn WeightsGroups>,
) -> (
    Coordinator,
    kaizen_model::Llama,
    std::thread::JoinHandle<Result<kaizen_cluster::ActorSummary, kaizen_cluster::ClusterError>>,
) {
    let (config, resolved) = JobConfig::parse(JOB, Path::new("job.toml"), &[]).unwrap();
    let fingerprint = job_fingerprint(&resolved);
    let policy = load_policy(&config, &Device::default()).unwrap();
    let timeout = Duration::from_secs(20);
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
            weights_groups: Some(Arc::new(groups)),
        },
        &policy.model,
        WeightsVersion(0),
    )
    .unwrap();
    let address = coordinator.local_addr().to_string();
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
    (coordinator, policy.model, actor)
}

/// The next report, or a panic after 60 s (an episode left waiting).
fn recv(coordinator: &Coordinator) -> EpisodeReport {
    let deadline = Instant::now() + Duration::from_secs(60);
    while coordinator.ready() == 0 {
        assert!(
            Instant::now() < deadline,
            "no report within 60 s: {:?}",
            coordinator.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    coordinator.recv().unwrap()
}

/// Plays two episodes stamped with the newest version, checks they were played with it, and
/// ends the job.
fn play_and_end(
    coordinator: Coordinator,
    actor: std::thread::JoinHandle<
        Result<kaizen_cluster::ActorSummary, kaizen_cluster::ClusterError>,
    >,
    version: WeightsVersion,
) -> kaizen_cluster::ActorSummary {
    coordinator.submit_all(vec![task(1), task(2)]).unwrap();
    for _ in 0..2 {
        let trajectory = recv(&coordinator).result.expect("an episode, not a fault");
        assert!(!trajectory.segments.is_empty());
        for segment in &trajectory.segments {
            assert_eq!(segment.weights_version, version);
        }
    }
    let leftover = Box::new(coordinator).shutdown();
    assert!(leftover.is_empty(), "{} episodes left", leftover.len());
    actor.join().unwrap().unwrap()
}

#[test]
fn an_actor_process_receives_a_version_by_the_groups_broadcast_and_plays_with_it() {
    let groups = InProcessGroups::new(Duration::from_secs(20));
    let (coordinator, model, actor) = start(groups.clone(), Arc::new(groups));
    let next = kaizen_model::Llama::init(model.config(), &Device::default(), 99).unwrap();
    assert_eq!(
        coordinator.weights().publish(next).unwrap(),
        WeightsVersion(1)
    );
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
    let summary = play_and_end(coordinator, actor, WeightsVersion(1));
    assert_eq!(summary.weight_versions, 2, "{summary:?}");
}

/// Joins as asked; every broadcast this rank receives arrives corrupted (one value changed).
#[derive(Debug)]
struct Corrupting(InProcessGroups);

#[derive(Debug)]
struct Corrupted(Box<dyn WeightsGroup>);

impl WeightsGroups for Corrupting {
    fn new_id(&self) -> Result<Vec<u8>, Error> {
        self.0.new_id()
    }

    fn join(&self, id: &[u8], rank: usize, world: usize) -> Result<Box<dyn WeightsGroup>, Error> {
        Ok(Box::new(Corrupted(self.0.join(id, rank, world)?)))
    }
}

impl WeightsGroup for Corrupted {
    fn broadcast(&mut self, values: &mut [f32]) -> Result<(), Error> {
        self.0.broadcast(values)?;
        if let Some(v) = values.first_mut() {
            *v += 1.0;
        }
        Ok(())
    }

    fn rank(&self) -> usize {
        self.0.rank()
    }

    fn world_size(&self) -> usize {
        self.0.world_size()
    }
}

#[test]
fn an_actor_whose_weights_stream_fails_reconnects_and_gets_the_version_again() {
    let groups = InProcessGroups::new(Duration::from_secs(20));
    let (coordinator, model, actor) = start(groups.clone(), Arc::new(Corrupting(groups.clone())));
    let next = kaizen_model::Llama::init(model.config(), &Device::default(), 99).unwrap();
    // The broadcast completes on the learner's side, so no chunks follow: the actor refuses
    // the corrupted version (checksum), and only a new weights stream brings it.
    assert_eq!(
        coordinator.weights().publish(next).unwrap(),
        WeightsVersion(1)
    );
    assert_eq!(coordinator.stats().weights_by_group, 1);
    let summary = play_and_end(coordinator, actor, WeightsVersion(1));
    assert!(summary.sessions >= 2, "no reconnect: {summary:?}");
    assert_eq!(summary.weight_versions, 2, "{summary:?}");
}
