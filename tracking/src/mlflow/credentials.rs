//! MLflow credentials and the tracking URI, kept apart so that secrets are never formatted.

use std::fmt;

use reqwest::{RequestBuilder, Url};

use crate::Error;

/// A secret string: formatting it (`{}` or `{:?}`) prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How requests to the MLflow server authenticate, as MLflow's own clients decide it:
/// basic auth when `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD` are both set,
/// otherwise a bearer token from `MLFLOW_TRACKING_TOKEN`, otherwise nothing.
///
/// `Debug` shows which parts are set, never their values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    token: Option<Secret>,
    username: Option<String>,
    password: Option<Secret>,
}

impl Credentials {
    /// No authentication.
    pub fn none() -> Self {
        Self::default()
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(token: impl Into<String>) -> Self {
        Self {
            token: Some(Secret::new(token)),
            ..Self::default()
        }
    }

    /// HTTP basic authentication.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: Some(username.into()),
            password: Some(Secret::new(password)),
            ..Self::default()
        }
    }

    /// Reads `MLFLOW_TRACKING_TOKEN`, `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`
    /// from the process environment. Empty variables count as unset.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Credentials::from_env`] with a custom variable lookup (tests, config layers).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        Self {
            token: get("MLFLOW_TRACKING_TOKEN").map(Secret::new),
            username: get("MLFLOW_TRACKING_USERNAME"),
            password: get("MLFLOW_TRACKING_PASSWORD").map(Secret::new),
        }
    }

    /// Adds the authentication header (marked sensitive by reqwest, so it is never logged).
    pub(crate) fn apply(&self, request: RequestBuilder) -> RequestBuilder {
        match (&self.username, &self.password, &self.token) {
            (Some(user), Some(password), _) => request.basic_auth(user, Some(password.expose())),
            (_, _, Some(token)) => request.bearer_auth(token.expose()),
            _ => request,
        }
    }

    /// The secret strings, so that anything written out can be scrubbed of them: the token,
    /// the password, and the basic-auth header value (base64 of `user:password`, which a server
    /// may echo back).
    pub(crate) fn secrets(&self) -> Vec<String> {
        use base64::Engine as _;
        let mut secrets: Vec<String> = [&self.token, &self.password]
            .into_iter()
            .flatten()
            .map(|s| s.expose().to_owned())
            .collect();
        if let (Some(user), Some(password)) = (&self.username, &self.password) {
            let pair = format!("{user}:{}", password.expose());
            secrets.push(base64::engine::general_purpose::STANDARD.encode(pair));
        }
        secrets
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |present: bool| if present { "<set>" } else { "<unset>" };
        f.debug_struct("Credentials")
            .field("token", &format_args!("{}", set(self.token.is_some())))
            .field("username", &self.username)
            .field(
                "password",
                &format_args!("{}", set(self.password.is_some())),
            )
            .finish()
    }
}

/// An `http(s)://` MLflow tracking URI with any `user:password@` part moved into
/// [`Credentials`]; `Display` prints it without credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct TrackingUri {
    /// Base URL, always ending in `/`, without user-info.
    base: Url,
}

impl TrackingUri {
    /// Parses a tracking URI. User-info (`https://user:pw@host`) is removed and returned as
    /// basic-auth credentials.
    ///
    /// # Errors
    /// [`Error::Invalid`] (showing the URI without its password) for anything that is not an
    /// `http` or `https` URL: kaizen speaks MLflow's REST API, so `file:`, `sqlite:` and
    /// `databricks` URIs are not accepted (the local run store is kaizen's file store).
    pub fn parse(uri: &str) -> Result<(Self, Option<Credentials>), Error> {
        let shown = crate::params::redact_url_password(uri).unwrap_or_else(|| uri.to_owned());
        let invalid = |expected: &str| Error::Invalid {
            field: "MLflow tracking URI",
            value: shown.clone(),
            expected: expected.to_owned(),
        };
        let mut url = Url::parse(uri.trim()).map_err(|e| {
            invalid(&format!(
                "an http:// or https:// URL like http://127.0.0.1:5000 ({e})"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid(
                "an http:// or https:// URL of an MLflow tracking server, like \
                 http://127.0.0.1:5000 (file/sqlite/databricks URIs are not supported; runs are \
                 always stored locally under tracking.runs_dir)",
            ));
        }
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, password) => Some(Credentials::basic(user, password.unwrap_or(""))),
        };
        // Both setters only fail for URLs that cannot have credentials (not http/https).
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        url.set_fragment(None);
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok((Self { base: url }, credentials))
    }

    /// The base URL (no credentials, ending in `/`).
    pub(crate) fn base(&self) -> &Url {
        &self.base
    }
}

impl fmt::Display for TrackingUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base.as_str().trim_end_matches('/'))
    }
}

impl fmt::Debug for TrackingUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrackingUri({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_never_shows_values() {
        let lookup = |name: &str| match name {
            "MLFLOW_TRACKING_TOKEN" => Some("tok-abcdef".to_owned()),
            "MLFLOW_TRACKING_USERNAME" => Some("alice".to_owned()),
            "MLFLOW_TRACKING_PASSWORD" => Some("pw-123456".to_owned()),
            _ => None,
        };
        let creds = Credentials::from_lookup(lookup);
        let debug = format!("{creds:?}");
        assert!(
            !debug.contains("tok-abcdef") && !debug.contains("pw-123456"),
            "{debug}"
        );
        assert!(
            debug.contains("alice") && debug.contains("<set>"),
            "{debug}"
        );
        assert_eq!(
            creds.secrets(),
            vec!["tok-abcdef", "pw-123456", "YWxpY2U6cHctMTIzNDU2"],
            "token, password, base64(alice:pw-123456)"
        );
        assert_eq!(format!("{:?}", Secret::new("x")), "***");
    }

    #[test]
    fn uri_user_info_becomes_basic_auth_and_is_never_shown() {
        let (uri, creds) =
            TrackingUri::parse("https://bob:s3cret!@mlflow.example.com/base").unwrap();
        assert_eq!(uri.to_string(), "https://mlflow.example.com/base");
        assert_eq!(uri.base().as_str(), "https://mlflow.example.com/base/");
        assert_eq!(creds, Some(Credentials::basic("bob", "s3cret!")));
        assert!(!format!("{uri:?}").contains("s3cret"));
    }

    #[test]
    fn non_http_uris_are_refused_without_leaking_passwords() {
        for bad in [
            "file:///tmp/mlruns",
            "databricks",
            "sqlite:///x.db",
            "ftp://u:hunter22@h/",
        ] {
            let err = TrackingUri::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("MLflow tracking URI") && err.contains("http://"),
                "{err}"
            );
            assert!(!err.contains("hunter22"), "{err}");
        }
    }
}
