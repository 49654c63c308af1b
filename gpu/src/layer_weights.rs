//! The per-layer weights of a Llama-family decoder, and their loading by Hugging Face
//! `LlamaForCausalLM` name, written once for every device: the caller says how a named tensor
//! of a given shape becomes a buffer (`upload`), this module says which tensors there are.
//! [`crate::GpuLlama`] loads into `CudaSlice<f32>`, [`crate::batch_decode::BatchDecoder`] into
//! its [`crate::decode_ops::DecodeOps`] buffers.

use std::collections::HashMap;

use kaizen_model::{HostTensor, LlamaConfig};

use crate::GpuError;

/// A model's host tensors by Hugging Face name, each checked against the shape the loader
/// expects before it is uploaded.
pub(crate) struct NamedTensors<'a>(HashMap<&'a str, &'a HostTensor>);

impl<'a> NamedTensors<'a> {
    pub(crate) fn new(weights: &'a [(String, HostTensor)]) -> Self {
        Self(weights.iter().map(|(n, t)| (n.as_str(), t)).collect())
    }

    /// The values of tensor `name`, which must have exactly `shape`.
    ///
    /// # Errors
    /// [`GpuError::Input`] naming the tensor when it is missing or misshaped.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<&'a [f32], GpuError> {
        let t = self
            .0
            .get(name)
            .ok_or_else(|| GpuError::Input(format!("weight `{name}` is missing")))?;
        if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
            return Err(GpuError::Input(format!(
                "weight `{name}` has shape {:?} ({} values), expected {shape:?}",
                t.shape,
                t.data.len()
            )));
        }
        Ok(&t.data)
    }
}

/// A projection `y = x Wᵀ (+ b)`, `W: [d_output, d_input]` on the device.
pub(crate) struct Linear<B> {
    pub(crate) weight: B,
    pub(crate) bias: Option<B>,
    pub(crate) d_output: usize,
    pub(crate) d_input: usize,
}

/// One decoder block's weights.
pub(crate) struct Layer<B> {
    pub(crate) input_layernorm: B,
    pub(crate) q_proj: Linear<B>,
    pub(crate) k_proj: Linear<B>,
    pub(crate) v_proj: Linear<B>,
    pub(crate) o_proj: Linear<B>,
    pub(crate) post_attention_layernorm: B,
    pub(crate) gate_proj: Linear<B>,
    pub(crate) up_proj: Linear<B>,
    pub(crate) down_proj: Linear<B>,
}

/// What [`load_layers`] loads: the decoder blocks and the untied output projection.
pub(crate) struct LayerStack<B> {
    pub(crate) layers: Vec<Layer<B>>,
    /// `None`: tied to the embedding.
    pub(crate) lm_head: Option<Linear<B>>,
}

/// Loads every decoder block (`model.layers.{i}.…`, in order; q/k/v biases when
/// `attention_bias`) and then the output projection (`lm_head`, `None` when the embeddings are
/// tied), each tensor through `upload(hf_name, shape)`. The embedding and final norm are the
/// caller's.
///
/// # Errors
/// Whatever `upload` returns, for the first tensor it fails on.
pub(crate) fn load_layers<B>(
    config: &LlamaConfig,
    upload: impl Fn(&str, &[usize]) -> Result<B, GpuError>,
) -> Result<LayerStack<B>, GpuError> {
    let linear = |name: &str, d_output: usize, d_input: usize, bias: bool| {
        Ok::<_, GpuError>(Linear {
            weight: upload(&format!("{name}.weight"), &[d_output, d_input])?,
            bias: if bias {
                Some(upload(&format!("{name}.bias"), &[d_output])?)
            } else {
                None
            },
            d_output,
            d_input,
        })
    };
    let (h, hd, inter) = (
        config.hidden_size,
        config.head_dim(),
        config.intermediate_size,
    );
    let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
    let bias = config.attention_bias;
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        layers.push(Layer {
            input_layernorm: upload(&format!("{p}.input_layernorm.weight"), &[h])?,
            q_proj: linear(&format!("{p}.self_attn.q_proj"), heads * hd, h, bias)?,
            k_proj: linear(&format!("{p}.self_attn.k_proj"), kv_heads * hd, h, bias)?,
            v_proj: linear(&format!("{p}.self_attn.v_proj"), kv_heads * hd, h, bias)?,
            o_proj: linear(&format!("{p}.self_attn.o_proj"), h, heads * hd, false)?,
            post_attention_layernorm: upload(
                &format!("{p}.post_attention_layernorm.weight"),
                &[h],
            )?,
            gate_proj: linear(&format!("{p}.mlp.gate_proj"), inter, h, false)?,
            up_proj: linear(&format!("{p}.mlp.up_proj"), inter, h, false)?,
            down_proj: linear(&format!("{p}.mlp.down_proj"), h, inter, false)?,
        });
    }
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(linear("lm_head", config.vocab_size, h, false)?)
    };
    Ok(LayerStack { layers, lm_head })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn one_layer(tied: bool) -> LlamaConfig {
        LlamaConfig {
            num_hidden_layers: 1,
            tie_word_embeddings: tied,
            attention_bias: !tied,
            ..LlamaConfig::tiny(32)
        }
    }

    /// Loads `config`, recording every `(name, shape)` asked for; the buffer is its index.
    fn requested(config: &LlamaConfig) -> (LayerStack<usize>, Vec<(String, Vec<usize>)>) {
        let seen = RefCell::new(Vec::new());
        let stack = load_layers(config, |name: &str, shape: &[usize]| {
            let mut seen = seen.borrow_mut();
            seen.push((name.to_string(), shape.to_vec()));
            Ok(seen.len() - 1)
        })
        .unwrap();
        (stack, seen.into_inner())
    }

    #[test]
    fn untied_biased_layers_upload_hf_names_and_shapes_in_order() {
        // tiny(32): hidden 256, 4 heads of 64, 2 KV heads, MLP 768.
        let (stack, seen) = requested(&one_layer(false));
        let p = "model.layers.0";
        let expected: Vec<(String, Vec<usize>)> = [
            (format!("{p}.input_layernorm.weight"), vec![256]),
            (format!("{p}.self_attn.q_proj.weight"), vec![256, 256]),
            (format!("{p}.self_attn.q_proj.bias"), vec![256]),
            (format!("{p}.self_attn.k_proj.weight"), vec![128, 256]),
            (format!("{p}.self_attn.k_proj.bias"), vec![128]),
            (format!("{p}.self_attn.v_proj.weight"), vec![128, 256]),
            (format!("{p}.self_attn.v_proj.bias"), vec![128]),
            (format!("{p}.self_attn.o_proj.weight"), vec![256, 256]),
            (format!("{p}.post_attention_layernorm.weight"), vec![256]),
            (format!("{p}.mlp.gate_proj.weight"), vec![768, 256]),
            (format!("{p}.mlp.up_proj.weight"), vec![768, 256]),
            (format!("{p}.mlp.down_proj.weight"), vec![256, 768]),
            ("lm_head.weight".to_string(), vec![32, 256]),
        ]
        .into_iter()
        .collect();
        assert_eq!(seen, expected);
        let layer = &stack.layers[0];
        assert_eq!((layer.q_proj.weight, layer.q_proj.bias), (1, Some(2)));
        assert_eq!((layer.k_proj.d_output, layer.k_proj.d_input), (128, 256));
        assert_eq!(layer.o_proj.bias, None);
        let head = stack.lm_head.as_ref().unwrap();
        assert_eq!((head.weight, head.d_output, head.d_input), (12, 32, 256));
    }

    #[test]
    fn tied_layers_have_no_head_and_no_biases() {
        let (stack, seen) = requested(&one_layer(true));
        assert_eq!(seen.len(), 9);
        assert!(seen.iter().all(|(name, _)| name.ends_with(".weight")));
        assert!(stack.lm_head.is_none());
        assert_eq!(stack.layers[0].q_proj.bias, None);
    }

    #[test]
    fn missing_and_misshaped_tensors_are_input_errors_naming_them() {
        let weights = vec![(
            "model.norm.weight".to_string(),
            HostTensor {
                shape: vec![4],
                data: vec![1.0; 3],
            },
        )];
        let named = NamedTensors::new(&weights);
        let message = |r: Result<&[f32], GpuError>| match r {
            Err(GpuError::Input(m)) => m,
            other => panic!("expected an input error, got {other:?}"),
        };
        assert_eq!(
            message(named.get("lm_head.weight", &[4])),
            "weight `lm_head.weight` is missing"
        );
        assert_eq!(
            message(named.get("model.norm.weight", &[4])),
            "weight `model.norm.weight` has shape [4] (3 values), expected [4]"
        );
    }

    #[test]
    fn the_first_upload_error_is_returned() {
        let result = load_layers(&one_layer(true), |name: &str, _: &[usize]| {
            if name.ends_with("k_proj.weight") {
                Err(GpuError::Input(format!("weight `{name}` is missing")))
            } else {
                Ok(())
            }
        });
        let Err(GpuError::Input(message)) = result else {
            panic!("expected an input error");
        };
        assert_eq!(
            message,
            "weight `model.layers.0.self_attn.k_proj.weight` is missing"
        );
    }
}
