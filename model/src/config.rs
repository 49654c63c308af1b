//! The model's hyper-parameters, named as in Hugging Face `config.json` (LlamaConfig).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Hyper-parameters of a Llama-family decoder (Llama, SmolLM2, Qwen2 with `attention_bias`).
///
/// Field names follow Hugging Face `config.json`, so a value can be carried over by name.
/// Parse with [`LlamaConfig::from_toml_str`] / [`LlamaConfig::from_json_str`] /
/// [`LlamaConfig::from_file`], which reject unknown fields and call [`LlamaConfig::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    /// Number of token ids.
    pub vocab_size: usize,
    /// Width of the residual stream (`d_model`).
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention); divides `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// Width of one head; defaults to `hidden_size / num_attention_heads`. Must be even (RoPE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Base of the rotary position embedding's frequencies (θ in RoFormer, eq. 15).
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// ε of RMSNorm.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Longest sequence (prompt + completion) the model is used with; sizes the RoPE table.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the token embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections have a bias (Qwen2).
    #[serde(default)]
    pub attention_bias: bool,
    /// Whether the model has a scalar value head on the final hidden states (PPO critic).
    #[serde(default)]
    pub value_head: bool,
    /// Standard deviation of the normal initialisation of weights (random init only).
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_norm_eps() -> f64 {
    1e-5
}
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_initializer_range() -> f64 {
    0.02
}

impl LlamaConfig {
    /// A tiny model for tests and synthetic tasks: 4 layers of width 256, 4 heads, 2 KV heads,
    /// MLP 768 — the configuration of kaizen's criterion benches.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 256,
            intermediate_size: 768,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: None,
            rope_theta: default_rope_theta(),
            rms_norm_eps: default_rms_norm_eps(),
            max_position_embeddings: 2048,
            tie_word_embeddings: true,
            attention_bias: false,
            value_head: false,
            initializer_range: default_initializer_range(),
        }
    }

    /// SmolLM2-135M's shape (134,515,008 parameters, tied embeddings): what the GGUF and
    /// Hugging Face files of SmolLM2-135M-Instruct declare.
    pub fn smollm2_135m() -> Self {
        Self {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: None,
            rope_theta: 100000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            attention_bias: false,
            value_head: false,
            initializer_range: 0.02,
        }
    }

    /// The width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Query heads per key/value head.
    pub fn num_key_value_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads.max(1)
    }

    /// Checks that the values describe a buildable model.
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending fields and their values.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(Error::Config(format!("`{name}` must be > 0, got 0")));
            }
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::Config(format!(
                "`num_attention_heads` ({}) must divide `hidden_size` ({}) when `head_dim` is not given",
                self.num_attention_heads, self.hidden_size
            )));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(Error::Config(format!(
                "`num_key_value_heads` ({}) must divide `num_attention_heads` ({})",
                self.num_key_value_heads, self.num_attention_heads
            )));
        }
        let head_dim = self.head_dim();
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "`head_dim` must be even and > 0 for rotary embeddings, got {head_dim}"
            )));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(Error::Config(format!(
                "`rope_theta` must be finite and > 0, got {}",
                self.rope_theta
            )));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(Error::Config(format!(
                "`rms_norm_eps` must be finite and > 0, got {}",
                self.rms_norm_eps
            )));
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            return Err(Error::Config(format!(
                "`initializer_range` must be finite and >= 0, got {}",
                self.initializer_range
            )));
        }
        Ok(())
    }

    /// Parses and validates a TOML config.
    ///
    /// # Errors
    /// [`Error::ConfigParse`] (naming the unknown or mistyped field) or [`Error::Config`].
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| Error::ConfigParse {
            path: "<toml>".into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates a JSON config.
    ///
    /// # Errors
    /// [`Error::ConfigParse`] (naming the unknown or mistyped field) or [`Error::Config`].
    pub fn from_json_str(text: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(text).map_err(|e| Error::ConfigParse {
            path: "<json>".into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a `.toml` or `.json` config file (by extension; anything else is tried as JSON).
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::ConfigParse`] naming the file, or [`Error::Config`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let parsed = if path.extension().is_some_and(|e| e == "toml") {
            Self::from_toml_str(&text)
        } else {
            Self::from_json_str(&text)
        };
        parsed.map_err(|e| match e {
            Error::ConfigParse { message, .. } => Error::ConfigParse {
                path: path.to_path_buf(),
                message,
            },
            Error::Config(message) => Error::ConfigParse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Serializes to pretty JSON (the format of Hugging Face `config.json`).
    pub fn to_json_string(&self) -> String {
        // Serializing a struct of numbers and bools cannot fail.
        serde_json::to_string_pretty(self).expect("LlamaConfig serializes")
    }

    /// Serializes to TOML.
    pub fn to_toml_string(&self) -> String {
        // Serializing a struct of numbers and bools cannot fail.
        toml::to_string(self).expect("LlamaConfig serializes")
    }

    /// Number of parameters of the model this config builds.
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let hd = self.head_dim();
        let q = self.num_attention_heads * hd;
        let kv = self.num_key_value_heads * hd;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let attn = h * q + 2 * h * kv + q * h + bias;
        let mlp = 3 * h * self.intermediate_size;
        let per_layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        let value = if self.value_head { h + 1 } else { 0 };
        embed + self.num_hidden_layers * per_layer + h + head + value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_round_trip() {
        let mut config = LlamaConfig::tiny(300);
        config.attention_bias = true;
        config.head_dim = Some(32);
        let toml = config.to_toml_string();
        assert_eq!(LlamaConfig::from_toml_str(&toml).unwrap(), config);
        let json = config.to_json_string();
        assert_eq!(LlamaConfig::from_json_str(&json).unwrap(), config);
    }

    #[test]
    fn head_count_that_does_not_divide_width_names_the_fields() {
        let mut config = LlamaConfig::tiny(300);
        config.num_attention_heads = 3;
        config.num_key_value_heads = 1;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("`num_attention_heads` (3)"), "{err}");
        assert!(err.contains("`hidden_size` (256)"), "{err}");
    }

    #[test]
    fn kv_heads_must_divide_heads() {
        let mut config = LlamaConfig::tiny(300);
        config.num_key_value_heads = 3;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("`num_key_value_heads` (3)"), "{err}");
    }

    #[test]
    fn unknown_and_mistyped_fields_are_named() {
        let text = LlamaConfig::tiny(10).to_toml_string() + "hiden_size = 3\n";
        let err = LlamaConfig::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("hiden_size"), "{err}");
        let err = LlamaConfig::from_json_str(r#"{"vocab_size": "many"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vocab_size") || err.contains("invalid type"),
            "{err}"
        );
        let err = LlamaConfig::from_json_str(r#"{"vocab_size": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("hidden_size"), "{err}");
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.toml");
        std::fs::write(&path, "vocab_size = 0\n").unwrap();
        let err = LlamaConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("model.toml"), "{err}");
        let missing = LlamaConfig::from_file(dir.path().join("nope.json"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope.json"), "{missing}");
    }

    #[test]
    fn smollm2_parameter_count() {
        let config = LlamaConfig::smollm2_135m();
        config.validate().unwrap();
        // transformers reports 134,515,008 parameters for SmolLM2-135M.
        assert_eq!(config.num_parameters(), 134_515_008);
    }
}
