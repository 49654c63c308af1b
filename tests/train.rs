//! End-to-end training through the `kaizen` binary: sync-mode reproducibility, resume after
//! SIGKILL, and the tiny self-correction job (warm start + GRPO) getting better without losing
//! any trajectory.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{KAIZEN, assert_same, kaizen, metrics, run_dir, small_job, write};

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

/// The actors' generation options through a job: turns continued from kept keys and values
/// (logged as `actors/*`), and int8 and bf16 decoding, whose sampler-learner gaps are logged
/// and larger than f32's while training still runs.
#[test]
fn kept_kv_and_int8_and_bf16_decoding_run_through_a_job() {
    let tmp = tempfile::tempdir().unwrap();
    let last = |m: &std::collections::BTreeMap<(String, u64), f64>, key: &str| {
        m.iter()
            .filter(|((k, _), _)| k == key)
            .max_by_key(|((_, s), _)| *s)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("{key} was never logged"))
    };
    let mut runs_metrics = Vec::new();
    for (i, sets) in [
        &["actors.kv_cache_mib=0"][..],
        &["actors.decode_weights=\"int8\""][..],
        &["actors.decode_weights=\"bf16\""][..],
    ]
    .iter()
    .enumerate()
    {
        let runs = tmp.path().join(format!("runs{i}"));
        let cfg = write(tmp.path(), &format!("job{i}.toml"), &small_job(&runs, 2));
        let mut args = vec!["train", cfg.to_str().unwrap(), "--no-progress"];
        for s in sets.iter() {
            args.extend(["--set", s]);
        }
        kaizen(&args);
        runs_metrics.push(metrics(&run_dir(&runs, "e2e")));
    }
    let (plain, int8) = (&runs_metrics[0], &runs_metrics[1]);
    assert_eq!(last(plain, "actors/reused_prompt_tokens"), 0.0);
    assert!(
        last(int8, "actors/reused_prompt_tokens") > 0.0,
        "turn 2 continued turn 1"
    );
    assert!(last(int8, "actors/prefill_per_token") < last(plain, "actors/prefill_per_token"));
    let gap = |m: &std::collections::BTreeMap<(String, u64), f64>| {
        m.iter()
            .filter(|((k, _), _)| k == "logprob_gap_mean")
            .map(|(_, v)| *v)
            .fold(0.0f64, f64::max)
    };
    assert!(gap(plain) < 1e-3, "f32 gap {}", gap(plain));
    assert!(gap(int8) > gap(plain), "int8 moves the behaviour log-probs");
    assert!(last(int8, "loss").is_finite());
    let bf16 = &runs_metrics[2];
    assert!(gap(bf16) > gap(plain), "bf16 moves the behaviour log-probs");
    assert!(gap(bf16) < 0.1, "bf16 gap {}", gap(bf16));
    assert!(last(bf16, "loss").is_finite());
}

/// `run.time_limit_minutes` ends RL early at a step boundary, as a normal end: the steps it
/// took are logged and checkpointed, and the stop is recorded.
#[test]
fn a_time_limit_ends_training_early_and_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let job = small_job(&runs, 100_000).replace(
        "log_samples = 1",
        "log_samples = 1\ntime_limit_minutes = 0.03",
    );
    let cfg = write(tmp.path(), "job.toml", &job);
    kaizen(&["train", cfg.to_str().unwrap(), "--no-progress"]);
    let run = run_dir(&runs, "e2e");
    let m = metrics(&run);
    let steps = m
        .keys()
        .filter(|(k, _)| k == "reward/mean")
        .map(|(_, s)| *s)
        .max()
        .expect("at least one step before the limit");
    assert!(steps < 100_000);
    assert_eq!(
        m.get(&("run/time_limit_reached".to_string(), steps)),
        Some(&1.0)
    );
    let checkpoints: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        checkpoints.contains(&format!("step-{steps:06}")),
        "final checkpoint at step {steps}: {checkpoints:?}"
    );
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

/// Values of `key` by step, in step order.
fn series(run: &Path, key: &str) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["key"] == key {
            out.insert(v["step"].as_u64().unwrap(), v["value"].as_f64().unwrap());
        }
    }
    out.into_iter().collect()
}

/// The trainable turns of self-generated round `round` (0-based), as its counts account for
/// them: kept (relabelled ones included) or dropped for a reason.
fn accounted_turns(run: &Path, round: usize) -> f64 {
    [
        "kept",
        "rejected",
        "duplicates",
        "over_cap",
        "unchanged",
        "not_a_fix",
    ]
    .iter()
    .map(|k| series(run, &format!("self_sft/{k}"))[round].1)
    .sum()
}

fn mean(values: &[(u64, f64)]) -> f64 {
    values.iter().map(|(_, v)| v).sum::<f64>() / values.len() as f64
}

/// Runs the shipped `configs/self_correct_tiny.toml` with its runs under `runs` and the
/// `--set` overrides `sets`.
fn train_tiny_self_correction(runs: &Path, sets: &[&str]) -> std::process::Output {
    train_shipped("self_correct_tiny", runs, sets)
}

/// Runs the shipped `configs/<name>.toml` with its runs under `runs` and the `--set`
/// overrides `sets`.
fn train_shipped(name: &str, runs: &Path, sets: &[&str]) -> std::process::Output {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("configs/{name}.toml"));
    let runs_set = format!("tracking.runs_dir={:?}", runs.display().to_string());
    let mut args = vec![
        "train",
        config.to_str().unwrap(),
        "--no-progress",
        "--set",
        &runs_set,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    kaizen(&args)
}

/// Runs the job `job(runs, steps)` for `steps` RL steps in one go, and again in another
/// directory for one step then resumed (`--resume`, `run.max_steps = steps`); asserts both
/// logged the same metrics bit for bit and returns the uninterrupted run's directory.
fn assert_resumes_exactly(tmp: &Path, steps: u64, job: impl Fn(&Path, u64) -> String) -> PathBuf {
    let runs_a = tmp.join("a");
    let cfg_a = write(tmp, "a.toml", &job(&runs_a, steps));
    kaizen(&["train", cfg_a.to_str().unwrap(), "--no-progress"]);
    let run_a = run_dir(&runs_a, "e2e");
    let runs_b = tmp.join("b");
    let cfg_b = write(tmp, "b.toml", &job(&runs_b, 1));
    kaizen(&["train", cfg_b.to_str().unwrap(), "--no-progress"]);
    let run_b = run_dir(&runs_b, "e2e");
    let max_steps = format!("run.max_steps={steps}");
    kaizen(&[
        "train",
        "--resume",
        run_b.to_str().unwrap(),
        "--set",
        &max_steps,
        "--no-progress",
    ]);
    assert_same(&metrics(&run_a), &metrics(&run_b));
    run_a
}

/// SCoRe's two stages (`[score]`): stage I for `stage1_steps` RL steps, then stage II, logged
/// as `score/stage`, with the KL to the reference in both; a run stopped in stage I and
/// resumed continues exactly as the uninterrupted run (the stage switch and the reference are
/// restored from the checkpoint).
#[test]
fn score_stages_switch_and_resume_mid_stage() {
    let score = "\n[score]\nstage1_steps = 2\nstage1_beta = 0.5\nstage2_beta = 0.05\nprogress_bonus = 1.0\n";
    let tmp = tempfile::tempdir().unwrap();
    // Without a warm start the reference is the model as the config loads it (a resume
    // loads it again); after one it is saved under `reference/`.
    let run = assert_resumes_exactly(tmp.path(), 4, |runs, steps| small_job(runs, steps) + score);
    assert_eq!(
        series(&run, "score/stage"),
        vec![(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]
    );
    let kl = series(&run, "kl");
    assert_eq!(kl.len(), 4, "the KL is computed in both stages: {kl:?}");
}

/// Every algorithm's recipe runs end to end from its shipped config (shortened): every RL step
/// trains (finite loss, a gradient) and logs its algorithm's own diagnostics. GSPO's async job
/// computes its sequence-level ratio against behaviour log-probs of older weights.
#[test]
fn every_algorithms_config_trains() {
    for (name, key) in [
        ("self_correct_tiny_gspo", "clip_frac"),
        ("self_correct_tiny_reinforce_pp", "pg_loss"),
        ("self_correct_tiny_rloo", "pg_loss"),
        ("self_correct_tiny_ppo", "ppo/vf_loss"),
        ("self_correct_tiny_dpo", "dpo/rewards_margins"),
        ("self_correct_tiny_nft", "nft/pos_loss"),
        ("self_correct_tiny_offline_dpo", "preference/loss"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let runs = tmp.path().join("runs");
        let out = train_shipped(
            name,
            &runs,
            &[
                "run.max_steps=4",
                "sft.steps=20",
                "eval.every=0",
                "eval.at_start=false",
                "eval.at_end=false",
            ],
        );
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run = run_dir(&runs, name);
        let losses = series(&run, "loss");
        let trained = series(&run, "trained_tokens");
        assert!(
            losses.len() == 4 && losses.iter().all(|(_, v)| v.is_finite()),
            "{name}: {losses:?}"
        );
        assert!(trained.iter().all(|(_, v)| *v > 0.0), "{name}: {trained:?}");
        let grad = series(&run, "grad_norm");
        assert!(grad.iter().any(|(_, g)| *g > 0.0), "{name}: {grad:?}");
        let own = series(&run, key);
        assert!(
            !own.is_empty() && own.iter().all(|(_, v)| v.is_finite()),
            "{name}: `{key}` {own:?}"
        );
    }
}

/// PPO's value head is part of the run's state: a PPO run stopped after one step and resumed
/// continues exactly as the uninterrupted run, with the value head on the policy's trunk (its
/// weights and AdamW moments come back from the checkpoint; a fresh head would change every
/// later step) and with a separate critic (its model and optimizer saved beside the policy's).
#[test]
fn a_ppo_run_resumes_exactly_with_its_critic() {
    for critic in ["shared", "separate"] {
        let tmp = tempfile::tempdir().unwrap();
        let run = assert_resumes_exactly(tmp.path(), 3, |runs, steps| {
            format!(
                "algorithm = \"ppo\"\n{}\n[ppo]\nkl_coef = 0.05\ncritic = \"{critic}\"\n",
                small_job(runs, steps)
            )
        });
        let vf = series(&run, "ppo/vf_loss");
        assert_eq!(vf.len(), 3, "{critic}: {vf:?}");
        assert!(vf.iter().all(|(_, v)| v.is_finite() && *v > 0.0), "{vf:?}");
        let checkpoint = std::fs::read_dir(run.join("checkpoints"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let holder = if critic == "shared" {
            "policy"
        } else {
            "critic"
        };
        let weights = std::fs::read(checkpoint.join(holder).join("model.safetensors")).unwrap();
        let name = b"v_head.summary.weight";
        assert!(
            weights.windows(name.len()).any(|w| w == name),
            "{critic}: the checkpoint's {holder} has no value head"
        );
    }
}

/// `kaizen train` with `args`, expected to fail: its stderr.
fn kaizen_fails(args: &[&str]) -> String {
    let out = Command::new(KAIZEN).args(args).output().unwrap();
    assert!(!out.status.success(), "kaizen {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A resumed PPO run keeps the critic it started with: asking for the other kind is an error
/// naming `ppo.critic`, not a silently fresh critic or value head.
#[test]
fn a_resume_with_another_critic_kind_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let job = format!(
        "algorithm = \"ppo\"\n{}\n[ppo]\nkl_coef = 0.0\ncritic = \"separate\"\n",
        small_job(&runs, 1)
    );
    let cfg = write(tmp.path(), "job.toml", &job);
    kaizen(&["train", cfg.to_str().unwrap(), "--no-progress"]);
    let run = run_dir(&runs, "e2e");
    let err = kaizen_fails(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--set",
        "run.max_steps=2",
        "--set",
        "ppo.critic=\"shared\"",
        "--no-progress",
    ]);
    assert!(
        err.contains("ppo.critic") && err.contains("separate"),
        "{err}"
    );
}

/// A bad `[preference]` file fails the run before anything trains (no warm-start step is
/// logged), with an error naming `preference.source`.
#[test]
fn a_bad_preference_file_fails_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let bad = write(
        tmp.path(),
        "pairs.jsonl",
        "{\"prompt\": \"x\", \"chosen\": \"y\"}\n",
    );
    let text = format!(
        "{}\n[sft]\nsource = \"demonstrations\"\nsteps = 50\n\n[preference]\nsource = {:?}\nsteps = 5\n",
        small_job(&runs, 1),
        bad.display().to_string()
    );
    let cfg = write(tmp.path(), "job.toml", &text);
    let err = kaizen_fails(&["train", cfg.to_str().unwrap(), "--no-progress"]);
    assert!(
        err.contains("preference.source") && err.contains("line 1") && err.contains("rejected"),
        "{err}"
    );
    let run = run_dir(&runs, "e2e");
    let logged = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    assert!(!logged.contains("sft/loss"), "the warm start ran first");
}

/// The offline preference stage (`[preference]`): DPO on JSONL pairs (both of TRL's formats)
/// before RL. Its first step starts at the reference, so its loss is `ln 2` exactly; on two
/// pairs seen over and over the stage drives the loss down and the chosen replies' implicit
/// reward above the rejected ones'; RL follows. (A random model cannot learn arithmetic from the
/// shipped pairs in a few steps; `every_algorithms_config_trains` runs those.)
#[test]
fn offline_dpo_on_jsonl_pairs_runs_before_rl() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = write(
        tmp.path(),
        "pairs.jsonl",
        concat!(
            r#"{"prompt": "Is 2 + 2 = 4?", "chosen": "yes", "rejected": "no"}"#,
            "\n",
            r#"{"prompt": [{"role": "user", "content": "Is 2 + 2 = 5?"}], "chosen": [{"role": "assistant", "content": "no"}], "rejected": [{"role": "assistant", "content": "yes"}]}"#,
            "\n"
        ),
    );
    let runs = tmp.path().join("runs");
    let text = format!(
        "{}\n[preference]\nsource = {:?}\nsteps = 20\nbatch_size = 2\nlearning_rate = 3e-3\n",
        small_job(&runs, 1),
        pairs.display().to_string()
    );
    let cfg = write(tmp.path(), "job.toml", &text);
    kaizen(&["train", cfg.to_str().unwrap(), "--no-progress"]);
    let run = run_dir(&runs, "e2e");
    let loss = series(&run, "preference/loss");
    assert_eq!(loss.len(), 20, "{loss:?}");
    assert_eq!(loss[0].0, 1);
    assert!(
        (loss[0].1 - std::f64::consts::LN_2).abs() < 1e-6,
        "{loss:?}"
    );
    assert!(loss[19].1 < 0.7 * std::f64::consts::LN_2, "{loss:?}");
    let accuracy = series(&run, "preference/rewards_accuracies");
    assert_eq!(accuracy[19].1, 1.0, "{accuracy:?}");
    assert!(series(&run, "preference/rewards_margins")[19].1 > 0.0);
    assert_eq!(series(&run, "reward/mean").len(), 1, "one RL step follows");
}

/// With `[sft]` and `eval.at_start`, the model is evaluated as loaded (`eval_base/...`, before
/// any warm-start step is logged) and again after the warm start (`eval/...`, after the last
/// one), both at step 0, and both are printed.
#[test]
fn the_model_is_evaluated_before_and_after_the_warm_start() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let out = train_tiny_self_correction(
        &runs,
        &[
            "run.max_steps=1",
            "sft.steps=200",
            "eval.at_start=true",
            "eval.at_end=false",
            "eval.num_problems=32",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("eval before the warm start:") && stdout.contains("eval before RL:"),
        "{stdout}"
    );
    let run = run_dir(&runs, "self_correct_tiny");
    for key in [
        "eval_base/self_correct/correct@t1",
        "eval/self_correct/correct@t1",
    ] {
        let values = series(&run, key);
        assert_eq!(values.len(), 1, "{key}: {values:?}");
        assert_eq!(values[0].0, 0, "{key} is logged at step 0");
    }
    // The order of metrics.jsonl: base evaluation, 200 warm-start steps, evaluation before RL.
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let keys: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["key"].as_str().unwrap().to_string()
        })
        .collect();
    let first = |prefix: &str| keys.iter().position(|k| k.starts_with(prefix)).unwrap();
    let last = |prefix: &str| keys.iter().rposition(|k| k.starts_with(prefix)).unwrap();
    assert_eq!(
        series(&run, "sft/loss").len(),
        200,
        "one loss per warm-start step"
    );
    assert!(
        last("eval_base/") < first("sft/loss") && last("sft/loss") < first("eval/self_correct/"),
        "evaluations out of order: {keys:?}"
    );
}

/// The shipped tiny job (`configs/self_correct_tiny.toml`: SFT warm start on the environment's
/// demonstrations, then GRPO on two-attempt self-correction), shortened: the training reward
/// rises and every episode submitted to the actors is accounted for.
#[test]
fn the_tiny_self_correction_job_improves_and_loses_no_trajectory() {
    const STEPS: u64 = 24;
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let steps_set = format!("run.max_steps={STEPS}");
    let out = train_tiny_self_correction(
        &runs,
        &[
            &steps_set,
            "sft.steps=200",
            "eval.at_start=false",
            "eval.at_end=false",
            "eval.every=0",
        ],
    );
    let run = run_dir(&runs, "self_correct_tiny");

    // The reward went up beyond noise: the mean training reward of the last third of the steps
    // exceeds the first third's by more than two standard errors of the difference (rewards are
    // 0/1 per turn, so a third's mean over `n` episodes has variance ≈ p(1 − p)/n; one-sided
    // z > 2, a 2.3% chance for a policy that does not improve). A fixed margin would hinge on the
    // exact trajectory, which float rounding anywhere in the model changes (the run is
    // deterministic for its seed and code, sync mode).
    let reward = series(&run, "reward/mean");
    assert_eq!(reward.len() as u64, STEPS, "one reward per step");
    let third = reward.len() / 3;
    let (first, last) = (
        mean(&reward[..third]),
        mean(&reward[reward.len() - third..]),
    );
    let n = (third * 64) as f64;
    let se = (first * (1.0 - first) / n + last * (1.0 - last) / n).sqrt();
    assert!(
        last - first > 2.0 * se,
        "training reward did not rise: first third {first:.3}, last third {last:.3}, standard \
         error of the difference {se:.4} ({reward:?})"
    );

    // No trajectory lost: every episode submitted came back, and was trained on, faulted or
    // counted as unused (the final `episodes/*` record, logged after the actors shut down).
    let last_value = |key: &str| series(&run, key).last().unwrap().1;
    let submitted = last_value("episodes/submitted");
    let reported = last_value("episodes/reported");
    let trained = last_value("episodes/trained");
    let faulted = last_value("episodes/faulted");
    let unused = last_value("episodes/unused");
    assert!(
        submitted >= (STEPS * 64) as f64,
        "{submitted} episodes submitted"
    );
    assert_eq!(submitted, reported, "episodes that never came back");
    assert_eq!(
        reported,
        trained + faulted + unused,
        "episodes unaccounted for"
    );
    assert_eq!(
        trained,
        (STEPS * 64) as f64,
        "sync mode trains every group of every step"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "episodes: submitted {submitted} reported {reported}"
        )),
        "{stdout}"
    );
}

/// `sft.source = "self"` on the tiny job: each round plays its episodes, every trainable turn
/// is accounted for (kept or dropped, by reason), the kept turns are written as chat JSONL and
/// the round's share of the warm-start steps runs (or is counted as skipped).
#[test]
fn the_self_generated_warm_start_accounts_for_every_turn() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    train_tiny_self_correction(
        &runs,
        &[
            "run.max_steps=1",
            "sft.source=\"self\"",
            "sft.steps=6",
            "sft.self_generated.rounds=2",
            "sft.self_generated.problems_per_round=24",
            "sft.self_generated.samples_per_problem=4",
            "eval.at_start=false",
            "eval.at_end=false",
        ],
    );
    let run = run_dir(&runs, "self_correct_tiny");
    let one = |key: &str| -> Vec<f64> { series(&run, key).into_iter().map(|(_, v)| v).collect() };
    assert_eq!(one("self_sft/round"), vec![0.0, 1.0]);
    assert_eq!(one("self_sft/episodes"), vec![96.0, 96.0]);
    let kept = one("self_sft/kept");
    assert_eq!(kept.len(), 2);
    for (r, &kept) in kept.iter().enumerate() {
        // Two attempts per episode, both trainable.
        assert_eq!(accounted_turns(&run, r), 192.0, "round {r}");
        let lines = std::fs::read_to_string(run.join(format!("self_sft/round_{r}.jsonl")))
            .unwrap()
            .lines()
            .count();
        assert_eq!(lines as f64, kept, "round {r}: one chat line per kept turn");
        let pass = one("self_sft/pass@k")[r];
        assert!((0.0..=1.0).contains(&pass), "{pass}");
    }
    let trained = series(&run, "sft/loss").len() as f64;
    let skipped: f64 = one("self_sft/skipped_steps").iter().sum();
    assert_eq!(
        trained + skipped,
        6.0,
        "every warm-start step ran or was counted"
    );
}

/// No verifier in the loop: the warm start keeps the turns the model was most certain of, and
/// RL is rewarded with each turn's self-certainty. The verifier's reward is only logged, and
/// so is how often self-certainty agrees with it.
#[test]
fn self_certainty_selects_warm_start_data_and_rewards_rl_without_the_verifier() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    train_tiny_self_correction(
        &runs,
        &[
            "run.max_steps=2",
            "sft.source=\"self\"",
            "sft.steps=2",
            "sft.self_generated.rounds=1",
            "sft.self_generated.problems_per_round=16",
            "sft.self_generated.samples_per_problem=4",
            "sft.self_generated.select=\"self_certainty\"",
            "sft.self_generated.temperatures=[0.7, 1.2]",
            "sft.self_generated.probe_problems=4",
            "sft.self_generated.certainty_quantiles=[0.0, 0.5]",
            "grpo.reward_source=\"self_certainty\"",
            "eval.at_start=false",
            "eval.at_end=false",
        ],
    );
    let run = run_dir(&runs, "self_correct_tiny");
    let one = |key: &str| -> Vec<f64> { series(&run, key).into_iter().map(|(_, v)| v).collect() };
    // B-STaR's reward threshold: the quantile of self-certainty with the best balance score.
    let balance = [0.0f64, 0.5].map(|q| one(&format!("self_sft/balance_at_quantile_{q}"))[0]);
    let quantile = one("self_sft/certainty_quantile")[0];
    let expected = if balance[1] > balance[0] { 0.5 } else { 0.0 };
    assert_eq!(quantile, expected, "{balance:?}");
    assert_eq!(one("self_sft/balance_score")[0], balance[0].max(balance[1]));
    // Selection by rank: nothing is rejected for its reward, only below the threshold (none
    // at quantile 0); every turn is accounted for.
    let rejected = one("self_sft/rejected")[0];
    assert_eq!(
        rejected == 0.0,
        quantile == 0.0,
        "{rejected} rejected at {quantile}"
    );
    if quantile > 0.0 {
        assert!(one("self_sft/certainty_threshold@t1")[0] > 0.0);
    }
    assert_eq!(accounted_turns(&run, 0), 128.0);
    let selected_correct = one("self_sft/selected_correct")[0];
    assert!((0.0..=1.0).contains(&selected_correct));
    let best = one("self_sft/best_of_k_self_certainty")[0];
    assert!((0.0..=1.0).contains(&best));
    // B-STaR's temperature: each candidate probed, the round sampled at the best one.
    let probes = [0.7f64, 1.2].map(|t| one(&format!("self_sft/balance_at_temperature_{t}"))[0]);
    let chosen = one("self_sft/temperature")[0];
    let expected = if probes[1] > probes[0] { 1.2 } else { 0.7 };
    assert!((chosen - expected).abs() < 1e-6, "{chosen} from {probes:?}");
    assert!((0.0..=1.0).contains(&one("self_sft/balance_score")[0]));
    // RL: the trained reward is the self-certainty (a KL divergence: > 0), not the verifier's.
    let rewards = one("reward/mean");
    let verifier = one("env/verifier_reward");
    assert_eq!((rewards.len(), verifier.len()), (2, 2));
    for (r, v) in rewards.iter().zip(&verifier) {
        assert!(*r > 0.0 && r.is_finite(), "self-certainty reward {r}");
        assert!((0.0..=1.0).contains(v), "verifier reward {v}");
        assert_ne!(r, v);
    }
    for a in one("self_certainty/agreement") {
        assert!((0.0..=1.0).contains(&a), "{a}");
    }
    assert_eq!(one("faults"), vec![0.0, 0.0]);
}

/// Label-free RL (TTRL): each group's majority answer is the pseudo-label. Every trained turn
/// votes, so the mean trained reward equals the share of votes in the majority, step by step;
/// the verifier's reward is only logged.
#[test]
fn majority_vote_rewards_each_group_with_its_own_consensus() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let out = train_tiny_self_correction(
        &runs,
        &[
            "run.max_steps=3",
            "grpo.reward_source=\"majority_vote\"",
            "grpo.vote_answers=\"numeric\"",
            "eval.at_start=false",
            "eval.at_end=false",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = run_dir(&runs, "self_correct_tiny");
    let one = |key: &str| -> Vec<f64> { series(&run, key).into_iter().map(|(_, v)| v).collect() };
    assert_eq!(one("faults"), vec![0.0; 3]);
    let rewards = one("reward/mean");
    let agreement = one("env/majority_vote/agreement");
    assert_eq!((rewards.len(), agreement.len()), (3, 3));
    for (r, a) in rewards.iter().zip(&agreement) {
        assert!((r - a).abs() < 1e-9, "reward {r} vs majority share {a}");
        assert!(*a > 0.0, "some answers must vote");
    }
    for key in [
        "env/verifier_reward",
        "env/majority_vote/reward_agreement",
        "env/majority_vote/label_accuracy",
    ] {
        let values = one(key);
        assert_eq!(values.len(), 3, "{key}");
        assert!(
            values.iter().all(|v| (0.0..=1.0).contains(v)),
            "{key}: {values:?}"
        );
    }
}

/// Label-free RL by Co-Reward: every prompt's group is paired with a group of its twin
/// (the same problem reworded, same seed, the `<name>_twin` slot), and each group is rewarded
/// by agreement with the other's majority answer, in the sync and the async loop.
#[test]
fn co_reward_pairs_each_group_with_its_twin_and_rewards_cross_agreement() {
    for mode in ["sync", "async"] {
        let tmp = tempfile::tempdir().unwrap();
        let runs = tmp.path().join("runs");
        let mode_set = format!("run.mode=\"{mode}\"");
        let out = train_tiny_self_correction(
            &runs,
            &[
                "run.max_steps=2",
                &mode_set,
                "run.log_samples=1000",
                "grpo.reward_source=\"co_reward\"",
                "grpo.vote_answers=\"numeric\"",
                "grpo.prompts_per_step=2",
                "grpo.num_generations=4",
                "env.twin={ ask = \"twin\" }",
                "eval.at_start=false",
                "eval.at_end=false",
            ],
        );
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run = run_dir(&runs, "self_correct_tiny");
        let one =
            |key: &str| -> Vec<f64> { series(&run, key).into_iter().map(|(_, v)| v).collect() };
        assert_eq!(one("faults"), vec![0.0; 2], "{mode}");
        let rewards = one("reward/mean");
        let agreement = one("env/co_reward/agreement");
        assert_eq!((rewards.len(), agreement.len()), (2, 2), "{mode}");
        for (r, a) in rewards.iter().zip(&agreement) {
            assert!(
                (r - a).abs() < 1e-9,
                "{mode}: reward {r} vs share agreeing with the twin's label {a}"
            );
        }
        for key in [
            "env/verifier_reward",
            "env/co_reward/reward_agreement",
            "env/co_reward/labels_agree",
        ] {
            let values = one(key);
            assert_eq!(values.len(), 2, "{mode} {key}");
            assert!(
                values.iter().all(|v| (0.0..=1.0).contains(v)),
                "{key}: {values:?}"
            );
        }
        // Each step trains 2 prompts x (question + twin) x 4 episodes; a pair shares its seed.
        let text = std::fs::read_to_string(run.join("samples.jsonl")).unwrap();
        let mut by_step: BTreeMap<u64, Vec<serde_json::Value>> = BTreeMap::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            by_step
                .entry(v["step"].as_u64().unwrap())
                .or_default()
                .push(v);
        }
        assert_eq!(by_step.len(), 2, "{mode}");
        for (step, episodes) in &by_step {
            assert_eq!(episodes.len(), 16, "{mode} step {step}");
            let seeds = |env: &str| -> Vec<u64> {
                let mut s: Vec<u64> = episodes
                    .iter()
                    .filter(|e| e["env"] == env)
                    .map(|e| e["seed"].as_u64().unwrap())
                    .collect();
                s.sort();
                s
            };
            let (question, twin) = (seeds("self_correct"), seeds("self_correct_twin"));
            assert_eq!(question.len(), 8, "{mode} step {step}");
            assert_eq!(
                question, twin,
                "{mode} step {step}: twins share their seeds"
            );
            let twin_prompt = episodes
                .iter()
                .find(|e| e["env"] == "self_correct_twin")
                .and_then(|e| e["turns"][0]["prompt"].as_str())
                .unwrap();
            assert!(
                twin_prompt.starts_with("What is the value of"),
                "{twin_prompt}"
            );
        }
    }
}

/// SMART on the tiny job: a strategy menu on the first attempt, the self-generated warm start
/// relabelling later successes onto the first prompt, and the strategy mix logged in training
/// and evaluation (each turn's mix sums to 1), every warm-start turn accounted for.
#[test]
fn a_strategy_menu_logs_the_mix_and_relabels_in_the_warm_start() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let out = train_tiny_self_correction(
        &runs,
        &[
            "run.max_steps=1",
            "env.params.strategies=[\"direct\", \"step_by_step\", \"program\"]",
            "sft.source=\"self\"",
            "sft.steps=4",
            "sft.self_generated.rounds=1",
            "sft.self_generated.problems_per_round=16",
            "sft.self_generated.relabel_first=true",
            "eval.at_start=false",
            "eval.num_problems=16",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = run_dir(&runs, "self_correct_tiny");
    let one = |key: &str| -> Vec<f64> { series(&run, key).into_iter().map(|(_, v)| v).collect() };
    for prefix in ["env", "eval/self_correct"] {
        for turn in ["t1", "final"] {
            let mix: f64 = ["direct", "step_by_step", "program"]
                .iter()
                .map(|s| one(&format!("{prefix}/strategy@{turn}/{s}"))[0])
                .sum();
            assert!(
                (mix - 1.0).abs() < 1e-9,
                "{prefix} {turn}: mix sums to {mix}"
            );
        }
        let switched = one(&format!("{prefix}/switched"))[0];
        assert!((0.0..=1.0).contains(&switched), "{switched}");
    }
    // Relabelled turns are kept turns: the accounting of 16 x 4 episodes x 2 turns holds with
    // them added.
    let relabelled = one("self_sft/relabelled")[0];
    assert_eq!(accounted_turns(&run, 0) - relabelled, 128.0);
    assert_eq!(one("faults"), vec![0.0]);
}

/// The `code` world's shipped tiny job runs (shortened): every episode's code is executed in
/// the sandbox (its cost logged), every attempt is accounted for, and nothing is lost.
#[test]
fn the_code_tiny_job_runs_its_episodes_through_the_sandbox() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    train_shipped(
        "code_tiny",
        &runs,
        &[
            "run.max_steps=2",
            "sft.steps=10",
            "eval.every=0",
            "eval.at_start=false",
            "eval.num_problems=8",
        ],
    );
    let run = run_dir(&runs, "code_tiny");
    let one = |key: &str| -> Vec<f64> { series(&run, key).into_iter().map(|(_, v)| v).collect() };
    assert_eq!(one("faults"), vec![0.0, 0.0]);
    for ms in one("env/sandbox_ms") {
        assert!(ms > 1.0 && ms < 5000.0, "sandbox time {ms} ms");
    }
    // Unsolved first attempts get a fix: between 1 and 2 attempts per episode on average.
    for a in one("env/attempts") {
        assert!((1.0..=2.0).contains(&a), "attempts {a}");
    }
    let t1 = one("eval/code/correct@t1");
    let t2 = one("eval/code/correct@t2");
    assert_eq!((t1.len(), t2.len()), (1, 1));
    assert!(
        t2[0] >= t1[0],
        "solved by attempt 2 includes solved by attempt 1"
    );
}

/// The `self_verify` world's shipped tiny job runs (shortened) and every step logs what the
/// world measures: the solution's accuracy and the verdict's agreement with the verifier, each
/// a rate in [0, 1], with no episode lost.
#[test]
fn the_self_verify_tiny_job_runs_and_logs_its_verdicts() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let out = train_shipped(
        "self_verify_tiny",
        &runs,
        &[
            "run.max_steps=3",
            "sft.steps=20",
            "eval.every=0",
            "eval.at_start=false",
            "eval.at_end=false",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = run_dir(&runs, "self_verify_tiny");
    for key in ["env/correct@t1", "env/verdict_right", "env/verdict_missing"] {
        let values = series(&run, key);
        assert_eq!(values.len(), 3, "{key}: {values:?}");
        assert!(
            values.iter().all(|(_, v)| (0.0..=1.0).contains(v)),
            "{key}: {values:?}"
        );
    }
    assert!(series(&run, "faults").iter().all(|(_, v)| *v == 0.0));
}

/// STaR's rationalisation and per-round evaluation on the tiny job: every problem a round left
/// unsolved is played again with the gold answer hinted at its second attempt (each such
/// episode shows exactly one hint), the round's data file stays hint-free, and the held-out set
/// is evaluated after every round but the last.
#[test]
fn rationalisation_replays_unsolved_problems_with_a_hint_and_rounds_are_evaluated() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let out = train_tiny_self_correction(
        &runs,
        &[
            "run.max_steps=1",
            "sft.source=\"self\"",
            "sft.steps=2",
            "sft.self_generated.rounds=2",
            "sft.self_generated.problems_per_round=12",
            "sft.self_generated.samples_per_problem=2",
            "sft.self_generated.rationalize_turns=[2]",
            "sft.self_generated.rationalize_samples=2",
            "sft.self_generated.evaluate_rounds=true",
            "eval.num_problems=8",
            "eval.at_start=false",
            "eval.at_end=false",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = run_dir(&runs, "self_correct_tiny");
    let one = |key: &str| -> Vec<f64> { series(&run, key).into_iter().map(|(_, v)| v).collect() };
    let pass = one("self_sft/pass@k");
    let problems = one("self_sft/rationalized_problems");
    let episodes = one("self_sft/rationalized_episodes");
    let hinted = one("self_sft/rationalized_hinted_turns");
    assert_eq!((pass.len(), problems.len()), (2, 2), "one value per round");
    for r in 0..2 {
        // The unsolved problems, two hinted episodes each, one hint per episode (attempt 2).
        assert_eq!(problems[r], (12.0 * (1.0 - pass[r])).round(), "round {r}");
        assert_eq!(episodes[r], 2.0 * problems[r]);
        assert_eq!(hinted[r], episodes[r]);
    }
    assert!(problems[0] > 0.0, "the random model solves few problems");
    let kept = one("self_sft/rationalized_kept");
    assert!(kept.iter().all(|k| *k >= 0.0 && *k <= 2.0 * 12.0 * 2.0));
    for round in 0..2 {
        let file = run.join(format!("self_sft/round_{round}.jsonl"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("Hint:"), "{}: {text}", file.display());
    }
    // Evaluated after round 0 only (round 1's policy is what RL starts from).
    let evals = series(&run, "eval_round/self_correct/correct@t1");
    assert_eq!(evals.len(), 1, "{evals:?}");
    assert!((0.0..=1.0).contains(&evals[0].1));
    assert_eq!(one("faults"), vec![0.0]);
}

/// A searched warm start on `household` (MCTS over actions): every rollout of every tree is
/// filtered as an episode, the round's reflection conversations are written and counted, and
/// an environment that cannot fork is refused before the run starts.
#[test]
fn a_searched_warm_start_accounts_for_every_rollout_and_refuses_envs_that_cannot_fork() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let out = train_shipped(
        "household_tiny",
        &runs,
        &[
            "run.max_steps=1",
            "sft.source=\"self\"",
            "sft.steps=2",
            "sft.self_generated.rounds=1",
            "sft.self_generated.problems_per_round=6",
            "sft.self_generated.samples_per_problem=1",
            "sft.self_generated.min_reward=0.5",
            "sft.self_generated.process_rewards=true",
            "sft.self_generated.reflection=true",
            "sft.self_generated.search={rollouts=4, branches=2, max_depth=3}",
            "eval.at_start=false",
            "eval.at_end=false",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = run_dir(&runs, "household_tiny");
    let one = |key: &str| -> Vec<f64> { series(&run, key).into_iter().map(|(_, v)| v).collect() };
    assert_eq!(one("tree/trees"), vec![6.0]);
    let rollouts = one("tree/rollouts")[0];
    assert!((12.0..=24.0).contains(&rollouts), "{rollouts} rollouts");
    assert_eq!(
        one("self_sft/episodes"),
        vec![rollouts],
        "every rollout filtered"
    );
    let reflections = std::fs::read_to_string(run.join("self_sft/reflection_0.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(reflections as f64, one("reflection/conversations")[0]);
    let solved = one("tree/solved")[0];
    assert!(
        solved >= one("tree/first_success")[0],
        "a tree holds its first rollout"
    );

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/self_correct_tiny.toml");
    let err = kaizen_fails(&[
        "train",
        config.to_str().unwrap(),
        "--no-progress",
        "--set",
        &format!("tracking.runs_dir={:?}", runs.display().to_string()),
        "--set",
        "sft.source=\"self\"",
        "--set",
        "sft.self_generated.search={rollouts=4}",
    ]);
    assert!(
        err.contains("[sft.self_generated] search") && err.contains("cannot fork"),
        "{err}"
    );
}
