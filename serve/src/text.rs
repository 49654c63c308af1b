//! Token ids back to text: each token's bytes (for `logprobs`), and the incremental text of a
//! stream (never a partial UTF-8 character, never the start of a stop string).

use std::collections::HashMap;

use kaizen_model::{Tokenizer, byte_to_unicode};

/// Maps token ids to the bytes they stand for.
pub struct TokenBytes {
    /// Byte-level BPE's printable stand-in characters back to bytes.
    unicode_to_byte: HashMap<char, u8>,
}

impl Default for TokenBytes {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenBytes {
    /// The inverse of GPT-2's byte-to-unicode table.
    pub fn new() -> Self {
        let unicode_to_byte = byte_to_unicode()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Self { unicode_to_byte }
    }

    /// The bytes token `id` decodes to: a byte-level token's characters mapped back to bytes,
    /// an added (special) token's text, otherwise the tokenizer's decoding of the id alone.
    pub fn bytes(&self, tokenizer: &Tokenizer, id: u32) -> Vec<u8> {
        let inner = tokenizer.inner();
        if let Some(piece) = inner.id_to_token(id) {
            let special = inner.get_added_tokens_decoder().contains_key(&id);
            if special {
                return piece.into_bytes();
            }
            let mapped: Option<Vec<u8>> = piece
                .chars()
                .map(|c| self.unicode_to_byte.get(&c).copied())
                .collect();
            if let Some(bytes) = mapped {
                return bytes;
            }
        }
        tokenizer
            .decode(&[id], false)
            .unwrap_or_default()
            .into_bytes()
    }

    /// The token as text (invalid UTF-8 — part of a character — shown lossily, as OpenAI does).
    pub fn text(&self, tokenizer: &Tokenizer, id: u32) -> (String, Vec<u8>) {
        let bytes = self.bytes(tokenizer, id);
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }
}

/// The text of a completion as its tokens arrive: [`Detokenizer::push`] returns what can be
/// shown now, [`Detokenizer::finish`] the rest given the final (stop-cut) text.
///
/// Decoding is incremental, as Hugging Face's text-generation-inference and vLLM do it: each push
/// decodes only the tokens since the last settled point, together with the tokens before it
/// (whose text is known) so a decoder that depends on context sees the same neighbourhood. A
/// window whose text ends in an unfinished UTF-8 character (U+FFFD) waits for the next token.
/// The cost per token is constant, not proportional to the completion so far.
pub struct Detokenizer {
    tokens: Vec<u32>,
    /// Start of the window decoded for context (its text is already in `text`).
    prefix_offset: usize,
    /// End of the settled tokens: their text is all in `text`.
    read_offset: usize,
    /// The settled text so far.
    text: String,
    /// Bytes of `text` already returned.
    sent: usize,
    /// Bytes held back so a stop string is never shown in part (longest stop − 1).
    holdback: usize,
}

impl Detokenizer {
    /// A detokenizer for a completion with these stop strings.
    pub fn new(stop: &[String]) -> Self {
        Self {
            tokens: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            text: String::new(),
            sent: 0,
            holdback: stop.iter().map(String::len).max().unwrap_or(1) - 1,
        }
    }

    /// Adds tokens; returns the new text that is safe to show (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, tokens: &[u32]) -> String {
        self.tokens.extend_from_slice(tokens);
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).unwrap_or_default();
        let prefix = decode(&self.tokens[self.prefix_offset..self.read_offset]);
        let window = decode(&self.tokens[self.prefix_offset..]);
        if !window.ends_with('\u{FFFD}') {
            match window.strip_prefix(prefix.as_str()) {
                Some(new) => self.text.push_str(new),
                // A decoder that rewrote the context's text: decode everything once.
                None => self.text = decode(&self.tokens),
            }
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
        }
        let mut end = self.text.len().saturating_sub(self.holdback);
        while end > 0 && !self.text.is_char_boundary(end) {
            end -= 1;
        }
        if end <= self.sent {
            return String::new();
        }
        let new = self.text[self.sent..end].to_string();
        self.sent = end;
        new
    }

    /// The text not yet returned, given the completion's final text.
    pub fn finish(&mut self, text: &str) -> String {
        let rest = text.get(self.sent..).unwrap_or_default().to_string();
        self.sent = text.len().max(self.sent);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_never_shows_half_a_character_or_the_start_of_a_stop_string() {
        let tok = Tokenizer::byte_level();
        let text = "héllo STOP more";
        let ids = tok.encode(text, false).unwrap();
        let stop = vec!["STOP".to_string()];
        let mut d = Detokenizer::new(&stop);
        let mut shown = String::new();
        for n in 1..=ids.len() {
            // The token that completes a stop string arrives only with the finished completion.
            if tok.decode(&ids[..n], true).unwrap().contains("STOP") {
                break;
            }
            let piece = d.push(&tok, &ids[n - 1..n]);
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            shown.push_str(&piece);
        }
        assert!(!shown.contains("ST"), "held back: {shown:?}");
        shown.push_str(&d.finish("héllo "));
        assert_eq!(shown, "héllo ");
    }

    #[test]
    fn token_bytes_concatenate_to_the_text() {
        let tok = Tokenizer::byte_level();
        let tb = TokenBytes::new();
        let ids = tok.encode("naïve café", false).unwrap();
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| tb.bytes(&tok, id)).collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), "naïve café");
    }

    #[test]
    fn incremental_text_equals_decoding_everything_at_once() {
        let tok = Tokenizer::byte_level();
        let text = "naïve 日本語 café — done";
        let ids = tok.encode(text, false).unwrap();
        for chunk in [1, 2, 3, 5] {
            let mut d = Detokenizer::new(&[]);
            let mut shown = String::new();
            for piece in ids.chunks(chunk) {
                let new = d.push(&tok, piece);
                assert!(!new.contains('\u{FFFD}'), "{new:?}");
                shown.push_str(&new);
                // Everything settled so far is shown: at most an unfinished character waits.
                let all = tok.decode(&d.tokens, true).unwrap();
                assert!(all.trim_end_matches('\u{FFFD}').starts_with(&shown));
            }
            assert_eq!(shown, text, "chunks of {chunk}");
        }
    }
}
