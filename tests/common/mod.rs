//! Helpers shared by the end-to-end tests of the `kaizen` binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary under test.
pub const KAIZEN: &str = env!("CARGO_BIN_EXE_kaizen");

/// A tiny sync-mode self-correction job writing to `runs`.
pub fn small_job(runs: &Path, max_steps: u64) -> String {
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

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn kaizen(args: &[&str]) -> std::process::Output {
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
pub fn run_dir(runs: &Path, experiment: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(runs.join(experiment))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

/// The last logged value of every (metric, step), without wall-clock metrics.
pub fn metrics(run: &Path) -> BTreeMap<(String, u64), f64> {
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

pub fn assert_same(a: &BTreeMap<(String, u64), f64>, b: &BTreeMap<(String, u64), f64>) {
    let only = |x: &BTreeMap<(String, u64), f64>, y: &BTreeMap<(String, u64), f64>| {
        x.keys()
            .filter(|k| !y.contains_key(*k))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        a.len() == b.len(),
        "different metric sets: only in the first {:?}, only in the second {:?}",
        only(a, b),
        only(b, a)
    );
    let mut differ = Vec::new();
    for ((k, s), v) in a {
        let w = b
            .get(&(k.clone(), *s))
            .unwrap_or_else(|| panic!("{k}@{s} missing"));
        if v.to_bits() != w.to_bits() {
            differ.push(format!("{k}@{s}: {v} vs {w}"));
        }
    }
    assert!(
        differ.is_empty(),
        "{} differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
}
