//! The `[tracking]` table of a job config and how it starts a run's trackers.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, LocalTracker, MlflowConfig, MlflowTracker, RunSpec, Trackers};

/// `[tracking]` in a job config.
///
/// ```toml
/// [tracking]
/// runs_dir = "runs"                        # the local run store (always written)
/// mlflow_uri = "http://127.0.0.1:5000"     # optional; else MLFLOW_TRACKING_URI; else no mirror
/// mlflow_shutdown_timeout_s = 30           # how long finishing a run waits for MLflow
/// ```
///
/// Credentials never go here: they come from `MLFLOW_TRACKING_TOKEN` or
/// `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`. `Debug` hides a password embedded in
/// `mlflow_uri`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingConfig {
    /// Root of the local run store.
    pub runs_dir: PathBuf,
    /// MLflow tracking server to mirror runs to (`http(s)://host:port`). When unset,
    /// `MLFLOW_TRACKING_URI` is used if set.
    pub mlflow_uri: Option<String>,
    /// Seconds that finishing a run waits for the MLflow server before leaving the rest spooled
    /// for `kaizen runs sync`.
    pub mlflow_shutdown_timeout_s: f64,
    /// Queue capacity of each tracker, in logging calls.
    pub queue_capacity: usize,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self {
            runs_dir: PathBuf::from("runs"),
            mlflow_uri: None,
            mlflow_shutdown_timeout_s: 30.0,
            queue_capacity: crate::queue::DEFAULT_QUEUE_CAPACITY,
        }
    }
}

impl std::fmt::Debug for TrackingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uri = self
            .mlflow_uri
            .as_ref()
            .map(|u| crate::params::redact_url_password(u).unwrap_or_else(|| u.clone()));
        f.debug_struct("TrackingConfig")
            .field("runs_dir", &self.runs_dir)
            .field("mlflow_uri", &uri)
            .field("mlflow_shutdown_timeout_s", &self.mlflow_shutdown_timeout_s)
            .field("queue_capacity", &self.queue_capacity)
            .finish()
    }
}

impl TrackingConfig {
    /// The MLflow server to mirror to, from `mlflow_uri` or else `MLFLOW_TRACKING_URI`, with
    /// credentials from the environment.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a URI that is not `http(s)://`, or a negative or non-finite
    /// `mlflow_shutdown_timeout_s`.
    pub fn mlflow(&self) -> Result<Option<MlflowConfig>, Error> {
        self.mlflow_with_env(|name| std::env::var(name).ok())
    }

    /// [`TrackingConfig::mlflow`] with a custom environment lookup.
    ///
    /// # Errors
    /// As [`TrackingConfig::mlflow`].
    pub fn mlflow_with_env(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<MlflowConfig>, Error> {
        let uri = match &self.mlflow_uri {
            Some(uri) => Some(uri.clone()),
            None => env("MLFLOW_TRACKING_URI").filter(|u| !u.trim().is_empty()),
        };
        let Some(uri) = uri else {
            return Ok(None);
        };
        let timeout = self.mlflow_shutdown_timeout_s;
        if !(timeout.is_finite() && timeout >= 0.0) {
            return Err(Error::Invalid {
                field: "tracking.mlflow_shutdown_timeout_s",
                value: timeout.to_string(),
                expected: "a number of seconds >= 0".into(),
            });
        }
        let mut config = MlflowConfig::with_env(&uri, env)?;
        config.shutdown_timeout = Duration::from_secs_f64(timeout);
        config.queue_capacity = self.queue_capacity;
        Ok(Some(config))
    }

    /// Starts the run's trackers: the local store under `runs_dir`, plus an MLflow mirror when
    /// a server is configured (its spool lives in the local run directory).
    ///
    /// # Errors
    /// As [`LocalTracker::start`], [`TrackingConfig::mlflow`] and [`MlflowTracker::start`].
    pub fn start(&self, spec: &RunSpec) -> Result<Trackers, Error> {
        self.start_with_env(spec, |name| std::env::var(name).ok())
    }

    /// [`TrackingConfig::start`] with a custom environment lookup.
    ///
    /// # Errors
    /// As [`TrackingConfig::start`].
    pub fn start_with_env(
        &self,
        spec: &RunSpec,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Trackers, Error> {
        let mlflow = self.mlflow_with_env(env)?;
        let local = LocalTracker::start_with_capacity(&self.runs_dir, spec, self.queue_capacity)?;
        let run_dir = local.run_dir().to_owned();
        let mut trackers = Trackers::new().with(local).with_run_dir(&run_dir);
        if let Some(config) = mlflow {
            trackers = trackers
                .with(MlflowTracker::start(&config, spec, &run_dir)?)
                .with_secrets(config.secrets());
        }
        Ok(trackers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_table_parses_with_defaults_and_names_unknown_fields() {
        let config: TrackingConfig = toml::from_str("runs_dir = \"out/runs\"").unwrap();
        assert_eq!(config.runs_dir, PathBuf::from("out/runs"));
        assert_eq!(config.mlflow_uri, None);
        let err = toml::from_str::<TrackingConfig>("mlflow_url = \"http://x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mlflow_url"), "{err}");
    }

    #[test]
    fn mlflow_uri_comes_from_config_then_environment() {
        let env = |name: &str| match name {
            "MLFLOW_TRACKING_URI" => Some("http://127.0.0.1:5999".to_owned()),
            "MLFLOW_TRACKING_TOKEN" => Some("tok-777777".to_owned()),
            _ => None,
        };
        let from_env = TrackingConfig::default()
            .mlflow_with_env(env)
            .unwrap()
            .unwrap();
        assert_eq!(from_env.uri.to_string(), "http://127.0.0.1:5999");
        let configured = TrackingConfig {
            mlflow_uri: Some("https://u:pw-1234567@mlflow.example.com".into()),
            ..TrackingConfig::default()
        };
        let from_config = configured.mlflow_with_env(env).unwrap().unwrap();
        assert_eq!(from_config.uri.to_string(), "https://mlflow.example.com");
        assert!(
            TrackingConfig::default()
                .mlflow_with_env(|_| None)
                .unwrap()
                .is_none()
        );
        for shown in [
            format!("{configured:?}"),
            format!("{from_config:?}"),
            format!("{from_env:?}"),
        ] {
            assert!(
                !shown.contains("pw-1234567") && !shown.contains("tok-777777"),
                "{shown}"
            );
        }
    }
}
