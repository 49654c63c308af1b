//! `kaizen envs list` and `kaizen envs play` as a person uses them.

use std::io::Write;
use std::process::{Command, Stdio};

fn kaizen(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kaizen"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn envs_list_shows_every_builtin_with_a_description() {
    let (ok, out, _) = kaizen(&["envs", "list"], "");
    assert!(ok);
    for name in ["household", "remote", "self_correct", "spc", "translate"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {out}"));
        assert!(line.len() > name.len() + 10, "{line}");
    }
}

#[test]
fn envs_play_takes_typed_turns_and_prints_rewards() {
    // Seed 0 of self_correct: an easy generated sum; a wrong first attempt, then a typed
    // multi-line second attempt that gives up, with `--param` overriding the attempts.
    let (ok, out, err) = kaizen(
        &[
            "envs",
            "play",
            "self_correct",
            "--seed",
            "0",
            "--param",
            "attempts=2",
        ],
        "\\boxed{-1}\nline one\\\n\\boxed{-2}\n",
    );
    assert!(ok, "{err}");
    assert!(out.contains("--- solver is asked ---"), "{out}");
    assert!(
        out.contains("might be an error"),
        "the second request shows only the new message: {out}"
    );
    assert!(out.contains("rewards solver: [0.0, 0.0]"), "{out}");
    assert!(out.contains("metric correct@t2 = 0"), "{out}");
}

#[test]
fn envs_play_with_the_expert_wins_the_household() {
    let (ok, out, err) = kaizen(
        &["envs", "play", "household", "--seed", "12", "--expert"],
        "",
    );
    assert!(ok, "{err}");
    assert!(out.contains("metric success = 1"), "{out}");
    assert!(out.contains("agent> go to "), "{out}");
}

#[test]
fn envs_play_reports_bad_input_clearly() {
    let (ok, _, err) = kaizen(&["envs", "play", "nope"], "");
    assert!(!ok);
    assert!(
        err.contains("unknown environment `nope`") && err.contains("household"),
        "{err}"
    );
    let (ok, _, err) = kaizen(
        &["envs", "play", "spc", "--param", "sneaky_probability=2"],
        "",
    );
    assert!(!ok);
    assert!(err.contains("sneaky_probability"), "{err}");
    let (ok, _, err) = kaizen(&["envs", "play", "spc", "--param", "oops"], "");
    assert!(!ok);
    assert!(err.contains("--param \"oops\""), "{err}");
    // Closing stdin ends the episode with a clear cause.
    let (ok, _, err) = kaizen(&["envs", "play", "translate"], "");
    assert!(!ok);
    assert!(err.contains("stdin closed"), "{err}");
}
