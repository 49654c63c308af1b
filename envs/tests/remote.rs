//! Remote environments end to end: the Python package in `python/` serves the example guessing
//! game and Microsoft TextWorld games; kaizen's client plays them through the runner.
//!
//! Needs a Python 3 (`KAIZEN_TEST_PYTHON`, else `python3`) and, for TextWorld, a Python with
//! `textworld==1.7.0` in `KAIZEN_TEXTWORLD_PYTHON`. `scripts/test.sh` provides both and sets
//! `KAIZEN_REQUIRE_SERVICES=1`, under which a missing one fails the test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kaizen_core::{AgentId, Request};
use kaizen_envs::remote::{RemoteConfig, RemoteFactory};
use kaizen_envs::{
    EnvFactory, EpisodeLimits, FaultKind, Registry, Responder, demonstrate, run_episode,
    run_episode_with_hints,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python named by `var`, or `None` (after a loud message) when it is missing and
/// services are not required.
fn python(var: &str, fallback: Option<&str>) -> Option<String> {
    let candidate = std::env::var(var)
        .ok()
        .or_else(|| fallback.map(String::from));
    let works = candidate.as_deref().is_some_and(|py| {
        Command::new(py)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if works {
        return candidate;
    }
    let message = format!("{var} is not set to a working Python; see scripts/test.sh");
    if std::env::var("KAIZEN_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{message}");
    }
    eprintln!("SKIPPING (not under scripts/test.sh): {message}");
    None
}

/// A Python environment server on a free port, killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(python: &str, script: &str) -> Server {
        let mut child = Command::new(python)
            .arg(repo().join(script))
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {script}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("kaizen-env listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from {script}: {line:?}"))
            .to_string();
        Server { child, url }
    }

    fn factory(&self, params: &str) -> Arc<dyn EnvFactory> {
        let table: toml::Table =
            toml::from_str(&format!("url = \"{}\"\n[params]\n{params}", self.url)).unwrap();
        Registry::with_builtins().build("remote", &table).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Answers every request with the same text.
struct Always(&'static str);

#[async_trait]
impl Responder for Always {
    async fn respond(&mut self, _request: &Request) -> Result<String, String> {
        Ok(self.0.to_string())
    }
}

fn limits() -> EpisodeLimits {
    EpisodeLimits {
        env_call_timeout: Duration::from_secs(60),
        ..EpisodeLimits::default()
    }
}

#[tokio::test]
async fn the_python_guessing_game_plays_through_the_remote_client() {
    let Some(py) = python("KAIZEN_TEST_PYTHON", Some("python3")) else {
        return;
    };
    let server = Server::start(&py, "python/examples/guessing_game.py");
    let remote = RemoteFactory::new(RemoteConfig::new(&server.url)).unwrap();
    let info = remote.info().await.unwrap();
    assert_eq!(info.name, "guessing_game");
    assert_eq!(info.protocol, 1);

    let factory = server.factory("max_number = 100\nmax_guesses = 7");
    for seed in 0..10 {
        // The expert (binary search) always finds a number in [1, 100] within 7 guesses.
        let ep = demonstrate(factory.make(), seed, limits()).await;
        let outcome = ep.outcome().unwrap_or_else(|| panic!("{:?}", ep.end));
        let rewards = &outcome.rewards[&AgentId::new("guesser")];
        assert_eq!(rewards.len(), ep.turns.len());
        assert_eq!(rewards.last(), Some(&1.0));
        assert_eq!(outcome.metrics["solved"], 1.0);
        for pair in ep.turns.windows(2) {
            assert!(pair[1].request.continues(&pair[0].request, &pair[0].answer));
        }
    }

    // The hint (shown only at the turns a task names) travels with the request.
    let mut hinted = |r: &Request| {
        Ok(r.hint.as_deref().map_or("0".to_string(), |h| {
            h.trim_matches(|c: char| !c.is_ascii_digit()).to_string()
        }))
    };
    let ep = run_episode_with_hints(factory.make(), 5, &mut hinted, limits(), &[2]).await;
    assert!(ep.turns[0].request.hint.is_none());
    assert!(
        ep.turns[1]
            .request
            .hint
            .as_deref()
            .unwrap()
            .starts_with("The number is ")
    );
    assert_eq!(ep.turns.len(), 2, "found with the hint on the second guess");
    assert_eq!(ep.outcome().unwrap().metrics["solved"], 1.0);

    // A scripted policy that never finds it: every guess rewarded 0, episode ends at 7.
    let a = run_episode(factory.make(), 3, &mut Always("0"), limits()).await;
    let b = run_episode(factory.make(), 3, &mut Always("0"), limits()).await;
    assert_eq!(a, b, "same seed, same episode");
    assert_eq!(
        a.outcome().unwrap().rewards[&AgentId::new("guesser")],
        vec![0.0; 7]
    );
}

/// With `deterministic = true` a remote episode forks by replaying its seed and texts: the copy
/// steps exactly as an episode played from the start would, the original is unaffected, and
/// without the flag nothing forks.
#[tokio::test]
async fn a_deterministic_remote_episode_forks_by_replaying_it() {
    let Some(py) = python("KAIZEN_TEST_PYTHON", Some("python3")) else {
        return;
    };
    let server = Server::start(&py, "python/examples/guessing_game.py");
    let build = |deterministic: bool| {
        let table: toml::Table = toml::from_str(&format!(
            "url = \"{}\"\ndeterministic = {deterministic}\n[params]\nmax_number = 100",
            server.url
        ))
        .unwrap();
        Registry::with_builtins().build("remote", &table).unwrap()
    };
    let guesser = AgentId::new("guesser");
    // The step an episode of seed 4 gives after `texts`, played from its start.
    let played = |texts: &'static [&'static str]| {
        let factory = build(false);
        let guesser = guesser.clone();
        async move {
            let mut env = factory.make();
            let mut step = env.reset(4).await.unwrap();
            for text in texts {
                step = env.step(&guesser, text).await.unwrap();
            }
            step
        }
    };

    let plain = build(false);
    assert!(!plain.can_fork());
    let mut env = plain.make();
    env.reset(4).await.unwrap();
    assert!(env.fork().is_none());

    let factory = build(true);
    assert!(factory.can_fork());
    let mut parent = factory.make();
    assert!(parent.fork().is_none(), "nothing to fork before a reset");
    parent.reset(4).await.unwrap();
    parent.step(&guesser, "50").await.unwrap();
    let mut child = parent.fork().unwrap();
    let mut grandchild = child.fork().unwrap(); // a fork of a fork not yet replayed
    assert_eq!(
        child.step(&guesser, "25").await.unwrap(),
        played(&["50", "25"]).await
    );
    assert_eq!(
        grandchild.step(&guesser, "1").await.unwrap(),
        played(&["50", "1"]).await
    );
    // The original never saw its copies' texts.
    assert_eq!(
        parent.step(&guesser, "75").await.unwrap(),
        played(&["50", "75"]).await
    );
    // A fork made after the copy has stepped replays its own history too.
    let mut second = child.fork().unwrap();
    assert_eq!(
        second.step(&guesser, "12").await.unwrap(),
        played(&["50", "25", "12"]).await
    );
}

#[tokio::test]
async fn many_remote_episodes_run_at_once() {
    let Some(py) = python("KAIZEN_TEST_PYTHON", Some("python3")) else {
        return;
    };
    let server = Server::start(&py, "python/examples/guessing_game.py");
    let factory = server.factory("");
    let mut set = tokio::task::JoinSet::new();
    for seed in 0..32 {
        let env = factory.make();
        set.spawn(async move { demonstrate(env, seed, limits()).await });
    }
    let mut solved = 0;
    while let Some(ep) = set.join_next().await {
        solved += ep
            .unwrap()
            .outcome()
            .map_or(0, |o| o.metrics["solved"] as i32);
    }
    assert_eq!(solved, 32);
}

#[tokio::test]
async fn a_failing_remote_episode_ends_alone_with_its_cause() {
    let Some(py) = python("KAIZEN_TEST_PYTHON", Some("python3")) else {
        return;
    };
    let server = Server::start(&py, "python/examples/guessing_game.py");
    let factory = server.factory("fail_on_seed = 3");
    let ep = run_episode(factory.make(), 3, &mut Always("50"), limits()).await;
    let fault = ep.end.unwrap_err();
    assert_eq!(fault.kind, FaultKind::EnvError);
    assert!(fault.message.contains("HTTP 500"), "{}", fault.message);
    assert!(
        fault.message.contains("failing on purpose for seed 3"),
        "{}",
        fault.message
    );
    assert!(
        fault.message.contains("/reset"),
        "names the endpoint: {}",
        fault.message
    );
    let ep = run_episode(factory.make(), 4, &mut Always("50"), limits()).await;
    assert!(
        ep.outcome().is_some(),
        "the next episode is fine: {:?}",
        ep.end
    );

    // Stepping an episode the server does not know is a clear 404.
    let ep = demonstrate(factory.make(), 5, limits()).await;
    assert!(ep.outcome().is_some());
    let client = reqwest::Client::new();
    let reply = client
        .post(format!("{}/step", server.url))
        .json(&serde_json::json!({"episode_id": "nope", "agent": "guesser", "text": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 404);
    let body: serde_json::Value = reply.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("unknown episode"));
}

/// A one-shot HTTP server that answers every connection with `reply` (or never, if `None`).
async fn raw_server(reply: Option<Vec<u8>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = socket.read(&mut buf).await;
                match reply {
                    Some(bytes) => {
                        let _ = socket.write_all(&bytes).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    url
}

fn http_reply(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn reset_error(config: RemoteConfig) -> String {
    let ep = run_episode(
        RemoteFactory::new(config).unwrap().make(),
        0,
        &mut Always("x"),
        limits(),
    )
    .await;
    let fault = ep.end.unwrap_err();
    assert_eq!(fault.kind, FaultKind::EnvError, "{fault}");
    fault.message
}

#[tokio::test]
async fn the_client_bounds_time_size_and_retries_with_clear_errors() {
    let fast = |url: String| RemoteConfig {
        timeout_s: 0.3,
        retries: 1,
        ..RemoteConfig::new(url)
    };

    let silent = raw_server(None).await;
    let message = reset_error(fast(silent)).await;
    assert!(
        message.contains("no reply within 0.3 s (after 2 attempts)"),
        "{message}"
    );

    let big = format!("{{\"error\": \"{}\"}}", "x".repeat(5000));
    let large = raw_server(Some(http_reply("200 OK", &big))).await;
    let message = reset_error(RemoteConfig {
        max_reply_bytes: 1000,
        ..fast(large)
    })
    .await;
    assert!(
        message.contains("larger than the limit of 1000 bytes"),
        "{message}"
    );

    let garbage = raw_server(Some(http_reply("200 OK", "{\"step\": 1}"))).await;
    let message = reset_error(fast(garbage)).await;
    assert!(message.contains("malformed reply"), "{message}");

    let bad_request = raw_server(Some(http_reply(
        "400 Bad Request",
        "{\"error\": \"seed?\"}",
    )))
    .await;
    let message = reset_error(fast(bad_request)).await;
    assert!(message.contains("HTTP 400 Bad Request: seed?"), "{message}");
    assert!(
        !message.contains("attempts"),
        "4xx is not retried: {message}"
    );

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let message = reset_error(fast(closed)).await;
    assert!(message.contains("cannot reach the server"), "{message}");

    let err = RemoteFactory::new(RemoteConfig::new("ftp://x"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("http://"), "{err}");
    let table: toml::Table = toml::from_str("url = \"http://x\"\ntimeout = 3").unwrap();
    let err = Registry::with_builtins()
        .build("remote", &table)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("timeout"), "{err}");
}

#[tokio::test]
async fn textworld_games_play_through_the_python_wrapper() {
    let Some(py) = python("KAIZEN_TEXTWORLD_PYTHON", None) else {
        return;
    };
    let server = Server::start(&py, "python/examples/textworld_env.py");
    let cache = tempfile::tempdir().unwrap();
    let params = format!(
        "world_size = 5\nnb_objects = 10\nquest_length = 5\ncache_dir = \"{}\"",
        cache.path().display()
    );
    let factory = server.factory(&params);

    // Seed 1 is the game of the committed trace (tw-make custom --world-size 5 --nb-objects 10
    // --quest-length 5 --seed 1): the walkthrough wins it in five commands.
    let trace: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/envs/textworld_trace.json")).unwrap(),
    )
    .unwrap();
    let walkthrough: Vec<&str> = trace["walkthrough_trace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["cmd"].as_str().unwrap())
        .collect();
    let ep = demonstrate(factory.make(), 1, limits()).await;
    let outcome = ep.outcome().unwrap_or_else(|| panic!("{:?}", ep.end));
    let played: Vec<&str> = ep.turns.iter().map(|t| t.answer.as_str()).collect();
    assert_eq!(played, walkthrough);
    assert_eq!(outcome.metrics["won"], 1.0);
    assert_eq!(
        outcome.rewards[&AgentId::new("player")],
        vec![0.0, 0.0, 0.0, 0.0, 1.0]
    );
    assert!(
        ep.turns[0].request.messages[0]
            .content
            .contains("Admissible commands: ")
    );
    for pair in ep.turns.windows(2) {
        assert!(pair[1].request.continues(&pair[0].request, &pair[0].answer));
    }

    // A scripted policy that only looks around never scores; the step limit ends it.
    let looking = server.factory(&format!("{params}\nmax_steps = 4"));
    let ep = run_episode(looking.make(), 2, &mut Always("look"), limits()).await;
    let outcome = ep.outcome().unwrap_or_else(|| panic!("{:?}", ep.end));
    assert_eq!(outcome.rewards[&AgentId::new("player")], vec![0.0; 4]);
    assert_eq!(outcome.metrics["won"], 0.0);
}
