//! The learner driven through `kaizen_learner::TrainBackend` by the GPU training pass
//! ([`PassBackend`]) on [`HostOps`] — the CPU mirror of its CUDA kernels — takes the step the
//! CPU learner takes: the same loss, gradient norm and weights (within float rounding), over
//! two steps (AdamW's moments included), with gradient accumulation, a KL reference and SFT.
//! No GPU needed: this checks the wiring (log-probs out, `∂loss/∂logp` in, AdamW on the
//! backend, weights back into the learner's model).

#[path = "../../learner/tests/common/mod.rs"]
mod common;

use common::{batch, learner_for, max_diff, weights};
use kaizen_core::WeightsVersion;
use kaizen_gpu::train::{HostOps, PassBackend};
use kaizen_learner::{Error, Learner, LearnerConfig, ObjectiveConfig, Sample, build_samples};

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
