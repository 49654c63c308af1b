//! Loading a `llama`-architecture GGUF file: config, weights (with llama.cpp's Q/K row
//! permutation undone), tokenizer and chat template.

use std::path::Path;

use burn::tensor::Device;

use crate::chat::ChatTemplate;
use crate::config::LlamaConfig;
use crate::gguf::GgufFile;
use crate::llama::Llama;
use crate::weights::{HostTensor, TensorSource};
use crate::{Error, Policy, Result};

/// Reads the model hyper-parameters from `{arch}.*` metadata.
///
/// # Errors
/// [`Error::Gguf`] naming a missing or mistyped key, or an unsupported architecture.
pub fn gguf_config(file: &GgufFile) -> Result<LlamaConfig> {
    let arch = file.get_str("general.architecture")?;
    if arch != "llama" && arch != "qwen2" {
        return Err(Error::Gguf {
            path: file.path().to_path_buf(),
            message: format!(
                "architecture `{arch}` is not supported (expected `llama` or `qwen2`)"
            ),
        });
    }
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = file.get_usize(&key("embedding_length"))?;
    let heads = file.get_usize(&key("attention.head_count"))?;
    let vocab = match file.get_usize(&key("vocab_size")) {
        Ok(v) => v,
        Err(_) => file.get_array("tokenizer.ggml.tokens")?.len(),
    };
    let head_dim = file
        .get_usize(&key("rope.dimension_count"))
        .ok()
        .filter(|&d| heads == 0 || d != hidden / heads);
    let config = LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: file.get_usize(&key("feed_forward_length"))?,
        num_hidden_layers: file.get_usize(&key("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: file
            .get_usize(&key("attention.head_count_kv"))
            .unwrap_or(heads),
        head_dim,
        rope_theta: file.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
        rms_norm_eps: file.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
        max_position_embeddings: file.get_usize(&key("context_length"))?,
        tie_word_embeddings: file.info("output.weight").is_none(),
        attention_bias: arch == "qwen2",
        value_head: false,
        initializer_range: 0.02,
    };
    config.validate().map_err(|e| Error::Gguf {
        path: file.path().to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(config)
}

/// Maps Hugging Face tensor names to GGUF names and dequantizes on demand.
struct GgufTensors<'a> {
    file: &'a GgufFile,
    heads: usize,
    kv_heads: usize,
    /// Whether q/k rows were permuted by llama.cpp's converter (`llama` architecture).
    permuted: bool,
    taken: std::collections::HashSet<String>,
}

impl GgufTensors<'_> {
    fn gguf_name(hf: &str) -> Option<String> {
        let map = |rest: &str| -> Option<&'static str> {
            Some(match rest {
                "input_layernorm.weight" => "attn_norm.weight",
                "self_attn.q_proj.weight" => "attn_q.weight",
                "self_attn.k_proj.weight" => "attn_k.weight",
                "self_attn.v_proj.weight" => "attn_v.weight",
                "self_attn.q_proj.bias" => "attn_q.bias",
                "self_attn.k_proj.bias" => "attn_k.bias",
                "self_attn.v_proj.bias" => "attn_v.bias",
                "self_attn.o_proj.weight" => "attn_output.weight",
                "post_attention_layernorm.weight" => "ffn_norm.weight",
                "mlp.gate_proj.weight" => "ffn_gate.weight",
                "mlp.up_proj.weight" => "ffn_up.weight",
                "mlp.down_proj.weight" => "ffn_down.weight",
                _ => return None,
            })
        };
        match hf {
            "model.embed_tokens.weight" => Some("token_embd.weight".into()),
            "model.norm.weight" => Some("output_norm.weight".into()),
            "lm_head.weight" => Some("output.weight".into()),
            _ => {
                let rest = hf.strip_prefix("model.layers.")?;
                let (layer, rest) = rest.split_once('.')?;
                let layer: usize = layer.parse().ok()?;
                Some(format!("blk.{layer}.{}", map(rest)?))
            }
        }
    }
}

/// Undoes llama.cpp's `permute` of q/k projection rows: GGUF row `h·2d + 2i + s` holds the
/// original row `h·2d + s·d + i` (head `h`, `i < d` = half the head width, `s ∈ {0, 1}`), so
/// the interleaved rotary convention of GGUF becomes Hugging Face's rotate-half convention.
/// Applies to `[rows, cols]` weights and `[rows]` biases alike.
pub fn unpermute_rows(t: HostTensor, heads: usize) -> HostTensor {
    let rows = t.shape[0];
    let cols = t.data.len() / rows.max(1);
    let half = rows / heads / 2;
    let mut data = vec![0.0; t.data.len()];
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..half {
                let original = h * 2 * half + s * half + i;
                let gguf = h * 2 * half + 2 * i + s;
                data[original * cols..(original + 1) * cols]
                    .copy_from_slice(&t.data[gguf * cols..(gguf + 1) * cols]);
            }
        }
    }
    HostTensor::new(t.shape, data)
}

impl TensorSource for GgufTensors<'_> {
    fn take(&mut self, name: &str) -> Result<Option<HostTensor>> {
        let Some(gguf) = Self::gguf_name(name) else {
            return Ok(None);
        };
        if self.file.info(&gguf).is_none() || !self.taken.insert(gguf.clone()) {
            return Ok(None);
        }
        let t = self.file.tensor_f32(&gguf)?;
        Ok(Some(
            if self.permuted && name.contains("self_attn.q_proj") {
                unpermute_rows(t, self.heads)
            } else if self.permuted && name.contains("self_attn.k_proj") {
                unpermute_rows(t, self.kv_heads)
            } else {
                t
            },
        ))
    }

    fn remaining(&self) -> Vec<String> {
        self.file
            .tensors
            .iter()
            .filter(|t| !self.taken.contains(&t.name))
            .map(|t| t.name.clone())
            .collect()
    }
}

/// Loads the model weights of a GGUF file (dequantized to f32).
///
/// # Errors
/// [`Error::Gguf`] / [`Error::Weights`] naming the tensor or key at fault.
pub fn load_gguf_model(file: &GgufFile, device: &Device) -> Result<Llama> {
    let config = gguf_config(file)?;
    let arch = file.get_str("general.architecture")?;
    let mut source = GgufTensors {
        file,
        heads: config.num_attention_heads,
        kv_heads: config.num_key_value_heads,
        permuted: arch == "llama",
        taken: Default::default(),
    };
    Llama::from_named(&config, &mut source, file.path(), device)
}

impl Policy {
    /// Loads model, tokenizer and chat template from a GGUF file.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Gguf`], [`Error::Weights`] or [`Error::Tokenizer`], naming the
    /// file and the key or tensor at fault.
    pub fn load_gguf(path: &Path, device: &Device) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let tokenizer = crate::gguf_tokenizer::gguf_tokenizer(&file)?;
        let template = gguf_chat_template(&file);
        let model = load_gguf_model(&file, device)?;
        Ok(Self {
            model,
            tokenizer,
            template,
            name: path.display().to_string(),
        })
    }
}

/// The chat template from `tokenizer.chat_template` when it is ChatML (with its default system
/// prompt, if the template inserts one); ChatML without a default otherwise.
pub fn gguf_chat_template(file: &GgufFile) -> ChatTemplate {
    match file.get_str("tokenizer.chat_template") {
        Ok(t) if t.contains("<|im_start|>") => ChatTemplate::ChatMl {
            default_system: chatml_default_system(t),
        },
        _ => ChatTemplate::chatml(),
    }
}

/// The system prompt a ChatML Jinja template inserts when the conversation has none: the text
/// of the literal `'<|im_start|>system\n…<|im_end|>` in the template, if any.
pub fn chatml_default_system(template: &str) -> Option<String> {
    let start = template.find("'<|im_start|>system\n")? + "'<|im_start|>system\n".len();
    let rest = &template[start..];
    let end = rest.find("<|im_end|>")?;
    Some(rest[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, d, cols).swapaxes(1, 2).reshape(w.shape).
        let (heads, d, cols) = (3, 4, 2);
        let rows = heads * 2 * d;
        let original: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0.0; original.len()];
        for h in 0..heads {
            for s in 0..2 {
                for i in 0..d {
                    let src = h * 2 * d + s * d + i;
                    let dst = h * 2 * d + i * 2 + s;
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&original[src * cols..(src + 1) * cols]);
                }
            }
        }
        let back = unpermute_rows(HostTensor::new(vec![rows, cols], permuted), heads);
        assert_eq!(back.data, original);
    }

    #[test]
    fn default_system_prompt_is_read_from_the_template() {
        let t = "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}";
        assert_eq!(
            chatml_default_system(t).as_deref(),
            Some(crate::chat::SMOLLM2_DEFAULT_SYSTEM)
        );
        assert_eq!(
            chatml_default_system("{{'<|im_start|>' + message['role']}}"),
            None
        );
    }
}
