//! Checkpoints: the policy (as a Hugging Face directory), optimizer moments and the trainer's
//! counters, written atomically; the last `keep` are kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kaizen_model::{HostTensor, Policy, read_safetensors, write_safetensors};
use serde::{Deserialize, Serialize};

use crate::Error;

/// An optimizer's state as saved: its step count and named moments (`AdamW::state`).
pub type OptimizerState = (u64, Vec<(String, HostTensor)>);

/// A saved optimizer's step count and moments by name, as read back.
pub type SavedMoments = (u64, HashMap<String, HostTensor>);

/// Everything besides weights and moments that a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// RL steps completed.
    pub step: u64,
    /// Supervised warm-start steps completed.
    pub sft_steps: u64,
    /// Offline preference-stage steps completed (`[preference]`).
    #[serde(default)]
    pub preference_steps: u64,
    /// Optimizer steps of the current phase (its AdamW step count).
    pub optimizer_steps: u64,
    /// The newest published weights version.
    pub weights_version: u64,
    /// Next environment seed to hand out (the data position).
    pub next_seed: u64,
    /// Next group id.
    pub next_group: u64,
    /// Next episode (trajectory) id.
    pub next_task: u64,
    /// Episode accounting so far.
    #[serde(default)]
    pub episodes: crate::trainer::EpisodeCounts,
}

/// Where a run's checkpoints live: `<run_dir>/checkpoints/step-NNNNNN/`.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Writes a checkpoint for `state.step` and deletes all but the newest `keep`.
///
/// The directory is assembled under a temporary name and renamed into place, so a kill during
/// the write never leaves a checkpoint that loads wrong (a half-written one has the temporary
/// name and is ignored, then removed by the next save).
///
/// # Errors
/// [`Error::Io`] / model write errors naming the file.
pub fn save(
    run_dir: &Path,
    policy: &Policy,
    optimizer: OptimizerState,
    critic: Option<(&Policy, &OptimizerState)>,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf, Error> {
    let root = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let name = format!("step-{:06}", state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    policy.save_dir(&tmp.join("policy"))?;
    write_optimizer(&tmp.join("optimizer.safetensors"), &optimizer)?;
    if let Some((critic, optimizer)) = critic {
        critic.save_dir(&tmp.join(CRITIC_DIR))?;
        write_optimizer(&tmp.join(CRITIC_OPTIMIZER), optimizer)?;
    }
    let state_path = tmp.join("trainer_state.json");
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::Checkpoint {
        path: tmp.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&state_path, text).map_err(|e| Error::io(&state_path, e))?;
    let target = root.join(&name);
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
    }
    std::fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
    let mut all = list(run_dir)?;
    while all.len() > keep.max(1) {
        let (_, old) = all.remove(0);
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    // Leftovers of interrupted saves.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let file = entry.file_name();
            if file.to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(target)
}

/// A checkpoint's separate PPO critic (a model directory) and its optimizer moments.
const CRITIC_DIR: &str = "critic";
const CRITIC_OPTIMIZER: &str = "critic_optimizer.safetensors";

/// Writes an optimizer's state (`Learner::optimizer_state`: the step count and moments named
/// `exp_avg.<path>` / `exp_avg_sq.<path>`) as a safetensors file with the step count in its
/// metadata, atomically: a checkpoint's `optimizer.safetensors`.
///
/// # Errors
/// [`Error::Model`] naming the file when it cannot be written.
pub fn write_optimizer(path: &Path, optimizer: &OptimizerState) -> Result<(), Error> {
    let mut metadata = HashMap::new();
    metadata.insert("step".to_string(), optimizer.0.to_string());
    write_safetensors(path, &optimizer.1, Some(metadata))?;
    Ok(())
}

/// The separate critic of a checkpoint, if it has one: its model directory and its optimizer's
/// step count and moments.
///
/// # Errors
/// [`Error::Checkpoint`] / [`Error::Io`] naming the file, when the critic is there but its
/// optimizer state is not readable.
pub fn load_critic(dir: &Path) -> Result<Option<(PathBuf, SavedMoments)>, Error> {
    let model = dir.join(CRITIC_DIR);
    if !model.is_dir() {
        return Ok(None);
    }
    Ok(Some((model, read_optimizer(&dir.join(CRITIC_OPTIMIZER))?)))
}

/// Reads an optimizer's state written by [`write_optimizer`]: the step count and the moments
/// by name (for `AdamW::restore`).
///
/// # Errors
/// [`Error::Io`] / [`Error::Model`] naming the file; [`Error::Checkpoint`] when it has no
/// `step` metadata.
pub fn read_optimizer(path: &Path) -> Result<SavedMoments, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let step = safetensors_metadata_step(&bytes).ok_or_else(|| Error::Checkpoint {
        path: path.to_path_buf(),
        message: "missing `step` metadata".into(),
    })?;
    Ok((step, read_safetensors(path)?))
}

/// Complete checkpoints of a run, oldest first, with their step.
///
/// # Errors
/// [`Error::Io`] if the directory exists but cannot be read.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
    let root = checkpoints_dir(run_dir);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&root, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint of a run.
///
/// # Errors
/// [`Error::Checkpoint`] when the run has none.
pub fn latest(run_dir: &Path) -> Result<PathBuf, Error> {
    list(run_dir)?
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| Error::Checkpoint {
            path: checkpoints_dir(run_dir),
            message: "no checkpoint to resume from".into(),
        })
}

/// Reads a checkpoint's trainer state and optimizer moments (the policy loads with
/// `Policy::load_dir(dir/policy)`).
///
/// # Errors
/// [`Error::Checkpoint`] / [`Error::Io`] naming the file.
pub fn load_state(dir: &Path) -> Result<(TrainerState, u64, HashMap<String, HostTensor>), Error> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let (st, tensors) = read_optimizer(&dir.join("optimizer.safetensors"))?;
    Ok((state, st, tensors))
}

fn safetensors_metadata_step(bytes: &[u8]) -> Option<u64> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).ok()?;
    meta.metadata().as_ref()?.get("step")?.parse().ok()
}
