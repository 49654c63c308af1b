//! The parameters a CPU training pass reads ([`ModelParams`]) and the host gradient buffers
//! its backward writes into ([`CpuGrads`]), in one fixed order.

use burn::module::ParamId;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use super::ModelParams;
use crate::cpu_forward::HostView;
use crate::llama::Llama;

impl ModelParams {
    /// The parameters of `model`, or `None` where the CPU training pass does not apply (a bias
    /// outside q/k/v or a value head without bias, a tensor that cannot be viewed).
    pub(super) fn of(model: &Llama) -> Option<Self> {
        Self::collect(model)
    }

    /// Every parameter's id and element count, in a fixed order (that of [`CpuGrads`]).
    pub(super) fn ids(&self) -> Vec<(ParamId, usize, Vec<usize>)> {
        let mut out = Vec::new();
        let mut push = |p: &(HostView, ParamId), shape: Vec<usize>| {
            out.push((p.1, p.0.data().len(), shape));
        };
        let hidden = self.norm.0.data().len();
        let vocab = self.embed.0.data().len() / hidden;
        push(&self.embed, vec![vocab, hidden]);
        for l in &self.layers {
            let rows = |p: &(HostView, ParamId), cols: usize| vec![p.0.data().len() / cols, cols];
            push(&l.input_norm, vec![hidden]);
            push(&l.q, rows(&l.q, hidden));
            push(&l.k, rows(&l.k, hidden));
            push(&l.v, rows(&l.v, hidden));
            if let Some(b) = &l.qkv_bias {
                for p in b {
                    push(p, vec![p.0.data().len()]);
                }
            }
            let attn_width = l.o.0.data().len() / hidden;
            push(&l.o, vec![hidden, attn_width]);
            push(&l.post_norm, vec![hidden]);
            push(&l.gate, rows(&l.gate, hidden));
            push(&l.up, rows(&l.up, hidden));
            let inter = l.down.0.data().len() / hidden;
            push(&l.down, vec![hidden, inter]);
        }
        push(&self.norm, vec![hidden]);
        if let Some(head) = &self.lm_head {
            push(head, vec![vocab, hidden]);
        }
        if let Some((weight, bias)) = &self.value_head {
            push(weight, vec![1, hidden]);
            push(bias, vec![1]);
        }
        out
    }
}

/// Host gradients of every parameter of a [`Llama`], summed over the scoring passes whose
/// backward wrote into them (gradient accumulation without tensor additions).
#[derive(Debug)]
pub struct CpuGrads {
    /// `(id, shape, values)` in the order of `ModelParams::ids`.
    pub(super) grads: Vec<(ParamId, Vec<usize>, Vec<f32>)>,
}

impl CpuGrads {
    /// Zero gradients for `model`'s parameters; `None` where
    /// [`CpuScorePass::applies`](super::CpuScorePass::applies) is false.
    pub fn new(model: &Llama) -> Option<Self> {
        let params = ModelParams::of(model)?;
        Some(Self {
            grads: params
                .ids()
                .into_iter()
                .map(|(id, n, shape)| (id, shape, vec![0.0; n]))
                .collect(),
        })
    }

    /// Each parameter's gradient buffer, in a fixed order (the same on every process that
    /// built these gradients for the same model): for summing across data-parallel ranks.
    pub fn buffers_mut(&mut self) -> impl Iterator<Item = &mut [f32]> {
        self.grads
            .iter_mut()
            .map(|(_, _, values)| values.as_mut_slice())
    }

    /// The gradients as burn's [`GradientsParams`] on `device` (the model's inner device),
    /// ready for the optimizer.
    pub fn into_params(self, device: &Device) -> GradientsParams {
        let mut params = GradientsParams::new();
        for (id, shape, values) in self.grads {
            match shape.len() {
                1 => params.register::<1>(
                    id,
                    Tensor::from_data(TensorData::new(values, [shape[0]]), device),
                ),
                _ => params.register::<2>(
                    id,
                    Tensor::from_data(TensorData::new(values, [shape[0], shape[1]]), device),
                ),
            }
        }
        params
    }

    /// Each parameter's id and summed gradient (host memory, the parameter's row-major layout),
    /// for an optimizer that updates on the host.
    pub fn into_host(self) -> impl Iterator<Item = (ParamId, Vec<f32>)> {
        self.grads.into_iter().map(|(id, _, values)| (id, values))
    }

    /// The buffers, in the order of `ModelParams::ids`.
    pub(super) fn buffers(&mut self) -> impl Iterator<Item = &mut [f32]> {
        self.grads.iter_mut().map(|(_, _, v)| v.as_mut_slice())
    }
}
