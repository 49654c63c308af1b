use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ProblemGenerator;
use crate::rewards::VerifierKind;
use crate::{Error, Result};

/// One problem with its gold answer.
///
/// On disk this is one JSONL line, GSM8K style: `{"question": "...", "answer": "42"}`, with
/// optional `verifier` (`"math"`, `"knights_knaves"`, `"exact"`), `steps` (a correct
/// step-by-step solution, one `expression = value` per entry), `twin` (the same problem asked
/// another way, with the same answer: Co-Reward's rephrased question) and `metadata` (kept as
/// is).
/// Other fields are ignored. A numeric `answer` is read as its decimal text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// The question as shown to the model.
    pub question: String,
    /// The gold answer (may be `... #### 42` as in GSM8K; verifiers find the final answer).
    #[serde(deserialize_with = "string_or_number")]
    pub answer: String,
    /// Which built-in check compares answers.
    #[serde(default)]
    pub verifier: VerifierKind,
    /// A correct step-by-step solution, when known (one `expression = value` per step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<String>,
    /// The same problem asked another way, with the same gold answer (Co-Reward's rephrased
    /// twin, Zhang et al. 2025): asked instead of `question` by environments told to
    /// (`self_correct`'s `ask = "twin"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin: Option<String>,
    /// Source details (dataset, index, difficulty...), not interpreted.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
}

impl Problem {
    /// The expert's answer: each known step on its own line, then `The answer is
    /// \boxed{<answer>}` (the gold answer's final-answer span). Used for demonstrations.
    pub fn worked_solution(&self) -> String {
        let mut text = String::new();
        for step in &self.steps {
            text.push_str(step);
            text.push('\n');
        }
        text.push_str(&format!(
            "The answer is \\boxed{{{}}}.",
            crate::rewards::final_answer_span(&self.answer)
        ));
        text
    }
}

impl Problem {
    /// The gold answer as a hint for rationalisation (STaR): `The correct final answer is
    /// <answer>.`, the answer being the gold answer's final-answer span.
    pub fn hint(&self) -> String {
        format!(
            "Hint: the correct final answer is {}.",
            crate::rewards::final_answer_span(&self.answer)
        )
    }
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "`answer` must be a string or a number, got {other}"
        ))),
    }
}

/// Where an environment's problems come from: a fixed list (a JSONL file) or a procedural
/// generator. The problem of an episode depends only on its seed.
#[derive(Debug, Clone)]
pub struct ProblemSet {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    Fixed(Arc<[Problem]>),
    Generated(ProblemGenerator),
}

impl ProblemSet {
    /// A fixed set; seed `s` plays problem `s % len`.
    ///
    /// # Errors
    /// [`Error::Env`] when `problems` is empty.
    pub fn from_problems(problems: Vec<Problem>) -> Result<Self> {
        if problems.is_empty() {
            return Err(Error::Env(
                "a problem set needs at least one problem".into(),
            ));
        }
        Ok(Self {
            source: Source::Fixed(problems.into()),
        })
    }

    /// Reads a JSONL file of [`Problem`]s (blank lines skipped).
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read, [`Error::Data`] naming the line and field
    /// when a line is not a problem, [`Error::Env`] when the file has no problems.
    pub fn from_jsonl(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut problems = Vec::new();
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(io)?;
            if line.trim().is_empty() {
                continue;
            }
            let problem: Problem = serde_json::from_str(&line).map_err(|e| Error::Data {
                path: path.to_path_buf(),
                line: i + 1,
                message: format!("not a problem ({{\"question\", \"answer\", ...}}): {e}"),
            })?;
            problems.push(problem);
        }
        Self::from_problems(problems).map_err(|_| Error::Data {
            path: path.to_path_buf(),
            line: 0,
            message: "the file has no problems".into(),
        })
    }

    /// Problems made on the fly by `generator`.
    pub fn generated(generator: ProblemGenerator) -> Self {
        Self {
            source: Source::Generated(generator),
        }
    }

    /// The set an environment's parameters name: `problems = "file.jsonl"` or
    /// `generator = { family = "...", difficulty = "..." }`; neither means the default
    /// generator (easy arithmetic).
    ///
    /// # Errors
    /// [`Error::Params`] when both are given; the errors of [`ProblemSet::from_jsonl`].
    pub fn from_params(
        env: &str,
        problems: Option<&PathBuf>,
        generator: Option<ProblemGenerator>,
    ) -> Result<Self> {
        match (problems, generator) {
            (Some(_), Some(_)) => Err(Error::Params {
                env: env.to_string(),
                message: "give either `problems` (a JSONL file) or `generator`, not both".into(),
            }),
            (Some(path), None) => Self::from_jsonl(path),
            (None, generator) => Ok(Self::generated(generator.unwrap_or_default())),
        }
    }

    /// The problem of the episode with this seed.
    pub fn problem(&self, seed: u64) -> Problem {
        match &self.source {
            Source::Fixed(problems) => problems[(seed % problems.len() as u64) as usize].clone(),
            Source::Generated(generator) => generator.generate(seed),
        }
    }

    /// Number of problems of a fixed set (`None` for a generator).
    pub fn len(&self) -> Option<usize> {
        match &self.source {
            Source::Fixed(problems) => Some(problems.len()),
            Source::Generated(_) => None,
        }
    }

    /// Whether the set is fixed and empty (never: construction refuses empty sets).
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn jsonl_lines_become_problems_and_seeds_cycle() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, r#"{{"question":"1+1?","answer":"2","extra":1}}"#).unwrap();
        writeln!(file).unwrap();
        writeln!(
            file,
            r#"{{"question":"who?","answer":"Ann is a knight.","verifier":"knights_knaves"}}"#
        )
        .unwrap();
        writeln!(file, r#"{{"question":"n?","answer":7}}"#).unwrap();
        let set = ProblemSet::from_jsonl(file.path()).unwrap();
        assert_eq!(set.len(), Some(3));
        assert_eq!(set.problem(0).answer, "2");
        assert_eq!(set.problem(1).verifier, VerifierKind::KnightsKnaves);
        assert_eq!(set.problem(2).answer, "7");
        assert_eq!(set.problem(3), set.problem(0));
    }

    #[test]
    fn a_bad_line_is_named_with_the_missing_field() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, r#"{{"question":"1+1?","answer":"2"}}"#).unwrap();
        writeln!(file, r#"{{"prompt":"1+1?","answer":"2"}}"#).unwrap();
        let err = ProblemSet::from_jsonl(file.path()).unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("question"), "{err}");
        let err = ProblemSet::from_jsonl("/nonexistent/p.jsonl")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/p.jsonl"), "{err}");
    }

    #[test]
    fn the_committed_reasoning_gym_sample_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/envs");
        for name in [
            "gsm_symbolic_seed123_n20.jsonl",
            "reasoning_gym_sample.jsonl",
        ] {
            let set = ProblemSet::from_jsonl(dir.join(name)).unwrap();
            assert!(set.len().unwrap() >= 20, "{name}");
        }
    }
}
