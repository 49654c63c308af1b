//! Episodes per second of each built-in environment with a scripted policy (the environment's
//! expert, no model), through the same runner an actor uses, the code sandbox's executions per
//! second (one at a time and 8 submitted at once), and remote-environment round trips on
//! localhost against the Python example server. Shows that environments are never the
//! bottleneck of a run (a model turn takes milliseconds to seconds).
//!
//!     cargo bench -p kaizen-envs --bench envs
//!
//! The remote benchmark needs a Python 3 (`KAIZEN_TEST_PYTHON`, else `python3`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kaizen_envs::{EnvFactory, EpisodeLimits, Registry, demonstrate};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn builtin(name: &str, params: &str) -> Arc<dyn EnvFactory> {
    let table: toml::Table = toml::from_str(params).expect("params");
    Registry::with_builtins()
        .build(name, &table)
        .expect("factory")
}

fn episodes(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("episode");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for (name, params) in [
        ("self_correct", ""),
        ("spc", "generator = { difficulty = \"medium\" }"),
        ("household", ""),
        ("translate", ""),
        (
            "code",
            concat!(
                "tasks = \"",
                env!("CARGO_MANIFEST_DIR"),
                "/../data/code/train.jsonl\""
            ),
        ),
    ] {
        let factory = builtin(name, params);
        let mut seed = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                seed += 1;
                let ep = rt.block_on(demonstrate(factory.make(), seed, EpisodeLimits::default()));
                assert!(ep.outcome().is_some(), "{name} seed {seed}: {:?}", ep.end);
                ep.turns.len()
            })
        });
    }
    group.finish();
}

/// One sandboxed execution of a passing solution against 4 tests, alone and 8 at once (the
/// sandbox runs as many as the machine has cores).
fn sandbox(c: &mut Criterion) {
    use kaizen_envs::sandbox::{Sandbox, SandboxConfig};
    let rt = runtime();
    let sandbox = Sandbox::new(SandboxConfig::default());
    let solution = "def add_3(x):\n    return x + 3\n";
    let tests: Vec<String> = (0..4)
        .map(|i| format!("assert add_3({i}) == {}", i + 3))
        .collect();
    let mut group = c.benchmark_group("sandbox");
    group.measurement_time(Duration::from_secs(8));
    for batch in [1usize, 8] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("run_tests_x{batch}"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..batch {
                        let (s, t) = (sandbox.clone(), tests.clone());
                        set.spawn(async move { s.run_tests(solution, &t).await });
                    }
                    while let Some(r) = set.join_next().await {
                        assert!(r.expect("task").expect("sandbox run").all_passed());
                    }
                })
            })
        });
    }
    group.finish();
}

fn remote(c: &mut Criterion) {
    let python = std::env::var("KAIZEN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../python/examples/guessing_game.py"
    );
    let Ok(mut child) = Command::new(&python)
        .args([script, "--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
    else {
        eprintln!("remote benchmark skipped: cannot run {python}");
        return;
    };
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server line");
    let url = line
        .trim()
        .trim_start_matches("kaizen-env listening on ")
        .to_string();
    let factory = builtin("remote", &format!("url = \"{url}\""));
    let rt = runtime();
    // Seed 2: the expert (binary search over 1..=100) needs 7 guesses: 1 reset + 7 steps.
    let calls_per_episode = {
        let ep = rt.block_on(demonstrate(factory.make(), 2, EpisodeLimits::default()));
        ep.turns.len() as u64 + 1
    };
    assert_eq!(calls_per_episode, 8);
    let mut group = c.benchmark_group("remote");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(calls_per_episode));
    group.bench_function("guessing_game_round_trips", |b| {
        b.iter(|| rt.block_on(demonstrate(factory.make(), 2, EpisodeLimits::default())))
    });
    group.finish();
    let _ = child.kill();
    let _ = child.wait();
}

criterion_group!(benches, episodes, sandbox, remote);
criterion_main!(benches);
