//! Named weights: the Hugging Face tensor names, safetensors save/load.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::attention::Attention;
use crate::config::LlamaConfig;
use crate::linear::Linear;
use crate::llama::{DecoderLayer, Llama};
use crate::mlp::Mlp;
use crate::rms_norm::RmsNorm;
use crate::{Error, Result};

/// A tensor on the host: row-major f32 values and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor from its shape and values.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self { shape, data }
    }
}

/// Named f32 tensors a model is built from: a safetensors file (all in memory) or a GGUF file
/// (dequantized one at a time, so loading never holds two f32 copies of the model).
pub trait TensorSource {
    /// Removes and returns the tensor called `name` (Hugging Face naming), `Ok(None)` if absent.
    ///
    /// # Errors
    /// Format errors while producing the tensor (e.g. a corrupt GGUF block table).
    fn take(&mut self, name: &str) -> Result<Option<HostTensor>>;
    /// Names not taken yet (after loading: tensors the model does not use).
    fn remaining(&self) -> Vec<String>;
}

impl TensorSource for HashMap<String, HostTensor> {
    fn take(&mut self, name: &str) -> Result<Option<HostTensor>> {
        Ok(self.remove(name))
    }

    fn remaining(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

/// A [`TensorSource`] with the file name for error messages.
struct Source<'a> {
    path: &'a Path,
    tensors: &'a mut dyn TensorSource,
}

impl Source<'_> {
    fn take(&mut self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor<2>> {
        let t = self.take_raw(name, shape)?;
        Ok(Tensor::from_data(
            TensorData::new(t.data, [shape[0], shape[1]]),
            device,
        ))
    }

    fn take_1d(&mut self, name: &str, len: usize, device: &Device) -> Result<Tensor<1>> {
        let t = self.take_raw(name, &[len])?;
        Ok(Tensor::from_data(TensorData::new(t.data, [len]), device))
    }

    fn take_raw(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self
            .tensors
            .take(name)?
            .ok_or_else(|| Error::weights(self.path, format!("missing tensor `{name}`")))?;
        if t.shape != shape {
            return Err(Error::weights(
                self.path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.shape
                ),
            ));
        }
        if t.data.len() != shape.iter().product::<usize>() {
            return Err(Error::weights(
                self.path,
                format!(
                    "tensor `{name}` has {} values for shape {shape:?}",
                    t.data.len()
                ),
            ));
        }
        Ok(t)
    }

    fn linear(
        &mut self,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
        device: &Device,
    ) -> Result<Linear> {
        let weight = self.take(&format!("{prefix}.weight"), &[out, inp], device)?;
        let bias = if bias {
            Some(self.take_1d(&format!("{prefix}.bias"), out, device)?)
        } else {
            None
        };
        Ok(Linear::new(weight, bias))
    }
}

impl Llama {
    /// Builds a model from tensors named as in Hugging Face `LlamaForCausalLM`
    /// (`model.embed_tokens.weight`, `model.layers.{i}.self_attn.q_proj.weight`, …,
    /// `lm_head.weight`; `v_head.summary.weight`/`.bias` for the value head, as TRL names it).
    /// `path` only labels errors. Tensors are consumed as they are uploaded, to bound memory.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid config; [`Error::Weights`] naming a missing, misshaped or
    /// unexpected tensor (`lm_head.weight` is accepted and ignored for tied models, and
    /// `rotary_emb.inv_freq` buffers are ignored).
    pub fn from_named(
        config: &LlamaConfig,
        tensors: &mut dyn TensorSource,
        path: &Path,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let mut src = Source { path, tensors };
        let (h, hd) = (config.hidden_size, config.head_dim());
        let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
        let inter = config.intermediate_size;
        let bias = config.attention_bias;
        let embed = src.take("model.embed_tokens.weight", &[config.vocab_size, h], device)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(DecoderLayer {
                input_layernorm: RmsNorm::new(
                    src.take_1d(&format!("{p}.input_layernorm.weight"), h, device)?,
                    config.rms_norm_eps,
                ),
                self_attn: Attention {
                    q_proj: src.linear(
                        &format!("{p}.self_attn.q_proj"),
                        heads * hd,
                        h,
                        bias,
                        device,
                    )?,
                    k_proj: src.linear(
                        &format!("{p}.self_attn.k_proj"),
                        kv_heads * hd,
                        h,
                        bias,
                        device,
                    )?,
                    v_proj: src.linear(
                        &format!("{p}.self_attn.v_proj"),
                        kv_heads * hd,
                        h,
                        bias,
                        device,
                    )?,
                    o_proj: src.linear(
                        &format!("{p}.self_attn.o_proj"),
                        h,
                        heads * hd,
                        false,
                        device,
                    )?,
                    num_heads: heads,
                    num_kv_heads: kv_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: RmsNorm::new(
                    src.take_1d(&format!("{p}.post_attention_layernorm.weight"), h, device)?,
                    config.rms_norm_eps,
                ),
                mlp: Mlp {
                    gate_proj: src.linear(
                        &format!("{p}.mlp.gate_proj"),
                        inter,
                        h,
                        false,
                        device,
                    )?,
                    up_proj: src.linear(&format!("{p}.mlp.up_proj"), inter, h, false, device)?,
                    down_proj: src.linear(
                        &format!("{p}.mlp.down_proj"),
                        h,
                        inter,
                        false,
                        device,
                    )?,
                },
            });
        }
        let norm = RmsNorm::new(
            src.take_1d("model.norm.weight", h, device)?,
            config.rms_norm_eps,
        );
        let lm_head = if config.tie_word_embeddings {
            src.tensors.take("lm_head.weight")?;
            None
        } else {
            Some(src.linear("lm_head", config.vocab_size, h, false, device)?)
        };
        let value_head = if config.value_head {
            Some(src.linear("v_head.summary", 1, h, true, device)?)
        } else {
            None
        };
        let mut extra: Vec<String> = src
            .tensors
            .remaining()
            .into_iter()
            .filter(|name| !name.ends_with("rotary_emb.inv_freq"))
            .collect();
        extra.sort();
        if let Some(first) = extra.first() {
            return Err(Error::weights(
                path,
                format!(
                    "unexpected tensor `{first}` ({} unexpected in all): the file does not match the config",
                    extra.len()
                ),
            ));
        }
        Ok(Llama::assemble(
            config.clone(),
            Param::from_tensor(embed),
            layers,
            norm,
            lm_head,
            value_head,
        ))
    }

    /// The model an int8 decode samples from ([`crate::DecodeWeights::Int8`]): every
    /// projection (attention, MLP, output head) replaced by its int8 quantisation in blocks of
    /// 32, dequantised; norms, biases and an untied embedding unchanged (a tied embedding is
    /// the head, so it is replaced with it). Scoring this model in f32 gives the
    /// behaviour log-probs of an int8 decode up to float reassociation.
    ///
    /// # Errors
    /// [`Error::Input`] when the CPU kernels do not apply to this model (another device,
    /// autodiff); weight errors from rebuilding it.
    pub fn with_int8_projections(&self) -> Result<Llama> {
        let weights = crate::cpu_forward::CpuWeights::of(self).ok_or_else(|| {
            Error::Input("int8 projections need the model on the CPU kernels".into())
        })?;
        let q = crate::cpu_forward::QuantizedWeights::of(
            &weights,
            self.config().hidden_size,
            crate::DecodeWeights::Int8,
        )
        .ok_or_else(|| Error::Input("int8 projections: nothing to quantise".into()))?;
        let mut named: HashMap<String, HostTensor> = self.to_named().into_iter().collect();
        for (name, values) in q.dequantized(self.lm_head.is_none()) {
            if let Some(t) = named.get_mut(&name) {
                t.data = values;
            }
        }
        let device = self.device();
        Llama::from_named(self.config(), &mut named, Path::new("int8"), &device)
    }

    /// Every weight with its Hugging Face name, copied to the host (the inverse of
    /// [`Llama::from_named`]). Tied models have no `lm_head.weight`.
    ///
    /// The copies run on up to [`std::thread::available_parallelism`] threads (at most 8),
    /// largest tensors first: copying 538 MB of SmolLM2-135M is bound by page faults and memory
    /// bandwidth, which one core does not saturate.
    pub fn to_named(&self) -> Vec<(String, HostTensor)> {
        let weights = self.named_tensors();
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, 8)
            .min(weights.len().max(1));
        // Longest-processing-time-first: each tensor goes to the least loaded thread.
        let mut order: Vec<usize> = (0..weights.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(weights[i].1.num_elements()));
        let mut bins: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); threads];
        for i in order {
            if let Some(bin) = bins.iter_mut().min_by_key(|(load, _)| *load) {
                bin.0 += weights[i].1.num_elements();
                bin.1.push(i);
            }
        }
        let mut out: Vec<Option<HostTensor>> = (0..weights.len()).map(|_| None).collect();
        std::thread::scope(|scope| {
            let workers: Vec<_> = bins
                .into_iter()
                .map(|(_, items)| {
                    let weights = &weights;
                    scope.spawn(move || {
                        items
                            .into_iter()
                            .map(|i| (i, weights[i].1.to_host()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for worker in workers {
                // A copy thread only panics if a tensor is not f32, which `to_host` rules out.
                for (i, t) in worker.join().expect("weight copy thread") {
                    out[i] = Some(t);
                }
            }
        });
        weights
            .into_iter()
            .zip(out)
            .map(|((name, _), t)| (name, t.expect("every tensor was copied")))
            .collect()
    }

    /// Every weight with its Hugging Face name, on the device (cheap handles, no copy), in
    /// [`Llama::to_named`]'s order.
    fn named_tensors(&self) -> Vec<(String, DeviceWeight)> {
        use DeviceWeight::{D1, D2};
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            D2(self.embed_tokens.val()),
        )];
        let linear = |out: &mut Vec<(String, DeviceWeight)>, name: String, l: &Linear| {
            out.push((format!("{name}.weight"), D2(l.weight.val())));
            if let Some(b) = &l.bias {
                out.push((format!("{name}.bias"), D1(b.val())));
            }
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                D1(layer.input_layernorm.weight.val()),
            ));
            let a = &layer.self_attn;
            linear(&mut out, format!("{p}.self_attn.q_proj"), &a.q_proj);
            linear(&mut out, format!("{p}.self_attn.k_proj"), &a.k_proj);
            linear(&mut out, format!("{p}.self_attn.v_proj"), &a.v_proj);
            linear(&mut out, format!("{p}.self_attn.o_proj"), &a.o_proj);
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                D1(layer.post_attention_layernorm.weight.val()),
            ));
            linear(&mut out, format!("{p}.mlp.gate_proj"), &layer.mlp.gate_proj);
            linear(&mut out, format!("{p}.mlp.up_proj"), &layer.mlp.up_proj);
            linear(&mut out, format!("{p}.mlp.down_proj"), &layer.mlp.down_proj);
        }
        out.push(("model.norm.weight".to_string(), D1(self.norm.weight.val())));
        if let Some(head) = &self.lm_head {
            linear(&mut out, "lm_head".to_string(), head);
        }
        if let Some(head) = &self.value_head {
            linear(&mut out, "v_head.summary".to_string(), head);
        }
        out
    }

    /// Writes the weights as a safetensors file (f32, Hugging Face names), atomically: to a
    /// temporary file in the same directory, then renamed over `path`.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Weights`] naming the file.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        write_safetensors(path.as_ref(), &self.to_named(), None)
    }

    /// Loads weights saved by [`Llama::save_safetensors`] (or any Hugging Face
    /// `model.safetensors` of this architecture; F32, F16 and BF16 tensors are accepted).
    ///
    /// # Errors
    /// [`Error::Io`], or [`Error::Weights`] naming the file and the tensor at fault.
    pub fn load_safetensors(
        config: &LlamaConfig,
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        let path = path.as_ref();
        let mut tensors = read_safetensors(path)?;
        Self::from_named(config, &mut tensors, path, device)
    }
}

/// Writes named host tensors as f32 safetensors, atomically (temp file + rename), with
/// optional string metadata.
///
/// # Errors
/// [`Error::Io`] or [`Error::Weights`] naming the file.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, HostTensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| {
            let raw: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), raw, t.shape.clone())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, raw, shape)| {
            TensorView::new(Dtype::F32, shape.clone(), raw)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::weights(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, metadata, &tmp)
        .map_err(|e| Error::weights(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Reads every tensor of a safetensors file to f32 host tensors.
///
/// # Errors
/// [`Error::Io`], or [`Error::Weights`] for a malformed file or an unsupported dtype (naming
/// the tensor).
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::weights(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
            Error::weights(
                path,
                format!(
                    "tensor `{name}` has unsupported dtype {:?} (expected F32, F16 or BF16)",
                    view.dtype()
                ),
            )
        })?;
        out.insert(name, HostTensor::new(view.shape().to_vec(), data));
    }
    Ok(out)
}

fn to_f32(dtype: Dtype, raw: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// A weight on the device, of either rank a Llama has.
enum DeviceWeight {
    D1(Tensor<1>),
    D2(Tensor<2>),
}

impl DeviceWeight {
    fn num_elements(&self) -> usize {
        match self {
            Self::D1(t) => t.shape().num_elements(),
            Self::D2(t) => t.shape().num_elements(),
        }
    }

    /// Copies the values to the host.
    fn to_host(&self) -> HostTensor {
        fn host<const D: usize>(t: Tensor<D>) -> HostTensor {
            let shape = t.dims().to_vec();
            // Model weights are f32 tensors, which always convert.
            let data = t
                .into_data()
                .convert::<f32>()
                .try_into_vec()
                .expect("f32 weights");
            HostTensor::new(shape, data)
        }
        match self {
            Self::D1(t) => host(t.clone()),
            Self::D2(t) => host(t.clone()),
        }
    }
}
