//! How actors sample: the job's defaults (`[sampling]`) and the per-episode seed streams.

use kaizen_core::SamplingOverrides;
use kaizen_model::SamplingParams;
use serde::{Deserialize, Serialize};

/// Default sampling of an actor (TRL `GRPOConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Softmax temperature (0 = greedy). The learner scores at the same temperature.
    pub temperature: f32,
    /// Nucleus mass (1 = off).
    pub top_p: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Minimum probability relative to the most likely token (0 = off).
    pub min_p: f32,
    /// Most tokens generated per turn.
    pub max_completion_length: usize,
    /// Longest prompt (whole conversation thread so far, in tokens); a longer one ends the
    /// episode as a policy fault.
    pub max_prompt_length: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            max_completion_length: 256,
            max_prompt_length: 1024,
        }
    }
}

impl SamplingConfig {
    /// The parameters of one turn: these defaults, then `task` overrides, then the request's.
    pub fn resolve(
        &self,
        task: &SamplingOverrides,
        request: &SamplingOverrides,
        seed: u64,
    ) -> SamplingParams {
        let pick = |a: Option<f32>, b: Option<f32>, d: f32| b.or(a).unwrap_or(d);
        let mut stop = task.stop.clone();
        stop.extend(request.stop.iter().cloned());
        SamplingParams {
            temperature: pick(task.temperature, request.temperature, self.temperature),
            top_p: pick(task.top_p, request.top_p, self.top_p),
            top_k: request.top_k.or(task.top_k).unwrap_or(self.top_k),
            min_p: pick(task.min_p, request.min_p, self.min_p),
            max_new_tokens: request
                .max_new_tokens
                .or(task.max_new_tokens)
                .unwrap_or(self.max_completion_length),
            stop,
            seed,
            top_logprobs: None,
            // Texts become token sequences where a tokenizer is at hand (the responder).
            choices: Vec::new(),
        }
    }
}

/// A sub-seed of `seed` for `salt` (splitmix64 finalizer): decorrelated streams from one seed.
pub fn derive_seed(seed: u64, salt: u64) -> u64 {
    let mut z = seed
        .wrapping_add(salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
