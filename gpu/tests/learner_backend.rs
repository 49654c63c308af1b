//! The learner driven through `kaizen_learner::TrainBackend` by the GPU training pass
//! ([`PassBackend`]) on [`HostOps`] — the CPU mirror of its CUDA kernels — takes the step the
//! CPU learner takes: the same loss, gradient norm and weights (within float rounding), over
//! two steps (AdamW's moments included), with gradient accumulation, a KL reference and SFT.
//! No GPU needed: this checks the wiring (log-probs out, `∂loss/∂logp` in, AdamW on the
//! backend, weights back into the learner's model), AdamW's moments through a checkpoint (the
//! CPU learner's `optimizer.safetensors`, either way) and the gradients' all-reduce in buckets.

#[path = "../../learner/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::Device;
use common::{batch, config, learner_for, max_diff, schedule, weights};
use kaizen_core::WeightsVersion;
use kaizen_gpu::train::{HostOps, PassBackend};
use kaizen_learner::{
    AdamW, AdamWMoments, Collective, Error, Learner, LearnerConfig, ObjectiveConfig, Sample,
    TrainBackend, build_samples, read_optimizer_state, write_optimizer_state,
};
use kaizen_model::{HostTensor, Llama, ScoreBatch};

/// The learner config a backend runs (rows scored in full).
fn backend_config(accumulation: usize) -> LearnerConfig {
    LearnerConfig {
        gradient_accumulation_steps: accumulation,
        share_prompt_prefix: false,
        ..LearnerConfig::default()
    }
}

/// A learner for `objective` whose steps run on the host mirror of the GPU pass.
fn on_host_pass(objective: ObjectiveConfig, accumulation: usize) -> Learner {
    let mut l = learner_for(objective, backend_config(accumulation));
    let backend = PassBackend::new("host", HostOps, l.model()).unwrap();
    l.set_backend(Box::new(backend)).unwrap();
    l
}

/// Asserts two metrics agree within `tol` relative to the second (absolute near 0).
fn close(a: f64, b: f64, tol: f64, what: &str) {
    assert!(
        (a - b).abs() <= tol * b.abs().max(1.0),
        "{what}: backend {a} vs CPU {b}"
    );
}

fn rl_steps_agree(objective: ObjectiveConfig, accumulation: usize) {
    let mut cpu = learner_for(
        objective.clone(),
        LearnerConfig {
            gradient_accumulation_steps: accumulation,
            ..LearnerConfig::default()
        },
    );
    let mut host = on_host_pass(objective, accumulation);
    assert_eq!(host.backend(), Some("host"));
    for step in 0..2 {
        let a = host.rl_step(&batch(), WeightsVersion(0)).unwrap();
        let b = cpu.rl_step(&batch(), WeightsVersion(0)).unwrap();
        close(a["loss"], b["loss"], 1e-5, &format!("step {step} loss"));
        close(
            a["grad_norm"],
            b["grad_norm"],
            1e-4,
            &format!("step {step} grad_norm"),
        );
        // The backend has no entropies: the metric is absent, not wrong.
        assert!(!a.contains_key("entropy") && b.contains_key("entropy"));
    }
    assert_eq!(host.steps(), 2);
    let diff = max_diff(&weights(&host), &weights(&cpu));
    assert!(diff < 1e-5, "weights differ by {diff}");
}

#[test]
fn host_pass_backend_takes_the_cpu_learners_grpo_step() {
    rl_steps_agree(ObjectiveConfig::default(), 1);
}

#[test]
fn host_pass_backend_takes_the_cpu_learners_step_with_accumulation_and_kl() {
    let mut objective = ObjectiveConfig::default();
    objective.loss.beta = 0.1;
    rl_steps_agree(objective, 2);
}

#[test]
fn host_pass_backend_takes_the_cpu_learners_sft_step() {
    let (samples, _) = build_samples(&batch());
    let samples: Vec<Sample> = samples;
    let mut cpu = learner_for(ObjectiveConfig::default(), LearnerConfig::default());
    let mut host = on_host_pass(ObjectiveConfig::default(), 1);
    for _ in 0..2 {
        let a = host.sft_step(&samples).unwrap();
        let b = cpu.sft_step(&samples).unwrap();
        close(a["sft/loss"], b["sft/loss"], 1e-5, "sft loss");
    }
    let diff = max_diff(&weights(&host), &weights(&cpu));
    assert!(diff < 1e-5, "weights differ by {diff}");
}

/// What `set_backend` answers for a learner built with `objective` and `config`.
fn refusal(objective: ObjectiveConfig, config: LearnerConfig) -> String {
    let mut l = learner_for(objective, config);
    let backend = PassBackend::new(
        "host",
        HostOps,
        &learner_for(ObjectiveConfig::default(), backend_config(1)).policy(),
    )
    .unwrap();
    match l.set_backend(Box::new(backend)) {
        Err(Error::Backend(message)) => {
            assert!(l.backend().is_none());
            message
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_backend_refuses_the_options_it_cannot_run() {
    let bf16 = refusal(
        ObjectiveConfig::default(),
        LearnerConfig {
            bf16: true,
            ..backend_config(1)
        },
    );
    assert!(bf16.contains("learner.bf16"), "{bf16}");
    let mut entropy = ObjectiveConfig::default();
    entropy.loss.entropy_coef = 0.01;
    let entropy = refusal(entropy, backend_config(1));
    assert!(entropy.contains("loss.entropy_coef"), "{entropy}");
    let ppo = ObjectiveConfig {
        algorithm: kaizen_learner::Algorithm::Ppo,
        ..ObjectiveConfig::default()
    };
    let ppo = refusal(ppo, backend_config(1));
    assert!(ppo.contains("value head"), "{ppo}");
}

/// A directory of its own under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "kaizen-gpu-learner-backend-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a checkpoint holds of a learner: its weights and its optimizer's state, written as
/// `kaizen train` writes them (`policy/model.safetensors`, `optimizer.safetensors`) under `dir`.
fn save(l: &Learner, dir: &Path) {
    l.policy()
        .save_safetensors(dir.join("model.safetensors"))
        .unwrap();
    write_optimizer_state(
        &dir.join("optimizer.safetensors"),
        &l.optimizer_state().unwrap(),
    )
    .unwrap();
}

/// A learner resumed from [`save`]'s files as `kaizen train --resume` resumes one (weights,
/// `AdamW::restore`, then the backend attached when `on_backend`).
fn resume(dir: &Path, on_backend: bool) -> Result<Learner, Error> {
    let model = Llama::load_safetensors(
        &config(),
        dir.join("model.safetensors"),
        &Device::default().autodiff(),
    )?;
    let (step, moments) = read_optimizer_state(&dir.join("optimizer.safetensors"))?;
    let adam = learner_for(ObjectiveConfig::default(), LearnerConfig::default()).optim_config();
    let optimizer = AdamW::restore(adam, step, moments).map_err(Error::Backend)?;
    let learner_config = if on_backend {
        backend_config(1)
    } else {
        LearnerConfig::default()
    };
    let mut l = Learner::with_objective(
        model,
        optimizer,
        schedule(),
        learner_config,
        ObjectiveConfig::default(),
    );
    if on_backend {
        let backend = PassBackend::new("host", HostOps, l.model()).unwrap();
        l.set_backend(Box::new(backend))?;
    }
    Ok(l)
}

fn rl_steps(l: &mut Learner, steps: usize) {
    for _ in 0..steps {
        l.rl_step(&batch(), WeightsVersion(0)).unwrap();
    }
}

#[test]
fn a_backend_learner_resumed_from_a_checkpoint_takes_the_uninterrupted_third_step() {
    let dir = TempDir::new();
    let mut first = on_host_pass(ObjectiveConfig::default(), 1);
    rl_steps(&mut first, 2);
    save(&first, dir.path());

    // The checkpoint is the CPU learner's format: flat moments by module path, step 2.
    let (step, saved) = read_optimizer_state(&dir.path().join("optimizer.safetensors")).unwrap();
    assert_eq!(step, 2);
    let up = &saved["exp_avg.layers.0.mlp.up_proj.weight"];
    assert_eq!(up.shape, [64 * 32]);
    assert!(up.data.iter().any(|&m| m != 0.0), "the moments were saved");
    let cpu = learner_for(ObjectiveConfig::default(), LearnerConfig::default());
    let mut cpu_names: Vec<String> = cpu
        .optimizer()
        .state()
        .1
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut names: Vec<String> = saved.keys().cloned().collect();
    cpu_names.sort();
    names.sort();
    assert_eq!(names, cpu_names, "the CPU learner's tensor names");

    let mut resumed = resume(dir.path(), true).unwrap();
    assert_eq!(resumed.steps(), 2);
    rl_steps(&mut resumed, 1);
    let mut straight = on_host_pass(ObjectiveConfig::default(), 1);
    rl_steps(&mut straight, 3);
    assert_eq!(resumed.steps(), 3);
    let diff = max_diff(&weights(&resumed), &weights(&straight));
    assert!(diff <= 1e-6, "resumed weights differ by {diff}");

    // Without the moments (a checkpoint written before they were saved) the third step
    // differs: the comparison above depends on them.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(
        dir.path().join("model.safetensors"),
        empty.join("model.safetensors"),
    )
    .unwrap();
    write_optimizer_state(&empty.join("optimizer.safetensors"), &(2, Vec::new())).unwrap();
    let mut forgetful = resume(&empty, true).unwrap();
    rl_steps(&mut forgetful, 1);
    let lost = max_diff(&weights(&forgetful), &weights(&straight));
    assert!(lost > 1e-4, "zero moments changed the step by only {lost}");
}

#[test]
fn a_checkpoint_resumes_across_the_cpu_learner_and_the_backend() {
    let mut straight = learner_for(ObjectiveConfig::default(), LearnerConfig::default());
    rl_steps(&mut straight, 3);

    // CPU → backend.
    let dir = TempDir::new();
    let mut cpu = learner_for(ObjectiveConfig::default(), LearnerConfig::default());
    rl_steps(&mut cpu, 2);
    save(&cpu, dir.path());
    let mut on_backend = resume(dir.path(), true).unwrap();
    rl_steps(&mut on_backend, 1);
    let diff = max_diff(&weights(&on_backend), &weights(&straight));
    assert!(
        diff < 1e-5,
        "CPU checkpoint, backend step: weights differ by {diff}"
    );

    // Backend → CPU.
    let dir = TempDir::new();
    let mut host = on_host_pass(ObjectiveConfig::default(), 1);
    rl_steps(&mut host, 2);
    save(&host, dir.path());
    let mut on_cpu = resume(dir.path(), false).unwrap();
    rl_steps(&mut on_cpu, 1);
    let diff = max_diff(&weights(&on_cpu), &weights(&straight));
    assert!(
        diff < 1e-5,
        "backend checkpoint, CPU step: weights differ by {diff}"
    );
}

#[test]
fn a_checkpoint_with_a_misshaped_moment_is_an_error_naming_it() {
    let dir = TempDir::new();
    let mut l = on_host_pass(ObjectiveConfig::default(), 1);
    rl_steps(&mut l, 2);
    save(&l, dir.path());
    let path = dir.path().join("optimizer.safetensors");
    let (step, mut moments) = read_optimizer_state(&path).unwrap();
    for which in ["exp_avg", "exp_avg_sq"] {
        moments.insert(
            format!("{which}.layers.1.mlp.down_proj.weight"),
            HostTensor::new(vec![5], vec![0.1; 5]),
        );
    }
    write_optimizer_state(&path, &(step, moments.into_iter().collect())).unwrap();
    let message = match resume(dir.path(), true) {
        Err(Error::Backend(message)) => message,
        Err(other) => panic!("expected a backend error, got {other}"),
        Ok(_) => panic!("a misshaped moment was accepted"),
    };
    assert!(
        message.contains("exp_avg.layers.1.mlp.down_proj.weight")
            && message.contains("[32, 64]")
            && message.contains("have 5 values"),
        "{message}"
    );

    // The backend checks what it is given too, by its own names.
    let model = learner_for(ObjectiveConfig::default(), backend_config(1)).policy();
    let mut backend = PassBackend::new("host", HostOps, &model).unwrap();
    let mut state: AdamWMoments = backend.optimizer_state().unwrap();
    state.step = 2;
    let name = "model.layers.0.self_attn.q_proj.weight";
    let q = state.params.iter_mut().find(|p| p.name == name).unwrap();
    q.m = HostTensor::new(vec![32, 31], vec![0.0; 32 * 31]);
    let err = backend.set_optimizer_state(&state).unwrap_err().to_string();
    assert!(
        err.contains(name) && err.contains("moment m") && err.contains("expected [32, 32]"),
        "{err}"
    );
    state.params.retain(|p| p.name != name);
    let err = backend.set_optimizer_state(&state).unwrap_err().to_string();
    assert!(err.contains(name) && err.contains("missing"), "{err}");
    assert_eq!(
        backend.optimizer_state().unwrap().step,
        0,
        "a refused state leaves the backend's as it was"
    );
}

/// Two identical ranks: every sum doubles the values; records each call's length.
struct Doubling {
    calls: Mutex<Vec<usize>>,
}

impl Collective for Doubling {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        2
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), Error> {
        values.iter_mut().for_each(|v| *v *= 2.0);
        self.calls.lock().unwrap().push(values.len());
        Ok(())
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        Ok(vec![bytes.to_vec(), bytes.to_vec()])
    }
}

#[test]
fn the_backends_gradients_are_summed_in_buckets_one_call_each() {
    let model = learner_for(ObjectiveConfig::default(), backend_config(1)).policy();
    let bucket_bytes = 4096; // 1024 floats: the embedding (2048) and the MLP matrices alone
    let batch = ScoreBatch {
        sequences: vec![vec![1, 2, 3, 4, 5, 6], vec![7, 8, 9, 10]],
        loss_masks: vec![
            vec![false, false, true, true, true, true],
            vec![false, true, true, true],
        ],
    };
    let adam = kaizen_learner::AdamWConfig::default();
    let grad_norm = |group: Option<&Doubling>| {
        let mut b = PassBackend::new("host", HostOps, &model)
            .unwrap()
            .with_bucket_bytes(bucket_bytes);
        b.zero_grad().unwrap();
        let logprobs = b.forward(&batch, 1.0).unwrap();
        let d: Vec<f32> = (0..logprobs.len()).map(|i| 0.3 - 0.1 * i as f32).collect();
        b.backward(&d).unwrap();
        if let Some(group) = group {
            b.all_reduce(group).unwrap();
        }
        (
            b.step(&adam, 1e-3, 1).unwrap().grad_norm,
            b.buckets().to_vec(),
        )
    };
    let group = Doubling {
        calls: Mutex::new(Vec::new()),
    };
    let (summed, buckets) = grad_norm(Some(&group));
    let (alone, _) = grad_norm(None);
    assert_eq!(
        summed,
        2.0 * alone,
        "every gradient doubled (powers of 2 are exact)"
    );

    let calls = group.calls.into_inner().unwrap();
    let floats: Vec<usize> = buckets.iter().map(|b| b.floats).collect();
    assert_eq!(calls, floats, "one call per bucket, in order");
    let params = kaizen_gpu::train::layout(&config()).len();
    assert!(
        calls.len() < params,
        "{} calls for {params} parameters",
        calls.len()
    );
    for b in &buckets {
        assert!(
            b.floats * 4 <= bucket_bytes || b.params.len() == 1,
            "{b:?} holds several parameters beyond the bucket size"
        );
    }
    assert!(
        buckets
            .iter()
            .any(|b| b.floats == 2048 && b.params.len() == 1)
    );
    let covered: usize = buckets.iter().map(|b| b.params.len()).sum();
    assert_eq!(covered, params);
}
