//! Reference-based translation metrics, for evaluation (never rewards): [`ChrF`] and BLEU,
//! matching sacrebleu 2.6.0 to 1e-6.

mod bleu;
mod chrf;

pub use bleu::{corpus_bleu, sentence_bleu, tokenize_13a};
pub use chrf::ChrF;
