//! Weights groups through the coordinator, with `InProcessGroups` standing in for NCCL (the
//! same protocol: an id made by rank 0, joins that wait for every rank, a broadcast every rank
//! enters): group-capable subscribers get each version by one broadcast and no data chunks,
//! the others by chunks, all bit-exact; the group is re-formed when its members change; a
//! member that does not join, or a broadcast that fails, sends the version as chunks; after
//! `MAX_GROUP_FAILURES` the coordinator backs off for `BACKOFF_PUBLISHES` publishes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use kaizen_core::WeightsVersion;
use kaizen_model::HostTensor;
use kaizen_transport::wire::proto::{WeightsChunk, WeightsRequest, weights_chunk};
use kaizen_transport::wire::{
    BACKOFF_PUBLISHES, Coordinator, CoordinatorConfig, InProcessGroups, MAX_GROUP_FAILURES,
    WeightsGroup, WeightsGroups, WeightsReceiver,
};
use kaizen_transport::{Error, WeightSink};
use tokio::sync::mpsc;

mod common;
use common::{client, config, model, runtime};

/// A version a subscriber assembled, and whether any data chunk carried it.
#[derive(Debug)]
struct Got {
    version: u64,
    by_chunks: bool,
    tensors: Vec<(String, HostTensor)>,
}

fn start(groups: Arc<dyn WeightsGroups>, peer_timeout: Duration) -> Coordinator {
    Coordinator::start(
        CoordinatorConfig {
            weights_groups: Some(groups),
            ..config(peer_timeout, 16)
        },
        &model(1),
        WeightsVersion(0),
    )
    .unwrap()
}

/// A subscriber on `rt`: opens a weights stream (group-capable when `groups` is given) and
/// sends every version it assembles.
fn subscribe(
    rt: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    groups: Option<Arc<dyn WeightsGroups>>,
    timeout: Duration,
) -> (tokio::task::JoinHandle<()>, mpsc::UnboundedReceiver<Got>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = rt.spawn(async move {
        let mut c = client(addr).await;
        let mut stream = c
            .weights(WeightsRequest {
                actor_id: 0,
                have_version: u64::MAX,
                group_capable: groups.is_some(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut receiver = WeightsReceiver::new("test", groups, timeout);
        let mut by_chunks = false;
        while let Ok(Some(chunk)) = stream.message().await {
            if matches!(chunk.body, Some(weights_chunk::Body::Data(_))) {
                by_chunks = true;
            }
            if let Some(w) = receiver.push(chunk).await.unwrap() {
                let version = w.version.0;
                let tensors = w.into_model(&Device::default()).unwrap().to_named();
                let _ = tx.send(Got {
                    version,
                    by_chunks,
                    tensors,
                });
                by_chunks = false;
            }
        }
    });
    (task, rx)
}

fn next(rt: &tokio::runtime::Runtime, rx: &mut mpsc::UnboundedReceiver<Got>) -> Got {
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a version within 20 s")
            .expect("the subscriber ended")
    })
}

/// (groups formed, versions delivered by a group, group failures).
fn group_counts(coordinator: &Coordinator) -> (u64, u64, u64) {
    let s = coordinator.stats();
    (
        s.weights_groups_formed,
        s.weights_by_group,
        s.weights_group_failures,
    )
}

/// Waits until the coordinator counts `n` group-capable subscribers.
fn wait_capable(coordinator: &Coordinator, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while coordinator.stats().weights_group_capable != n {
        assert!(Instant::now() < deadline, "{:?}", coordinator.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn group_members_get_each_version_by_one_broadcast_and_others_by_chunks() {
    let timeout = Duration::from_secs(10);
    let groups = Arc::new(InProcessGroups::new(timeout));
    let coordinator = start(groups.clone(), timeout);
    let (addr, sink) = (coordinator.local_addr(), coordinator.weights());
    let rt = runtime();
    let mut members: Vec<_> = (0..2)
        .map(|_| subscribe(&rt, addr, Some(groups.clone()), timeout))
        .collect();
    let (_plain, mut plain) = subscribe(&rt, addr, None, timeout);
    // The first version always comes as chunks.
    for (_, rx) in &mut members {
        let got = next(&rt, rx);
        assert_eq!((got.version, got.by_chunks), (0, true));
    }
    assert!(next(&rt, &mut plain).by_chunks);
    wait_capable(&coordinator, 2);

    for (round, seed) in [(1u64, 2u64), (2, 3)] {
        sink.publish(model(seed)).unwrap();
        let expected = model(seed).to_named();
        for (_, rx) in &mut members {
            let got = next(&rt, rx);
            assert_eq!(got.version, round);
            assert!(!got.by_chunks, "version {round} came as chunks to a member");
            assert!(
                got.tensors == expected,
                "version {round} differs after the broadcast"
            );
        }
        let got = next(&rt, &mut plain);
        assert!(got.by_chunks && got.tensors == expected);
    }
    assert_eq!(
        group_counts(&coordinator),
        (1, 2, 0),
        "one group for both versions: {:?}",
        coordinator.stats()
    );

    // A third member: a new group (world size 4) at the next publish; it got version 2 as
    // chunks when it subscribed.
    let (task, mut third) = subscribe(&rt, addr, Some(groups.clone()), timeout);
    assert_eq!(next(&rt, &mut third).version, 2);
    wait_capable(&coordinator, 3);
    sink.publish(model(4)).unwrap();
    let expected = model(4).to_named();
    for rx in members.iter_mut().map(|(_, rx)| rx).chain([&mut third]) {
        let got = next(&rt, rx);
        assert!(got.version == 3 && !got.by_chunks && got.tensors == expected);
    }
    assert_eq!(coordinator.stats().weights_groups_formed, 2);

    // One leaves: the next group has the other two.
    task.abort();
    drop(third);
    wait_capable(&coordinator, 2);
    sink.publish(model(5)).unwrap();
    for (_, rx) in &mut members {
        let got = next(&rt, rx);
        assert!(got.version == 4 && !got.by_chunks);
    }
    assert_eq!(
        group_counts(&coordinator),
        (3, 4, 0),
        "{:?}",
        coordinator.stats()
    );
    assert_eq!(groups.groups_made(), 3);
}

/// Joins as asked, but every broadcast this rank takes part in fails (a broken NCCL link).
#[derive(Debug)]
struct FailingBroadcasts(InProcessGroups);

#[derive(Debug)]
struct Broken(Box<dyn WeightsGroup>);

impl WeightsGroups for FailingBroadcasts {
    fn new_id(&self) -> Result<Vec<u8>, Error> {
        self.0.new_id()
    }

    fn join(&self, id: &[u8], rank: usize, world: usize) -> Result<Box<dyn WeightsGroup>, Error> {
        Ok(Box::new(Broken(self.0.join(id, rank, world)?)))
    }
}

impl WeightsGroup for Broken {
    fn broadcast(&mut self, _values: &mut [f32]) -> Result<(), Error> {
        Err(Error::Weights("a broken link".into()))
    }

    fn rank(&self) -> usize {
        self.0.rank()
    }

    fn world_size(&self) -> usize {
        self.0.world_size()
    }
}

#[test]
fn a_failed_join_or_broadcast_sends_the_version_as_chunks_and_repeated_failures_back_off() {
    let timeout = Duration::from_millis(400);
    let groups = InProcessGroups::new(timeout);
    let coordinator = start(Arc::new(groups.clone()), timeout);
    let (addr, sink) = (coordinator.local_addr(), coordinator.weights());
    let rt = runtime();
    // A member whose broadcasts fail after joining, and one that cannot join at all (it
    // says it can, but its receiver has no groups: it ignores the invite).
    let broken: Arc<dyn WeightsGroups> = Arc::new(FailingBroadcasts(groups.clone()));
    let (_a, mut joins) = subscribe(&rt, addr, Some(broken), timeout);
    assert!(next(&rt, &mut joins).by_chunks);
    wait_capable(&coordinator, 1);

    // Version 1: the group forms, its broadcast fails on both sides, chunks follow.
    sink.publish(model(2)).unwrap();
    let got = next(&rt, &mut joins);
    assert!(got.version == 1 && got.by_chunks && got.tensors == model(2).to_named());
    assert_eq!(
        group_counts(&coordinator),
        (1, 0, 1),
        "{:?}",
        coordinator.stats()
    );

    // A subscriber that never joins: version 2's group cannot form, chunks follow, and that
    // is the second failure in a row.
    let (_b, mut ignores) = rt.block_on(async {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut c = client(addr).await;
            let mut stream = c
                .weights(WeightsRequest {
                    actor_id: 0,
                    have_version: u64::MAX,
                    group_capable: true,
                })
                .await
                .unwrap()
                .into_inner();
            let mut receiver = WeightsReceiver::new("test", None, timeout);
            while let Ok(Some(chunk)) = stream.message().await {
                if let Some(w) = receiver.push(chunk).await.unwrap() {
                    let _ = tx.send(w.version.0);
                }
            }
        });
        (task, rx)
    });
    let first = rt.block_on(ignores.recv()).unwrap();
    assert_eq!(first, 1);
    wait_capable(&coordinator, 2);
    sink.publish(model(3)).unwrap();
    assert_eq!(rt.block_on(ignores.recv()).unwrap(), 2);
    let got = next(&rt, &mut joins);
    assert!(got.version == 2 && got.by_chunks && got.tensors == model(3).to_named());
    let stats = coordinator.stats();
    assert_eq!(
        stats.weights_group_failures,
        u64::from(MAX_GROUP_FAILURES),
        "{stats:?}"
    );

    // The back-off: the next BACKOFF_PUBLISHES versions go as chunks only, with no group tried
    // (none made, no failure counted: publishing does not wait on one); the one after tries a
    // new group.
    let made = groups.groups_made();
    for k in 0..BACKOFF_PUBLISHES {
        sink.publish(model(4 + k)).unwrap();
        let got = next(&rt, &mut joins);
        assert!(got.version == 3 + k && got.by_chunks && got.tensors == model(4 + k).to_named());
        assert_eq!(rt.block_on(ignores.recv()).unwrap(), 3 + k);
    }
    assert_eq!(
        groups.groups_made(),
        made,
        "a group was formed while backing off"
    );
    assert_eq!(
        coordinator.stats().weights_group_failures,
        u64::from(MAX_GROUP_FAILURES)
    );
    sink.publish(model(100)).unwrap();
    let version = 3 + BACKOFF_PUBLISHES;
    let got = next(&rt, &mut joins);
    assert!(got.version == version && got.by_chunks && got.tensors == model(100).to_named());
    assert_eq!(
        groups.groups_made(),
        made + 1,
        "no new group after the back-off"
    );
    assert_eq!(
        coordinator.stats().weights_group_failures,
        u64::from(MAX_GROUP_FAILURES) + 1
    );
}

/// The receiver refuses data chunks for a version its header said comes by broadcast, and
/// a broadcast payload of the wrong size.
#[test]
fn a_group_header_followed_by_data_chunks_is_a_protocol_error() {
    let timeout = Duration::from_millis(200);
    let encoded =
        kaizen_transport::wire::EncodedWeights::encode(&model(1), WeightsVersion(7)).unwrap();
    let mut assembler = kaizen_transport::wire::WeightsAssembler::new(u64::MAX, "peer");
    assert!(assembler.push(encoded.group_header(3)).unwrap().is_none());
    let (generation, version, values) = assembler.awaiting_group().unwrap();
    assert_eq!((generation, version), (3, 7));
    assert_eq!(values * 4, encoded.payload_bytes() as usize);
    let data = encoded.chunks(1 << 20).nth(1).unwrap();
    let e = assembler.push(data).unwrap_err().to_string();
    assert!(e.contains("weights group 3") && e.contains("peer"), "{e}");
    assert!(assembler.push(encoded.group_header(3)).unwrap().is_none());
    let e = assembler.push_payload(&[0.0; 3]).unwrap_err().to_string();
    assert!(
        e.contains("3 values") && e.contains(&values.to_string()),
        "{e}"
    );
    // The right payload assembles, checksum included; a corrupted one is refused.
    assert!(assembler.push(encoded.group_header(3)).unwrap().is_none());
    let w = assembler.push_payload(&encoded.payload()).unwrap().unwrap();
    assert_eq!(w.version, WeightsVersion(7));
    assert!(assembler.push(encoded.group_header(3)).unwrap().is_none());
    let mut bad = encoded.payload();
    bad[0] += 1.0;
    let e = assembler.push_payload(&bad).unwrap_err().to_string();
    assert!(e.contains("checksum"), "{e}");
    // A receiver without groups that is sent a group header abandons it and takes the chunks
    // that follow.
    let rt = runtime();
    rt.block_on(async {
        let mut receiver = WeightsReceiver::new("peer", None, timeout);
        assert!(
            receiver
                .push(encoded.group_header(3))
                .await
                .unwrap()
                .is_none()
        );
        let mut got = None;
        for chunk in encoded.chunks(4096) {
            got = receiver.push(chunk).await.unwrap().or(got);
        }
        assert_eq!(got.unwrap().version, WeightsVersion(7));
        let invite = WeightsChunk {
            body: Some(weights_chunk::Body::Invite(Default::default())),
        };
        assert!(receiver.push(invite).await.unwrap().is_none());
    });
}

/// Rank 0's broadcast fails at once (an NCCL error returned, not a hang) while the member
/// waits in its part of the broadcast for up to the peer timeout: the member still gets the
/// version as chunks, whole, and the next one too (the fallback must not be cut off while the
/// member is busy in its broadcast, leaving a partial version on its stream).
#[test]
fn a_root_broadcast_that_fails_at_once_still_delivers_the_version_whole() {
    let timeout = Duration::from_millis(1000);
    let groups = InProcessGroups::new(timeout);
    let coordinator = start(Arc::new(FailingBroadcasts(groups.clone())), timeout);
    let (addr, sink) = (coordinator.local_addr(), coordinator.weights());
    let rt = runtime();
    let (_member, mut member) = subscribe(&rt, addr, Some(Arc::new(groups.clone())), timeout);
    assert!(next(&rt, &mut member).by_chunks);
    wait_capable(&coordinator, 1);
    for (version, seed) in [(1u64, 2u64), (2, 3)] {
        sink.publish(model(seed)).unwrap();
        let got = next(&rt, &mut member);
        assert!(
            got.version == version && got.by_chunks && got.tensors == model(seed).to_named(),
            "version {version}: got {}",
            got.version
        );
    }
    assert_eq!(
        coordinator.stats().weights_group_failures,
        u64::from(MAX_GROUP_FAILURES)
    );
}

/// A broadcast that reaches one member but fails for another: the coordinator sends the
/// version as chunks to every member, and the member that already has it by the broadcast
/// does not take it a second time.
#[test]
fn a_member_that_got_the_broadcast_does_not_take_the_fallback_chunks_again() {
    let timeout = Duration::from_millis(600);
    let groups = InProcessGroups::new(timeout);
    let coordinator = start(Arc::new(groups.clone()), timeout);
    let (addr, sink) = (coordinator.local_addr(), coordinator.weights());
    let rt = runtime();
    let (_good, mut good) = subscribe(&rt, addr, Some(Arc::new(groups.clone())), timeout);
    assert!(next(&rt, &mut good).by_chunks);
    let broken: Arc<dyn WeightsGroups> = Arc::new(FailingBroadcasts(groups.clone()));
    let (_bad, mut bad) = subscribe(&rt, addr, Some(broken), timeout);
    assert!(next(&rt, &mut bad).by_chunks);
    wait_capable(&coordinator, 2);
    sink.publish(model(2)).unwrap();
    let got = next(&rt, &mut good);
    assert!(got.version == 1 && !got.by_chunks && got.tensors == model(2).to_named());
    let got = next(&rt, &mut bad);
    assert!(got.version == 1 && got.by_chunks);
    assert_eq!(coordinator.stats().weights_group_failures, 1);
    sink.publish(model(3)).unwrap();
    let got = next(&rt, &mut good);
    assert_eq!(got.version, 2, "version 1 was taken twice");
    assert_eq!(next(&rt, &mut bad).version, 2);
}

/// A reconnecting actor's new weights stream replaces its old one among the group's members
/// (the old stream may linger half-open), by the actor id of its join.
#[test]
fn a_new_stream_of_the_same_actor_replaces_its_old_one_among_the_members() {
    let timeout = Duration::from_secs(10);
    let groups = Arc::new(InProcessGroups::new(timeout));
    let coordinator = start(groups, timeout);
    let addr = coordinator.local_addr();
    let rt = runtime();
    let open = |actor_id: u64| {
        rt.block_on(async move {
            let mut c = client(addr).await;
            c.weights(WeightsRequest {
                actor_id,
                have_version: u64::MAX,
                group_capable: true,
            })
            .await
            .unwrap()
            .into_inner()
        })
    };
    let _old = open(7);
    wait_capable(&coordinator, 1);
    let _other = open(8);
    wait_capable(&coordinator, 2);
    let _new = open(7);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(coordinator.stats().weights_group_capable, 2);
}
