//! A typed client for MLflow's REST API 2.0: the calls kaizen logs with and reads back with.
//!
//! Shapes and quirks measured against MLflow 3.17.2 are in `shared/refs/mlflow-rest.md`:
//! `experiment_id` is a string, POST bodies must be `application/json`, metric timestamps are
//! required, artifacts go through the server's proxy (`mlflow-artifacts/artifacts/...`).

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::credentials::{Credentials, TrackingUri};
use crate::{Error, Metric};

/// A `key`/`value` pair as MLflow sends params and tags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The name.
    pub key: String,
    /// The value.
    pub value: String,
}

/// One `runs/log-batch` request body (without the run id). MLflow's limits: at most 1000
/// metrics, 100 params, 100 tags, 1000 entities in all and 1 MB of JSON per request.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LogBatch {
    /// Metric points.
    pub metrics: Vec<Metric>,
    /// Params (values at most 6000 characters).
    pub params: Vec<KeyValue>,
    /// Tags (values at most 8000 characters).
    pub tags: Vec<KeyValue>,
}

/// `run.info` as MLflow returns it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct RunInfo {
    /// MLflow's run id.
    pub run_id: String,
    /// The experiment's id.
    pub experiment_id: String,
    /// The run's name.
    #[serde(default)]
    pub run_name: String,
    /// `RUNNING`, `FINISHED`, `FAILED`, `KILLED` or `SCHEDULED`.
    pub status: String,
    /// Start time, ms since the Unix epoch.
    #[serde(default)]
    pub start_time: Option<i64>,
    /// End time, ms since the Unix epoch.
    #[serde(default)]
    pub end_time: Option<i64>,
    /// Where the run's artifacts live, e.g. `mlflow-artifacts:/1/<run>/artifacts`.
    #[serde(default)]
    pub artifact_uri: String,
}

/// `run.data`: the latest value of each metric, params and tags.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RunData {
    /// The latest value of each metric key.
    #[serde(default)]
    pub metrics: Vec<Metric>,
    /// Params.
    #[serde(default)]
    pub params: Vec<KeyValue>,
    /// Tags (including MLflow's own `mlflow.*` tags).
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

/// A run as `runs/get` returns it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Run {
    /// Identity and lifecycle.
    pub info: RunInfo,
    /// Latest metrics, params, tags.
    #[serde(default)]
    pub data: RunData,
}

impl Run {
    /// The value of param `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        find(&self.data.params, key)
    }

    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        find(&self.data.tags, key)
    }
}

fn find<'a>(pairs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.as_str())
}

/// One entry of `artifacts/list`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct FileInfo {
    /// Path relative to the run's artifact root.
    pub path: String,
    /// True for directories.
    #[serde(default)]
    pub is_dir: bool,
    /// Size in bytes (files only).
    #[serde(default)]
    pub file_size: Option<u64>,
}

/// MLflow REST client (async, reqwest). Cheap to clone.
///
/// Every error names the server (without credentials) and the endpoint; errors from the server
/// carry its `error_code` and `message`. Transport failures are [`Error::Unreachable`], HTTP
/// errors [`Error::Rejected`] (see [`MlflowClient::is_retryable`]).
#[derive(Clone)]
pub struct MlflowClient {
    http: reqwest::Client,
    uri: TrackingUri,
    credentials: Credentials,
    timeout: Duration,
}

impl std::fmt::Debug for MlflowClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowClient")
            .field("uri", &self.uri)
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// Connection attempts give up after this long (an unreachable host fails fast).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Artifact uploads get at least this long, plus one second per MiB.
const MIN_UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

impl MlflowClient {
    /// A client for the server at `uri`; `timeout` bounds each JSON request.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the HTTP client cannot be built (TLS backend unavailable).
    pub fn new(
        uri: TrackingUri,
        credentials: Credentials,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("kaizen-tracking/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Invalid {
                field: "MLflow HTTP client",
                value: uri.to_string(),
                expected: format!("a working TLS backend ({})", e.without_url()),
            })?;
        Ok(Self {
            http,
            uri,
            credentials,
            timeout,
        })
    }

    /// The server's URI (without credentials).
    pub fn uri(&self) -> &TrackingUri {
        &self.uri
    }

    /// Whether an error is worth retrying later: transport failures, HTTP 408, 429 and 5xx.
    pub fn is_retryable(error: &Error) -> bool {
        match error {
            Error::Unreachable { .. } => true,
            Error::Rejected { status, .. } => {
                *status == 408 || *status == 429 || (500..600).contains(status)
            }
            _ => false,
        }
    }

    /// `GET /health`.
    ///
    /// # Errors
    /// As for every call: [`Error::Unreachable`] or [`Error::Rejected`].
    pub async fn health(&self) -> Result<(), Error> {
        let request = self.request(Method::GET, "health")?;
        self.send(request, "health").await.map(drop)
    }

    /// The id of experiment `name`, creating it if needed (safe against a concurrent create).
    ///
    /// # Errors
    /// [`Error::Unreachable`], [`Error::Rejected`], [`Error::Protocol`].
    pub async fn experiment_id(&self, name: &str) -> Result<String, Error> {
        if let Some(id) = self.find_experiment(name).await? {
            return Ok(id);
        }
        #[derive(Deserialize)]
        struct Created {
            experiment_id: String,
        }
        let created: Result<Created, Error> = self
            .post("experiments/create", &serde_json::json!({ "name": name }))
            .await;
        match created {
            Ok(c) => Ok(c.experiment_id),
            // Another process created it between our get and create.
            Err(Error::Rejected { error_code, .. }) if error_code == "RESOURCE_ALREADY_EXISTS" => {
                self.find_experiment(name)
                    .await?
                    .ok_or_else(|| Error::Protocol {
                        uri: self.uri.to_string(),
                        endpoint: "experiments/get-by-name".into(),
                        message: format!("experiment {name:?} exists but cannot be found"),
                    })
            }
            Err(e) => Err(e),
        }
    }

    async fn find_experiment(&self, name: &str) -> Result<Option<String>, Error> {
        #[derive(Deserialize)]
        struct Experiment {
            experiment_id: String,
        }
        #[derive(Deserialize)]
        struct Found {
            experiment: Experiment,
        }
        let found: Result<Found, Error> = self
            .get("experiments/get-by-name", &[("experiment_name", name)])
            .await;
        match found {
            Ok(f) => Ok(Some(f.experiment.experiment_id)),
            Err(Error::Rejected { error_code, .. }) if error_code == "RESOURCE_DOES_NOT_EXIST" => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// `runs/create`.
    ///
    /// # Errors
    /// [`Error::Unreachable`], [`Error::Rejected`], [`Error::Protocol`].
    pub async fn create_run(
        &self,
        experiment_id: &str,
        run_name: &str,
        start_time: i64,
        tags: &[KeyValue],
    ) -> Result<RunInfo, Error> {
        #[derive(Deserialize)]
        struct Created {
            run: Run,
        }
        let body = serde_json::json!({
            "experiment_id": experiment_id,
            "run_name": run_name,
            "start_time": start_time,
            "tags": tags,
        });
        let created: Created = self.post("runs/create", &body).await?;
        Ok(created.run.info)
    }

    /// The run in `experiment_id` whose tag `key` equals `value`, if any (`runs/search`).
    ///
    /// # Errors
    /// [`Error::Unreachable`], [`Error::Rejected`], [`Error::Protocol`].
    pub async fn find_run_by_tag(
        &self,
        experiment_id: &str,
        key: &str,
        value: &str,
    ) -> Result<Option<RunInfo>, Error> {
        #[derive(Deserialize)]
        struct Found {
            #[serde(default)]
            runs: Vec<Run>,
        }
        let body = serde_json::json!({
            "experiment_ids": [experiment_id],
            "filter": format!("tags.`{key}` = '{value}'"),
            "max_results": 1,
        });
        let found: Found = self.post("runs/search", &body).await?;
        Ok(found.runs.into_iter().next().map(|r| r.info))
    }

    /// `runs/log-batch`. The caller keeps within MLflow's limits (see [`LogBatch`]).
    ///
    /// # Errors
    /// [`Error::Unreachable`], [`Error::Rejected`] (HTTP 400 names the offending entry).
    pub async fn log_batch(&self, run_id: &str, batch: &LogBatch) -> Result<(), Error> {
        #[derive(Serialize)]
        struct Body<'a> {
            run_id: &'a str,
            #[serde(flatten)]
            batch: &'a LogBatch,
        }
        let _: serde_json::Value = self.post("runs/log-batch", &Body { run_id, batch }).await?;
        Ok(())
    }

    /// `runs/update`: sets the status and end time.
    ///
    /// # Errors
    /// [`Error::Unreachable`], [`Error::Rejected`].
    pub async fn update_run(&self, run_id: &str, status: &str, end_time: i64) -> Result<(), Error> {
        let body = serde_json::json!({ "run_id": run_id, "status": status, "end_time": end_time });
        let _: serde_json::Value = self.post("runs/update", &body).await?;
        Ok(())
    }

    /// `runs/get`.
    ///
    /// # Errors
    /// [`Error::Unreachable`], [`Error::Rejected`], [`Error::Protocol`].
    pub async fn get_run(&self, run_id: &str) -> Result<Run, Error> {
        #[derive(Deserialize)]
        struct Got {
            run: Run,
        }
        let got: Got = self.get("runs/get", &[("run_id", run_id)]).await?;
        Ok(got.run)
    }

    /// Every point of metric `key` (`metrics/get-history`, following `next_page_token`).
    ///
    /// # Errors
    /// [`Error::Unreachable`], [`Error::Rejected`], [`Error::Protocol`].
    pub async fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<Metric>, Error> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            metrics: Vec<Metric>,
            #[serde(default)]
            next_page_token: Option<String>,
        }
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("run_id", run_id),
                ("metric_key", key),
                ("max_results", "25000"),
            ];
            if let Some(t) = &token {
                query.push(("page_token", t));
            }
            let page: Page = self.get("metrics/get-history", &query).await?;
            all.extend(page.metrics);
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(all),
            }
        }
    }

    /// `artifacts/list` under `path` (the run's artifact root when `None`).
    ///
    /// # Errors
    /// [`Error::Unreachable`], [`Error::Rejected`], [`Error::Protocol`].
    pub async fn list_artifacts(
        &self,
        run_id: &str,
        path: Option<&str>,
    ) -> Result<Vec<FileInfo>, Error> {
        #[derive(Deserialize)]
        struct Listing {
            #[serde(default)]
            files: Vec<FileInfo>,
        }
        let mut query = vec![("run_id", run_id)];
        if let Some(p) = path {
            query.push(("path", p));
        }
        let listing: Listing = self.get("artifacts/list", &query).await?;
        Ok(listing.files)
    }

    /// Uploads `file` to `<artifact_uri>/<dest>` through the server's artifact proxy
    /// (`PUT api/2.0/mlflow-artifacts/artifacts/...`), streaming it from disk.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be opened; [`Error::Invalid`] when the run's artifact
    /// URI is not proxied (`mlflow-artifacts:`; start the server with `--artifacts-destination`
    /// and without `--no-serve-artifacts`); [`Error::Unreachable`], [`Error::Rejected`].
    pub async fn upload_artifact(
        &self,
        artifact_uri: &str,
        dest: &str,
        file: &Path,
    ) -> Result<(), Error> {
        let root = proxied_artifact_path(artifact_uri).ok_or_else(|| Error::Invalid {
            field: "run artifact URI",
            value: artifact_uri.to_owned(),
            expected: "an `mlflow-artifacts:` URI (the server must proxy artifacts: start it with \
                       --artifacts-destination and without --no-serve-artifacts)"
                .into(),
        })?;
        let mut url = self.endpoint_url("api/2.0/mlflow-artifacts/artifacts")?;
        url.path_segments_mut()
            .map_err(|()| self.bad_base())?
            .extend(
                root.split('/')
                    .chain(dest.split('/'))
                    .filter(|s| !s.is_empty()),
            );
        let handle = tokio::fs::File::open(file)
            .await
            .map_err(Error::io("opening artifact", file))?;
        let size = handle
            .metadata()
            .await
            .map_err(Error::io("reading size of artifact", file))?
            .len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(handle));
        let timeout = MIN_UPLOAD_TIMEOUT + Duration::from_secs(size / (1 << 20));
        let request = self
            .credentials
            .apply(self.http.put(url))
            .header(reqwest::header::CONTENT_LENGTH, size)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(timeout)
            .body(body);
        let endpoint = format!("mlflow-artifacts/artifacts/{root}/{dest}");
        self.send(request, &endpoint).await.map(drop)
    }

    fn bad_base(&self) -> Error {
        Error::Invalid {
            field: "MLflow tracking URI",
            value: self.uri.to_string(),
            expected: "a URL that can have a path".into(),
        }
    }

    fn endpoint_url(&self, path: &str) -> Result<Url, Error> {
        self.uri.base().join(path).map_err(|_| self.bad_base())
    }

    fn request(&self, method: Method, path: &str) -> Result<reqwest::RequestBuilder, Error> {
        let url = self.endpoint_url(path)?;
        Ok(self
            .credentials
            .apply(self.http.request(method, url))
            .timeout(self.timeout))
    }

    async fn post<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        endpoint: &str,
        body: &B,
    ) -> Result<R, Error> {
        let request = self
            .request(Method::POST, &format!("api/2.0/mlflow/{endpoint}"))?
            .json(body);
        let text = self.send(request, endpoint).await?;
        self.parse(endpoint, &text)
    }

    async fn get<R: DeserializeOwned>(
        &self,
        endpoint: &str,
        query: &[(&str, &str)],
    ) -> Result<R, Error> {
        let request = self
            .request(Method::GET, &format!("api/2.0/mlflow/{endpoint}"))?
            .query(query);
        let text = self.send(request, endpoint).await?;
        self.parse(endpoint, &text)
    }

    fn parse<R: DeserializeOwned>(&self, endpoint: &str, text: &str) -> Result<R, Error> {
        let text = if text.trim().is_empty() { "{}" } else { text };
        serde_json::from_str(text).map_err(|e| Error::Protocol {
            uri: self.uri.to_string(),
            endpoint: endpoint.to_owned(),
            message: format!(
                "{e} in {:?} (is this an MLflow tracking server?)",
                excerpt(text)
            ),
        })
    }

    /// Sends, and turns transport failures and non-2xx answers into errors. Returns the body.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        endpoint: &str,
    ) -> Result<String, Error> {
        let response = request
            .send()
            .await
            .map_err(|e| self.unreachable(endpoint, e))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| self.unreachable(endpoint, e))?;
        if status.is_success() {
            return Ok(text);
        }
        Err(self.rejected(endpoint, status, &text))
    }

    fn unreachable(&self, endpoint: &str, error: reqwest::Error) -> Error {
        // reqwest's Display includes the URL; the chain of sources says what actually failed.
        let error = error.without_url();
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Error::Unreachable {
            uri: self.uri.to_string(),
            endpoint: endpoint.to_owned(),
            message,
        }
    }

    fn rejected(&self, endpoint: &str, status: StatusCode, body: &str) -> Error {
        #[derive(Deserialize)]
        struct ServerError {
            #[serde(default)]
            error_code: String,
            #[serde(default)]
            message: String,
        }
        let (error_code, message) = match serde_json::from_str::<ServerError>(body) {
            Ok(e) if !e.message.is_empty() || !e.error_code.is_empty() => (e.error_code, e.message),
            _ => (
                String::new(),
                format!(
                    "{}{}",
                    status.canonical_reason().unwrap_or(""),
                    if body.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", excerpt(body))
                    }
                ),
            ),
        };
        let mut secrets_removed = message;
        for secret in self.credentials.secrets() {
            secrets_removed = secrets_removed.replace(&secret, crate::params::REDACTED);
        }
        Error::Rejected {
            uri: self.uri.to_string(),
            endpoint: endpoint.to_owned(),
            status: status.as_u16(),
            error_code,
            message: secrets_removed,
        }
    }
}

/// The path part of a proxied artifact URI: `mlflow-artifacts:/1/abc/artifacts` and
/// `mlflow-artifacts://host:port/1/abc/artifacts` give `1/abc/artifacts`.
fn proxied_artifact_path(artifact_uri: &str) -> Option<String> {
    let rest = artifact_uri.strip_prefix("mlflow-artifacts:")?;
    let path = match rest.strip_prefix("//") {
        Some(authority_and_path) => authority_and_path.split_once('/').map(|(_, p)| p)?,
        None => rest,
    };
    Some(path.trim_matches('/').to_owned())
}

/// The first 300 characters of a body, for error messages.
fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 300;
    let trimmed = text.trim();
    match trimmed.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &trimmed[..cut]),
        None => trimmed.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxied_artifact_paths_are_extracted() {
        assert_eq!(
            proxied_artifact_path("mlflow-artifacts:/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(
            proxied_artifact_path("mlflow-artifacts://h:5000/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(proxied_artifact_path("/srv/mlruns/1/abc/artifacts"), None);
        assert_eq!(proxied_artifact_path("s3://bucket/1/abc"), None);
    }

    #[test]
    fn retryable_errors_are_transport_408_429_and_5xx() {
        let rejected = |status| Error::Rejected {
            uri: String::new(),
            endpoint: String::new(),
            status,
            error_code: String::new(),
            message: String::new(),
        };
        for status in [408, 429, 500, 503] {
            assert!(MlflowClient::is_retryable(&rejected(status)), "{status}");
        }
        for status in [400, 401, 403, 404] {
            assert!(!MlflowClient::is_retryable(&rejected(status)), "{status}");
        }
    }
}
