//! `translate`: machine translation with a self-judged reward (SSR-Zero style,
//! <https://arxiv.org/abs/2505.16637>).
//!
//! Turn 1: the `translator` translates a source sentence. Turn 2: a judging request (agent
//! `judge`, `trainable = false`, greedy) asks the same policy to score the translation from 0
//! to 100 against the source, without the reference. The translator's reward is score / 100;
//! a score that cannot be parsed gives 0 and `judge_unparsed = 1`. With `judge = "round_trip"`
//! ([`Judge::RoundTrip`]) the judging turn instead asks the policy to translate the translation
//! back, and the reward is chrF(back-translation, source) / 100. When a reference exists,
//! chrF and BLEU (sacrebleu-exact) are reported as metrics, never as rewards.
//!
//! Reference-free signs of reward hacking are logged with every episode: `source_chrf`, the
//! chrF of the translation against the *source* (a copy of the source scores 100), and
//! `length_ratio` (translation characters / source characters). `max_source_chrf` guards
//! against one hack of a self-judged translator, leaving the sentence untranslated: a
//! translation whose `source_chrf` reaches it earns 0 and counts in `copy_guarded`.
//! `min_length_ratio` / `max_length_ratio` guard against another, a reply of a few words (or a
//! rambling one) that a weak judge scores anyway: it earns 0 and counts in `length_guarded`.
//! `judge_fractions` reads a judge's `0.85` as 85 out of 100.
//!
//! Sentences come from the built-in English ↔ Zelan generator
//! ([`super::synthetic_language`]) or from a user file of pairs: TSV (`source<TAB>reference`,
//! reference optional) or JSONL (`{"source": ..., "reference": ...}`).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use kaizen_core::{AgentId, Message, Outcome, SamplingOverrides, Step};
use serde::{Deserialize, Serialize};

use super::synthetic_language::sentence_pair;
use crate::metrics::{ChrF, sentence_bleu};
use crate::rewards::{parse_judge_score, parse_judge_score_reading_fractions};
use crate::{Dialogue, Env, EnvFactory, Error, Result, parse_params};

/// The agent that translates.
pub const TRANSLATOR: &str = "translator";
/// The agent that judges (answered by the policy, not trained).
pub const JUDGE: &str = "judge";

/// The top of the judge's scale.
const MAX_SCORE: f64 = 100.0;

/// Who judges the translation, and how. A judge is the policy itself, answering an untrained,
/// greedy turn without the reference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Judge {
    /// SSR-Zero (Yang et al. 2025, §3): the policy rates the translation from 0 to 100 against
    /// the source; reward = score / 100.
    #[default]
    Score,
    /// Round-trip consistency (dual learning, He et al. 2016, <https://arxiv.org/abs/1611.00179>):
    /// the policy translates its translation back into the source language, and
    /// reward = chrF(back-translation, source) / 100 ∈ [0, 1]. A judge a small model can do
    /// (translating) instead of one it cannot (rating). Copying the source round-trips
    /// perfectly, so this judge needs `max_source_chrf`.
    RoundTrip,
    /// No judging turn: every translation the guards pass earns 1 (times the
    /// `source_overlap_penalty` factor). An ablation that measures what the guards alone teach.
    None,
}

/// Which way the built-in language pair is translated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// English to Zelan.
    #[default]
    #[serde(rename = "en-zl")]
    EnglishToZelan,
    /// Zelan to English.
    #[serde(rename = "zl-en")]
    ZelanToEnglish,
}

/// Parameters of `translate` (its TOML table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranslateConfig {
    /// A TSV or JSONL file of sentence pairs; without it, the built-in language pair is used.
    #[serde(default)]
    pub pairs: Option<PathBuf>,
    /// Direction of the built-in pair.
    #[serde(default)]
    pub direction: Direction,
    /// Source language name shown to the model (defaults follow `direction`).
    #[serde(default)]
    pub source_language: Option<String>,
    /// Target language name shown to the model.
    #[serde(default)]
    pub target_language: Option<String>,
    /// Example pairs (from other seeds of the built-in generator) shown before the sentence.
    #[serde(default)]
    pub shots: usize,
    /// Who judges ([`Judge`]): `"score"` (SSR-Zero's 0–100 rating, the default),
    /// `"round_trip"` (chrF of the policy's back-translation against the source) or `"none"`
    /// (the guards alone, an ablation).
    #[serde(default)]
    pub judge: Judge,
    /// The translation is one line: the translator's turn stops at its first newline (a stop
    /// string), as an interface message or a sentence is written. Off by default.
    #[serde(default)]
    pub single_line: bool,
    /// Token budget of the judging turn.
    #[serde(default = "default_judge_max_tokens")]
    pub judge_max_tokens: usize,
    /// Guard: a translation whose chrF against the source (0–100) is at least this earns 0
    /// whatever the judge says (`copy_guarded = 1`). Unset: no guard.
    #[serde(default)]
    pub max_source_chrf: Option<f64>,
    /// Soft guard against partial copies (a judge that rewards what the translation shares
    /// with the source, such as [`Judge::RoundTrip`]): the reward is multiplied by
    /// (1 − source_chrf / 100)^p for this p ≥ 0 (0, the default: off). At p = 2 the reward's
    /// within-group rank correlation with `source_chrf` was ≈ 0 on SmolLM2's samples
    /// (BENCHMARKS.md, SSR-Zero with a round-trip judge).
    #[serde(default)]
    pub source_overlap_penalty: f64,
    /// Guard: a translation with fewer characters than this many per source character earns 0
    /// whatever the judge says (`length_guarded = 1`). Against the hack of a few words a weak
    /// judge answers with a number (BENCHMARKS.md, SSR-Zero: `length_ratio` 3.99 → 0.31).
    /// Unset: no guard.
    #[serde(default)]
    pub min_length_ratio: Option<f64>,
    /// Guard: a translation with more characters than this many per source character earns 0
    /// (`length_guarded = 1`): a continuation that rambles past the sentence. Unset: no guard.
    #[serde(default)]
    pub max_length_ratio: Option<f64>,
    /// Read a judge's score written as a decimal fraction of one (`0.85`) on a 0–1 scale
    /// instead of 0–100 ([`crate::rewards::parse_judge_score_reading_fractions`]).
    #[serde(default)]
    pub judge_fractions: bool,
}

fn default_judge_max_tokens() -> usize {
    32
}

impl Default for TranslateConfig {
    fn default() -> Self {
        Self {
            pairs: None,
            direction: Direction::default(),
            source_language: None,
            target_language: None,
            shots: 0,
            judge: Judge::default(),
            single_line: false,
            judge_max_tokens: default_judge_max_tokens(),
            max_source_chrf: None,
            source_overlap_penalty: 0.0,
            min_length_ratio: None,
            max_length_ratio: None,
            judge_fractions: false,
        }
    }
}

/// One sentence to translate, with its reference translation when known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentenceToTranslate {
    /// The sentence in the source language.
    pub source: String,
    /// A reference translation.
    #[serde(default)]
    pub reference: Option<String>,
}

/// Reads sentence pairs from TSV (`source<TAB>reference`) or, for `.jsonl` files, JSON lines.
///
/// # Errors
/// [`Error::Io`] when unreadable; [`Error::Data`] naming the line for a malformed one or an
/// empty file.
pub fn read_pairs(path: &Path) -> Result<Vec<SentenceToTranslate>> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let data = |line: usize, message: String| Error::Data {
        path: path.to_path_buf(),
        line,
        message,
    };
    let jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let pair = if jsonl {
            serde_json::from_str::<SentenceToTranslate>(&line).map_err(|e| {
                data(
                    i + 1,
                    format!("expected {{\"source\", \"reference\"}}: {e}"),
                )
            })?
        } else {
            let mut cols = line.split('\t');
            let source = cols.next().unwrap_or("").trim().to_string();
            let reference = cols
                .next()
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty());
            SentenceToTranslate { source, reference }
        };
        if pair.source.trim().is_empty() {
            return Err(data(i + 1, "empty source sentence".into()));
        }
        out.push(pair);
    }
    if out.is_empty() {
        return Err(data(0, "no sentence pairs".into()));
    }
    Ok(out)
}

struct Shared {
    pairs: Option<Arc<[SentenceToTranslate]>>,
    config: TranslateConfig,
    source_language: String,
    target_language: String,
}

impl Shared {
    fn sentence(&self, seed: u64) -> SentenceToTranslate {
        match &self.pairs {
            Some(pairs) => pairs[(seed % pairs.len() as u64) as usize].clone(),
            None => {
                let p = sentence_pair(seed);
                let (source, reference) = match self.config.direction {
                    Direction::EnglishToZelan => (p.english, p.zelan),
                    Direction::ZelanToEnglish => (p.zelan, p.english),
                };
                SentenceToTranslate {
                    source,
                    reference: Some(reference),
                }
            }
        }
    }
}

/// Makes `translate` episodes.
#[derive(Clone)]
pub struct TranslateFactory {
    shared: Arc<Shared>,
}

impl TranslateFactory {
    /// A factory over the built-in pair or `pairs` (when given).
    ///
    /// # Errors
    /// [`Error::Params`] when `judge_max_tokens` is 0, `max_source_chrf` is not in (0, 100], or
    /// the length ratios are not finite and positive with `min_length_ratio < max_length_ratio`.
    pub fn new(config: TranslateConfig, pairs: Option<Vec<SentenceToTranslate>>) -> Result<Self> {
        let bad = |message: &str| Error::Params {
            env: "translate".into(),
            message: message.into(),
        };
        if config.judge_max_tokens == 0 {
            return Err(bad("`judge_max_tokens` must be at least 1"));
        }
        if config
            .max_source_chrf
            .is_some_and(|m| !(m > 0.0 && m <= 100.0))
        {
            return Err(bad("`max_source_chrf` must be in (0, 100] (a chrF score)"));
        }
        if !(config.source_overlap_penalty.is_finite() && config.source_overlap_penalty >= 0.0) {
            return Err(bad(&format!(
                "`source_overlap_penalty` must be a finite exponent >= 0, got {}",
                config.source_overlap_penalty
            )));
        }
        if config.judge_fractions && config.judge != Judge::Score {
            return Err(bad(
                "`judge_fractions` reads the rating judge's score; it needs `judge = \"score\"`",
            ));
        }
        for (field, ratio) in [
            ("min_length_ratio", config.min_length_ratio),
            ("max_length_ratio", config.max_length_ratio),
        ] {
            if ratio.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                return Err(bad(&format!(
                    "`{field}` must be a positive number (translation characters per source character), got {}",
                    ratio.unwrap_or_default()
                )));
            }
        }
        if let (Some(min), Some(max)) = (config.min_length_ratio, config.max_length_ratio)
            && min >= max
        {
            return Err(bad(&format!(
                "`min_length_ratio` ({min}) must be below `max_length_ratio` ({max})"
            )));
        }
        let (default_source, default_target) = match (&pairs, config.direction) {
            (Some(_), _) => ("the source language", "the target language"),
            (None, Direction::EnglishToZelan) => ("English", "Zelan"),
            (None, Direction::ZelanToEnglish) => ("Zelan", "English"),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                source_language: config
                    .source_language
                    .clone()
                    .unwrap_or(default_source.into()),
                target_language: config
                    .target_language
                    .clone()
                    .unwrap_or(default_target.into()),
                pairs: pairs.map(Into::into),
                config,
            }),
        })
    }

    /// A factory from a TOML table (see [`TranslateConfig`]).
    ///
    /// # Errors
    /// [`Error::Params`] for unknown or invalid fields; pair-file read errors.
    pub fn from_params(env: &str, params: &toml::Table) -> Result<Self> {
        let config: TranslateConfig = parse_params(env, params)?;
        let pairs = config.pairs.as_deref().map(read_pairs).transpose()?;
        Self::new(config, pairs)
    }
}

impl EnvFactory for TranslateFactory {
    fn make(&self) -> Box<dyn Env> {
        Box::new(Translate {
            shared: self.shared.clone(),
            sentence: None,
            translation: None,
            dialogue: Dialogue::new(),
        })
    }
}

struct Translate {
    shared: Arc<Shared>,
    sentence: Option<SentenceToTranslate>,
    translation: Option<String>,
    dialogue: Dialogue,
}

impl Translate {
    /// The judging turn, or `None` for [`Judge::None`] (the episode ends at the translation).
    fn judge_request(&mut self, translation: &str) -> Result<Option<Step>> {
        let s = &self.shared;
        let source = &self.sentence.as_ref().ok_or(Error::NoEpisode)?.source;
        let prompt = match s.config.judge {
            Judge::Score => format!(
                "You are judging a translation from {} to {}.\n\nSource: {source}\nTranslation: {}\n\n\
                 Rate the translation's accuracy and fluency from 0 to 100. Reply in the form `Score: N`.",
                s.source_language,
                s.target_language,
                translation.trim()
            ),
            // The translator's own prompt, the other way round: no hint of the source.
            Judge::RoundTrip => translation_prompt(
                &s.target_language,
                &s.source_language,
                "",
                translation.trim(),
            ),
            Judge::None => return Ok(None),
        };
        let sampling = SamplingOverrides {
            temperature: Some(0.0),
            max_new_tokens: Some(s.config.judge_max_tokens),
            ..SamplingOverrides::default()
        };
        let request = self
            .dialogue
            .ask(JUDGE, [Message::user(prompt)])
            .untrained()
            .with_sampling(sampling);
        Ok(Some(Step::Request(request)))
    }

    fn outcome(&self, judge_text: &str) -> Result<Outcome> {
        let sentence = self.sentence.as_ref().ok_or(Error::NoEpisode)?;
        let translation = self.translation.as_deref().unwrap_or("").trim();
        let config = &self.shared.config;
        let score = match config.judge {
            Judge::Score if config.judge_fractions => {
                parse_judge_score_reading_fractions(judge_text, MAX_SCORE)
            }
            Judge::Score => parse_judge_score(judge_text, MAX_SCORE),
            // The first line: a back-translation that runs on past the sentence is cut there.
            Judge::RoundTrip => {
                let back = judge_text.trim().lines().next().unwrap_or("").trim();
                (!back.is_empty())
                    .then(|| ChrF::default().sentence(back, &sentence.source) / MAX_SCORE)
            }
            Judge::None => Some(1.0),
        };
        let judged = score.unwrap_or(0.0);
        let source_chrf = ChrF::default().sentence(translation, &sentence.source);
        let length_ratio =
            translation.chars().count() as f64 / sentence.source.chars().count().max(1) as f64;
        let guarded = config.max_source_chrf.is_some_and(|max| source_chrf >= max);
        let length_guarded = config
            .min_length_ratio
            .is_some_and(|min| length_ratio < min)
            || config
                .max_length_ratio
                .is_some_and(|max| length_ratio > max);
        let reward = if guarded || length_guarded {
            0.0
        } else {
            // x^0 = 1: no penalty by default.
            judged
                * (1.0 - source_chrf / 100.0)
                    .max(0.0)
                    .powf(config.source_overlap_penalty)
        };
        let mut outcome = Outcome::single(TRANSLATOR, vec![reward as f32]);
        if config.judge != Judge::None {
            outcome.rewards.insert(AgentId::new(JUDGE), vec![0.0]);
        }
        outcome.metrics.insert("judge_score".into(), judged);
        outcome.metrics.insert("source_chrf".into(), source_chrf);
        outcome.metrics.insert("length_ratio".into(), length_ratio);
        if config.max_source_chrf.is_some() {
            outcome
                .metrics
                .insert("copy_guarded".into(), f64::from(u8::from(guarded)));
        }
        if config.min_length_ratio.is_some() || config.max_length_ratio.is_some() {
            outcome
                .metrics
                .insert("length_guarded".into(), f64::from(u8::from(length_guarded)));
        }
        outcome.metrics.insert(
            "judge_unparsed".into(),
            f64::from(u8::from(score.is_none())),
        );
        if let Some(reference) = &sentence.reference {
            outcome.metrics.insert(
                "chrf".into(),
                ChrF::default().sentence(translation, reference),
            );
            outcome
                .metrics
                .insert("bleu".into(), sentence_bleu(translation, reference));
        }
        outcome.info = serde_json::json!({
            "source": sentence.source,
            "reference": sentence.reference,
            "translation": translation,
        });
        Ok(outcome)
    }
}

/// The request to translate `text` from `from` to `to` after the example pairs `shots`
/// (each `"{from}: ..\n{to}: ..\n\n"`), ending with `"{to}:"` for the reply.
fn translation_prompt(from: &str, to: &str, shots: &str, text: &str) -> String {
    format!(
        "Translate the following sentence from {from} to {to}. Reply with the translation only.\n\n\
         {shots}{from}: {text}\n{to}:"
    )
}

#[async_trait]
impl Env for Translate {
    async fn reset(&mut self, seed: u64) -> Result<Step> {
        let s = self.shared.clone();
        let sentence = s.sentence(seed);
        let mut shots = String::new();
        for k in 1..=s.config.shots as u64 {
            let example = s.sentence(seed.wrapping_add(k.wrapping_mul(0x9E37_79B9)));
            if let Some(reference) = &example.reference {
                shots.push_str(&format!(
                    "{}: {}\n{}: {reference}\n\n",
                    s.source_language, example.source, s.target_language
                ));
            }
        }
        let prompt = translation_prompt(
            &s.source_language,
            &s.target_language,
            &shots,
            &sentence.source,
        );
        self.dialogue = Dialogue::new();
        self.sentence = Some(sentence);
        self.translation = None;
        let mut request = self.dialogue.ask(TRANSLATOR, [Message::user(prompt)]);
        if s.config.single_line {
            request.sampling.stop.push("\n".into());
        }
        Ok(Step::Request(request))
    }

    async fn step(&mut self, agent: &AgentId, text: &str) -> Result<Step> {
        self.dialogue.answer(agent, text)?;
        if self.translation.is_none() {
            self.translation = Some(text.to_string());
            if let Some(judging) = self.judge_request(text)? {
                return Ok(judging);
            }
        }
        self.dialogue.finish();
        Ok(Step::Done(self.outcome(text)?))
    }

    fn expert_answer(&self) -> Option<String> {
        let reference = self.sentence.as_ref()?.reference.as_ref()?;
        match self.dialogue.pending()?.as_str() {
            TRANSLATOR => Some(reference.clone()),
            _ => match self.shared.config.judge {
                Judge::Score => {
                    let chrf =
                        ChrF::default().sentence(self.translation.as_deref()?.trim(), reference);
                    Some(format!("Score: {}", chrf.round()))
                }
                Judge::RoundTrip => Some(self.sentence.as_ref()?.source.clone()),
                Judge::None => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EpisodeLimits, demonstrate};
    use std::io::Write;

    async fn play(
        factory: &TranslateFactory,
        seed: u64,
        translation: &str,
        judge: &str,
    ) -> (Outcome, Vec<kaizen_core::Request>) {
        let mut env = factory.make();
        let Step::Request(first) = env.reset(seed).await.unwrap() else {
            panic!()
        };
        let Step::Request(judging) = env.step(&first.agent, translation).await.unwrap() else {
            panic!()
        };
        let Step::Done(o) = env.step(&judging.agent, judge).await.unwrap() else {
            panic!()
        };
        (o, vec![first, judging])
    }

    #[tokio::test]
    async fn the_judges_score_is_the_reward_and_metrics_use_the_reference() {
        let factory = TranslateFactory::new(TranslateConfig::default(), None).unwrap();
        let reference = sentence_pair(5).zelan;
        let (o, requests) = play(&factory, 5, &reference, "Score: 85").await;
        assert_eq!(o.rewards[&AgentId::new(TRANSLATOR)], vec![0.85]);
        assert_eq!(o.rewards[&AgentId::new(JUDGE)], vec![0.0]);
        assert_eq!(o.metrics["chrf"], 100.0);
        assert!((o.metrics["bleu"] - 100.0).abs() < 1e-9);
        assert_eq!(o.metrics["judge_unparsed"], 0.0);
        assert!(
            requests[0].sampling.stop.is_empty(),
            "several lines by default"
        );
        let judging = &requests[1];
        assert!(!judging.trainable);
        assert_eq!(judging.sampling.temperature, Some(0.0));
        assert!(
            judging.messages[0]
                .content
                .contains(&sentence_pair(5).english)
        );
        let (_, requests) = play(&factory, 5, "Miro.", "Score: 10").await;
        assert!(
            !requests[1].messages[0].content.contains(&reference),
            "the judge never sees the reference"
        );
    }

    #[tokio::test]
    async fn the_round_trip_judge_back_translates_without_the_source_and_scores_chrf() {
        let config = TranslateConfig {
            judge: Judge::RoundTrip,
            max_source_chrf: Some(60.0),
            single_line: true,
            ..TranslateConfig::default()
        };
        let factory = TranslateFactory::new(config, None).unwrap();
        let pair = sentence_pair(5);
        let (o, requests) = play(&factory, 5, &pair.zelan, &pair.english).await;
        assert_eq!(requests[0].sampling.stop, vec!["\n".to_string()]);
        assert!(requests[1].sampling.stop.is_empty());
        let judging = &requests[1];
        assert_eq!(judging.agent, AgentId::new(JUDGE));
        assert!(!judging.trainable);
        assert_eq!(judging.sampling.temperature, Some(0.0));
        let asked = &judging.messages[0].content;
        assert!(
            asked.contains("from Zelan to English") && asked.contains(&pair.zelan),
            "{asked}"
        );
        assert!(
            !asked.contains(&pair.english),
            "the back-translator never sees the source"
        );
        assert_eq!(o.rewards[&AgentId::new(TRANSLATOR)], vec![1.0]);
        assert_eq!(o.metrics["judge_score"], 1.0);
        assert_eq!(o.metrics["judge_unparsed"], 0.0);

        // Only the first line counts; a worse back-translation scores less.
        let words: Vec<&str> = pair.english.split(' ').collect();
        let half = words[..words.len() / 2].join(" ");
        let (o, _) = play(
            &factory,
            5,
            &pair.zelan,
            &format!("{half}\n{}", pair.english),
        )
        .await;
        let reward = f64::from(o.rewards[&AgentId::new(TRANSLATOR)][0]);
        let want = ChrF::default().sentence(&half, &pair.english) / 100.0;
        assert!(
            (reward - want).abs() < 1e-6 && reward < 1.0,
            "{reward} {want}"
        );

        // Copying the source round-trips perfectly; the copy guard zeroes it.
        let (o, _) = play(&factory, 5, &pair.english, &pair.english).await;
        assert_eq!(o.metrics["judge_score"], 1.0);
        assert_eq!(o.rewards[&AgentId::new(TRANSLATOR)], vec![0.0]);
        // The soft guard scales the reward by (1 - source_chrf / 100)^p.
        let partial = format!("{} {}", pair.zelan, words[0]);
        let penalised = TranslateFactory::new(
            TranslateConfig {
                judge: Judge::RoundTrip,
                source_overlap_penalty: 2.0,
                ..TranslateConfig::default()
            },
            None,
        )
        .unwrap();
        let (o, _) = play(&penalised, 5, &partial, &pair.english).await;
        let overlap = o.metrics["source_chrf"];
        assert!(overlap > 0.0, "{overlap}");
        let want = (1.0 - overlap / 100.0).powi(2);
        let reward = f64::from(o.rewards[&AgentId::new(TRANSLATOR)][0]);
        assert!((reward - want).abs() < 1e-6, "{reward} {want}");
        assert_eq!(
            o.metrics["judge_score"], 1.0,
            "the judge's score is logged unscaled"
        );
        // An empty back-translation is no judgement.
        let (o, _) = play(&factory, 5, &pair.zelan, "  ").await;
        assert_eq!(o.metrics["judge_unparsed"], 1.0);
        assert_eq!(o.rewards[&AgentId::new(TRANSLATOR)], vec![0.0]);

        let mut params = toml::Table::new();
        params.insert("judge".into(), "round_trip".into());
        assert!(TranslateFactory::from_params("translate", &params).is_ok());
        // Without a judge the episode ends at the translation, and the guards alone reward.
        let unjudged = TranslateFactory::new(
            TranslateConfig {
                judge: Judge::None,
                max_source_chrf: Some(60.0),
                source_overlap_penalty: 2.0,
                ..TranslateConfig::default()
            },
            None,
        )
        .unwrap();
        for (text, copied) in [
            (&pair.zelan, false),
            (&partial, false),
            (&pair.english, true),
        ] {
            let mut env = unjudged.make();
            let Step::Request(first) = env.reset(5).await.unwrap() else {
                panic!()
            };
            let Step::Done(o) = env.step(&first.agent, text).await.unwrap() else {
                panic!("no judging turn")
            };
            let reward = f64::from(o.rewards[&AgentId::new(TRANSLATOR)][0]);
            let overlap = o.metrics["source_chrf"];
            let want = if copied {
                0.0
            } else {
                (1.0 - overlap / 100.0).powi(2)
            };
            assert!((reward - want).abs() < 1e-6, "{text}: {reward} {want}");
            assert!(!o.rewards.contains_key(&AgentId::new(JUDGE)));
        }

        params.insert("source_overlap_penalty".into(), (-1.0).into());
        let err = TranslateFactory::from_params("translate", &params)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("source_overlap_penalty"), "{err}");
        params.remove("source_overlap_penalty");
        params.insert("judge_fractions".into(), true.into());
        let err = TranslateFactory::from_params("translate", &params)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("judge_fractions"), "{err}");
        params.remove("judge_fractions");
        params.insert("judge".into(), "vibes".into());
        let err = TranslateFactory::from_params("translate", &params)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("judge"), "{err}");
    }

    #[tokio::test]
    async fn an_unparseable_score_is_zero_and_counted() {
        let factory = TranslateFactory::new(TranslateConfig::default(), None).unwrap();
        let (o, _) = play(&factory, 1, "", "I like it").await;
        assert_eq!(o.rewards[&AgentId::new(TRANSLATOR)], vec![0.0]);
        assert_eq!(o.metrics["judge_unparsed"], 1.0);
        assert_eq!(o.metrics["chrf"], 0.0);
    }

    #[tokio::test]
    async fn the_copy_guard_zeroes_an_untranslated_sentence_whatever_the_judge_says() {
        let config = |max_source_chrf| TranslateConfig {
            max_source_chrf,
            ..TranslateConfig::default()
        };
        let source = sentence_pair(5).english;
        let unguarded = TranslateFactory::new(config(None), None).unwrap();
        let (o, _) = play(&unguarded, 5, &source, "Score: 95").await;
        assert_eq!(o.rewards[&AgentId::new(TRANSLATOR)], vec![0.95]);
        assert_eq!(o.metrics["source_chrf"], 100.0);
        assert_eq!(o.metrics["length_ratio"], 1.0);
        assert!(!o.metrics.contains_key("copy_guarded"));

        let guarded = TranslateFactory::new(config(Some(70.0)), None).unwrap();
        let (o, _) = play(&guarded, 5, &source, "Score: 95").await;
        assert_eq!(o.rewards[&AgentId::new(TRANSLATOR)], vec![0.0]);
        assert_eq!(
            o.metrics["judge_score"], 0.95,
            "the judge's score is still logged"
        );
        assert_eq!(o.metrics["copy_guarded"], 1.0);
        let reference = sentence_pair(5).zelan;
        let (o, _) = play(&guarded, 5, &reference, "Score: 95").await;
        assert!(
            o.metrics["source_chrf"] < 70.0,
            "{}",
            o.metrics["source_chrf"]
        );
        assert_eq!(o.rewards[&AgentId::new(TRANSLATOR)], vec![0.95]);
        assert_eq!(o.metrics["copy_guarded"], 0.0);

        for bad in [0.0, 101.0, f64::NAN] {
            let err = TranslateFactory::new(config(Some(bad)), None)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("max_source_chrf"), "{err}");
        }
    }

    #[tokio::test]
    async fn the_length_guards_zero_a_stub_or_a_ramble_and_fractions_read_on_their_scale() {
        let config = |min, max, judge_fractions| TranslateConfig {
            min_length_ratio: min,
            max_length_ratio: max,
            judge_fractions,
            ..TranslateConfig::default()
        };
        let reference = sentence_pair(5).zelan;
        let stub: String = reference.chars().take(3).collect();
        let ramble = format!("{reference} {reference} {reference}");
        let guarded = TranslateFactory::new(config(Some(0.5), Some(2.0), false), None).unwrap();
        for (text, want_guarded) in [(&stub, true), (&ramble, true), (&reference, false)] {
            let (o, _) = play(&guarded, 5, text, "Score: 90").await;
            let reward = o.rewards[&AgentId::new(TRANSLATOR)][0];
            assert_eq!(
                o.metrics["length_guarded"],
                f64::from(u8::from(want_guarded)),
                "{text}"
            );
            assert_eq!(reward, if want_guarded { 0.0 } else { 0.9 }, "{text}");
            assert_eq!(
                o.metrics["judge_score"], 0.9,
                "the judge's score is still logged"
            );
        }
        let unguarded = TranslateFactory::new(config(None, None, false), None).unwrap();
        let (o, _) = play(&unguarded, 5, &stub, "0.99").await;
        assert!(!o.metrics.contains_key("length_guarded"));
        assert!((o.rewards[&AgentId::new(TRANSLATOR)][0] - 0.0099).abs() < 1e-6);
        let fractions = TranslateFactory::new(config(None, None, true), None).unwrap();
        let (o, _) = play(&fractions, 5, &stub, "0.99").await;
        assert!((o.rewards[&AgentId::new(TRANSLATOR)][0] - 0.99).abs() < 1e-6);

        for (min, max, field) in [
            (Some(0.0), None, "min_length_ratio"),
            (None, Some(f64::INFINITY), "max_length_ratio"),
            (Some(2.0), Some(1.0), "min_length_ratio"),
        ] {
            let err = TranslateFactory::new(config(min, max, false), None)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[tokio::test]
    async fn user_pairs_from_tsv_and_jsonl() {
        let mut tsv = tempfile::Builder::new().suffix(".tsv").tempfile().unwrap();
        writeln!(tsv, "Guten Morgen.\tGood morning.\nDanke\t").unwrap();
        let pairs = read_pairs(tsv.path()).unwrap();
        assert_eq!(pairs[1].reference, None);
        let mut params = toml::Table::new();
        params.insert("pairs".into(), tsv.path().display().to_string().into());
        let factory = TranslateFactory::from_params("translate", &params).unwrap();
        let (o, _) = play(&factory, 0, "Good morning.", "90/100").await;
        assert_eq!(o.metrics["chrf"], 100.0);
        let (o, _) = play(&factory, 1, "Thanks", "Score: 100").await;
        assert!(!o.metrics.contains_key("chrf"), "no reference, no metric");

        let mut jsonl = tempfile::Builder::new()
            .suffix(".jsonl")
            .tempfile()
            .unwrap();
        writeln!(jsonl, r#"{{"source":"chat","reference":"cat"}}"#).unwrap();
        writeln!(jsonl, r#"{{"text":"chien"}}"#).unwrap();
        let err = read_pairs(jsonl.path()).unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("source"), "{err}");
    }

    #[tokio::test]
    async fn shots_show_examples_and_the_expert_scores_100() {
        let config = TranslateConfig {
            shots: 2,
            direction: Direction::ZelanToEnglish,
            ..TranslateConfig::default()
        };
        let factory = TranslateFactory::new(config, None).unwrap();
        let mut env = factory.make();
        let Step::Request(r) = env.reset(3).await.unwrap() else {
            panic!()
        };
        assert_eq!(r.messages[0].content.matches("English:").count(), 3);
        let ep = demonstrate(factory.make(), 3, EpisodeLimits::default()).await;
        let o = ep.outcome().unwrap();
        assert_eq!(o.rewards[&AgentId::new(TRANSLATOR)], vec![1.0]);
        assert_eq!(ep.turns[0].answer, sentence_pair(3).english);
    }
}
