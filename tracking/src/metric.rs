//! One metric observation and its JSON form.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One observation of a metric: `key` had `value` at training `step`, recorded at `timestamp`.
///
/// This is also one line of `metrics.jsonl` in the local run store:
/// `{"key":"reward","value":0.25,"step":3,"timestamp":1795535848185}`. Non-finite values are
/// written as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` (JSON has no literal for them;
/// MLflow's REST API accepts the same strings).
///
/// Keys are `&'static str` literals in training code (`Metric::new("loss", 0.3, step)` does not
/// allocate); MLflow accepts letters, digits and `_ - . : / space` in keys (see
/// [`Metric::mlflow_key_problem`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Metric name, e.g. `reward`, `loss`, `tokens_per_s`.
    pub key: Cow<'static, str>,
    /// The value. NaN and ±infinity are kept.
    #[serde(serialize_with = "write_value", deserialize_with = "read_value")]
    pub value: f64,
    /// Training step (learner step for learner metrics, episode count for actor metrics).
    pub step: u64,
    /// Wall-clock time of the observation, milliseconds since the Unix epoch.
    pub timestamp: i64,
}

impl Metric {
    /// An observation stamped with the current wall-clock time.
    pub fn new(key: impl Into<Cow<'static, str>>, value: f64, step: u64) -> Self {
        Self {
            key: key.into(),
            value,
            step,
            timestamp: now_ms(),
        }
    }

    /// An observation with an explicit timestamp (milliseconds since the Unix epoch).
    pub fn at(key: impl Into<Cow<'static, str>>, value: f64, step: u64, timestamp: i64) -> Self {
        Self {
            key: key.into(),
            value,
            step,
            timestamp,
        }
    }

    /// Why MLflow would refuse `key` as a metric or param name, or `None` if it accepts it.
    ///
    /// MLflow (`mlflow/utils/validation.py`) allows letters, digits, `_`, `-`, `.`, space, `:`
    /// and `/`, at most 250 characters, and no name that a path normalisation would change
    /// (`a//b`, `./a`, `a/`, `/a`, `..`).
    pub fn mlflow_key_problem(key: &str) -> Option<String> {
        const MAX_KEY_CHARS: usize = 250;
        if key.is_empty() {
            return Some("names must not be empty".into());
        }
        if key.chars().count() > MAX_KEY_CHARS {
            return Some(format!("names are at most {MAX_KEY_CHARS} characters"));
        }
        if let Some(bad) = key
            .chars()
            .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | ':' | '/')))
        {
            return Some(format!(
                "{bad:?} is not allowed; names may only contain letters, digits, '_', '-', '.', \
                 ' ', ':' and '/'"
            ));
        }
        let bad_path = key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
        if bad_path {
            return Some(
                "names are used as paths and must not contain empty, '.' or '..' segments".into(),
            );
        }
        None
    }
}

/// The words of a metric or param name, lower-cased: `train/Approx_KL` → `train`, `approx`,
/// `kl`. Naming conventions (units, goals, secrets) are read from these.
pub(crate) fn name_words(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Milliseconds since the Unix epoch, now. A clock before 1970 reads as 0.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Writes a finite value as a JSON number and a non-finite one as MLflow's string spelling.
pub(crate) fn write_value<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.is_finite() {
        serializer.serialize_f64(*value)
    } else if value.is_nan() {
        serializer.serialize_str("NaN")
    } else if *value > 0.0 {
        serializer.serialize_str("Infinity")
    } else {
        serializer.serialize_str("-Infinity")
    }
}

/// Reads what [`write_value`] writes.
pub(crate) fn read_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value<'a> {
        Number(f64),
        Text(Cow<'a, str>),
    }
    match Value::deserialize(deserializer)? {
        Value::Number(v) => Ok(v),
        Value::Text(text) => match text.as_ref() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            other => Err(serde::de::Error::custom(format!(
                "metric value {other:?} is neither a number nor NaN/Infinity/-Infinity"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_line_round_trips_including_non_finite_values() {
        for value in [0.25, -3.0e-12, f64::INFINITY, f64::NEG_INFINITY] {
            let m = Metric::at("reward", value, 7, 1_795_535_848_185);
            let line = serde_json::to_string(&m).unwrap();
            let back: Metric = serde_json::from_str(&line).unwrap();
            assert_eq!(back, m, "{line}");
        }
        let nan = Metric::at("kl", f64::NAN, 1, 5);
        let line = serde_json::to_string(&nan).unwrap();
        assert_eq!(line, r#"{"key":"kl","value":"NaN","step":1,"timestamp":5}"#);
        let back: Metric = serde_json::from_str(&line).unwrap();
        assert!(back.value.is_nan());
    }

    #[test]
    fn unknown_value_string_is_a_clear_error() {
        let err =
            serde_json::from_str::<Metric>(r#"{"key":"a","value":"lots","step":1,"timestamp":5}"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("\"lots\""), "{err}");
    }

    #[test]
    fn mlflow_key_rules_match_the_server() {
        assert_eq!(Metric::mlflow_key_problem("train/reward_t1"), None);
        assert_eq!(Metric::mlflow_key_problem("Δ accuracy: t1-t2"), None);
        assert!(
            Metric::mlflow_key_problem("Δ(t1→t2)")
                .unwrap()
                .contains("'('")
        );
        assert!(Metric::mlflow_key_problem("a//b").is_some());
        assert!(Metric::mlflow_key_problem("/a").is_some());
        assert!(Metric::mlflow_key_problem("a/").is_some());
        assert!(Metric::mlflow_key_problem("../a").is_some());
        assert!(Metric::mlflow_key_problem("").is_some());
        assert!(Metric::mlflow_key_problem(&"k".repeat(251)).is_some());
    }
}
