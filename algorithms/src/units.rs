//! Tokens grouped into units — sequences (rows), responses (row, turn) — and per-unit sums and
//! means over the flat `[n]` token layout the losses use. One mechanism for GRPO's
//! per-sequence mean, GSPO's per-response ratio and DPO's per-response log-probs.

use std::collections::BTreeMap;

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

/// The unit of each token as a local id `0..U` (in order of first appearance), and each
/// unit's token count.
#[derive(Debug, Clone)]
pub(crate) struct Units<K> {
    /// Local id of each key.
    local: BTreeMap<K, i64>,
    /// `[n]`: the local id of each token.
    ids: Tensor<1, Int>,
    /// `[U]`: tokens per unit.
    lengths: Tensor<1>,
}

impl<K: Ord + Clone> Units<K> {
    /// The units of tokens whose keys are `keys` (one per token).
    pub(crate) fn new(keys: &[K], device: &Device) -> Self {
        let mut local: BTreeMap<K, i64> = BTreeMap::new();
        let ids: Vec<i64> = keys
            .iter()
            .map(|k| {
                let next = local.len() as i64;
                *local.entry(k.clone()).or_insert(next)
            })
            .collect();
        let mut lengths = vec![0.0f32; local.len()];
        for &id in &ids {
            lengths[id as usize] += 1.0;
        }
        let count = lengths.len();
        Self {
            local,
            ids: Tensor::from_data(TensorData::new(ids, [keys.len()]), device),
            lengths: Tensor::from_data(TensorData::new(lengths, [count]), device),
        }
    }

    /// The local id of the unit with key `key`, if it has tokens.
    pub(crate) fn id(&self, key: &K) -> Option<i64> {
        self.local.get(key).copied()
    }

    /// `[n]` → `[U]`: the sum of each unit's values (differentiable).
    pub(crate) fn sums(&self, values: Tensor<1>) -> Tensor<1> {
        Tensor::<1>::zeros(self.lengths.shape(), &self.lengths.device()).select_assign(
            0,
            self.ids.clone(),
            values,
            IndexingUpdateOp::Add,
        )
    }

    /// `[n]` → `[U]`: the mean of each unit's values.
    pub(crate) fn means(&self, values: Tensor<1>) -> Tensor<1> {
        self.sums(values) / self.lengths.clone()
    }

    /// `[U]` → `[n]`: each token gets its unit's value.
    pub(crate) fn broadcast(&self, per_unit: Tensor<1>) -> Tensor<1> {
        per_unit.select(0, self.ids.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpo::tests::{tensor, values};

    #[test]
    fn sums_means_and_broadcast_follow_first_appearance() {
        let device = Device::flex();
        let units = Units::new(&[7, 3, 7, 7, 3], &device);
        assert_eq!(
            (units.id(&7), units.id(&3), units.id(&1)),
            (Some(0), Some(1), None)
        );
        let x = tensor(&[1.0, 2.0, 3.0, 5.0, 4.0], &device);
        assert_eq!(values(units.sums(x.clone())), vec![9.0, 6.0]);
        assert_eq!(values(units.means(x)), vec![3.0, 3.0]);
        assert_eq!(
            values(units.broadcast(tensor(&[1.0, 2.0], &device))),
            vec![1.0, 2.0, 1.0, 1.0, 2.0]
        );
    }
}
