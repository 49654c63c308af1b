//! The code sandbox against honest and hostile programs: every hostile one ends as a
//! `SandboxError` naming the reason, within its limits, and leaves nothing running.

use std::time::{Duration, Instant};

use kaizen_core::{AgentId, Step};
use kaizen_envs::sandbox::{Sandbox, SandboxConfig, SandboxError};
use kaizen_envs::worlds::{CodeConfig, CodeFactory, CodeTask};
use kaizen_envs::{EnvFactory, EpisodeLimits, FaultKind, Responder, run_episode};

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        timeout_seconds: 3.0,
        cpu_seconds: 2,
        memory_mib: 256,
        max_output_bytes: 10_000,
        max_file_bytes: 100_000,
        ..SandboxConfig::default()
    })
}

fn tests_of(f: &str) -> Vec<String> {
    vec![format!("assert {f}(2) == 4"), format!("assert {f}(0) == 0")]
}

/// Processes whose command line mentions `harness.py` (a sandboxed run still alive).
fn harnesses_alive() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains("harness.py"))
        .count()
}

#[tokio::test]
async fn an_honest_solution_passes_and_a_wrong_one_says_what_it_returned() {
    let s = sandbox();
    let good = s
        .run_tests("def double(x):\n    return 2 * x\n", &tests_of("double"))
        .await
        .unwrap();
    assert!(good.loaded && good.all_passed(), "{good:?}");
    let wrong = s
        .run_tests(
            "def double(x):\n    print('hi')\n    return x + 1\n",
            &tests_of("double"),
        )
        .await
        .unwrap();
    assert_eq!(wrong.passed(), 0);
    assert_eq!(
        wrong.tests[0].error.as_deref(),
        Some("double(2) returned 3, expected 4")
    );
    assert!(wrong.stdout.contains("hi"));
    let broken = s
        .run_tests("def double(x) return x", &tests_of("double"))
        .await
        .unwrap();
    assert!(!broken.loaded);
    assert!(
        broken
            .load_error
            .as_deref()
            .unwrap()
            .starts_with("SyntaxError"),
        "{broken:?}"
    );
    // An exception, sys.exit and deep recursion are the solution's failures, not faults.
    for body in [
        "def double(x):\n    raise ValueError('no')\n",
        "import sys\ndef double(x):\n    sys.exit(3)\n",
        "def double(x):\n    return double(x + 1)\n",
    ] {
        let e = s.run_tests(body, &tests_of("double")).await.unwrap();
        assert_eq!(e.passed(), 0, "{body}: {e:?}");
        assert!(e.tests[0].error.is_some(), "{body}");
    }
}

/// A hostile program: its name, its code, and the fault it must end as.
type Case = (&'static str, &'static str, fn(&SandboxError) -> bool);

/// The hostile programs: each must end as the named fault, and quickly.
#[tokio::test]
async fn hostile_programs_end_as_faults_with_a_reason() {
    let s = sandbox();
    let cases: &[Case] = &[
        (
            "cpu-bound infinite loop",
            "def double(x):\n    while True:\n        pass\n",
            |e| matches!(e, SandboxError::CpuTime(_) | SandboxError::Timeout(_)),
        ),
        (
            "sleeping forever",
            "import time\ndef double(x):\n    time.sleep(1000)\n",
            |e| matches!(e, SandboxError::Timeout(_)),
        ),
        (
            "memory bomb",
            "def double(x):\n    a = [bytearray(10**6) for _ in range(10**4)]\n",
            |e| matches!(e, SandboxError::Memory(_)),
        ),
        (
            "memory bomb that swallows MemoryError",
            "def double(x):\n    try:\n        a = b'x' * (10**10)\n    except MemoryError:\n        pass\n    return 2 * x\n",
            // Swallowed: the tests then run and pass; nothing is harmed.
            |_| false,
        ),
        (
            "output flood",
            "def double(x):\n    while True:\n        print('y' * 1000)\n",
            |e| matches!(e, SandboxError::Output(_)),
        ),
        (
            "fork bomb",
            "import os\ndef double(x):\n    while True:\n        os.fork()\n",
            |e| matches!(e, SandboxError::Forbidden(w) if w.contains("os.fork")),
        ),
        (
            "shell command",
            "import os\nos.system('echo pwned > /tmp/kaizen_pwned')\n",
            |e| matches!(e, SandboxError::Forbidden(w) if w.contains("os.system")),
        ),
        (
            "subprocess",
            "import subprocess\nsubprocess.run(['true'])\n",
            |e| matches!(e, SandboxError::Forbidden(_)),
        ),
        (
            "network",
            "import socket\nsocket.create_connection(('127.0.0.1', 9))\n",
            |e| matches!(e, SandboxError::Forbidden(w) if w.contains("socket")),
        ),
        (
            "file write outside its directory",
            "open('/tmp/kaizen_sandbox_escape.txt', 'w').write('x')\n",
            |e| matches!(e, SandboxError::Forbidden(w) if w.contains("outside")),
        ),
        (
            "deleting outside its directory",
            "import os\nos.remove('/tmp/kaizen_does_not_matter')\n",
            |e| matches!(e, SandboxError::Forbidden(w) if w.contains("os.remove")),
        ),
        (
            "huge file inside its directory",
            "f = open('big.bin', 'wb')\nwhile True:\n    f.write(b'x' * 65536)\n",
            |e| matches!(e, SandboxError::FileSize(_)),
        ),
        ("ctypes", "import ctypes\nctypes.CDLL(None).fork()\n", |e| {
            matches!(e, SandboxError::Forbidden(_))
        }),
        (
            "killing its parent",
            "import os\nos.kill(os.getppid(), 9)\n",
            |e| matches!(e, SandboxError::Forbidden(w) if w.contains("os.kill")),
        ),
        (
            "exiting before the tests",
            "import os\nos._exit(0)\n",
            |e| matches!(e, SandboxError::Crashed(_)),
        ),
        (
            "exception swallowing the forbidden operation",
            "import os\ntry:\n    os.fork()\nexcept BaseException:\n    pass\n",
            |e| matches!(e, SandboxError::Forbidden(_)),
        ),
    ];
    for (name, code, expected) in cases {
        let started = Instant::now();
        let result = s.run_tests(code, &tests_of("double")).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(8), "{name}: took {took:?}");
        match result {
            Err(e) => {
                assert!(expected(&e), "{name}: unexpected fault {e}");
                assert!(e.to_string().starts_with("sandbox: "), "{name}: {e}");
            }
            Ok(exec) => {
                // Only the program that swallows its own MemoryError may finish.
                assert!(
                    name.contains("swallows"),
                    "{name}: expected a fault, got {exec:?}"
                );
            }
        }
    }
    assert!(!std::path::Path::new("/tmp/kaizen_sandbox_escape.txt").exists());
    assert!(!std::path::Path::new("/tmp/kaizen_pwned").exists());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(harnesses_alive(), 0, "a sandboxed process outlived its run");
}

#[tokio::test]
async fn a_missing_interpreter_is_a_clear_error() {
    let s = Sandbox::new(SandboxConfig {
        python: "/nonexistent/python3".into(),
        ..SandboxConfig::default()
    });
    let e = s
        .run_tests("x = 1", &["assert x == 1".into()])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/python3"), "{e}");
}

// ---- the `code` environment ----

fn task() -> CodeTask {
    CodeTask {
        id: "double".into(),
        prompt: "Write a Python function `double(x)` that returns twice `x`.".into(),
        entry_point: "double".into(),
        tests: vec![
            "assert double(2) == 4".into(),
            "assert double(0) == 0".into(),
            "assert double(-3) == -6".into(),
        ],
        solution: Some("def double(x):\n    return 2 * x\n".into()),
        prelude: None,
    }
}

fn factory(explain: bool) -> CodeFactory {
    let config: CodeConfig = toml::from_str(&format!(
        "tasks = \"unused.jsonl\"\nattempts = 2\nexplain = {explain}\n[sandbox]\ntimeout_seconds = 3.0\n"
    ))
    .unwrap();
    CodeFactory::new("code", vec![task()], config).unwrap()
}

/// Answers with scripted replies, recording what it was asked.
struct Script {
    replies: Vec<&'static str>,
    asked: Vec<String>,
}

#[async_trait::async_trait]
impl Responder for Script {
    async fn respond(&mut self, request: &kaizen_core::Request) -> Result<String, String> {
        let last = request.messages.last().map(|m| m.content.clone());
        self.asked.push(last.unwrap_or_default());
        Ok(self.replies.remove(0).to_string())
    }
}

#[tokio::test]
async fn a_failed_attempt_shows_the_failures_and_a_fix_is_rewarded() {
    let mut script = Script {
        replies: vec![
            "```python\ndef double(x):\n    return x + 2\n```",
            "Fixed:\n```python\ndef double(x):\n    return x * 2\n```",
        ],
        asked: Vec::new(),
    };
    let episode = run_episode(
        factory(false).make(),
        0,
        &mut script,
        EpisodeLimits::default(),
    )
    .await;
    let outcome = episode.end.clone().unwrap();
    assert_eq!(outcome.rewards[&AgentId::new("coder")], vec![0.0, 1.0]);
    assert!(
        script.asked[0].contains("assert double(2) == 4"),
        "{}",
        script.asked[0]
    );
    let feedback = &script.asked[1];
    assert!(feedback.contains("failed 2 of 3 tests"), "{feedback}");
    assert!(
        feedback.contains("double(0) returned 2, expected 0"),
        "{feedback}"
    );
    let m = &outcome.metrics;
    assert_eq!(
        (m["correct@t1"], m["correct@t2"], m["i_to_c"]),
        (0.0, 1.0, 1.0)
    );
    assert!((m["tests_passed@t1"] - 1.0 / 3.0).abs() < 1e-9);
    assert!(m["sandbox_ms"] > 0.0);
}

#[tokio::test]
async fn a_solved_task_ends_and_an_explanation_earns_its_fixs_reward() {
    let mut solved = Script {
        replies: vec!["def double(x):\n    return 2 * x\n"],
        asked: Vec::new(),
    };
    let episode = run_episode(
        factory(true).make(),
        0,
        &mut solved,
        EpisodeLimits::default(),
    )
    .await;
    let outcome = episode.end.unwrap();
    assert_eq!(outcome.rewards[&AgentId::new("coder")], vec![1.0]);
    assert_eq!(
        (outcome.metrics["correct@t1"], outcome.metrics["correct@t2"]),
        (1.0, 1.0)
    );

    let mut explained = Script {
        replies: vec![
            "def double(x):\n    return x\n",
            "It returns x instead of twice x.",
            "def double(x):\n    return 2 * x\n",
        ],
        asked: Vec::new(),
    };
    let episode = run_episode(
        factory(true).make(),
        0,
        &mut explained,
        EpisodeLimits::default(),
    )
    .await;
    let outcome = episode.end.unwrap();
    assert_eq!(outcome.rewards[&AgentId::new("coder")], vec![0.0, 1.0, 1.0]);
    assert!(
        explained.asked[1].contains("Explain"),
        "{}",
        explained.asked[1]
    );
    assert!(
        explained.asked[2].contains("corrected function"),
        "{}",
        explained.asked[2]
    );
}

#[tokio::test]
async fn runaway_code_ends_the_episode_as_a_sandbox_fault() {
    let mut script = Script {
        replies: vec!["import os\ndef double(x):\n    os.fork()\n"],
        asked: Vec::new(),
    };
    let episode = run_episode(
        factory(false).make(),
        0,
        &mut script,
        EpisodeLimits::default(),
    )
    .await;
    let fault = episode.end.clone().unwrap_err();
    assert_eq!(fault.kind, FaultKind::Sandbox);
    assert!(fault.message.contains("os.fork"), "{fault}");
    assert_eq!(episode.metrics().get("fault/sandbox"), Some(&1.0));
}

#[tokio::test]
async fn the_expert_writes_the_reference_solution() {
    let mut env = factory(false).make();
    let Step::Request(_) = env.reset(0).await.unwrap() else {
        panic!("no request")
    };
    let answer = env.expert_answer().unwrap();
    assert!(answer.contains("return 2 * x"), "{answer}");
    let Step::Done(outcome) = env.step(&AgentId::new("coder"), &answer).await.unwrap() else {
        panic!("the reference solution must solve the task")
    };
    assert_eq!(outcome.rewards[&AgentId::new("coder")], vec![1.0]);
}

#[test]
fn task_files_are_checked_line_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.jsonl");
    std::fs::write(
        &path,
        "{\"id\":\"a\",\"prompt\":\"p\",\"entry_point\":\"f\",\"tests\":[\"assert f() == 1\"]}\n\
         {\"id\":\"b\",\"prompt\":\"p\",\"entry_point\":\"g\",\"tests\":[]}\n",
    )
    .unwrap();
    let e = kaizen_envs::worlds::read_tasks(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains(":2:") && e.contains("no tests"), "{e}");
    // The shipped task sets read, and every reference solution passes its own tests.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/code");
    for name in ["train.jsonl", "heldout.jsonl"] {
        let tasks = kaizen_envs::worlds::read_tasks(&root.join(name)).unwrap();
        assert!(tasks.len() >= 90, "{name}: {}", tasks.len());
    }
}

#[tokio::test]
async fn every_shipped_reference_solution_passes_its_tests() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/code");
    let s = Sandbox::new(SandboxConfig::default());
    let tasks = kaizen_envs::worlds::read_tasks(&root.join("heldout.jsonl")).unwrap();
    for t in &tasks {
        let e = s
            .run_tests(t.solution.as_deref().unwrap(), &t.tests)
            .await
            .unwrap();
        assert!(e.all_passed(), "{}: {e:?}", t.id);
    }
}
