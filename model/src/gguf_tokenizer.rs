//! Building a Hugging Face tokenizer from GGUF tokenizer metadata (`tokenizer.ggml.*`).
//!
//! For `tokenizer.ggml.model = "gpt2"` (byte-level BPE) this builds what `transformers` builds
//! when it loads the same file (`integrations/gguf/gguf_tokenizer_mapping.py`, transformers 5):
//! a BPE model over the file's tokens and merges (tokens outside the byte alphabet re-spelled
//! byte by byte), GPT-2's ByteLevel pre-tokenizer (or the Llama-3 split for the `llama-bpe`
//! family), a ByteLevel decoder, the tokens typed CONTROL (3) as special added tokens and those
//! typed USER_DEFINED (4) as plain added tokens. The parity tests compare ids with transformers.

use serde_json::{Value, json};

use crate::gguf::{GgufFile, MetaValue};
use crate::tokenizer::{Tokenizer, byte_to_unicode};
use crate::{Error, Result};

const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// The Llama-3 pre-tokenizer split, used by the `llama-bpe` family of `tokenizer.ggml.pre`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Builds the tokenizer a GGUF file describes, with its BOS/EOS/pad ids.
///
/// # Errors
/// [`Error::Gguf`] naming the key when the metadata is missing or malformed, or when
/// `tokenizer.ggml.model` is not `gpt2`; [`Error::Tokenizer`] if the built tokenizer does not
/// load.
pub fn gguf_tokenizer(file: &GgufFile) -> Result<Tokenizer> {
    let err = |message: String| Error::Gguf {
        path: file.path().to_path_buf(),
        message,
    };
    let model = file.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(err(format!(
            "`tokenizer.ggml.model` is `{model}`; kaizen builds byte-level BPE (`gpt2`) tokenizers only"
        )));
    }
    let tokens: Vec<&str> = file
        .get_array("tokenizer.ggml.tokens")?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| err(format!("`tokenizer.ggml.tokens`[{i}] is not a string")))
        })
        .collect::<Result<_>>()?;
    let merges: Vec<Value> = match file.metadata.get("tokenizer.ggml.merges") {
        Some(MetaValue::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let m = v
                    .as_str()
                    .ok_or_else(|| err(format!("`tokenizer.ggml.merges`[{i}] is not a string")))?;
                let (a, b) = m.split_once(' ').ok_or_else(|| {
                    err(format!(
                        "`tokenizer.ggml.merges`[{i}] = {m:?} is not `left right`"
                    ))
                })?;
                Ok(json!([a, b]))
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(err("`tokenizer.ggml.merges` is not an array".into())),
        None => Vec::new(),
    };
    let types: Vec<u64> = match file.metadata.get("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(items)) => items.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };

    let alphabet = byte_to_unicode();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let spell = |t: &str| -> String {
        if in_alphabet(t) {
            t.to_string()
        } else {
            t.bytes().map(|b| alphabet[b as usize]).collect()
        }
    };
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(spell(t), json!(i));
    }
    let mut added = Vec::new();
    for (i, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        let special = ty == TOKEN_TYPE_CONTROL && in_alphabet(t);
        let user = ty == TOKEN_TYPE_USER_DEFINED;
        if special || user {
            added.push(
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": special}),
            );
        }
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = file.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let pre_tokenizer = match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
            ]
        }),
        _ => byte_level,
    };
    let json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    let tokenizer = Tokenizer::from_json_str(&json.to_string())?;
    let id = |key: &str| {
        file.metadata
            .get(key)
            .and_then(MetaValue::as_u64)
            .map(|v| v as u32)
    };
    let eos = id("tokenizer.ggml.eos_token_id");
    let tokenizer = match eos {
        Some(eos) => tokenizer.with_eos_token_ids(vec![eos]),
        None => tokenizer,
    };
    Ok(tokenizer
        .with_bos_token_id(id("tokenizer.ggml.bos_token_id"))
        .with_pad_token_id(id("tokenizer.ggml.padding_token_id")))
}
