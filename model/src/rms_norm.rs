//! Root-mean-square layer normalisation.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

/// RMSNorm (Zhang & Sennrich 2019, <https://arxiv.org/abs/1910.07467>):
///
/// `y = x / sqrt(mean(x²) + ε) · γ`, over the last axis.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// γ, `[d_model]`.
    pub weight: Param<Tensor<1>>,
    /// ε.
    pub eps: f64,
}

impl RmsNorm {
    /// Wraps an existing γ.
    pub fn new(weight: Tensor<1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    /// # Shapes
    /// - `x`: `[..., d_model]`, returns the same shape.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mean_square = x.clone().square().mean_dim(D - 1);
        let inv_rms = (mean_square + self.eps).sqrt().recip();
        let gamma = self.weight.val();
        let mut shape = [1; D];
        shape[D - 1] = gamma.dims()[0];
        x * inv_rms * gamma.reshape(shape)
    }
}
