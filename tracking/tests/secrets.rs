//! Credentials reach the server and nowhere else: not logs (captured at TRACE), errors, `Debug`
//! output, the spool, or saved params. The "server" here is a plain TCP listener that records
//! each request and answers 401 with a message that echoes the credential back.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use kaizen_tracking::{Params, RunSpec, RunStatus, Tracker, TrackingConfig};

const TOKEN: &str = "tok-SECRET-9f8e7d";
const PASSWORD: &str = "pw-SECRET-4c3b2a";

/// Everything logged by any thread of this test binary.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A server that answers 401 to everything, echoing the credentials it got back in its
/// message, as a careless server might. Returns its URI and the request heads it received.
fn refusing_server() -> (String, Arc<Mutex<Vec<String>>>) {
    common::fake_server(|head| {
        let auth = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("authorization:")
                    .then(|| l[14..].trim().to_owned())
            })
            .unwrap_or_default();
        let echoed = if auth.starts_with("Bearer") {
            TOKEN
        } else {
            PASSWORD
        };
        let body = format!(
            r#"{{"error_code":"UNAUTHENTICATED","message":"credentials {auth} ({echoed}) refused"}}"#
        );
        ("401 Unauthorized", body)
    })
}

/// base64("alice:pw-SECRET-4c3b2a"), the basic-auth header value.
const BASIC: &str = "YWxpY2U6cHctU0VDUkVULTRjM2IyYQ==";

fn assert_clean(what: &str, text: &str) {
    for secret in [TOKEN, PASSWORD, BASIC] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into {what}:\n{text}"
        );
    }
}

fn files_under(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap_or_default(),
            ));
        }
    }
    out
}

/// Logs a run whose params and tags mention the secrets (through [`TrackingConfig::start`], as
/// `kaizen train` does) against the refusing server, and checks every place they could leak.
/// `secret` is the credential in use (the other one is unknown to kaizen in that test).
fn run_against_refusing_server(
    mlflow_uri: &str,
    env: impl Fn(&str) -> Option<String>,
    secret: &str,
) {
    let logs = captured_logs();
    let root = tempfile::tempdir().unwrap();
    let config = TrackingConfig {
        runs_dir: root.path().to_owned(),
        mlflow_uri: Some(mlflow_uri.to_owned()),
        mlflow_shutdown_timeout_s: 5.0,
        ..TrackingConfig::default()
    };
    let spec = RunSpec::new("secrets", "secrets").tag("api_token", TOKEN);
    let trackers = config.start_with_env(&spec, &env).unwrap();
    let debug = format!(
        "{config:?} {:?} {trackers:?}",
        config.mlflow_with_env(&env).unwrap()
    );
    let mut params = Params::flatten_json(&serde_json::json!({
        "tracking": { "mlflow_uri": mlflow_uri, "token": TOKEN, "password": PASSWORD },
    }));
    params.insert("notes", format!("pasted by mistake: {secret}"));
    trackers.log_params(&params);
    trackers.set_tags(
        &[("why".to_owned(), format!("debugging with {secret}"))]
            .into_iter()
            .collect(),
    );
    trackers.log_metric("loss", 1.0, 0);
    let error = trackers.finish(RunStatus::Finished).unwrap_err();

    let message = error.to_string();
    assert!(
        message.contains("401") && message.contains("UNAUTHENTICATED"),
        "{message}"
    );
    assert_clean("the finish error", &message);
    assert_clean("the error's Debug", &format!("{error:?}"));
    assert_clean("Debug output", &debug);
    assert_clean("last_error", &trackers.last_error().unwrap_or_default());
    let files = files_under(root.path());
    assert!(files.iter().any(|(path, _)| path.ends_with("params.json")));
    assert!(files.iter().any(|(path, _)| path.ends_with("spool.jsonl")));
    for (path, text) in files {
        assert_clean(&path, &text);
    }
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logs.contains("MLflow delivery stopped"),
        "the refusal must be logged:\n{logs}"
    );
    assert_clean("the logs", &logs);
}

#[test]
fn bearer_token_is_sent_to_the_server_and_shown_nowhere() {
    let (uri, requests) = refusing_server();
    let env = |name: &str| (name == "MLFLOW_TRACKING_TOKEN").then(|| TOKEN.to_owned());
    run_against_refusing_server(&uri, env, TOKEN);
    let seen = requests.lock().unwrap();
    assert!(!seen.is_empty(), "the server was never asked");
    assert!(
        seen[0].to_ascii_lowercase().contains(&format!(
            "authorization: bearer {}",
            TOKEN.to_ascii_lowercase()
        )),
        "{}",
        seen[0]
    );
}

#[test]
fn basic_auth_from_the_uri_is_sent_to_the_server_and_shown_nowhere() {
    let (uri, requests) = refusing_server();
    let with_password = uri.replace("http://", &format!("http://alice:{PASSWORD}@"));
    run_against_refusing_server(&with_password, |_| None, PASSWORD);
    let seen = requests.lock().unwrap();
    assert!(!seen.is_empty(), "the server was never asked");
    assert!(
        seen[0].to_ascii_lowercase().contains(&format!(
            "authorization: basic {}",
            BASIC.to_ascii_lowercase()
        )),
        "{}",
        seen[0]
    );
}
