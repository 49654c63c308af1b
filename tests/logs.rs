//! Console logs as a file or pipe receives them.

use std::process::Command;

/// Guards against ANSI colour codes in logs written to a file or a pipe (issue 14.6): CI logs
/// and `2> log.txt` were full of `ESC[32m` sequences. stderr is a pipe here, so the logs must
/// be plain text, with or without `NO_COLOR`.
#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    for no_color in [None, Some("1")] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kaizen"));
        command
            .args([
                "generate",
                "--model",
                "tiny",
                "--prompt",
                "hi",
                "--max-tokens",
                "2",
            ])
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            command.env("NO_COLOR", v);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("model loaded"),
            "a log line is written: {stderr}"
        );
        assert!(!stderr.contains('\u{1b}'), "no escape codes: {stderr:?}");
    }
}
