//! End-to-end training through the `kaizen` binary: sync-mode reproducibility, resume after
//! SIGKILL, and the tiny self-correction job (warm start + GRPO) getting better without losing
//! any trajectory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const KAIZEN: &str = env!("CARGO_BIN_EXE_kaizen");

fn small_job(runs: &Path, max_steps: u64) -> String {
    format!(
        r#"
[run]
experiment = "e2e"
seed = 3
mode = "sync"
max_steps = {max_steps}
log_samples = 1

[model]
source = "tiny"
init_seed = 5
[model.tiny]
vocab_size = 259
hidden_size = 64
intermediate_size = 128
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
tie_word_embeddings = true
initializer_range = 0.05

[[env]]
name = "self_correct"
[env.params]
attempts = 2

[sampling]
max_completion_length = 12

[grpo]
num_generations = 4
prompts_per_step = 3

[learner]
gradient_accumulation_steps = 2

[optim]
learning_rate = 1e-3

[eval]
at_start = false
at_end = false

[checkpoint]
every = 2
keep = 5

[tracking]
runs_dir = "{}"
"#,
        runs.display()
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn kaizen(args: &[&str]) -> std::process::Output {
    let out = Command::new(KAIZEN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "kaizen {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The single run directory under `runs/<experiment>/`.
fn run_dir(runs: &Path, experiment: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(runs.join(experiment))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

/// The last logged value of every (metric, step), without wall-clock metrics.
fn metrics(run: &Path) -> BTreeMap<(String, u64), f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = v["key"].as_str().unwrap().to_string();
        if key.contains("seconds")
            || key.contains("per_s")
            || key.starts_with("time/")
            || key == "queue_depth"
        {
            continue;
        }
        out.insert(
            (key, v["step"].as_u64().unwrap()),
            v["value"].as_f64().unwrap(),
        );
    }
    out
}

fn assert_same(a: &BTreeMap<(String, u64), f64>, b: &BTreeMap<(String, u64), f64>) {
    assert_eq!(a.len(), b.len(), "different metric sets");
    for ((k, s), v) in a {
        let w = b
            .get(&(k.clone(), *s))
            .unwrap_or_else(|| panic!("{k}@{s} missing"));
        assert!(v.to_bits() == w.to_bits(), "{k}@{s}: {v} vs {w}");
    }
}

#[test]
fn sync_mode_runs_are_bit_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for i in 0..2 {
        let runs = tmp.path().join(format!("runs{i}"));
        let cfg = write(tmp.path(), &format!("job{i}.toml"), &small_job(&runs, 3));
        kaizen(&["train", cfg.to_str().unwrap(), "--no-progress"]);
        all.push(metrics(&run_dir(&runs, "e2e")));
    }
    assert!(
        all[0].keys().any(|(k, _)| k == "loss"),
        "the learner logged its loss"
    );
    assert!(
        all[0].keys().any(|(k, _)| k == "logprob_gap_max"),
        "the sampler-learner gap is logged"
    );
    assert_same(&all[0], &all[1]);
}

#[test]
fn a_run_killed_mid_way_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    // Uninterrupted reference.
    let runs_a = tmp.path().join("a");
    let cfg_a = write(tmp.path(), "a.toml", &small_job(&runs_a, 6));
    kaizen(&["train", cfg_a.to_str().unwrap(), "--no-progress"]);
    let run_a = run_dir(&runs_a, "e2e");

    // Killed with SIGKILL once a checkpoint exists, then resumed.
    let runs_b = tmp.path().join("b");
    let cfg_b = write(tmp.path(), "b.toml", &small_job(&runs_b, 6));
    let mut child = Command::new(KAIZEN)
        .args(["train", cfg_b.to_str().unwrap(), "--no-progress"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let run_b = loop {
        let found = std::fs::read_dir(runs_b.join("e2e"))
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("checkpoints/step-000002").is_dir());
        if let Some(p) = found {
            break p;
        }
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let completed_before_kill = std::fs::read_dir(run_b.join("checkpoints"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("step-")
        })
        .count();
    assert!(completed_before_kill >= 1);
    kaizen(&[
        "train",
        "--resume",
        run_b.to_str().unwrap(),
        "--no-progress",
    ]);

    assert_same(&metrics(&run_a), &metrics(&run_b));
    // Same final step counter and optimizer state.
    let state = |run: &Path| {
        std::fs::read_to_string(run.join("checkpoints/step-000006/trainer_state.json")).unwrap()
    };
    assert_eq!(state(&run_a), state(&run_b));
    let opt = |run: &Path| {
        std::fs::read(run.join("checkpoints/step-000006/optimizer.safetensors")).unwrap()
    };
    assert!(
        opt(&run_a) == opt(&run_b),
        "optimizer moments differ after resume"
    );
    let weights = |run: &Path| {
        std::fs::read(run.join("checkpoints/step-000006/policy/model.safetensors")).unwrap()
    };
    assert!(
        weights(&run_a) == weights(&run_b),
        "weights differ after resume"
    );
}
