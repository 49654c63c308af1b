//! Runtime of the actors (issue 6), through the real [`ActorPool`] as the learner drives it
//! (GRPO groups of 8, the engine options of `kaizen train` in sync mode):
//!
//! - `channel/*` (criterion): trajectories per second through the pool with a minuscule policy
//!   (hidden 16, 1 layer, 1 token per turn), so the cost measured is the runtime itself
//!   (environment stepping, chat templating, engine round trips, channels); and the raw flume
//!   channel moving real `EpisodeReport`s (what the pool's result channel carries) between two
//!   threads.
//! - `actor_tokens` (table): sampled tokens per second of the tiny model
//!   (`LlamaConfig::tiny(259)`, byte-level tokenizer, random init) playing two-attempt
//!   `self_correct` (24 tokens per turn, temperature 1) versus actors and episodes in flight, in
//!   steady state (the pool kept full).
//! - `weight_pickup` (table): time from [`WeightPublisher::publish`] until the engine decodes
//!   with the new version, while it decodes ~60 episodes: a one-turn probe episode asking for a
//!   single token is queued right after the publish; its token is sampled when the engine
//!   admits it, with the weights it holds then, so the probe's report returns at the pickup.
//!   The same probe without a publish gives the admission latency alone; the time until the
//!   first `self_correct` trajectory stamped with the new version is what the learner sees.
//!
//! - `search` (table): tree search (`EpisodeTask::search`, MCTS over `household` actions) with
//!   the tiny model: rollouts per second of 16 trees × 8 rollouts with the parent's keys and
//!   values forked to each branch, against the same trees with nothing kept (every turn of
//!   every branch prefills its whole conversation: replaying the prefix), and against 128
//!   independent episodes.
//!
//!     cargo bench -p kaizen-actors --bench runtime [-- FILTER]
//!
//! FILTER (a substring: `channel`, `actor_tokens`, `weight_pickup`, `search`) selects sections;
//! `--test` runs everything briefly to check that it works.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use burn::tensor::Device;
use criterion::{BenchmarkId, Criterion, Throughput};
use kaizen_actors::{
    ActorConfig, ActorPool, EngineConfig, EnvSlot, EpisodeReport, EpisodeTask, SamplingConfig,
    WeightPublisher, derive_seed, weight_broadcast,
};
use kaizen_core::{AgentId, Message, Outcome, Request, SamplingOverrides, Step, WeightsVersion};
use kaizen_envs::{Env, EnvFactory, EpisodeLimits, Registry};
use kaizen_model::{ChatTemplate, Llama, LlamaConfig, Tokenizer};

/// Episodes per GRPO group (`num_generations` of `configs/self_correct_tiny.toml`).
const GROUP: usize = 8;
/// Index of `self_correct` in the pool's environment list.
const SELF_CORRECT: usize = 0;
/// Index of the probe environment.
const PROBE: usize = 1;

/// How long each measurement runs (`--test`: briefly).
struct Durations {
    warmup: Duration,
    window: Duration,
    /// Warm-up and window also last until this many (warm-up: half as many) times the
    /// episodes in flight have finished, so each spans several episode lifetimes.
    turnovers: usize,
    pickup_reps: usize,
}

impl Durations {
    fn new(test: bool) -> Self {
        if test {
            Self {
                warmup: Duration::from_millis(200),
                window: Duration::from_millis(300),
                turnovers: 0,
                pickup_reps: 2,
            }
        } else {
            Self {
                warmup: Duration::from_secs(2),
                window: Duration::from_secs(8),
                turnovers: 2,
                pickup_reps: 20,
            }
        }
    }
}

fn self_correct() -> EnvSlot {
    // The environment of configs/self_correct_tiny.toml.
    let params: toml::Table = toml::from_str(
        r#"
attempts = 2
generator = { family = "arithmetic", difficulty = "starter" }
instruction = "Answer with the result."
correction_prompt = "There may be an error. Give the corrected result."
"#,
    )
    .expect("valid parameters");
    EnvSlot {
        name: "self_correct".into(),
        factory: Registry::with_builtins()
            .build("self_correct", &params)
            .expect("self_correct is built in"),
    }
}

/// One turn asking for a single token: sampled at admission (prefill), so the engine answers
/// it at its next loop iteration, with the weights it holds then.
struct Probe;

#[async_trait]
impl Env for Probe {
    async fn reset(&mut self, _seed: u64) -> kaizen_envs::Result<Step> {
        let mut request = Request::new("probe", vec![Message::user("ping")]);
        request.sampling.max_new_tokens = Some(1);
        Ok(Step::Request(request))
    }

    async fn step(&mut self, _: &AgentId, _: &str) -> kaizen_envs::Result<Step> {
        Ok(Step::Done(Outcome::single("probe", vec![0.0])))
    }
}

fn probe() -> EnvSlot {
    let factory: Arc<dyn EnvFactory> = Arc::new(|| Box::new(Probe) as Box<dyn Env>);
    EnvSlot {
        name: "probe".into(),
        factory,
    }
}

/// The tiny model of `configs/self_correct_tiny.toml` (random init).
fn tiny_model() -> Llama {
    let config = LlamaConfig::tiny(Tokenizer::byte_level().vocab_size());
    Llama::init(&config, &Device::default(), 0).expect("valid config")
}

/// A policy that costs next to nothing, so the runtime around it is what is measured.
fn minuscule_model() -> Llama {
    let config = LlamaConfig {
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        ..LlamaConfig::tiny(Tokenizer::byte_level().vocab_size())
    };
    Llama::init(&config, &Device::default(), 0).expect("valid config")
}

/// A running pool, its weights and the learner's task bookkeeping.
struct Bench {
    runtime: tokio::runtime::Runtime,
    publisher: WeightPublisher,
    pool: ActorPool,
    model: Llama,
    episodes_in_flight: usize,
    next_task: u64,
    next_group: u64,
}

impl Bench {
    /// A pool configured as `kaizen train` configures it in sync mode (see
    /// `cluster/src/local.rs`, `actor_config`), keeping `kv_cache_bytes` of keys and values
    /// between turns.
    fn new(
        model: Llama,
        actors: usize,
        episodes_in_flight: usize,
        max_completion_length: usize,
        kv_cache_bytes: usize,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kaizen-actor")
            .enable_all()
            .build()
            .expect("tokio runtime");
        let tokenizer = Tokenizer::byte_level();
        let (publisher, _) = weight_broadcast(model.clone());
        let config = ActorConfig {
            actors,
            episodes_in_flight,
            sampling: SamplingConfig {
                temperature: 1.0,
                max_completion_length,
                max_prompt_length: 512,
                ..SamplingConfig::default()
            },
            limits: EpisodeLimits::default(),
            engine: EngineConfig {
                kv_cache_bytes,
                ..EngineConfig::new(&tokenizer, None)
            },
            results_capacity: 64,
        };
        let pool = ActorPool::spawn(
            runtime.handle(),
            vec![self_correct(), probe()],
            Arc::new(tokenizer),
            ChatTemplate::chatml(),
            &publisher,
            config,
        )
        .expect("actor pool");
        Self {
            runtime,
            publisher,
            pool,
            model,
            episodes_in_flight,
            next_task: 0,
            next_group: 0,
        }
    }

    /// Queues `episodes` of `env` in groups of [`GROUP`] (one problem per group), as one
    /// submission.
    fn submit(&mut self, env: usize, episodes: usize) {
        let mut tasks = Vec::with_capacity(episodes);
        for i in 0..episodes {
            if i % GROUP == 0 {
                self.next_group += 1;
            }
            let id = self.next_task;
            self.next_task += 1;
            tasks.push(EpisodeTask {
                id,
                group_id: self.next_group,
                env,
                seed: self.next_group,
                sample: (i % GROUP) as u32,
                sampling_seed: derive_seed(7, id),
                sampling: SamplingOverrides::default(),
                hint_turns: Vec::new(),
                search: None,
            });
        }
        self.pool.submit_all(tasks).expect("the pool is running");
    }

    /// The next finished episode; panics on a fault (the bench would measure nonsense).
    fn recv(&self) -> EpisodeReport {
        let report = self
            .pool
            .results()
            .recv_timeout(Duration::from_secs(120))
            .expect("an episode finishes within 2 minutes");
        if let Err(fault) = &report.result {
            panic!("episode {} faulted: {fault}", report.task.id);
        }
        report
    }

    /// Prompt positions the engines have run through prefill (padding included).
    fn prefill_tokens(&self) -> u64 {
        self.pool
            .counters()
            .iter()
            .map(|c| c.prefill_tokens.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    fn finish(self) {
        self.runtime.block_on(self.pool.shutdown());
    }
}

/// Steady-state rates of a pool kept full.
struct Rates {
    /// Sampled tokens.
    tokens_per_s: f64,
    /// Prompt positions prefilled (each turn's whole thread, padding included).
    prefill_per_s: f64,
    episodes_per_s: f64,
}

/// Keeps every actor's episodes in flight busy, plus one group queued per actor (as the learner
/// does in async mode), and measures over the window after the warm-up.
fn steady_state(bench: &mut Bench, durations: &Durations) -> Rates {
    let actors = bench.pool.len();
    let capacity = actors * bench.episodes_in_flight;
    let target = capacity + actors * GROUP;
    let mut outstanding = 0;
    let start = Instant::now();
    let mut mark: Option<(Instant, u64, u64)> = None;
    let mut warmup_episodes = 0;
    let mut episodes = 0;
    loop {
        if outstanding + GROUP <= target {
            let groups = (target - outstanding) / GROUP;
            bench.submit(SELF_CORRECT, groups * GROUP);
            outstanding += groups * GROUP;
        }
        bench.recv();
        outstanding -= 1;
        let now = Instant::now();
        match mark {
            None => {
                warmup_episodes += 1;
                if now - start >= durations.warmup
                    && 2 * warmup_episodes >= durations.turnovers * capacity
                {
                    mark = Some((now, bench.pool.generated_tokens(), bench.prefill_tokens()));
                }
            }
            Some((t0, tokens0, prefill0)) => {
                episodes += 1;
                let seconds = (now - t0).as_secs_f64();
                if seconds >= durations.window.as_secs_f64()
                    && episodes >= durations.turnovers * capacity
                {
                    let tokens = bench.pool.generated_tokens() - tokens0;
                    let prefill = bench.prefill_tokens() - prefill0;
                    return Rates {
                        tokens_per_s: tokens as f64 / seconds,
                        prefill_per_s: prefill as f64 / seconds,
                        episodes_per_s: episodes as f64 / seconds,
                    };
                }
            }
        }
    }
}

/// A real report of the tiny model playing `self_correct` (two 24-token turns).
fn sample_report() -> EpisodeReport {
    let mut bench = Bench::new(tiny_model(), 1, GROUP, 24, KV_BYTES);
    bench.submit(SELF_CORRECT, GROUP);
    let reports: Vec<EpisodeReport> = (0..GROUP).map(|_| bench.recv()).collect();
    bench.finish();
    reports.into_iter().next().expect("a group has episodes")
}

fn channel(c: &mut Criterion) {
    let report = sample_report();
    let json = serde_json::to_string(&report).expect("reports serialize");
    eprintln!(
        "sample report: {} segments, {} tokens, {} bytes as JSON",
        report.result.as_ref().map_or(0, |t| t.segments.len()),
        report.result.as_ref().map_or(0, |t| t
            .segments
            .iter()
            .map(|s| s.prompt_tokens.len() + s.completion_tokens.len())
            .sum::<usize>()),
        json.len()
    );
    let mut group = c.benchmark_group("channel");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    // Moves reports from a producer thread to this one through a channel of the pool's result
    // capacity; the receiver drops each (as the learner eventually does). Reports are cloned in
    // chunks outside the clock, so memory stays bounded.
    group.bench_function("flume_report", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(4096);
                let items: Vec<EpisodeReport> = (0..n).map(|_| report.clone()).collect();
                let (tx, rx) = flume::bounded::<EpisodeReport>(64);
                let start = Instant::now();
                std::thread::scope(|s| {
                    s.spawn(move || {
                        for item in items {
                            tx.send(item).expect("receiver alive");
                        }
                    });
                    for _ in 0..n {
                        black_box(rx.recv().expect("sender alive"));
                    }
                });
                total += start.elapsed();
                left -= n;
            }
            total
        })
    });
    for actors in [1, 2] {
        for in_flight in [16, 64] {
            let mut bench = Bench::new(minuscule_model(), actors, in_flight, 1, KV_BYTES);
            group.bench_function(
                BenchmarkId::new("pool_minuscule_policy", format!("{actors}x{in_flight}")),
                |b| {
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        bench.submit(SELF_CORRECT, iters as usize);
                        for _ in 0..iters {
                            black_box(bench.recv());
                        }
                        start.elapsed()
                    })
                },
            );
            bench.finish();
        }
    }
    group.finish();
}

fn actor_tokens(durations: &Durations) {
    println!(
        "\nactor_tokens: tiny model (hidden 256, 4 layers, random init) on self_correct \
         (2 turns x 24 tokens), steady state over >= {:?} and {} x the episodes in flight",
        durations.window, durations.turnovers
    );
    println!(
        "| actors | episodes in flight | KV kept between turns | sampled tokens/s | prefill \
         positions/s | prefill positions per sampled token | episodes/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for actors in [1, 2] {
        for in_flight in [8, 64] {
            for kv in [0, KV_BYTES] {
                let mut bench = Bench::new(tiny_model(), actors, in_flight, 24, kv);
                let rates = steady_state(&mut bench, durations);
                bench.finish();
                println!(
                    "| {actors} | {in_flight} | {} | {:.0} | {:.0} | {:.2} | {:.1} |",
                    if kv > 0 { "yes" } else { "no" },
                    rates.tokens_per_s,
                    rates.prefill_per_s,
                    rates.prefill_per_s / rates.tokens_per_s,
                    rates.episodes_per_s
                );
            }
        }
    }
}

/// Median and 90th percentile (nearest rank), in milliseconds.
fn quantiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1].as_secs_f64() * 1e3
    };
    (at(0.5), at(0.9))
}

fn weight_pickup(durations: &Durations) {
    let in_flight = 64;
    let mut bench = Bench::new(tiny_model(), 1, in_flight, 24, KV_BYTES);
    // Whole groups of self_correct, always leaving a free slot for the probe, so it starts at
    // once instead of queueing behind other episodes.
    let limit = in_flight - 1;
    let mut outstanding = 0;
    let top_up = |bench: &mut Bench, outstanding: &mut usize| {
        if *outstanding + GROUP <= limit {
            let groups = (limit - *outstanding) / GROUP;
            bench.submit(SELF_CORRECT, groups * GROUP);
            *outstanding += groups * GROUP;
        }
    };
    let serve_until = |bench: &mut Bench, outstanding: &mut usize, until: Instant| {
        while Instant::now() < until {
            top_up(bench, outstanding);
            if let Ok(report) = bench
                .pool
                .results()
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                assert!(report.result.is_ok(), "episode {} faulted", report.task.id);
                *outstanding -= 1;
            }
        }
    };
    serve_until(
        &mut bench,
        &mut outstanding,
        Instant::now() + durations.warmup,
    );

    let mut pickup = Vec::new();
    let mut admission = Vec::new();
    let mut first_trajectory = Vec::new();
    for rep in 0..2 * durations.pickup_reps {
        // A different phase of the decode step each time.
        let pause = Duration::from_millis(300 + (rep as u64 * 37) % 200);
        serve_until(&mut bench, &mut outstanding, Instant::now() + pause);
        let start = Instant::now();
        let version: Option<WeightsVersion> =
            (rep % 2 == 0).then(|| bench.publisher.publish(bench.model.clone()));
        bench.submit(PROBE, 1);
        outstanding += 1;
        let mut probe_done = false;
        let mut new_trajectory = version.is_none();
        while !(probe_done && new_trajectory) {
            top_up(&mut bench, &mut outstanding);
            let report = bench.recv();
            outstanding -= 1;
            let elapsed = start.elapsed();
            let stamped = |v: WeightsVersion| {
                report
                    .result
                    .as_ref()
                    .is_ok_and(|t| t.segments.iter().any(|s| s.weights_version == v))
            };
            if report.task.env == PROBE {
                probe_done = true;
                match version {
                    Some(v) => {
                        assert!(stamped(v), "the probe is sampled with the new weights");
                        pickup.push(elapsed);
                    }
                    None => admission.push(elapsed),
                }
            } else if let Some(v) = version
                && !new_trajectory
                && stamped(v)
            {
                new_trajectory = true;
                first_trajectory.push(elapsed);
            }
        }
    }
    let tokens = bench.pool.generated_tokens();
    bench.finish();
    println!(
        "\nweight_pickup: tiny model, 1 actor decoding {}..{} self_correct episodes; {} repetitions \
         each ({tokens} tokens sampled in all)",
        limit + 1 - GROUP,
        limit,
        durations.pickup_reps
    );
    println!("| from | until | median | p90 |");
    println!("|---|---|---|---|");
    for (from, until, samples) in [
        (
            "publish",
            "engine decodes with the new version (probe)",
            pickup,
        ),
        ("probe queued (no publish)", "engine admits it", admission),
        (
            "publish",
            "first trajectory with a segment of the new version",
            first_trajectory,
        ),
    ] {
        let (median, p90) = quantiles(samples);
        println!("| {from} | {until} | {median:.1} ms | {p90:.1} ms |");
    }
}

/// What `kaizen train` keeps between turns by default (`actors.kv_cache_mib = 1024`).
const KV_BYTES: usize = 1 << 30;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let test = args.iter().any(|a| a == "--test");
    let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
    let wanted = |section: &str| filter.as_deref().is_none_or(|f| section.contains(f));
    let durations = Durations::new(test);
    if wanted("channel/flume_report") || wanted("channel/pool_minuscule_policy") {
        let mut criterion = Criterion::default().configure_from_args();
        channel(&mut criterion);
        criterion.final_summary();
    }
    if wanted("actor_tokens") {
        actor_tokens(&durations);
    }
    if wanted("weight_pickup") {
        weight_pickup(&durations);
    }
    if wanted("search") {
        search(test);
    }
}

/// The `search` table (see the module docs).
fn search(test: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    let trees = if test { 2 } else { 16 };
    let spec = kaizen_envs::search::TreeSearch {
        rollouts: 8,
        branches: 2,
        exploration: 1.0,
        max_depth: 4,
    };
    let params: toml::Table =
        toml::from_str("max_steps = 6\nadmissible_actions = false").expect("valid parameters");
    let household = || EnvSlot {
        name: "household".into(),
        factory: Registry::with_builtins()
            .build("household", &params)
            .expect("household is built in"),
    };
    println!(
        "search: tiny model, household (6 actions at most, 16 tokens each), {trees} trees × {} \
         rollouts (branches {}, max depth {}), 64 episodes in flight",
        spec.rollouts, spec.branches, spec.max_depth
    );
    println!("| case | rollouts | seconds | rollouts/s | prefill positions | forked positions |");
    println!("|---|---|---|---|---|---|");
    let cases: [(&str, Option<&kaizen_envs::search::TreeSearch>, usize, usize); 3] = [
        ("trees, KV forked", Some(&spec), 64 << 20, trees),
        ("trees, prefix replayed", Some(&spec), 0, trees),
        (
            "independent episodes",
            None,
            64 << 20,
            trees * spec.rollouts,
        ),
    ];
    for (name, search, kv_cache_bytes, tasks) in cases {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let tokenizer = Tokenizer::byte_level();
        let (publisher, _) = weight_broadcast(tiny_model());
        let config = ActorConfig {
            actors: 1,
            episodes_in_flight: 64,
            sampling: SamplingConfig {
                temperature: 1.0,
                max_completion_length: 16,
                max_prompt_length: 2048,
                ..SamplingConfig::default()
            },
            limits: EpisodeLimits::default(),
            engine: EngineConfig {
                kv_cache_bytes,
                ..EngineConfig::new(&tokenizer, None)
            },
            results_capacity: 256,
        };
        let pool = ActorPool::spawn(
            runtime.handle(),
            vec![household()],
            Arc::new(tokenizer),
            ChatTemplate::chatml(),
            &publisher,
            config,
        )
        .expect("actor pool");
        let work: Vec<EpisodeTask> = (0..tasks as u64)
            .map(|id| EpisodeTask {
                id,
                group_id: id,
                env: 0,
                seed: id % trees as u64,
                sample: 0,
                sampling_seed: derive_seed(5, id),
                sampling: SamplingOverrides::default(),
                hint_turns: Vec::new(),
                search: search.cloned(),
            })
            .collect();
        let start = Instant::now();
        pool.submit_all(work).expect("pool accepts tasks");
        let rollouts: usize = (0..tasks)
            .map(|_| pool.results().recv().expect("a report").rollouts().count())
            .sum();
        let seconds = start.elapsed().as_secs_f64();
        let sum = |f: &dyn Fn(&kaizen_actors::EngineCounters) -> u64| -> u64 {
            pool.counters().iter().map(|c| f(c)).sum()
        };
        let prefill = sum(&|c| c.prefill_tokens.load(Relaxed));
        let forked = sum(&|c| c.kv_forked_tokens.load(Relaxed));
        runtime.block_on(pool.shutdown());
        println!(
            "| {name} | {rollouts} | {seconds:.2} | {:.1} | {prefill} | {forked} |",
            rollouts as f64 / seconds
        );
    }
}
