//! The `openai_agent` environment end to end: `examples/openai_agent/agent.py` (the official
//! `openai` client, from `KAIZEN_OPENAI_PYTHON`; `scripts/test.sh` provides it and sets
//! `KAIZEN_REQUIRE_SERVICES=1`, under which a missing one fails the test) plays episodes
//! against the tiny policy through the actors.

use std::sync::Arc;

use burn::tensor::Device;
use kaizen_actors::{
    ActorConfig, ActorPool, EngineConfig, EnvSlot, EpisodeReport, EpisodeTask, SamplingConfig,
    weight_broadcast,
};
use kaizen_core::{AgentId, SamplingOverrides};
use kaizen_envs::{EpisodeLimits, Registry};
use kaizen_model::{ChatTemplate, GenerateOptions, Policy};

#[path = "../../tests/support/openai_python.rs"]
mod support;
use support::openai_python;

fn registry() -> Registry {
    let mut registry = Registry::with_builtins();
    kaizen_serve::agent::register(&mut registry).unwrap();
    registry
}

fn env_slot(params: &str) -> EnvSlot {
    let params: toml::Table = toml::from_str(params).unwrap();
    EnvSlot {
        name: "openai_agent".into(),
        factory: registry().build("openai_agent", &params).unwrap(),
    }
}

fn agent_env(python: &str, extra: &str) -> EnvSlot {
    let agent = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/openai_agent/agent.py"
    );
    env_slot(&format!(
        "command = {python:?}\nargs = [{agent:?}]\ntimeout_seconds = 60\n{extra}"
    ))
}

fn play(env: EnvSlot, episodes: u64) -> Vec<EpisodeReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let policy = Policy::tiny(&Device::default(), 0).unwrap();
    let (publisher, _) = weight_broadcast(policy.model.clone());
    let config = ActorConfig {
        actors: 1,
        episodes_in_flight: 4,
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
        results_capacity: 16,
    };
    let pool = ActorPool::spawn(
        rt.handle(),
        vec![env],
        Arc::new(policy.tokenizer.clone()),
        ChatTemplate::chatml(),
        &publisher,
        config,
    )
    .unwrap();
    let tasks: Vec<EpisodeTask> = (0..episodes)
        .map(|id| EpisodeTask {
            id,
            group_id: id / 2,
            env: 0,
            seed: id,
            sample: (id % 2) as u32,
            sampling_seed: 77 + id,
            sampling: SamplingOverrides::default(),
            hint_turns: Vec::new(),
            search: None,
        })
        .collect();
    pool.submit_all(tasks).unwrap();
    let mut reports: Vec<EpisodeReport> = (0..episodes)
        .map(|_| pool.results().recv().unwrap())
        .collect();
    rt.block_on(pool.shutdown());
    reports.sort_by_key(|r| r.task.id);
    reports
}

/// The agent's reward, recomputed from the tokens the trajectory trains on.
fn score(text: &str) -> f32 {
    let chars = text.chars().count().max(1);
    text.chars().filter(|c| c.is_ascii_lowercase()).count() as f32 / chars as f32
}

fn check(reports: &[EpisodeReport]) {
    let tokenizer = Policy::tiny(&Device::default(), 0).unwrap().tokenizer;
    let agent = AgentId::new("agent");
    for report in reports {
        let t = report.result.as_ref().expect("the episode ran");
        t.validate().unwrap();
        assert_eq!(t.segments.len(), 2, "two chat completions, two turns");
        // The program sent the first answer back unchanged: one thread, the sampled ids kept.
        assert_eq!(t.segments[0].thread, t.segments[1].thread);
        assert!(t.segments.iter().all(|s| s.agent == agent && s.trainable));
        let texts: Vec<String> = t
            .segments
            .iter()
            .map(|s| tokenizer.decode(&s.completion_tokens, true).unwrap())
            .collect();
        let expected = texts.iter().map(|s| score(s)).sum::<f32>() / 2.0;
        let rewards = &t.outcome.rewards[&agent];
        assert_eq!(rewards.len(), 2);
        assert_eq!(rewards[0], 0.0);
        assert!(
            (rewards[1] - expected).abs() < 1e-5,
            "{rewards:?} vs {expected} from {texts:?}"
        );
    }
}

#[test]
fn an_openai_client_program_plays_episodes_whose_turns_are_the_policys_samples() {
    let Some(python) = openai_python() else {
        return;
    };
    check(&play(agent_env(&python, ""), 4));
    // The reward can also be POSTed to $KAIZEN_REWARD_URL.
    check(&play(
        agent_env(&python, "env = { REWARD_VIA = \"post\" }"),
        2,
    ));
}

#[test]
fn a_failing_program_is_a_failed_episode_with_its_stderr() {
    let Some(python) = openai_python() else {
        return;
    };
    let env = env_slot(&format!(
        "command = {python:?}\nargs = [\"-c\", \"import sys; sys.exit('no luck')\"]"
    ));
    let reports = play(env, 1);
    let error = format!("{:?}", reports[0].result.as_ref().expect_err("a fault"));
    assert!(error.contains("no luck"), "{error}");
}

#[test]
fn bad_parameters_name_the_field() {
    for (params, field) in [
        ("command = \"\"", "command"),
        ("command = \"x\"\ntimeout_seconds = 0", "timeout_seconds"),
        ("command = \"x\"\nargz = []", "argz"),
    ] {
        let table: toml::Table = toml::from_str(params).unwrap();
        let error = registry()
            .build("openai_agent", &table)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains(field), "{error}");
    }
}
