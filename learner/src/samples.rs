//! From trajectories to training sequences: one sequence per conversation thread, loss on the
//! trainable model tokens only, each token carrying its turn's advantage.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use kaizen_core::{Trajectory, WeightsVersion};

/// One training sequence: a conversation thread of one trajectory, exactly as the model saw
/// and produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Thread tokens: `prompt ++ completion` of each of its segments, in order.
    pub tokens: Vec<u32>,
    /// `true` on completion tokens of trainable segments (an EOS the model sampled included).
    pub loss_mask: Vec<bool>,
    /// Advantage of each token (that of its segment's turn; 0 where the mask is false).
    pub advantages: Vec<f32>,
    /// Behaviour log-prob of each token (0 where the mask is false).
    pub behavior_logprobs: Vec<f32>,
    /// Index of each token's segment among the thread's trained segments (its turn, 0-based;
    /// 0 where the mask is false), for per-turn loss weights (`loss.kl_turn_weights`).
    pub turns: Vec<u32>,
    /// The sampling temperature of the trained segments (the learner scores at it).
    pub temperature: f32,
    /// Index of the trajectory in the step's list.
    pub trajectory: usize,
    /// The trajectory's segment index of each trained turn (`turns` indexes it).
    pub trained_segments: Vec<usize>,
    /// Oldest weights version among the trained segments.
    pub version: WeightsVersion,
}

impl Sample {
    /// Number of trained tokens.
    pub fn trained_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }

    /// Whether every trained token has advantage exactly 0 (no policy-gradient signal).
    pub fn zero_signal(&self) -> bool {
        self.advantages.iter().all(|&a| a == 0.0)
    }

    /// Sets each trained token's advantage to its segment's: `per_segment[s]` for segment `s`
    /// of this sample's trajectory (0 for a segment without an entry).
    pub fn assign_advantages(&mut self, per_segment: &[f32]) {
        for i in 0..self.tokens.len() {
            self.advantages[i] = if self.loss_mask[i] {
                let segment = self.trained_segments[self.turns[i] as usize];
                per_segment.get(segment).copied().unwrap_or(0.0)
            } else {
                0.0
            };
        }
    }

    /// The trained token ids (the loss mask applied), in order.
    pub fn trained_ids(&self) -> Vec<u32> {
        self.tokens
            .iter()
            .zip(&self.loss_mask)
            .filter(|(_, m)| **m)
            .map(|(t, _)| *t)
            .collect()
    }

    /// Trained tokens' values of `per_token` (advantages, behaviour log-probs), in order.
    pub fn trained<'a>(&'a self, per_token: &'a [f32]) -> impl Iterator<Item = f32> + 'a {
        per_token
            .iter()
            .zip(&self.loss_mask)
            .filter(|(_, m)| **m)
            .map(|(v, _)| *v)
    }
}

/// Why a thread did not become a sample, or became several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SkippedThreads {
    /// Threads without trainable segments (e.g. judging turns).
    pub untrained: usize,
    /// Threads whose trained segments were sampled at different temperatures; not skipped,
    /// but split into one sample per temperature (see [`build_samples`]).
    pub split_by_temperature: usize,
}

/// Which segments of `trajectories` have at least one token in the loss of `samples`:
/// `mask[t][s]` for segment `s` of trajectory `t`. A segment whose thread was skipped, whose
/// sample was dropped, or whose completion is empty is not trained; advantages are compared
/// over trained segments only (`kaizen_algorithms::segment_advantages`).
pub fn trained_mask(trajectories: &[Trajectory], samples: &[Sample]) -> Vec<Vec<bool>> {
    let mut mask: Vec<Vec<bool>> = trajectories
        .iter()
        .map(|t| vec![false; t.segments.len()])
        .collect();
    for sample in samples {
        for (turn, &m) in sample.turns.iter().zip(&sample.loss_mask) {
            if m {
                mask[sample.trajectory][sample.trained_segments[*turn as usize]] = true;
            }
        }
    }
    mask
}

/// Builds the training sequences of `trajectories`, with every advantage 0: set them with
/// [`Sample::assign_advantages`] once they are known (they depend on which samples are kept,
/// see [`trained_mask`]).
///
/// Each conversation thread becomes one sequence (one forward pass), whatever number of turns it
/// has; its loss mask covers the completion tokens of its trainable segments, whose tokens take
/// their segment's advantage. The prompt tokens of later turns (rendered environment messages)
/// are context only.
///
/// A thread whose trainable segments were sampled at different temperatures (e.g.
/// `self_correct`'s `temperatures = [0.3, 0.6]`) becomes one sequence per temperature, each
/// with the whole thread as context and the loss on that temperature's segments only, since a
/// forward pass scores at one temperature: the thread then costs one forward pass per
/// temperature. `turns` and `trained_segments` stay the thread's in every part, so per-turn
/// weights and rewards still see the turn's place in the conversation.
pub fn build_samples(trajectories: &[Trajectory]) -> (Vec<Sample>, SkippedThreads) {
    let mut samples = Vec::new();
    let mut skipped = SkippedThreads::default();
    for (t, trajectory) in trajectories.iter().enumerate() {
        let mut threads: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (s, segment) in trajectory.segments.iter().enumerate() {
            threads.entry(segment.thread).or_default().push(s);
        }
        for segments in threads.values() {
            let trained: Vec<usize> = segments
                .iter()
                .copied()
                .filter(|&s| trajectory.segments[s].trainable)
                .collect();
            if trained.is_empty() {
                skipped.untrained += 1;
                continue;
            }
            // The trained segments' temperatures, in order of first appearance.
            let mut temperatures: Vec<f32> = Vec::new();
            for &s in &trained {
                let temperature = trajectory.segments[s].temperature;
                if !temperatures
                    .iter()
                    .any(|x| x.to_bits() == temperature.to_bits())
                {
                    temperatures.push(temperature);
                }
            }
            if temperatures.len() > 1 {
                skipped.split_by_temperature += 1;
            }
            for temperature in temperatures {
                samples.push(thread_sample(
                    trajectory,
                    t,
                    segments,
                    &trained,
                    temperature,
                ));
            }
        }
    }
    (samples, skipped)
}

/// The sequence of one thread (`segments`, in order) of trajectory `t`, with the loss on the
/// completions of its `trained` segments sampled at `temperature`.
fn thread_sample(
    trajectory: &Trajectory,
    t: usize,
    segments: &[usize],
    trained: &[usize],
    temperature: f32,
) -> Sample {
    let at = |s: usize| trajectory.segments[s].temperature.to_bits() == temperature.to_bits();
    let mut sample = Sample {
        tokens: Vec::new(),
        loss_mask: Vec::new(),
        advantages: Vec::new(),
        behavior_logprobs: Vec::new(),
        turns: Vec::new(),
        temperature,
        trajectory: t,
        trained_segments: trained.to_vec(),
        version: trained
            .iter()
            .filter(|&&s| at(s))
            .map(|&s| trajectory.segments[s].weights_version)
            .min()
            .unwrap_or_default(),
    };
    let mut turn = 0u32;
    for &s in segments {
        let seg = &trajectory.segments[s];
        let n_prompt = seg.prompt_tokens.len();
        sample.turns.extend(std::iter::repeat_n(0, n_prompt));
        sample.tokens.extend_from_slice(&seg.prompt_tokens);
        sample
            .loss_mask
            .extend(std::iter::repeat_n(false, n_prompt));
        sample.advantages.extend(std::iter::repeat_n(0.0, n_prompt));
        sample
            .behavior_logprobs
            .extend(std::iter::repeat_n(0.0, n_prompt));
        sample.tokens.extend_from_slice(&seg.completion_tokens);
        let trained_here = seg.trainable && at(s);
        for i in 0..seg.completion_tokens.len() {
            sample.loss_mask.push(trained_here);
            sample.advantages.push(0.0);
            sample.behavior_logprobs.push(if trained_here {
                seg.behavior_logprobs.get(i).copied().unwrap_or(0.0)
            } else {
                0.0
            });
            sample.turns.push(if trained_here { turn } else { 0 });
        }
        if seg.trainable {
            turn += 1;
        }
    }
    // The first token has no prefix to be predicted from.
    if sample.loss_mask.first() == Some(&true) {
        sample.loss_mask[0] = false;
    }
    sample
}

impl Sample {
    /// The context this sample shares with the other samples of its GRPO group
    /// ([`kaizen_model::shared_prefix`]: the rendered prompt, less its last token), which
    /// `kaizen_model::score_with` computes once per micro-batch; empty without trained tokens.
    pub fn shared_prefix(&self) -> &[u32] {
        kaizen_model::shared_prefix(&self.tokens, &self.loss_mask).unwrap_or_default()
    }
}

/// Splits samples (owned or borrowed) into at most `parts` micro-batches of similar token counts. Returns sample
/// indices per micro-batch.
///
/// Samples that share a prefix ([`Sample::shared_prefix`], e.g. a GRPO group) are laid out
/// next to each other (clusters in order of first appearance, longest first inside one) and the
/// micro-batches are contiguous runs of that order, so a group lands in one micro-batch (or, at
/// a cut, two) and its prompt is computed once there; similar lengths stay together (less
/// padding).
pub fn micro_batches<S: Borrow<Sample>>(samples: &[S], parts: usize) -> Vec<Vec<usize>> {
    let samples: Vec<&Sample> = samples.iter().map(Borrow::borrow).collect();
    let parts = parts.max(1).min(samples.len().max(1));
    let mut cluster_of: std::collections::HashMap<&[u32], usize> = Default::default();
    let clusters: Vec<usize> = samples
        .iter()
        .map(|s| {
            let next = cluster_of.len();
            *cluster_of.entry(s.shared_prefix()).or_insert(next)
        })
        .collect();
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| (clusters[i], std::cmp::Reverse(samples[i].tokens.len())));
    let total: usize = samples.iter().map(|s| s.tokens.len()).sum();
    let target = total.div_ceil(parts);
    let mut out: Vec<Vec<usize>> = vec![Vec::new()];
    let mut filled = 0;
    for i in order {
        let len = samples[i].tokens.len();
        if filled > 0 && filled + len > target && out.len() < parts {
            out.push(Vec::new());
            filled = 0;
        }
        out.last_mut().expect("never empty").push(i);
        filled += len;
    }
    out.retain(|b| !b.is_empty());
    out
}

/// The samples of micro-batch `part` (indices into `samples`) grouped by sampling temperature,
/// one forward pass each, in order of temperature (bitwise) and of `part` within a group.
pub(crate) fn by_temperature<S: Borrow<Sample>>(part: &[usize], samples: &[S]) -> Vec<Vec<usize>> {
    let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &i in part {
        groups
            .entry(samples[i].borrow().temperature.to_bits())
            .or_default()
            .push(i);
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use kaizen_core::{FinishReason, Outcome, Segment};

    use super::*;

    fn segment(
        thread: u32,
        prompt: &[u32],
        completion: &[u32],
        trainable: bool,
        v: u64,
    ) -> Segment {
        Segment {
            agent: "solver".into(),
            thread,
            prompt_tokens: prompt.to_vec(),
            completion_tokens: completion.to_vec(),
            behavior_logprobs: completion.iter().map(|&t| -(t as f32) / 10.0).collect(),
            trainable,
            temperature: 0.7,
            weights_version: WeightsVersion(v),
            finish_reason: FinishReason::Eos,
            self_certainty: None,
        }
    }

    #[test]
    fn a_two_turn_thread_is_one_sequence_with_per_turn_advantages() {
        let t = Trajectory {
            id: 0,
            env: "e".into(),
            seed: 0,
            group_id: 0,
            segments: vec![
                segment(0, &[1, 2, 3], &[4, 5], true, 3),
                segment(1, &[9, 9], &[8], false, 3),
                segment(0, &[6], &[7, 2], true, 4),
            ],
            outcome: Outcome::default(),
        };
        let (mut samples, skipped) = build_samples(std::slice::from_ref(&t));
        samples[0].assign_advantages(&[0.5, 9.0, -1.0]);
        assert_eq!(trained_mask(&[t], &samples), vec![vec![true, false, true]]);
        assert_eq!(
            skipped.untrained, 1,
            "the untrained judging thread is skipped"
        );
        assert_eq!(samples.len(), 1);
        let s = &samples[0];
        assert_eq!(s.tokens, vec![1, 2, 3, 4, 5, 6, 7, 2]);
        assert_eq!(
            s.loss_mask,
            vec![false, false, false, true, true, false, true, true]
        );
        assert_eq!(s.advantages, vec![0.0, 0.0, 0.0, 0.5, 0.5, 0.0, -1.0, -1.0]);
        assert_eq!(s.turns, vec![0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(
            s.trained(&s.behavior_logprobs).collect::<Vec<_>>(),
            vec![-0.4, -0.5, -0.7, -0.2]
        );
        assert_eq!(s.version, WeightsVersion(3));
        assert_eq!(s.trained_tokens(), 4);
        assert!(!s.zero_signal());
    }

    #[test]
    fn a_thread_sampled_at_two_temperatures_is_one_sequence_per_temperature() {
        let mut first = segment(0, &[1, 2, 3], &[4, 5], true, 3);
        first.temperature = 0.3;
        let t = Trajectory {
            id: 0,
            env: "e".into(),
            seed: 0,
            group_id: 0,
            segments: vec![first, segment(0, &[6], &[7, 2], true, 4)],
            outcome: Outcome::default(),
        };
        let (mut samples, skipped) = build_samples(std::slice::from_ref(&t));
        assert_eq!((skipped.untrained, skipped.split_by_temperature), (0, 1));
        assert_eq!(samples.len(), 2);
        for s in &mut samples {
            s.assign_advantages(&[0.5, -1.0]);
            // The whole thread is the context of both, and the turns keep their places.
            assert_eq!(s.tokens, vec![1, 2, 3, 4, 5, 6, 7, 2]);
            assert_eq!(s.trained_segments, vec![0, 1]);
        }
        let (cold, hot) = (&samples[0], &samples[1]);
        assert_eq!((cold.temperature, hot.temperature), (0.3, 0.7));
        assert_eq!(
            cold.loss_mask,
            vec![false, false, false, true, true, false, false, false]
        );
        assert_eq!(
            hot.loss_mask,
            vec![false, false, false, false, false, false, true, true]
        );
        assert_eq!(
            cold.advantages,
            vec![0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0]
        );
        assert_eq!(
            hot.advantages,
            vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0]
        );
        assert_eq!(hot.turns, vec![0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(
            hot.trained(&hot.behavior_logprobs).collect::<Vec<_>>(),
            vec![-0.7, -0.2]
        );
        assert_eq!(
            (cold.version, hot.version),
            (WeightsVersion(3), WeightsVersion(4))
        );
        assert_eq!(trained_mask(&[t], &samples), vec![vec![true, true]]);
    }

    #[test]
    fn micro_batches_cover_every_sample_once_and_balance_tokens() {
        let mk = |n: usize| Sample {
            tokens: vec![1; n],
            loss_mask: vec![true; n],
            advantages: vec![1.0; n],
            behavior_logprobs: vec![0.0; n],
            turns: vec![0; n],
            temperature: 1.0,
            trajectory: 0,
            trained_segments: vec![0],
            version: WeightsVersion(0),
        };
        let samples: Vec<Sample> = [10, 50, 20, 40, 30, 60].iter().map(|&n| mk(n)).collect();
        for parts in 1..=7 {
            let batches = micro_batches(&samples, parts);
            assert!(batches.len() <= parts.min(6));
            let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
            all.sort();
            assert_eq!(all, (0..6).collect::<Vec<_>>());
        }
        let three = micro_batches(&samples, 3);
        let sizes: Vec<usize> = three
            .iter()
            .map(|b| b.iter().map(|&i| samples[i].tokens.len()).sum())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 210);
        assert!(sizes.iter().all(|&s| s <= 110), "{sizes:?}");
    }

    #[test]
    fn micro_batches_keep_groups_together() {
        let mk = |prompt: u32, n: usize| {
            let mut tokens = vec![prompt; 6];
            tokens.extend(vec![1; n]);
            let mut loss_mask = vec![false; 6];
            loss_mask.extend(vec![true; n]);
            Sample {
                advantages: vec![1.0; tokens.len()],
                behavior_logprobs: vec![0.0; tokens.len()],
                turns: vec![0; tokens.len()],
                tokens,
                loss_mask,
                temperature: 1.0,
                trajectory: 0,
                trained_segments: vec![0],
                version: WeightsVersion(0),
            }
        };
        // Three groups of four, interleaved as trajectories may arrive.
        let samples: Vec<Sample> = (0..12).map(|i| mk(100 + (i % 3) as u32, 4 + i)).collect();
        assert_eq!(samples[0].shared_prefix(), &[100; 5]);
        let batches = micro_batches(&samples, 3);
        assert_eq!(batches.len(), 3);
        for batch in &batches {
            let prefixes: std::collections::BTreeSet<&[u32]> =
                batch.iter().map(|&i| samples[i].shared_prefix()).collect();
            assert_eq!(prefixes.len(), 1, "{batches:?}");
            assert_eq!(batch.len(), 4);
        }
    }
}
