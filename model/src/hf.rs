//! Hugging Face model directories: load (`config.json`, safetensors — single or sharded —,
//! `tokenizer.json`, `generation_config.json`) and export.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::Device;
use serde::Deserialize;
use serde_json::json;

use crate::chat::ChatTemplate;
use crate::config::LlamaConfig;
use crate::llama::Llama;
use crate::tokenizer::Tokenizer;
use crate::weights::{HostTensor, read_safetensors, write_safetensors};
use crate::{Error, Policy, Result};

/// The fields kaizen reads from a Hugging Face `config.json` (others are ignored).
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    rope_theta: Option<f64>,
    /// transformers 5 moved `rope_theta` here.
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    bos_token_id: Option<u32>,
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Parses a Hugging Face `config.json` of a `LlamaForCausalLM` or `Qwen2ForCausalLM`.
///
/// # Errors
/// [`Error::ConfigParse`] naming the file and field: unsupported architecture, activation,
/// MLP bias or RoPE scaling, a missing required field, or invalid values.
pub fn hf_config(path: &Path) -> Result<(LlamaConfig, Vec<u32>)> {
    let fail = |message: String| Error::ConfigParse {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let hf: HfConfig = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let arch = hf.architectures.first().map(String::as_str).unwrap_or("");
    let qwen2 = arch == "Qwen2ForCausalLM" || hf.model_type.as_deref() == Some("qwen2");
    let llama = arch == "LlamaForCausalLM" || hf.model_type.as_deref() == Some("llama");
    if !(qwen2 || llama) {
        return Err(fail(format!(
            "`architectures` = {:?} / `model_type` = {:?}: kaizen loads LlamaForCausalLM and Qwen2ForCausalLM",
            hf.architectures, hf.model_type
        )));
    }
    if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
        return Err(fail(format!(
            "`hidden_act` = {act:?}: only \"silu\" (SwiGLU) is supported"
        )));
    }
    if hf.mlp_bias == Some(true) {
        return Err(fail("`mlp_bias` = true is not supported".into()));
    }
    let rope_type = |v: &serde_json::Value| {
        v.get("rope_type")
            .or_else(|| v.get("type"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
    };
    for v in [&hf.rope_scaling, &hf.rope_parameters]
        .into_iter()
        .flatten()
    {
        if let Some(kind) = rope_type(v).filter(|k| k != "default") {
            return Err(fail(format!(
                "RoPE scaling `{kind}` is not supported (only the default rotary embedding)"
            )));
        }
    }
    let rope_theta = hf
        .rope_theta
        .or_else(|| hf.rope_parameters.as_ref()?.get("rope_theta")?.as_f64())
        .unwrap_or(10_000.0);
    let config = LlamaConfig {
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        intermediate_size: hf.intermediate_size,
        num_hidden_layers: hf.num_hidden_layers,
        num_attention_heads: hf.num_attention_heads,
        num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
        head_dim: hf
            .head_dim
            .filter(|&d| d != hf.hidden_size / hf.num_attention_heads.max(1)),
        rope_theta,
        rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
        max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
        tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
        attention_bias: hf.attention_bias.unwrap_or(qwen2),
        value_head: false,
        initializer_range: 0.02,
    };
    config.validate().map_err(|e| fail(e.to_string()))?;
    let _ = hf.bos_token_id;
    Ok((
        config,
        hf.eos_token_id.as_ref().map(ids_of).unwrap_or_default(),
    ))
}

/// Reads `model.safetensors`, or every shard listed in `model.safetensors.index.json`.
///
/// # Errors
/// [`Error::Io`] / [`Error::Weights`] naming the file (and shard) at fault.
pub fn read_hf_weights(dir: &Path) -> Result<HashMap<String, HostTensor>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return read_safetensors(&single);
    }
    let index_path = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index_path).map_err(|e| {
        Error::weights(
            dir,
            format!("neither model.safetensors nor model.safetensors.index.json is readable ({e})"),
        )
    })?;
    let index: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::weights(&index_path, format!("not valid JSON: {e}")))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::weights(&index_path, "missing `weight_map` object"))?;
    let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    shards.sort();
    shards.dedup();
    let mut out = HashMap::new();
    for shard in shards {
        if shard.contains("..") || shard.contains('/') {
            return Err(Error::weights(
                &index_path,
                format!("shard name {shard:?} must be a file name in the directory"),
            ));
        }
        let tensors = read_safetensors(&dir.join(shard))?;
        for (name, t) in tensors {
            if out.insert(name.clone(), t).is_some() {
                return Err(Error::weights(
                    dir.join(shard),
                    format!("tensor `{name}` appears in two shards"),
                ));
            }
        }
    }
    for name in map.keys() {
        if !out.contains_key(name) {
            return Err(Error::weights(
                &index_path,
                format!("tensor `{name}` is listed in `weight_map` but absent from its shard"),
            ));
        }
    }
    Ok(out)
}

impl Policy {
    /// Loads a Hugging Face model directory: `config.json`, `model.safetensors` (or sharded
    /// `model.safetensors.index.json`), `tokenizer.json`, and `generation_config.json` when
    /// present (its `eos_token_id` list decides when generation stops). The chat template is
    /// ChatML, with the default system prompt found in `tokenizer_config.json`'s
    /// `chat_template` if any.
    ///
    /// # Errors
    /// Loader errors naming the file, field or tensor at fault; [`Error::Tokenizer`] when
    /// `tokenizer.json` is missing.
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Self> {
        let (mut config, config_eos) = hf_config(&dir.join("config.json"))?;
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(Error::Tokenizer(format!(
                "{} is missing",
                tokenizer_path.display()
            )));
        }
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)?;
        let generation = dir.join("generation_config.json");
        let mut eos = config_eos;
        if generation.is_file() {
            let text =
                std::fs::read_to_string(&generation).map_err(|e| Error::io(&generation, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::ConfigParse {
                    path: generation.clone(),
                    message: e.to_string(),
                })?;
            if let Some(ids) = v
                .get("eos_token_id")
                .map(ids_of)
                .filter(|ids| !ids.is_empty())
            {
                eos = ids;
            }
        }
        if !eos.is_empty() {
            tokenizer = tokenizer.with_eos_token_ids(eos);
        }
        let template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("chat_template")?.as_str().map(str::to_string))
            .filter(|t| t.contains("<|im_start|>"))
            .map(|t| ChatTemplate::ChatMl {
                default_system: crate::gguf_llama::chatml_default_system(&t),
            })
            .unwrap_or_else(ChatTemplate::chatml);
        let mut weights = read_hf_weights(dir)?;
        // A value head is not part of `config.json` (transformers has none): its tensors
        // (`v_head.summary.*`, as [`Policy::save_dir`] writes them) say it is there, so a
        // checkpoint of a policy with a value head (PPO) loads back with it.
        config.value_head = weights.contains_key("v_head.summary.weight");
        let model = Llama::from_named(&config, &mut weights, dir, device)?;
        Ok(Self {
            model,
            tokenizer,
            template,
            name: dir.display().to_string(),
        })
    }

    /// Exports the policy as a Hugging Face `LlamaForCausalLM` directory that transformers
    /// loads: `config.json`, `model.safetensors` (f32; no `lm_head.weight` when embeddings are
    /// tied, so they stay tied), `tokenizer.json`, `tokenizer_config.json` (special tokens and
    /// the ChatML template) and `generation_config.json` (EOS ids). The value head, if any, is
    /// saved as `v_head.summary.*` (TRL's naming), which transformers ignores.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Weights`] naming the file.
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let c = self.model.config();
        let tok = &self.tokenizer;
        let eos = tok.eos_token_ids().to_vec();
        let name_of = |id: Option<u32>| id.and_then(|i| tok.inner().id_to_token(i));
        let bos = tok.bos_token_id();
        let pad = tok.pad_token_id().or(eos.first().copied());
        let mut config = json!({
            "architectures": [if c.attention_bias { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
            "model_type": if c.attention_bias { "qwen2" } else { "llama" },
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim(),
            "hidden_act": "silu",
            "max_position_embeddings": c.max_position_embeddings,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta,
            "tie_word_embeddings": c.tie_word_embeddings,
            "attention_bias": c.attention_bias,
            "mlp_bias": false,
            "torch_dtype": "float32",
            "eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) },
        });
        if let Some(bos) = bos {
            config["bos_token_id"] = json!(bos);
        }
        write_json(&dir.join("config.json"), &config)?;
        let mut generation =
            json!({"eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) }});
        if let Some(bos) = bos {
            generation["bos_token_id"] = json!(bos);
        }
        if let Some(pad) = pad {
            generation["pad_token_id"] = json!(pad);
        }
        write_json(&dir.join("generation_config.json"), &generation)?;
        let chat_template = match &self.template {
            ChatTemplate::ChatMl { default_system } => {
                let system = default_system.as_deref().map(|s| format!("{{% if loop.first and messages[0]['role'] != 'system' %}}{{{{ '<|im_start|>system\n{s}<|im_end|>\n' }}}}{{% endif %}}")).unwrap_or_default();
                Some(format!(
                    "{{% for message in messages %}}{system}{{{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}}}{{% endfor %}}{{% if add_generation_prompt %}}{{{{ '<|im_start|>assistant\n' }}}}{{% endif %}}"
                ))
            }
            ChatTemplate::Plain { .. } => None,
        };
        let mut tokenizer_config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": false,
            "model_max_length": c.max_position_embeddings,
        });
        for (key, id) in [
            ("eos_token", eos.first().copied()),
            ("bos_token", bos),
            ("pad_token", pad),
        ] {
            if let Some(name) = name_of(id) {
                tokenizer_config[key] = json!(name);
            }
        }
        if let Some(t) = chat_template {
            tokenizer_config["chat_template"] = json!(t);
        }
        write_json(&dir.join("tokenizer_config.json"), &tokenizer_config)?;
        tok.save(dir.join("tokenizer.json"))?;
        let mut metadata = HashMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        write_safetensors(
            &dir.join("model.safetensors"),
            &self.model.to_named(),
            Some(metadata),
        )
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    // A `serde_json::Value` always serializes.
    let text = serde_json::to_string_pretty(value).expect("JSON value serializes");
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}
