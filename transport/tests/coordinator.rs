//! The coordinator against hand-driven gRPC clients: joining rules, delivery and accounting
//! (acks, duplicates, requeue on disconnect, a silent peer), refusal of malformed and oversized
//! messages, backpressure, and the weight stream.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use kaizen_core::{AgentId, FinishReason, Outcome, Segment, Trajectory, WeightsVersion};
use kaizen_transport::wire::proto::{
    self, ActorMessage, CoordinatorMessage, JoinRequest, WeightsRequest, actor_message,
    coordinator_message,
};
use kaizen_transport::wire::{
    Coordinator, PROTOCOL_VERSION, WeightsAssembler, report_message, report_to_proto,
};
use kaizen_transport::{EpisodeReport, EpisodeTask, Rollouts, WeightSink};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

mod common;
use common::{FINGERPRINT, client, config, model, runtime};

fn start(peer_timeout: Duration, results_capacity: usize) -> Coordinator {
    Coordinator::start(
        config(peer_timeout, results_capacity),
        &model(1),
        WeightsVersion(0),
    )
    .unwrap()
}

fn task(id: u64, group: u64) -> EpisodeTask {
    EpisodeTask {
        id,
        group_id: group,
        env: 0,
        seed: group,
        sample: (id % 4) as u32,
        sampling_seed: id * 7,
        sampling: Default::default(),
        hint_turns: Vec::new(),
        search: None,
    }
}

fn report(task: EpisodeTask) -> EpisodeReport {
    let segment = Segment {
        agent: AgentId::from("solver"),
        thread: 0,
        prompt_tokens: vec![1, 2, 3],
        completion_tokens: vec![4, 5],
        behavior_logprobs: vec![-0.25, -1.5],
        trainable: true,
        temperature: 1.0,
        weights_version: WeightsVersion(0),
        finish_reason: FinishReason::Eos,
        self_certainty: None,
    };
    EpisodeReport {
        env: "self_correct".into(),
        result: Ok(Trajectory {
            id: task.id,
            env: "self_correct".into(),
            seed: task.seed,
            group_id: task.group_id,
            segments: vec![segment],
            outcome: Outcome::single("solver", vec![1.0]),
        }),
        metrics: BTreeMap::from([("correct@t1".to_string(), 1.0)]),
        turns: Vec::new(),
        tree: None,
        task,
    }
}

/// A hand-driven actor: joined, with its episode stream open.
struct FakeActor {
    id: u64,
    out: mpsc::Sender<ActorMessage>,
    inbound: tonic::Streaming<CoordinatorMessage>,
    /// Tasks that arrived while waiting for an ack.
    early: Vec<Vec<EpisodeTask>>,
}

async fn join(addr: SocketAddr, name: &str) -> FakeActor {
    let mut c = client(addr).await;
    let reply = c
        .join(JoinRequest {
            protocol_version: PROTOCOL_VERSION,
            job_fingerprint: FINGERPRINT.into(),
            name: name.into(),
            previous_actor_id: 0,
            previous_incarnation: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let (out, rx) = mpsc::channel(1024);
    out.send(ActorMessage {
        body: Some(actor_message::Body::Hello(proto::Hello {
            actor_id: reply.actor_id,
        })),
    })
    .await
    .unwrap();
    let inbound = c
        .episodes(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    FakeActor {
        id: reply.actor_id,
        out,
        inbound,
        early: Vec::new(),
    }
}

impl FakeActor {
    /// The next `Tasks` message (skipping heartbeats).
    async fn tasks(&mut self) -> Vec<EpisodeTask> {
        if !self.early.is_empty() {
            return self.early.remove(0);
        }
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.inbound.message())
                .await
                .expect("tasks within 10 s")
                .unwrap()
                .unwrap();
            if let Some(coordinator_message::Body::Tasks(t)) = m.body {
                return decode(t);
            }
        }
    }

    /// The next `Ack` (skipping heartbeats).
    async fn ack(&mut self) -> u64 {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.inbound.message())
                .await
                .expect("an ack within 10 s")
                .unwrap()
                .unwrap();
            match m.body {
                Some(coordinator_message::Body::Ack(a)) => return a.task_id,
                Some(coordinator_message::Body::Tasks(t)) => self.early.push(decode(t)),
                _ => {}
            }
        }
    }

    async fn send(&self, report: &EpisodeReport) {
        self.out
            .send(ActorMessage {
                body: Some(actor_message::Body::Report(report_to_proto(report))),
            })
            .await
            .unwrap();
    }
}

fn decode(t: proto::Tasks) -> Vec<EpisodeTask> {
    t.tasks
        .into_iter()
        .map(|t| kaizen_transport::wire::task_from_proto(t, "test").unwrap())
        .collect()
}

#[test]
fn another_protocol_version_or_job_is_refused_with_both_values() {
    let coordinator = start(Duration::from_secs(60), 16);
    let addr = coordinator.local_addr();
    let rt = runtime();
    rt.block_on(async {
        let mut c = client(addr).await;
        let e = c
            .join(JoinRequest {
                protocol_version: PROTOCOL_VERSION + 1,
                job_fingerprint: FINGERPRINT.into(),
                name: "old".into(),
                previous_actor_id: 0,
                previous_incarnation: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message().contains(&format!(
                "version {} but the coordinator speaks {PROTOCOL_VERSION}",
                PROTOCOL_VERSION + 1
            )),
            "{}",
            e.message()
        );
        let e = c
            .join(JoinRequest {
                protocol_version: PROTOCOL_VERSION,
                job_fingerprint: "job-2".into(),
                name: "other".into(),
                previous_actor_id: 0,
                previous_incarnation: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("job-2") && e.message().contains(FINGERPRINT));
    });
    assert_eq!(coordinator.actors(), 0);
}

#[test]
fn groups_stay_together_reports_are_acked_once_and_duplicates_dropped() {
    let coordinator = start(Duration::from_secs(60), 64);
    let addr = coordinator.local_addr();
    let rt = runtime();
    let (mut a, mut b) = rt.block_on(async { (join(addr, "a").await, join(addr, "b").await) });
    coordinator
        .wait_for_actors(2, Duration::from_secs(5))
        .unwrap();
    // Two groups of 2: group 0 → the first actor, group 1 → the second.
    let tasks: Vec<EpisodeTask> = (0..4).map(|i| task(i, i / 2)).collect();
    coordinator.submit_all(tasks).unwrap();
    let (ta, tb) = rt.block_on(async { (a.tasks().await, b.tasks().await) });
    assert!(ta.iter().all(|t| t.group_id == ta[0].group_id) && ta.len() == 2);
    assert!(tb.iter().all(|t| t.group_id == tb[0].group_id) && tb.len() == 2);
    assert_ne!(ta[0].group_id, tb[0].group_id);
    rt.block_on(async {
        for t in &ta {
            a.send(&report(t.clone())).await;
            assert_eq!(a.ack().await, t.id);
        }
        // A resend after a reconnect: acknowledged again, but not delivered twice.
        a.send(&report(ta[0].clone())).await;
        assert_eq!(a.ack().await, ta[0].id);
        for t in &tb {
            b.send(&report(t.clone())).await;
            assert_eq!(b.ack().await, t.id);
        }
    });
    let mut got: Vec<u64> = (0..4)
        .map(|_| coordinator.recv().unwrap().task.id)
        .collect();
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2, 3]);
    assert_eq!(coordinator.ready(), 0);
    assert_eq!(coordinator.stats().duplicates, 1);
    let left = Box::new(coordinator).shutdown();
    assert!(left.is_empty(), "nothing outstanding at the end");
}

#[test]
fn a_disconnected_actors_tasks_go_to_the_others_and_nothing_is_lost() {
    let coordinator = start(Duration::from_secs(60), 64);
    let addr = coordinator.local_addr();
    let rt = runtime();
    let (a, mut b) = rt.block_on(async { (join(addr, "a").await, join(addr, "b").await) });
    coordinator
        .wait_for_actors(2, Duration::from_secs(5))
        .unwrap();
    let first = a.id.min(b.id);
    assert_eq!(first, a.id, "a joined first");
    // Group 0 goes to a, group 1 to b.
    coordinator
        .submit_all(vec![task(0, 0), task(1, 0), task(2, 1)])
        .unwrap();
    let tb = rt.block_on(b.tasks());
    assert_eq!(tb.iter().map(|t| t.id).collect::<Vec<_>>(), vec![2]);
    // a dies without reporting: its two tasks are handed to b.
    drop(a);
    let requeued = rt.block_on(b.tasks());
    assert_eq!(
        requeued.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![0, 1]
    );
    rt.block_on(async {
        for t in tb.iter().chain(&requeued) {
            b.send(&report(t.clone())).await;
            b.ack().await;
        }
    });
    let mut got: Vec<u64> = (0..3)
        .map(|_| coordinator.recv().unwrap().task.id)
        .collect();
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2]);
    let stats = coordinator.stats();
    assert_eq!((stats.departed, stats.requeued, stats.actors), (1, 2, 1));
}

#[test]
fn a_silent_actor_is_declared_dead_within_the_timeout() {
    let timeout = Duration::from_millis(600);
    let coordinator = start(timeout, 64);
    let addr = coordinator.local_addr();
    let rt = runtime();
    let mut silent = rt.block_on(join(addr, "silent"));
    coordinator
        .wait_for_actors(1, Duration::from_secs(5))
        .unwrap();
    coordinator.submit_all(vec![task(0, 0)]).unwrap();
    rt.block_on(silent.tasks());
    let started = Instant::now();
    while coordinator.stats().departed == 0 {
        assert!(
            // The reaper checks every third of the timeout; slack for a loaded 2-core machine.
            started.elapsed() < timeout * 3 + Duration::from_secs(2),
            "not declared dead after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(started.elapsed() >= timeout / 2);
    // Its task waits for the next actor, who gets it at once.
    let mut next = rt.block_on(join(addr, "next"));
    let t = rt.block_on(next.tasks());
    assert_eq!(t[0].id, 0);
    assert_eq!(coordinator.stats().requeued, 1);
    drop(silent);
}

#[test]
fn malformed_and_oversized_reports_are_refused_without_a_panic() {
    let coordinator = start(Duration::from_secs(60), 64);
    let addr = coordinator.local_addr();
    let rt = runtime();
    let (mut bad, mut big, mut good) = rt.block_on(async {
        (
            join(addr, "bad").await,
            join(addr, "big").await,
            join(addr, "good").await,
        )
    });
    coordinator
        .wait_for_actors(3, Duration::from_secs(5))
        .unwrap();
    coordinator
        .submit_all(vec![task(0, 0), task(1, 1), task(2, 2)])
        .unwrap();
    rt.block_on(async {
        let t0 = bad.tasks().await;
        let t1 = big.tasks().await;
        let t2 = good.tasks().await;
        // Log-probs that do not match the sampled tokens.
        let mut p = report_to_proto(&report(t0[0].clone()));
        if let Some(proto::report::Result::Trajectory(t)) = &mut p.result {
            t.segments[0].behavior_logprobs.pop();
        }
        bad.out
            .send(ActorMessage {
                body: Some(actor_message::Body::Report(p)),
            })
            .await
            .unwrap();
        let e = bad.inbound.message().await;
        let refused = loop {
            match e {
                Err(status) => break status,
                Ok(_) => match bad.inbound.message().await {
                    Err(status) => break status,
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("stream closed without an error"),
                },
            }
        };
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().contains("behavior_logprobs"),
            "{}",
            refused.message()
        );
        // A report over the 64 KiB limit.
        let mut r = report(t1[0].clone());
        if let Ok(t) = &mut r.result {
            t.segments[0].completion_tokens = vec![7; 40_000];
            t.segments[0].behavior_logprobs = vec![-1.0; 40_000];
        }
        let _ = big.send(&r).await;
        // The good actor is unaffected.
        good.send(&report(t2[0].clone())).await;
        good.ack().await;
    });
    assert_eq!(coordinator.recv().unwrap().task.id, 2);
    let started = Instant::now();
    while coordinator.stats().refused < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            coordinator.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = coordinator.stats();
    assert_eq!(stats.departed, 2, "both offenders were disconnected");
    assert_eq!(stats.actors, 1);
    // Their tasks went to the good actor.
    let requeued = rt.block_on(good.tasks());
    let mut more = requeued.iter().map(|t| t.id).collect::<Vec<_>>();
    if more.len() < 2 {
        more.extend(rt.block_on(good.tasks()).iter().map(|t| t.id));
    }
    more.sort_unstable();
    assert_eq!(more, vec![0, 1]);
}

#[test]
fn a_report_over_the_limit_goes_as_a_report_too_large_fault_and_is_counted() {
    let coordinator = start(Duration::from_secs(60), 64);
    let addr = coordinator.local_addr();
    let rt = runtime();
    // The join reply says how large a message the coordinator accepts.
    let limit = rt.block_on(async {
        let reply = client(addr)
            .await
            .join(JoinRequest {
                protocol_version: PROTOCOL_VERSION,
                job_fingerprint: FINGERPRINT.into(),
                name: "probe".into(),
                previous_actor_id: 0,
                previous_incarnation: 0,
            })
            .await
            .unwrap()
            .into_inner();
        reply.max_message_bytes as usize
    });
    assert_eq!(limit, 64 * 1024);
    let mut actor = rt.block_on(join(addr, "big"));
    coordinator
        .wait_for_actors(1, Duration::from_secs(5))
        .unwrap();
    coordinator
        .submit_all(vec![task(0, 0), task(1, 1)])
        .unwrap();
    rt.block_on(async {
        let tasks = actor.tasks().await;
        let tasks = if tasks.len() < 2 {
            [tasks, actor.tasks().await].concat()
        } else {
            tasks
        };
        // A small report passes as it is.
        let (small, too_large) = report_message(&report(tasks[0].clone()), 9, limit);
        assert_eq!(too_large, None, "fits");
        actor.out.send(small).await.unwrap();
        assert_eq!(actor.ack().await, tasks[0].id);
        // A large one becomes a fault naming both sizes, which the coordinator accepts and acks
        // (sent raw, it would be refused and the link dropped).
        let mut big = report(tasks[1].clone());
        if let Ok(t) = &mut big.result {
            t.segments[0].completion_tokens = vec![7; 40_000];
            t.segments[0].behavior_logprobs = vec![-1.0; 40_000];
        }
        let (fault, too_large) = report_message(&big, 9, limit);
        let bytes = too_large.expect("over the limit");
        assert!(bytes > limit, "{bytes}");
        actor.out.send(fault).await.unwrap();
        assert_eq!(actor.ack().await, tasks[1].id);
    });
    let mut got = [coordinator.recv().unwrap(), coordinator.recv().unwrap()];
    got.sort_by_key(|r| r.task.id);
    assert!(got[0].result.is_ok());
    let fault = got[1].result.as_ref().expect_err("a fault");
    assert_eq!(fault.kind, kaizen_envs::FaultKind::ReportTooLarge);
    assert!(
        fault.message.contains("65536") && fault.message.contains("max_message_mib"),
        "{}",
        fault.message
    );
    assert_eq!(got[1].metrics.get("fault/report_too_large"), Some(&1.0));
    let stats = coordinator.stats();
    assert_eq!((stats.refused, stats.departed), (0, 0), "{stats:?}");
}

#[test]
fn a_learner_that_does_not_read_makes_actors_wait() {
    let coordinator = start(Duration::from_secs(60), 2);
    let addr = coordinator.local_addr();
    let rt = runtime();
    let mut a = rt.block_on(join(addr, "a"));
    coordinator
        .wait_for_actors(1, Duration::from_secs(5))
        .unwrap();
    let tasks: Vec<EpisodeTask> = (0..6).map(|i| task(i, 0)).collect();
    coordinator.submit_all(tasks).unwrap();
    let acks = rt.block_on(async {
        let tasks = a.tasks().await;
        for t in &tasks {
            a.send(&report(t.clone())).await;
        }
        // Two fit in the queue; the third waits for the learner, so no third ack.
        let mut acks = 0;
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(500), a.inbound.message())
                .await
                .map(|m| m.unwrap())
        {
            if matches!(m.body, Some(coordinator_message::Body::Ack(_))) {
                acks += 1;
            }
        }
        acks
    });
    assert_eq!(acks, 2, "only what the bounded queue holds is acknowledged");
    assert_eq!(coordinator.ready(), 2);
    let got: Vec<u64> = (0..6)
        .map(|_| coordinator.recv().unwrap().task.id)
        .collect();
    assert_eq!(got.len(), 6);
}

#[test]
fn weights_arrive_bit_exact_and_a_slow_subscriber_gets_the_newest() {
    let coordinator = start(Duration::from_secs(60), 16);
    let addr = coordinator.local_addr();
    let sink = coordinator.weights();
    let v1 = sink.publish(model(2)).unwrap();
    let v2 = sink.publish(model(3)).unwrap();
    assert_eq!((v1, v2), (WeightsVersion(1), WeightsVersion(2)));
    let rt = runtime();
    let assembled = rt.block_on(async {
        let mut c = client(addr).await;
        let mut stream = c
            .weights(WeightsRequest {
                actor_id: 0,
                have_version: u64::MAX,
                group_capable: false,
            })
            .await
            .unwrap()
            .into_inner();
        let mut asm = WeightsAssembler::new(u64::MAX, "test");
        loop {
            let chunk = stream.message().await.unwrap().unwrap();
            if let Some(w) = asm.push(chunk).unwrap() {
                break w;
            }
        }
    });
    assert_eq!(
        assembled.version,
        WeightsVersion(2),
        "the newest, not a backlog"
    );
    let got = assembled.into_model(&Device::default()).unwrap().to_named();
    assert!(got == model(3).to_named(), "weights differ after transfer");
}
