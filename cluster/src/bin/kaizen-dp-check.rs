//! One data-parallel learner step against the single-process step on the same global batch.
//! Run under MPI: `mpirun -n N kaizen-dp-check`. Every rank steps its share of the
//! micro-batches with gradients summed over MPI; rank 0 also steps a single-process learner and
//! compares. Prints one JSON line (rank 0) and exits non-zero when
//! - the ranks' weights differ from each other (they must be bit-identical), or
//! - the data-parallel weights differ from the single-process ones by more than 1e-6 relative
//!   (`‖w_dp − w_single‖₂ / ‖w_single‖₂`, after each of two steps), or the losses by more than
//!   1e-5 relative.

use std::process::ExitCode;

use burn::tensor::Device;
use kaizen_cluster::MpiCollective;
use kaizen_core::{FinishReason, Outcome, Segment, Trajectory, WeightsVersion};
use kaizen_learner::{
    AdamW, AdamWConfig, Collective, Learner, LearnerConfig, ObjectiveConfig, Schedule,
    SchedulerType,
};
use kaizen_model::{Llama, LlamaConfig};

/// 8 groups of 4 one-turn episodes with different lengths and rewards.
fn batch() -> Vec<Trajectory> {
    let mut out = Vec::new();
    for group in 0..8u64 {
        for sample in 0..4u64 {
            let id = group * 4 + sample;
            let len = 2 + ((group * 7 + sample * 3) % 9) as usize;
            let completion: Vec<u32> = (0..len)
                .map(|i| ((id * 5 + i as u64) % 60) as u32 + 4)
                .collect();
            out.push(Trajectory {
                id,
                env: "t".into(),
                seed: group,
                group_id: group,
                segments: vec![Segment {
                    agent: "a".into(),
                    thread: 0,
                    prompt_tokens: vec![1, 2, 3, group as u32 + 4],
                    behavior_logprobs: vec![-1.5; completion.len()],
                    completion_tokens: completion,
                    trainable: true,
                    temperature: 1.0,
                    weights_version: WeightsVersion(0),
                    finish_reason: FinishReason::Eos,
                    self_certainty: None,
                }],
                outcome: Outcome::single("a", vec![((id * 13) % 5) as f32 / 4.0]),
            });
        }
    }
    out
}

fn learner() -> Result<Learner, kaizen_learner::Error> {
    let mut config = LlamaConfig::tiny(64);
    config.hidden_size = 32;
    config.intermediate_size = 64;
    config.num_hidden_layers = 2;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.initializer_range = 0.2;
    let model = Llama::init(&config, &Device::default().autodiff(), 7)?;
    Ok(Learner::with_objective(
        model,
        AdamW::new(AdamWConfig::default()),
        Schedule {
            lr: 1e-2,
            warmup_steps: 0,
            total_steps: 10,
            kind: SchedulerType::Constant,
        },
        LearnerConfig {
            gradient_accumulation_steps: 2,
            ..LearnerConfig::default()
        },
        ObjectiveConfig::default(),
    ))
}

fn weights(l: &Learner) -> Vec<f32> {
    l.policy()
        .to_named()
        .into_iter()
        .flat_map(|(_, t)| t.data)
        .collect()
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let mpi = MpiCollective::init()?;
    let (rank, world) = (mpi.rank(), mpi.world_size());
    let batch = batch();
    let mut dp = learner()?;
    dp.set_collective(Box::new(mpi));
    let mut ok = true;
    // Two steps: the second starts from the first's (all-reduced) update and moments.
    let mut dp_loss = Vec::new();
    let mut dp_weights = Vec::new();
    for _ in 0..2 {
        dp_loss.push(dp.rl_step(&batch, WeightsVersion(0))?["loss"]);
        dp_weights.push(weights(&dp));
    }
    let mine = weights(&dp);
    // Every rank must hold the same weights, bit for bit.
    let bits: Vec<u8> = mine.iter().flat_map(|x| x.to_le_bytes()).collect();
    let digest = crc32c::crc32c(&bits).to_le_bytes();
    let all = dp.collective().all_gather_bytes(&digest)?;
    let identical = all.iter().all(|d| d[..] == digest[..]);
    ok &= identical;
    if rank == 0 {
        let mut single = learner()?;
        let mut single_loss = Vec::new();
        let mut rel = Vec::new();
        let mut max_abs = 0.0f32;
        for after_step in &dp_weights {
            single_loss.push(single.rl_step(&batch, WeightsVersion(0))?["loss"]);
            let reference = weights(&single);
            let (mut diff, mut norm) = (0.0f64, 0.0f64);
            for (a, b) in after_step.iter().zip(&reference) {
                diff += f64::from(a - b).powi(2);
                norm += f64::from(*b).powi(2);
                max_abs = max_abs.max((a - b).abs());
            }
            rel.push((diff / norm.max(f64::MIN_POSITIVE)).sqrt());
        }
        let max_rel = rel.iter().copied().fold(0.0f64, f64::max);
        let loss_rel = dp_loss
            .iter()
            .zip(&single_loss)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-6))
            .fold(0.0f64, f64::max);
        let changed = mine.iter().zip(&weights(&learner()?)).any(|(a, b)| a != b);
        ok &= max_rel <= 1e-6 && loss_rel <= 1e-5 && changed;
        println!(
            "{{\"world\":{world},\"ranks_identical\":{identical},\"max_rel_weight_diff\":{max_rel:e},\
             \"rel_weight_diff_per_step\":{rel:?},\"max_abs_weight_diff\":{max_abs:e},\
             \"loss_dp\":{:?},\"loss_single\":{:?},\"max_rel_loss_diff\":{loss_rel:e},\"trained\":{changed},\"ok\":{ok}}}",
            dp_loss, single_loss
        );
    }
    Ok(ok)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kaizen-dp-check: {e}");
            ExitCode::FAILURE
        }
    }
}
