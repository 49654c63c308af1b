//! How the training pass packs a [`ScoreBatch`]: each row in full (no shared prompt prefixes),
//! rows back to back without padding, each cut at its last scored token's predictor (later
//! tokens cannot change a scored log-prob).

use kaizen_model::{LlamaConfig, ScoreBatch};

use crate::GpuError;

/// The packed tokens of a batch and where its scored tokens are.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RowPacking {
    /// Token ids, `[N]`.
    pub tokens: Vec<u32>,
    /// Position of each token in its row (the rotary position), `[N]`.
    pub positions: Vec<u32>,
    /// First packed token of each token's row, `[N]`: token `t` attends to
    /// `key_start[t]..=t`.
    pub key_start: Vec<u32>,
    /// One past the last packed token of each token's row, `[N]`.
    pub row_end: Vec<u32>,
    /// Packed index of each scored token's predictor, in [`ScoreBatch::scored_positions`]'
    /// (row-major) order, `[n]`.
    pub predictors: Vec<u32>,
    /// Each scored token's id, `[n]`.
    pub targets: Vec<u32>,
    /// The longest packed row.
    pub longest: usize,
}

impl RowPacking {
    /// Packs `batch` for `config`'s model.
    ///
    /// # Errors
    /// [`GpuError::Input`] for masks that do not match their rows, a scored first token, a
    /// token outside the vocabulary, a row longer than `max_position_embeddings`, or more
    /// tokens than a `u32` indexes.
    pub(super) fn new(batch: &ScoreBatch, config: &LlamaConfig) -> Result<Self, GpuError> {
        if batch.sequences.len() != batch.loss_masks.len() {
            return Err(GpuError::Input(format!(
                "{} sequences but {} loss masks",
                batch.sequences.len(),
                batch.loss_masks.len()
            )));
        }
        let mut packing = Self {
            tokens: Vec::new(),
            positions: Vec::new(),
            key_start: Vec::new(),
            row_end: Vec::new(),
            predictors: Vec::new(),
            targets: Vec::new(),
            longest: 0,
        };
        for (b, (seq, mask)) in batch.sequences.iter().zip(&batch.loss_masks).enumerate() {
            if seq.len() != mask.len() {
                return Err(GpuError::Input(format!(
                    "row {b}: {} tokens but {} loss-mask flags",
                    seq.len(),
                    mask.len()
                )));
            }
            if mask.first() == Some(&true) {
                return Err(GpuError::Input(format!(
                    "row {b}: the first token cannot be scored (it has no prefix)"
                )));
            }
            if let Some(bad) = seq.iter().find(|&&t| t as usize >= config.vocab_size) {
                return Err(GpuError::Input(format!(
                    "row {b}: token id {bad} is outside the vocabulary (vocab_size {})",
                    config.vocab_size
                )));
            }
            if seq.len() > config.max_position_embeddings {
                return Err(GpuError::Input(format!(
                    "row {b}: {} tokens exceed max_position_embeddings {}",
                    seq.len(),
                    config.max_position_embeddings
                )));
            }
            let Some(last) = mask.iter().rposition(|&m| m) else {
                continue;
            };
            let start = packing.tokens.len();
            let end = u32::try_from(start + last)
                .map_err(|_| GpuError::Input("more packed tokens than u32 indexes".into()))?;
            for (p, &t) in seq[..last].iter().enumerate() {
                packing.tokens.push(t);
                packing.positions.push(p as u32);
                packing.key_start.push(start as u32);
                packing.row_end.push(end);
            }
            packing.longest = packing.longest.max(last);
            for (t, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
                packing.predictors.push((start + t - 1) as u32);
                packing.targets.push(seq[t]);
            }
        }
        Ok(packing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_cut_at_their_last_predictor_and_scored_in_row_major_order() {
        let mut config = LlamaConfig::tiny(50);
        config.max_position_embeddings = 8;
        let batch = ScoreBatch {
            sequences: vec![vec![1, 2, 3, 4, 5], vec![6, 7, 8], vec![9, 10]],
            loss_masks: vec![
                vec![false, true, false, true, false],
                vec![false, false, false],
                vec![false, true],
            ],
        };
        let p = RowPacking::new(&batch, &config).unwrap();
        assert_eq!(p.tokens, [1, 2, 3, 9]);
        assert_eq!(p.positions, [0, 1, 2, 0]);
        assert_eq!(p.key_start, [0, 0, 0, 3]);
        assert_eq!(p.row_end, [3, 3, 3, 4]);
        assert_eq!(p.predictors, [0, 2, 3]);
        assert_eq!(p.targets, [2, 4, 10]);
        assert_eq!(p.longest, 3);
        let scored: Vec<u32> = batch
            .scored_positions()
            .iter()
            .map(|&(b, t)| batch.sequences[b][t])
            .collect();
        assert_eq!(scored, p.targets);

        let long = ScoreBatch {
            sequences: vec![vec![1; 9]],
            loss_masks: vec![vec![false; 9]],
        };
        let e = RowPacking::new(&long, &config).unwrap_err();
        assert!(e.to_string().contains("max_position_embeddings 8"), "{e}");
    }
}
