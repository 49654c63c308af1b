//! Shared by the integration tests: the MLflow server that `scripts/test.sh` starts, an MLflow
//! server a test starts and stops itself, and a blocking way to call the async client.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kaizen_tracking::MlflowConfig;
use kaizen_tracking::mlflow::{Credentials, MlflowClient, TrackingUri};

/// `KAIZEN_TEST_MLFLOW_URI`, the server `scripts/test.sh` started. Without it: a test failure
/// when `KAIZEN_REQUIRE_SERVICES=1` (as test.sh and CI set it), else a loud notice and `None`.
pub fn mlflow_uri() -> Option<String> {
    required_env("KAIZEN_TEST_MLFLOW_URI")
}

/// `KAIZEN_MLFLOW_PYTHON`, the python of the venv with MLflow installed (for tests that start
/// and stop their own server). Same rules as [`mlflow_uri`].
pub fn mlflow_python() -> Option<PathBuf> {
    required_env("KAIZEN_MLFLOW_PYTHON").map(PathBuf::from)
}

fn required_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ => {
            assert!(
                std::env::var("KAIZEN_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{name} is not set but KAIZEN_REQUIRE_SERVICES=1: run the tests through \
                 scripts/test.sh, which starts the MLflow server"
            );
            eprintln!(
                "\n{bar}\n!! SKIPPING this MLflow test: {name} is not set.\n!! Run scripts/test.sh \
                 (it starts a real MLflow server) to exercise it.\n{bar}\n",
                bar = "!".repeat(78)
            );
            None
        }
    }
}

/// Settings for tests: short linger and backoff, a generous finish timeout.
pub fn config(uri: &str) -> MlflowConfig {
    let mut config = MlflowConfig::with_env(uri, |_| None).expect("valid test URI");
    config.linger = Duration::from_millis(20);
    config.backoff_min = Duration::from_millis(100);
    config.backoff_max = Duration::from_millis(1000);
    config.shutdown_timeout = Duration::from_secs(60);
    config
}

/// A client for reading back what was logged.
pub fn client(uri: &str) -> MlflowClient {
    let (uri, _) = TrackingUri::parse(uri).expect("valid test URI");
    MlflowClient::new(uri, Credentials::none(), Duration::from_secs(30)).expect("client")
}

/// Runs a future to completion on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// An experiment name no other test (or earlier run of the suite) uses.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("kaizen-test-{name}-{nanos:x}")
}

/// An MLflow server this test owns (lean flags as scripts/lib/mlflow.sh uses); stopped on drop.
pub struct OwnServer {
    child: Option<Child>,
    python: PathBuf,
    dir: PathBuf,
    pub port: u16,
}

impl OwnServer {
    /// Starts a server with its database and artifacts in `dir`, on a free port.
    pub fn start(python: &Path, dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut server = Self {
            child: None,
            python: python.to_owned(),
            dir: dir.to_owned(),
            port,
        };
        server.restart();
        server
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port and database and waits for /health.
    pub fn restart(&mut self) {
        use std::os::unix::process::CommandExt;
        assert!(self.child.is_none(), "server already running");
        std::fs::create_dir_all(self.dir.join("artifacts")).expect("artifacts dir");
        let log = std::fs::File::create(self.dir.join("server.log")).expect("server log");
        let child = Command::new(&self.python)
            .args(["-m", "mlflow", "server", "--backend-store-uri"])
            .arg(format!(
                "sqlite:///{}",
                self.dir.join("mlflow.db").display()
            ))
            .arg("--artifacts-destination")
            .arg(self.dir.join("artifacts"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--workers",
                "1",
            ])
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start mlflow server");
        self.child = Some(child);
        let client = client(&self.uri());
        let deadline = Instant::now() + Duration::from_secs(120);
        while block_on(client.health()).is_err() {
            assert!(
                Instant::now() < deadline,
                "MLflow server on port {} did not come up; see {}",
                self.port,
                self.dir.join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the server (SIGTERM to its process group, as `kaizen_mlflow_stop` does) and waits
    /// until the port no longer answers.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        let kill = |signal: &str| {
            // Fails harmlessly once the group is gone.
            let _ = Command::new("kill")
                .args([signal, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        kill("-TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        kill("-KILL");
        let _ = child.wait();
        let client = client(&self.uri());
        while block_on(client.health()).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fake HTTP server on 127.0.0.1: every request gets `answer(request head)` =
/// `(status line, JSON body)`. Returns its URI and the request heads it has received.
pub fn fake_server(
    answer: impl Fn(&str) -> (&'static str, String) + Send + 'static,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let uri = format!(
        "http://127.0.0.1:{}",
        listener.local_addr().expect("addr").port()
    );
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let (status, body) = answer(&head);
            seen.lock().expect("lock").push(head);
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (uri, requests)
}
