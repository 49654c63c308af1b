//! The Python that has the official `openai` client, for tests that drive kaizen with it.
//! Shared by `tests/serve.rs` and `serve/tests/openai_agent.rs` (included with `#[path]`).

/// `KAIZEN_OPENAI_PYTHON` (a Python with `openai==3.51.0`; `scripts/test.sh` provides one).
/// When it is unset the test is skipped — except under `KAIZEN_REQUIRE_SERVICES=1` (as
/// `scripts/test.sh` runs), where that is a failure.
pub fn openai_python() -> Option<String> {
    match std::env::var("KAIZEN_OPENAI_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            assert_ne!(
                std::env::var("KAIZEN_REQUIRE_SERVICES").as_deref(),
                Ok("1"),
                "KAIZEN_OPENAI_PYTHON (a python with openai==3.51.0) is required"
            );
            eprintln!("KAIZEN_OPENAI_PYTHON unset: skipping (scripts/test.sh sets it)");
            None
        }
    }
}
