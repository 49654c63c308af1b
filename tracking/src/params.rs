//! Run parameters: the resolved config flattened to `dotted.key = value` strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a redacted value is replaced with.
pub const REDACTED: &str = "***";

/// Run parameters as MLflow stores them: flat `key -> value` strings.
///
/// Build them from the resolved job config with [`Params::flatten_json`] or
/// [`Params::flatten_toml`]: nested tables become dotted keys (`learner.lr = "1e-5"`), arrays of
/// scalars stay one value in JSON form (`envs.seeds = "[1,2,3]"`), arrays of tables are indexed
/// (`envs.0.name = "self_correct"`).
///
/// Secrets never get in: a key whose words name a secret (`token`, `password`, `secret`,
/// `api_key`, `credentials`, ...) has its value replaced by `***`, and so has the password of any
/// URL-shaped value (`http://user:***@host`). This happens on every insertion, so no path around
/// it exists. Saved as `params.json` in the run directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// No parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Flattens a JSON value (usually the serialised job config). A scalar at the top level
    /// becomes the single param `value`.
    pub fn flatten_json(value: &serde_json::Value) -> Self {
        let mut params = Self::new();
        flatten_into(&mut params, String::new(), value);
        params
    }

    /// Flattens a TOML value (a parsed job config). Datetimes become their TOML text.
    pub fn flatten_toml(value: &toml::Value) -> Self {
        Self::flatten_json(&toml_to_json(value))
    }

    /// Sets `key` to `value`, redacting it if the key names a secret or the value is a URL with a
    /// password. Returns the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let key = key.into();
        let value = redact(&key, value.into());
        self.0.insert(key, value)
    }

    /// Replaces every occurrence of the given secret strings in values by `***` (defence in depth:
    /// a token pasted into an unrelated field). Secrets shorter than 4 characters are ignored
    /// (they would match everywhere).
    pub fn scrub(&mut self, secrets: &[&str]) {
        for value in self.0.values_mut() {
            for secret in secrets.iter().filter(|s| s.len() >= 4) {
                if value.contains(secret) {
                    *value = value.replace(secret, REDACTED);
                }
            }
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Number of params.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no params.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(key, value)` pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Adds every param of `other` (its values win).
    pub fn extend(&mut self, other: &Params) {
        for (k, v) in other.iter() {
            self.0.insert(k.to_owned(), v.to_owned());
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Params {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut params = Self::new();
        for (k, v) in iter {
            params.insert(k, v);
        }
        params
    }
}

fn flatten_into(params: &mut Params, prefix: String, value: &serde_json::Value) {
    use serde_json::Value;
    let child = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten_into(params, child(k), v);
            }
        }
        Value::Array(items) if items.iter().any(|v| v.is_object() || v.is_array()) => {
            for (i, v) in items.iter().enumerate() {
                flatten_into(params, child(&i.to_string()), v);
            }
        }
        scalar_or_flat_array => {
            let text = match scalar_or_flat_array {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let key = if prefix.is_empty() {
                "value".to_owned()
            } else {
                prefix
            };
            params.insert(key, text);
        }
    }
}

fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(f.to_string())),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// True when a key's words name a secret: `token`, `password`, `secret`, `api_key`, ...
/// (`max_tokens` and `tokenizer` are not secrets).
pub fn is_secret_key(key: &str) -> bool {
    const SECRET_WORDS: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "token",
        "apikey",
        "credential",
        "credentials",
        "authorization",
        "auth",
    ];
    const KEY_QUALIFIERS: &[&str] = &["api", "access", "private", "secret", "signing"];
    let words = crate::metric::name_words(key);
    words.iter().any(|w| SECRET_WORDS.contains(&w.as_str()))
        || words
            .windows(2)
            .any(|pair| pair[1] == "key" && KEY_QUALIFIERS.contains(&pair[0].as_str()))
}

pub(crate) fn redact(key: &str, value: String) -> String {
    if is_secret_key(key) && !value.is_empty() {
        return REDACTED.to_owned();
    }
    redact_url_password(&value).unwrap_or(value)
}

/// Tags with values of secret-looking keys and URL passwords replaced, as for params.
pub(crate) fn redact_tags(tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    tags.iter()
        .map(|(k, v)| (k.clone(), redact(k, v.clone())))
        .collect()
}

/// `scheme://user:***@host/...` when `value` is a URL with a password.
pub(crate) fn redact_url_password(value: &str) -> Option<String> {
    let mut url = reqwest::Url::parse(value).ok()?;
    url.password()?;
    url.set_password(Some(REDACTED)).ok()?;
    Some(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_config_flattens_to_dotted_keys() {
        let config: toml::Value = toml::from_str(
            r#"
            name = "grpo-demo"
            [learner]
            lr = 1e-5
            steps = 200
            clip = true
            [[envs]]
            name = "self_correct"
            seeds = [1, 2, 3]
            "#,
        )
        .unwrap();
        let params = Params::flatten_toml(&config);
        let got: Vec<(&str, &str)> = params.iter().collect();
        assert_eq!(
            got,
            vec![
                ("envs.0.name", "self_correct"),
                ("envs.0.seeds", "[1,2,3]"),
                ("learner.clip", "true"),
                ("learner.lr", "0.00001"),
                ("learner.steps", "200"),
                ("name", "grpo-demo"),
            ]
        );
    }

    #[test]
    fn secret_keys_and_url_passwords_are_redacted() {
        let config = serde_json::json!({
            "tracking": {
                "mlflow_uri": "https://alice:hunter22@mlflow.example.com/",
                "token": "tok-123456",
                "api_key": "abc-def",
                "MLFLOW_TRACKING_PASSWORD": "pw-99999",
            },
            "sampling": { "max_tokens": 256 },
            "model": { "tokenizer": "smollm2" },
        });
        let params = Params::flatten_json(&config);
        assert_eq!(
            params.get("tracking.mlflow_uri"),
            Some("https://alice:***@mlflow.example.com/")
        );
        assert_eq!(params.get("tracking.token"), Some(REDACTED));
        assert_eq!(params.get("tracking.api_key"), Some(REDACTED));
        assert_eq!(
            params.get("tracking.MLFLOW_TRACKING_PASSWORD"),
            Some(REDACTED)
        );
        assert_eq!(params.get("sampling.max_tokens"), Some("256"));
        assert_eq!(params.get("model.tokenizer"), Some("smollm2"));
        let json = serde_json::to_string(&params).unwrap();
        for secret in ["hunter22", "tok-123456", "abc-def", "pw-99999"] {
            assert!(!json.contains(secret), "{secret} leaked: {json}");
        }
    }

    #[test]
    fn scrub_removes_known_secrets_from_any_value() {
        let mut params: Params = [("notes", "ran with token s3cr3t-t0ken today")]
            .into_iter()
            .collect();
        params.scrub(&["s3cr3t-t0ken", "ab"]);
        assert_eq!(params.get("notes"), Some("ran with token *** today"));
    }
}
