//! Throughput of the transport, network against in-process (one JSON line per figure):
//!
//! - `episodes`: two-turn episode reports (2 segments of 96 prompt + 48 completion tokens with
//!   their log-probs) from actor clients to the coordinator's learner end over loopback gRPC,
//!   each acknowledged, against the same reports through a bounded flume channel.
//! - `weights`: publish → pickup of a SmolLM2-135M-sized model (its config, random weights)
//!   over loopback: encode, stream in chunks, checksum, rebuild the model on the actor side.
//!
//! `cargo bench -p kaizen-transport --bench stream [-- --episodes N --actors A --skip-weights]`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use kaizen_core::{AgentId, FinishReason, Outcome, Segment, Trajectory, WeightsVersion};
use kaizen_model::{Llama, LlamaConfig};
use kaizen_transport::wire::proto::coordinator_client::CoordinatorClient;
use kaizen_transport::wire::proto::{
    self, ActorMessage, JoinRequest, WeightsRequest, actor_message, coordinator_message,
};
use kaizen_transport::wire::{
    Coordinator, CoordinatorConfig, PROTOCOL_VERSION, WeightsAssembler, report_to_proto,
};
use kaizen_transport::{EpisodeReport, EpisodeTask, Rollouts, WeightSink};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn report(task: EpisodeTask) -> EpisodeReport {
    let segment = |thread: u32, offset: u32| Segment {
        agent: AgentId::from("solver"),
        thread,
        prompt_tokens: (offset..offset + 96).collect(),
        completion_tokens: (offset..offset + 48).collect(),
        behavior_logprobs: (0..48).map(|i| -0.01 * i as f32).collect(),
        trainable: true,
        temperature: 1.0,
        weights_version: WeightsVersion(3),
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
            segments: vec![segment(0, 0), segment(0, 200)],
            outcome: Outcome::single("solver", vec![0.0, 1.0]),
        }),
        metrics: BTreeMap::from([
            ("correct@t1".to_string(), 0.0),
            ("correct@t2".to_string(), 1.0),
        ]),
        turns: Vec::new(),
        tree: None,
        task,
    }
}

fn task(id: u64) -> EpisodeTask {
    EpisodeTask {
        id,
        group_id: id / 8,
        env: 0,
        seed: id / 8,
        sample: (id % 8) as u32,
        sampling_seed: id,
        sampling: Default::default(),
        hint_turns: Vec::new(),
        search: None,
    }
}

fn coordinator(model: &Llama, capacity: usize) -> Coordinator {
    Coordinator::start(
        CoordinatorConfig {
            bind: "127.0.0.1:0".parse().expect("address"),
            peer_timeout: Duration::from_secs(30),
            results_capacity: capacity,
            max_message_bytes: 64 << 20,
            weights_chunk_bytes: 1 << 20,
            env_names: vec!["self_correct".into()],
            job_fingerprint: "bench".into(),
            shutdown_grace: Duration::from_secs(1),
            weights_groups: None,
        },
        model,
        WeightsVersion(0),
    )
    .expect("coordinator")
}

/// Fake actors that answer every task with a ready-made report, as fast as the stream allows.
fn episodes_over_grpc(episodes: usize, actors: usize) -> f64 {
    let tiny = Llama::init(&LlamaConfig::tiny(32), &Device::default(), 1).expect("model");
    let c = coordinator(&tiny, 1024);
    let addr = c.local_addr();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for a in 0..actors {
        rt.spawn(async move {
            let channel =
                kaizen_transport::wire::endpoint(&addr.to_string(), Duration::from_secs(5))
                    .expect("endpoint")
                    .connect()
                    .await
                    .expect("connect");
            let mut client = CoordinatorClient::new(channel);
            let reply = client
                .join(JoinRequest {
                    protocol_version: PROTOCOL_VERSION,
                    job_fingerprint: "bench".into(),
                    name: format!("bench-{a}"),
                    previous_actor_id: 0,
                    previous_incarnation: 0,
                })
                .await
                .expect("join")
                .into_inner();
            let (out, rx) = mpsc::channel(256);
            let _ = out
                .send(ActorMessage {
                    body: Some(actor_message::Body::Hello(proto::Hello {
                        actor_id: reply.actor_id,
                    })),
                })
                .await;
            let mut inbound = client
                .episodes(ReceiverStream::new(rx))
                .await
                .expect("stream")
                .into_inner();
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(coordinator_message::Body::Tasks(t)) = m.body {
                    for t in t.tasks {
                        let t = kaizen_transport::wire::task_from_proto(t, "bench").expect("task");
                        let message = ActorMessage {
                            body: Some(actor_message::Body::Report(report_to_proto(&report(t)))),
                        };
                        if out.send(message).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    c.wait_for_actors(actors, Duration::from_secs(10))
        .expect("actors joined");
    let start = Instant::now();
    c.submit_all((0..episodes as u64).map(task).collect())
        .expect("submit");
    for _ in 0..episodes {
        c.recv().expect("report");
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(rt);
    seconds
}

fn episodes_in_process(episodes: usize) -> f64 {
    let (tx, rx) = flume::bounded::<EpisodeReport>(1024);
    let start = Instant::now();
    let producer = std::thread::spawn(move || {
        for i in 0..episodes as u64 {
            tx.send(report(task(i))).expect("send");
        }
    });
    for _ in 0..episodes {
        rx.recv().expect("recv");
    }
    producer.join().expect("producer");
    start.elapsed().as_secs_f64()
}

fn weights_pickup() {
    // SmolLM2-135M's shape (random weights transfer the same bytes).
    let config = LlamaConfig::smollm2_135m();
    let device = Device::default();
    let initial = Llama::init(&LlamaConfig::tiny(32), &device, 1).expect("tiny");
    let c = coordinator(&initial, 16);
    let addr = c.local_addr();
    let model = Llama::init(&config, &device, 7).expect("135M model");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let channel = kaizen_transport::wire::endpoint(&addr.to_string(), Duration::from_secs(5))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = CoordinatorClient::new(channel).max_decoding_message_size(64 << 20);
        let mut stream = client
            .weights(WeightsRequest {
                actor_id: 0,
                have_version: 0,
                group_capable: false,
            })
            .await
            .expect("weights")
            .into_inner();
        let mut asm = WeightsAssembler::new(u64::MAX, "bench");
        while let Ok(Some(chunk)) = stream.message().await {
            if let Some(w) = asm.push(chunk).expect("chunk") {
                let received = Instant::now();
                let model = w.into_model(&Device::default()).expect("model");
                let _ = done_tx.send((received, Instant::now(), model.config().hidden_size));
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let sink = c.weights();
    let start = Instant::now();
    sink.publish(model).expect("publish");
    let published = start.elapsed().as_secs_f64();
    let (received, rebuilt, _) = done_rx.recv().expect("pickup");
    let bytes = config.num_parameters() as f64 * 4.0;
    let total = (rebuilt - start).as_secs_f64();
    println!(
        "{{\"bench\":\"weights\",\"model\":\"smollm2-135m\",\"mb\":{:.1},\"encode_s\":{:.3},\
         \"received_s\":{:.3},\"pickup_s\":{:.3},\"mb_per_s\":{:.0}}}",
        bytes / 1e6,
        published,
        (received - start).as_secs_f64(),
        total,
        bytes / 1e6 / total
    );
}

fn main() {
    let episodes = arg("--episodes", 20_000);
    let actors = arg("--actors", 2);
    let bytes = report_to_proto(&report(task(0))).encoded_len_hint();
    let net = episodes_over_grpc(episodes, actors);
    let local = episodes_in_process(episodes);
    println!(
        "{{\"bench\":\"episodes\",\"episodes\":{episodes},\"actors\":{actors},\"bytes_per_episode\":{bytes},\
         \"grpc_episodes_per_s\":{:.0},\"grpc_us_per_episode\":{:.2},\
         \"channel_episodes_per_s\":{:.0},\"channel_us_per_episode\":{:.2}}}",
        episodes as f64 / net,
        net * 1e6 / episodes as f64,
        episodes as f64 / local,
        local * 1e6 / episodes as f64
    );
    if !std::env::args().any(|a| a == "--skip-weights") {
        weights_pickup();
    }
}

trait EncodedLen {
    fn encoded_len_hint(&self) -> usize;
}

impl EncodedLen for proto::Report {
    fn encoded_len_hint(&self) -> usize {
        prost::Message::encoded_len(self)
    }
}
