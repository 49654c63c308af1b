//! Tokenizers: a wrapper over Hugging Face `tokenizers`, plus a built-in byte-level tokenizer
//! for synthetic tasks.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use crate::{Error, Result};

/// Special tokens of the built-in byte-level tokenizer, after the 256 byte tokens.
const BUILTIN_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// A text ⇄ token-id mapping (any Hugging Face `tokenizer.json`) with the ids kaizen needs to
/// know: end-of-sequence ids (generation stops on them), and optional BOS/pad ids.
///
/// Two ways to encode: [`Tokenizer::encode`] matches special-token strings (`<|im_end|>`) as
/// their special ids, for text a template or a user wrote as markup; [`Tokenizer::encode_text`]
/// encodes *content* (a message, an environment's reply, a completion's text) as plain text, so
/// that a literal marker string inside it can never end a turn or forge a role.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `inner` with special-token matching off (`encode_special_tokens = true`, Hugging Face's
    /// `split_special_tokens`), for [`Tokenizer::encode_text`].
    plain: Arc<tokenizers::Tokenizer>,
    eos_token_ids: Vec<u32>,
    bos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
}

impl Tokenizer {
    /// Wraps a `tokenizers::Tokenizer`. EOS ids default to the first of `<|im_end|>`,
    /// `<|endoftext|>`, `</s>`, `<|eot_id|>` that exists; set them with
    /// [`Tokenizer::with_eos_token_ids`] when the model says otherwise (e.g. `generation_config.json`).
    pub fn new(inner: tokenizers::Tokenizer) -> Self {
        let first = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let eos = first(&["<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>"]);
        let bos = first(&["<s>", "<|begin_of_text|>"]);
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        Self {
            eos_token_ids: eos.into_iter().collect(),
            bos_token_id: bos,
            pad_token_id: None,
            plain: Arc::new(plain),
            inner,
        }
    }

    /// Loads a `tokenizer.json`.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, [`Error::Tokenizer`] naming the file if it does
    /// not parse.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self::new(inner))
    }

    /// Parses the JSON text of a `tokenizer.json`.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] with the parser's message.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
        Ok(Self::new(inner))
    }

    /// The built-in byte-level tokenizer: one token per byte (ids 0–255, GPT-2's byte-to-unicode
    /// alphabet, a byte-level BPE without merges) and the special tokens `<|endoftext|>` (256),
    /// `<|im_start|>` (257) and `<|im_end|>` (258, the EOS). Any text round-trips; tests and
    /// synthetic tasks need no files.
    pub fn byte_level() -> Self {
        let json = builtin_json();
        // The JSON is built here from constants; it parses by construction (tested).
        let inner = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes())
            .expect("built-in tokenizer.json parses");
        Self::new(inner)
            .with_eos_token_ids(vec![258])
            .with_pad_token_id(Some(256))
    }

    /// Replaces the end-of-sequence ids.
    pub fn with_eos_token_ids(mut self, ids: Vec<u32>) -> Self {
        self.eos_token_ids = ids;
        self
    }

    /// Sets the BOS id.
    pub fn with_bos_token_id(mut self, id: Option<u32>) -> Self {
        self.bos_token_id = id;
        self
    }

    /// Sets the padding id.
    pub fn with_pad_token_id(mut self, id: Option<u32>) -> Self {
        self.pad_token_id = id;
        self
    }

    /// Ids that end a generation.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Beginning-of-sequence id, if the tokenizer has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// Padding id, if set.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string (e.g. `"<|im_end|>"`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes markup: special-token strings in `text` (e.g. `<|im_start|>`) become their
    /// special ids. `add_special_tokens` runs the tokenizer's post-processor (e.g. adds BOS).
    /// For content that must stay text whatever it contains, use [`Tokenizer::encode_text`].
    ///
    /// # Errors
    /// [`Error::Tokenizer`] with the library's message.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("encode: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Encodes content as plain text: a special-token string inside it (`<|im_end|>`) is
    /// tokenized like any other text, never as the special id, so a message, an environment's
    /// reply or a self-play opponent's text cannot end a turn or forge a role. Decoding the ids
    /// with specials kept gives `text` back. Text without special-token strings gets the same
    /// ids as [`Tokenizer::encode`]. No post-processing (no BOS). Only added tokens marked
    /// `special` in `tokenizer.json` are protected (as Hugging Face's `split_special_tokens`);
    /// a tokenizer that registers its chat markers as non-special added tokens still matches
    /// them.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] with the library's message.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .plain
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("encode: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes ids to text, optionally dropping special tokens. Ids outside the vocabulary are
    /// skipped; byte sequences that are not valid UTF-8 decode to U+FFFD.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] with the library's message.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let vocab = self.vocab_size() as u32;
        let known: Vec<u32> = ids.iter().copied().filter(|&t| t < vocab).collect();
        self.inner
            .decode(&known, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("decode: {e}")))
    }

    /// The tokenizer as `tokenizer.json` text.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if serialization fails.
    pub fn to_json_string(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| Error::Tokenizer(format!("serialize: {e}")))
    }

    /// Writes `tokenizer.json`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json_string()?).map_err(|e| Error::io(path, e))
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// GPT-2's reversible byte → printable-unicode map (printable Latin-1 bytes map to
/// themselves; the others to U+0100 onwards).
pub fn byte_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in map.iter_mut().enumerate() {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        *slot = if printable {
            char::from_u32(b as u32).unwrap_or('\0')
        } else {
            let c = char::from_u32(next).unwrap_or('\0');
            next += 1;
            c
        };
    }
    map
}

fn builtin_json() -> serde_json::Value {
    let alphabet = byte_to_unicode();
    let vocab: serde_json::Map<String, serde_json::Value> = alphabet
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = BUILTIN_SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": 256 + i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_round_trips_any_text() {
        let tok = Tokenizer::byte_level();
        assert_eq!(tok.vocab_size(), 259);
        for text in [
            "hello world",
            "  two  spaces\n\ttab",
            "naïve café 猫 🙂",
            "12+30=42",
            "",
        ] {
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(ids.len(), text.len(), "one id per byte for {text:?}");
            assert!(ids.iter().all(|&i| i < 256));
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
        assert_eq!(tok.encode("A", false).unwrap(), vec![b'A' as u32]);
    }

    #[test]
    fn special_tokens_are_single_ids() {
        let tok = Tokenizer::byte_level();
        let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
        assert_eq!(ids[0], 257);
        assert_eq!(*ids.last().unwrap(), 258);
        assert_eq!(tok.eos_token_ids(), &[258]);
        assert_eq!(tok.decode(&ids, true).unwrap(), "user\nhi");
    }

    #[test]
    fn builtin_serializes_and_reloads_identically() {
        let tok = Tokenizer::byte_level();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let back = Tokenizer::from_file(&path).unwrap();
        let text = "round trip ✓ <|im_end|>";
        assert_eq!(
            back.encode(text, false).unwrap(),
            tok.encode(text, false).unwrap()
        );
    }

    #[test]
    fn bad_tokenizer_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = Tokenizer::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
        let err = Tokenizer::from_file(dir.path().join("missing.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.json"), "{err}");
    }

    #[test]
    fn unknown_ids_are_skipped_when_decoding() {
        let tok = Tokenizer::byte_level();
        assert_eq!(
            tok.decode(&[b'o' as u32, 9999, b'k' as u32], false)
                .unwrap(),
            "ok"
        );
    }
}
