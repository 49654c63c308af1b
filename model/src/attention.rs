//! Grouped-query self-attention with rotary positions.

use burn::module::Module;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

use crate::kv_cache::KvCache;
use crate::linear::Linear;
use crate::rope::Rope;

/// Multi-head self-attention with `num_key_value_heads ≤ num_attention_heads` (GQA, Ainslie et
/// al. 2023, <https://arxiv.org/abs/2305.13245>):
///
/// `Attn(x) = W_o · concat_h softmax(rope(q_h) rope(k_{h/g})ᵀ / √d + M) v_{h/g}`,
/// where query head `h` shares key/value head `h / g` (`g` = heads per KV head) and `M` is the
/// causal/padding mask.
///
/// Keys and values are never repeated per query head: the `g` query heads of a group are
/// stacked along the query axis (`[batch, kv_heads, g × seq, head_dim]`), so one attention
/// call per KV head serves its whole group. The mask is repeated to match (see
/// `kv_cache::attention_mask`).
#[derive(Module, Debug)]
pub struct Attention {
    /// `[heads × head_dim, hidden]`.
    pub q_proj: Linear,
    /// `[kv_heads × head_dim, hidden]`.
    pub k_proj: Linear,
    /// `[kv_heads × head_dim, hidden]`.
    pub v_proj: Linear,
    /// `[hidden, heads × head_dim]`.
    pub o_proj: Linear,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl Attention {
    /// Attends over the new tokens `x` (and, with a cache, everything cached before them).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`
    /// - `cos`, `sin`: `[batch, 1, seq, head_dim]` (from [`Rope::tables`])
    /// - `mask`: `[batch, 1, groups × seq, columns]`, `true` = masked, where `columns` is `seq`
    ///   without a cache and the cache capacity with one
    /// - returns `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &Tensor<4, Bool>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let (heads, kv_heads, dim) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let groups = heads / kv_heads;

        let q = self.split_heads(self.q_proj.forward(x.clone()), heads);
        let k = self.split_heads(self.k_proj.forward(x.clone()), kv_heads);
        let v = self.split_heads(self.v_proj.forward(x), kv_heads);
        let q = Rope::apply(q, cos, sin);
        let k = Rope::apply(k, cos, sin);

        let (k, v) = match cache {
            Some((cache, layer)) => cache.write(layer, k, v),
            None => (k, v),
        };
        let columns = k.dims()[2];
        let q = q.reshape([batch, kv_heads, groups * seq, dim]);
        let mask = mask
            .clone()
            .expand([batch, kv_heads, groups * seq, columns]);
        let out = attention(q, k, v, Some(mask), None, AttentionModuleOptions::default());
        let out = out
            .reshape([batch, heads, seq, dim])
            .swap_dims(1, 2)
            .reshape([batch, seq, heads * dim]);
        self.o_proj.forward(out)
    }

    /// `[batch, seq, n × head_dim]` → `[batch, n, seq, head_dim]`.
    fn split_heads(&self, x: Tensor<3>, n: usize) -> Tensor<4> {
        let [batch, seq, _] = x.dims();
        x.reshape([batch, seq, n, self.head_dim]).swap_dims(1, 2)
    }
}
