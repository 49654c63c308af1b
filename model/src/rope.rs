//! Rotary position embeddings.

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};

/// Rotary position embedding tables (RoFormer, Su et al. 2021, <https://arxiv.org/abs/2104.09864>),
/// in the Hugging Face Llama "rotate half" convention:
///
/// `θ_i = base^(-2i/d)`, `angle(p, i) = p · θ_i` for `i < d/2`;
/// `rope(x)_p = x · cos_p + rotate_half(x) · sin_p`, where `cos_p = [cos angle(p, ·), cos angle(p, ·)]`
/// (the `d/2` angles repeated) and `rotate_half([x₁, x₂]) = [-x₂, x₁]`.
///
/// The tables live on the host (`[max_positions, d]` each) and the rows a forward pass needs
/// are uploaded per call, so rows of one batch can sit at different positions (left padding,
/// KV-cache decoding).
#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: usize,
    max_positions: usize,
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
}

impl Rope {
    /// Builds the tables. Angles are computed as HF does (θ in f32, `p · θ` in f32) so that
    /// logits match transformers' to float precision.
    pub fn new(head_dim: usize, max_positions: usize, base: f64) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| (1.0 / base.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        let mut cos = Vec::with_capacity(max_positions * head_dim);
        let mut sin = Vec::with_capacity(max_positions * head_dim);
        for p in 0..max_positions {
            for _ in 0..2 {
                for &f in &inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        Self {
            head_dim,
            max_positions,
            cos: Arc::new(cos),
            sin: Arc::new(sin),
        }
    }

    /// The number of positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The whole `cos` and `sin` tables, each `[max_positions, head_dim]` row-major, on the host
    /// (for a device that keeps its own copy: the GPU forward pass).
    pub fn host_tables(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    /// The `cos` and `sin` rows (`[head_dim]` each) of position `p`, on the host.
    ///
    /// # Panics
    /// If `p >= max_positions` (callers check lengths first).
    pub(crate) fn row(&self, p: usize) -> (&[f32], &[f32]) {
        assert!(p < self.max_positions, "position {p} beyond the RoPE table");
        let d = self.head_dim;
        (&self.cos[p * d..(p + 1) * d], &self.sin[p * d..(p + 1) * d])
    }

    /// The cos/sin rows for the given positions, ready to broadcast over heads.
    ///
    /// # Shapes
    /// - `positions`: `batch × seq` positions, row-major.
    /// - returns `(cos, sin)`, each `[batch, 1, seq, head_dim]`.
    ///
    /// # Panics
    /// If a position is `>= max_positions` (callers check lengths first) or the slice length is
    /// not `batch × seq`.
    pub fn tables(
        &self,
        positions: &[usize],
        batch: usize,
        seq: usize,
        device: &Device,
    ) -> (Tensor<4>, Tensor<4>) {
        assert_eq!(
            positions.len(),
            batch * seq,
            "Rope::tables: positions length"
        );
        let d = self.head_dim;
        let mut cos = Vec::with_capacity(positions.len() * d);
        let mut sin = Vec::with_capacity(positions.len() * d);
        for &p in positions {
            assert!(p < self.max_positions, "position {p} beyond the RoPE table");
            cos.extend_from_slice(&self.cos[p * d..(p + 1) * d]);
            sin.extend_from_slice(&self.sin[p * d..(p + 1) * d]);
        }
        let shape = [batch, 1, seq, d];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }

    /// Applies the rotation.
    ///
    /// # Shapes
    /// - `x`: `[batch, heads, seq, head_dim]`; `cos`, `sin`: `[batch, 1, seq, head_dim]`.
    pub fn apply(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        let [b, h, s, d] = x.dims();
        let half = d / 2;
        let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
        let x2 = x.clone().slice([0..b, 0..h, 0..s, half..d]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos.clone() + rotated * sin.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host tables (what the GPU pass uploads): row `p` holds `cos`/`sin` of `p · θ_i`,
    /// `θ_i = base^(−2i/d)`, each half of the row repeating the `d/2` angles.
    #[test]
    fn host_tables_repeat_the_half_angles() {
        let rope = Rope::new(4, 3, 10_000.0);
        let (cos, sin) = rope.host_tables();
        assert_eq!((cos.len(), sin.len()), (12, 12));
        // Position 0: no rotation.
        assert_eq!(&cos[..4], &[1.0; 4]);
        assert_eq!(&sin[..4], &[0.0; 4]);
        // Position 2: angles 2·θ_0 = 2 and 2·θ_1 = 2/100, repeated in each half.
        let row = &sin[8..12];
        assert_eq!((row[0], row[1]), (row[2], row[3]));
        assert!((row[0] - 2.0f32.sin()).abs() < 1e-7);
        assert!((row[1] - 0.02f32.sin()).abs() < 1e-7);
        assert_eq!(rope.row(2).1, row);
    }
}
