//! Actors end to end on the tiny model: grouping, threads, versions, faults, determinism,
//! backpressure.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use burn::tensor::Device;
use kaizen_actors::{
    ActorConfig, ActorPool, EngineConfig, EnvSlot, EpisodeReport, EpisodeTask, SamplingConfig,
    weight_broadcast,
};
use kaizen_core::{AgentId, Outcome, Request, SamplingOverrides, Step, WeightsVersion};
use kaizen_envs::{Env, EnvFactory, EpisodeLimits, Registry};
use kaizen_model::{ChatTemplate, GenerateOptions, Policy};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The built-in environment `name` with the TOML parameters `params`.
fn builtin(name: &str, params: &str) -> EnvSlot {
    let params: toml::Table = toml::from_str(params).unwrap();
    EnvSlot {
        name: name.into(),
        factory: Registry::with_builtins().build(name, &params).unwrap(),
    }
}

fn self_correct() -> EnvSlot {
    builtin("self_correct", "attempts = 2")
}

fn config(actors: usize) -> ActorConfig {
    ActorConfig {
        actors,
        episodes_in_flight: 8,
        sampling: SamplingConfig {
            max_completion_length: 12,
            ..SamplingConfig::default()
        },
        limits: EpisodeLimits::default(),
        engine: EngineConfig {
            generate: GenerateOptions::default(),
            max_env_wait: None,
            kv_cache_bytes: 64 << 20,
            kv_across_versions: Default::default(),
            device: None,
        },
        results_capacity: 64,
    }
}

fn task(id: u64, group: u64, sample: u32) -> EpisodeTask {
    EpisodeTask {
        id,
        group_id: group,
        env: 0,
        seed: 100 + group,
        sample,
        sampling_seed: 1000 * group + sample as u64,
        sampling: SamplingOverrides::default(),
        hint_turns: Vec::new(),
        search: None,
    }
}

fn play(envs: Vec<EnvSlot>, tasks: Vec<EpisodeTask>, actors: usize) -> Vec<EpisodeReport> {
    play_with(envs, tasks, config(actors)).0
}

/// Plays `tasks` with `config`; the reports by task id, and the prompt tokens the engines
/// reused from earlier turns and prefilled.
fn play_with(
    envs: Vec<EnvSlot>,
    tasks: Vec<EpisodeTask>,
    config: ActorConfig,
) -> (Vec<EpisodeReport>, u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let rt = runtime();
    let policy = Policy::tiny(&Device::default(), 0).unwrap();
    let (publisher, _) = weight_broadcast(policy.model.clone());
    let pool = ActorPool::spawn(
        rt.handle(),
        envs,
        Arc::new(policy.tokenizer.clone()),
        ChatTemplate::chatml(),
        &publisher,
        config,
    )
    .unwrap();
    let n = tasks.len();
    pool.submit_all(tasks).unwrap();
    let mut reports: Vec<EpisodeReport> = (0..n).map(|_| pool.results().recv().unwrap()).collect();
    let sum = |f: &dyn Fn(&kaizen_actors::EngineCounters) -> u64| {
        pool.counters().iter().map(|c| f(c)).sum::<u64>()
    };
    let reused = sum(&|c| c.reused_prompt_tokens.load(Relaxed));
    let prefilled = sum(&|c| c.prefill_tokens.load(Relaxed));
    rt.block_on(pool.shutdown());
    reports.sort_by_key(|r| r.task.id);
    (reports, reused, prefilled)
}

#[test]
fn second_turns_reuse_the_first_turns_keys_and_values_and_sample_the_same() {
    let tasks: Vec<_> = (0..2)
        .flat_map(|g| (0..4).map(move |s| task(g * 4 + s as u64, g, s)))
        .collect();
    let mut off = config(1);
    off.engine.kv_cache_bytes = 0;
    let (plain, reused_off, prefilled_off) = play_with(vec![self_correct()], tasks.clone(), off);
    let (kept, reused_on, prefilled_on) = play_with(vec![self_correct()], tasks, config(1));
    assert_eq!(reused_off, 0);
    assert!(reused_on > 0, "turn 2 continued from turn 1's cache");
    assert!(
        prefilled_on + reused_on <= prefilled_off,
        "{prefilled_on} prefilled + {reused_on} reused vs {prefilled_off}"
    );
    for (a, b) in plain.iter().zip(&kept) {
        let (a, b) = (a.result.as_ref().unwrap(), b.result.as_ref().unwrap());
        for (x, y) in a.segments.iter().zip(&b.segments) {
            assert_eq!(x.completion_tokens, y.completion_tokens);
            for (p, q) in x.behavior_logprobs.iter().zip(&y.behavior_logprobs) {
                assert!((p - q).abs() < 1e-4, "{p} vs {q}");
            }
        }
    }
}

#[test]
fn episodes_become_trajectories_with_token_threads_and_versions() {
    let tasks: Vec<_> = (0..3)
        .flat_map(|g| (0..4).map(move |s| task(g * 4 + s as u64, g, s)))
        .collect();
    let reports = play(vec![self_correct()], tasks, 2);
    assert_eq!(reports.len(), 12);
    for r in &reports {
        let t = r.result.as_ref().expect("no faults");
        t.validate().unwrap();
        assert_eq!(t.group_id, r.task.group_id);
        assert_eq!(t.segments.len(), 2, "two attempts");
        let (s1, s2) = (&t.segments[0], &t.segments[1]);
        assert_eq!(
            s1.thread, s2.thread,
            "the second attempt continues the thread"
        );
        assert_ne!(
            s2.prompt_tokens[0], s1.prompt_tokens[0],
            "only new messages are rendered"
        );
        assert!(s1.completion_tokens.len() <= 12);
        assert_eq!(s1.weights_version, WeightsVersion(0));
        assert!(r.metrics.contains_key("correct@t1"));
        assert_eq!(r.turns.len(), 2);
        // The answer text the environment saw is the decoding of the sampled tokens.
        assert!(r.turns[0].answer.len() <= 12 * 4);
    }
    // Samples of one group share the problem but sample differently.
    let g0: Vec<_> = reports[..4]
        .iter()
        .map(|r| r.result.as_ref().unwrap())
        .collect();
    assert!(
        g0.iter()
            .all(|t| t.segments[0].prompt_tokens == g0[0].segments[0].prompt_tokens)
    );
    assert!(
        g0.iter()
            .any(|t| t.segments[0].completion_tokens != g0[0].segments[0].completion_tokens)
    );
}

#[test]
fn same_tasks_same_trajectories() {
    let tasks: Vec<_> = (0..2)
        .flat_map(|g| (0..3).map(move |s| task(g * 3 + s as u64, g, s)))
        .collect();
    let a = play(vec![self_correct()], tasks.clone(), 1);
    let b = play(vec![self_correct()], tasks, 1);
    let ta: Vec<_> = a.iter().map(|r| r.result.clone().unwrap()).collect();
    let tb: Vec<_> = b.iter().map(|r| r.result.clone().unwrap()).collect();
    // Compare compactly: a mismatch report of whole trajectories is unreadable.
    for (x, y) in ta.iter().zip(&tb) {
        for (s, t) in x.segments.iter().zip(&y.segments) {
            assert_eq!(
                s.completion_tokens, t.completion_tokens,
                "trajectory {}",
                x.id
            );
            let same = s
                .behavior_logprobs
                .iter()
                .zip(&t.behavior_logprobs)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "trajectory {}: log-probs differ in the last bits",
                x.id
            );
        }
    }
    assert_eq!(ta, tb);
}

/// An environment that panics on reset for odd seeds.
struct Flaky;

#[async_trait]
impl Env for Flaky {
    async fn reset(&mut self, seed: u64) -> kaizen_envs::Result<Step> {
        assert!(seed.is_multiple_of(2), "flaky env panics on odd seeds");
        Ok(Step::Request(Request::new(
            "a",
            vec![kaizen_core::Message::user("say something")],
        )))
    }
    async fn step(&mut self, _: &AgentId, _: &str) -> kaizen_envs::Result<Step> {
        Ok(Step::Done(Outcome::single("a", vec![1.0])))
    }
}

#[test]
fn a_panicking_environment_ends_only_its_episode() {
    let factory: Arc<dyn EnvFactory> = Arc::new(|| Box::new(Flaky) as Box<dyn Env>);
    let envs = vec![EnvSlot {
        name: "flaky".into(),
        factory,
    }];
    let tasks: Vec<_> = (0..6)
        .map(|i| EpisodeTask {
            seed: i,
            ..task(i, i, 0)
        })
        .collect();
    let reports = play(envs, tasks, 1);
    let faults: Vec<_> = reports.iter().filter(|r| r.result.is_err()).collect();
    assert_eq!(faults.len(), 3);
    assert!(faults.iter().all(|r| r.task.seed % 2 == 1));
    assert!(faults.iter().all(|r| r.metrics["fault"] == 1.0));
    assert_eq!(reports.iter().filter(|r| r.result.is_ok()).count(), 3);
}

#[test]
fn new_weights_are_stamped_on_later_segments() {
    let rt = runtime();
    let device = Device::default();
    let policy = Policy::tiny(&device, 0).unwrap();
    let (publisher, _) = weight_broadcast(policy.model.clone());
    let pool = ActorPool::spawn(
        rt.handle(),
        vec![self_correct()],
        Arc::new(policy.tokenizer.clone()),
        ChatTemplate::chatml(),
        &publisher,
        config(1),
    )
    .unwrap();
    pool.submit(task(0, 0, 0)).unwrap();
    let first = pool.results().recv().unwrap();
    let other = Policy::tiny(&device, 1).unwrap();
    assert_eq!(publisher.publish(other.model.clone()), WeightsVersion(1));
    pool.submit(task(1, 1, 0)).unwrap();
    let second = pool
        .results()
        .recv_timeout(Duration::from_secs(60))
        .unwrap();
    rt.block_on(pool.shutdown());
    let v = |r: &EpisodeReport| r.result.as_ref().unwrap().segments[0].weights_version;
    assert_eq!(v(&first), WeightsVersion(0));
    assert_eq!(v(&second), WeightsVersion(1));
}

#[test]
fn a_slow_consumer_loses_nothing() {
    let rt = runtime();
    let policy = Policy::tiny(&Device::default(), 0).unwrap();
    let (publisher, _) = weight_broadcast(policy.model.clone());
    let mut cfg = config(2);
    cfg.results_capacity = 1;
    let pool = ActorPool::spawn(
        rt.handle(),
        vec![self_correct()],
        Arc::new(policy.tokenizer.clone()),
        ChatTemplate::chatml(),
        &publisher,
        cfg,
    )
    .unwrap();
    for i in 0..10 {
        pool.submit(task(i, i, 0)).unwrap();
    }
    let mut ids = Vec::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(20));
        ids.push(pool.results().recv().unwrap().task.id);
    }
    rt.block_on(pool.shutdown());
    ids.sort();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
}

/// STaR's rationalisation: at a hinted turn the policy samples with the environment's hint (a
/// longer prompt is prefilled), but the recorded thread is the unhinted one: the same prompt
/// tokens as the episode played without hints, the hint only in the readable turn.
#[test]
fn a_hinted_turn_samples_with_the_hint_and_records_the_thread_without_it() {
    let plain = task(0, 0, 0);
    let hinted = EpisodeTask {
        hint_turns: vec![2],
        search: None,
        ..task(0, 0, 0)
    };
    // Without kept keys and values every turn prefills its whole prompt, so the counts compare.
    let mut off = config(1);
    off.engine.kv_cache_bytes = 0;
    let (a, _, prefilled_plain) = play_with(vec![self_correct()], vec![plain], off.clone());
    let (b, _, prefilled_hinted) = play_with(vec![self_correct()], vec![hinted], off);
    let (ta, tb) = (a[0].result.as_ref().unwrap(), b[0].result.as_ref().unwrap());
    // Turn 1 is not hinted: the same sample.
    assert_eq!(ta.segments[0].prompt_tokens, tb.segments[0].prompt_tokens);
    assert_eq!(
        ta.segments[0].completion_tokens,
        tb.segments[0].completion_tokens
    );
    assert!(b[0].turns[0].request.hint.is_none());
    // Turn 2: the recorded prompt is the thread's unhinted continuation.
    assert_eq!(ta.segments[1].prompt_tokens, tb.segments[1].prompt_tokens);
    let hint = b[0].turns[1].request.hint.as_deref().unwrap();
    assert!(
        hint.starts_with("Hint: the correct final answer is "),
        "{hint}"
    );
    assert!(a[0].turns[1].request.hint.is_none());
    // The policy saw the hint: turn 2 prefilled the hint message too.
    assert!(
        prefilled_hinted > prefilled_plain,
        "{prefilled_hinted} vs {prefilled_plain}"
    );
}

fn household() -> EnvSlot {
    builtin("household", "max_steps = 4\nadmissible_actions = false")
}

#[test]
fn a_searched_episode_forks_env_and_kv_cache_and_accounts_for_every_rollout() {
    use std::sync::atomic::Ordering::Relaxed;
    let spec = kaizen_envs::search::TreeSearch {
        rollouts: 6,
        branches: 2,
        exploration: 1.0,
        max_depth: 3,
    };
    let plain: Vec<EpisodeTask> = (0..2).map(|g| task(g, g, 0)).collect();
    let searched: Vec<EpisodeTask> = plain
        .iter()
        .map(|t| EpisodeTask {
            search: Some(spec.clone()),
            ..t.clone()
        })
        .collect();
    let ordinary = play(vec![household()], plain, 1);
    // Searched, on one actor, counting what the engine copied for branches.
    let rt = runtime();
    let policy = Policy::tiny(&Device::default(), 0).unwrap();
    let (publisher, _) = weight_broadcast(policy.model.clone());
    let pool = ActorPool::spawn(
        rt.handle(),
        vec![household(), self_correct()],
        Arc::new(policy.tokenizer.clone()),
        ChatTemplate::chatml(),
        &publisher,
        config(1),
    )
    .unwrap();
    let mut tasks = searched.clone();
    // An environment that cannot fork: its search ends in a named fault, still reported.
    tasks.push(EpisodeTask {
        env: 1,
        ..task(7, 7, 0)
    });
    tasks[2].search = Some(spec.clone());
    pool.submit_all(tasks).unwrap();
    let mut reports: Vec<EpisodeReport> = (0..3).map(|_| pool.results().recv().unwrap()).collect();
    let forked: u64 = pool
        .counters()
        .iter()
        .map(|c| c.kv_forked_tokens.load(Relaxed))
        .sum();
    let reused: u64 = pool
        .counters()
        .iter()
        .map(|c| c.reused_prompt_tokens.load(Relaxed))
        .sum();
    rt.block_on(pool.shutdown());
    reports.sort_by_key(|r| r.task.id);
    assert!(
        forked > 0,
        "branches start from their parent's keys and values"
    );
    assert!(reused >= forked, "{reused} reused vs {forked} forked");

    let fault = reports[2].result.as_ref().unwrap_err();
    assert!(fault.message.contains("cannot fork"), "{fault}");
    for (report, plain) in reports[..2].iter().zip(&ordinary) {
        // The first rollout is the ordinary episode.
        let (a, b) = (
            report.result.as_ref().unwrap(),
            plain.result.as_ref().unwrap(),
        );
        assert_eq!(a.segments.len(), b.segments.len());
        for (x, y) in a.segments.iter().zip(&b.segments) {
            assert_eq!(x.completion_tokens, y.completion_tokens);
            for (p, q) in x.behavior_logprobs.iter().zip(&y.behavior_logprobs) {
                assert!((p - q).abs() < 1e-4, "{p} vs {q}");
            }
        }
        let tree = report.tree.as_ref().unwrap();
        let rollouts: Vec<_> = report.rollouts().collect();
        assert!(rollouts.len() >= 2 && rollouts.len() <= spec.rollouts);
        assert_eq!(tree.nodes[0].visits as usize, rollouts.len());
        // Rollouts through the same node share their turns up to it, token for token.
        for (pa, ra, _, ta) in &rollouts {
            for (pb, rb, _, tb) in &rollouts {
                let shared = pa.iter().zip(pb.iter()).take_while(|(x, y)| x == y).count();
                let (sa, sb) = (
                    &ra.as_ref().unwrap().segments,
                    &rb.as_ref().unwrap().segments,
                );
                for d in 0..shared - 1 {
                    assert_eq!(ta[d].answer, tb[d].answer);
                    assert_eq!(sa[d].completion_tokens, sb[d].completion_tokens);
                }
            }
            for (d, &n) in pa.iter().enumerate().skip(1) {
                assert_eq!(
                    tree.nodes[n].action.as_deref(),
                    Some(ta[d - 1].answer.as_str())
                );
            }
        }
        // A searched report crosses the wire unchanged.
        let wire = kaizen_transport::wire::report_to_proto(report);
        let back = kaizen_transport::wire::report_from_proto(wire, "test").unwrap();
        assert_eq!(back.task, report.task);
        let back_tree = back.tree.unwrap();
        assert_eq!(back_tree.nodes, tree.nodes);
        assert_eq!(back_tree.rollouts.len(), tree.rollouts.len());
        assert_eq!(back_tree.path, tree.path);
    }
}

#[test]
fn a_guided_choice_turn_answers_with_one_of_the_choices_verbatim() {
    let params = "max_steps = 3\nchoose_admissible = true\nadmissible_actions = false";
    let env = builtin("household", params);
    let tasks: Vec<EpisodeTask> = (0..6).map(|g| task(g, g, 0)).collect();
    let mut cfg = config(1);
    cfg.engine.generate.eos_token_ids = vec![258]; // the tiny tokenizer's `<|im_end|>`
    let (reports, _, _) = play_with(vec![env], tasks, cfg);
    for report in &reports {
        let trajectory = report.result.as_ref().unwrap();
        assert!((1..=3).contains(&report.turns.len()));
        assert_eq!(report.metrics["invalid_actions"], 0.0, "{:?}", report.turns);
        for (turn, segment) in report.turns.iter().zip(&trajectory.segments) {
            let choices = &turn.request.sampling.choices;
            assert!(
                choices.contains(&turn.answer),
                "{:?} not in {choices:?}",
                turn.answer
            );
            // The action's bytes, then the end of turn, sampled from the constrained
            // distribution (log-probs ≤ 0, the forced end certain).
            assert_eq!(segment.completion_tokens.last(), Some(&258));
            assert_eq!(segment.completion_tokens.len(), turn.answer.len() + 1);
            assert!(segment.behavior_logprobs.iter().all(|&l| l <= 0.0));
        }
    }
}
