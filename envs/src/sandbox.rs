//! Runs model-written Python against unit tests in a separate, limited process.
//!
//! Each execution gets a fresh temporary directory holding the solution, the tests and
//! kaizen's harness (`sandbox/harness.py`), and runs `python3 -I -S -B harness.py` there:
//!
//! - **Process**: its own process group, killed as a whole (SIGKILL) when the wall-clock limit
//!   passes, when the output limit is crossed, and after every run (no stragglers); an empty
//!   environment (`PATH` only), stdin closed, no user site-packages (`-I -S`), no bytecode
//!   written (`-B`).
//! - **rlimits** (set by the harness, its first act, before it reads the solution): CPU
//!   seconds (`RLIMIT_CPU`, SIGXCPU past it), address space (`RLIMIT_AS`), largest file
//!   written (`RLIMIT_FSIZE`, SIGXFSZ), open files (`RLIMIT_NOFILE`), no core dumps, and no
//!   new processes or threads (`RLIMIT_NPROC = 0`; not enforced for root, which the audit hook
//!   covers). Not set between `fork` and `exec` (a `pre_exec` hook), because that forces a
//!   `fork` of the caller: an actor holding SmolLM2 copies gigabytes of page tables per
//!   execution (99 ms per execution against 16 ms with `posix_spawn`, BENCHMARKS.md). With no
//!   `pre_exec`, the interpreter starts with `posix_spawn` (vfork).
//! - **Audit hook** (PEP 578, in the harness, installed before the untrusted code runs): process
//!   creation (`os.system`, `fork`, `exec*`, `posix_spawn`, `subprocess`), sockets, `ctypes`,
//!   signals, `setrlimit`, and file writes, renames or deletions outside the directory end the
//!   run at once as [`SandboxError::Forbidden`]; `except:` in the solution cannot catch it.
//! - **Output**: stdout and stderr are read concurrently and capped at
//!   [`SandboxConfig::max_output_bytes`]; more ends the run as [`SandboxError::Output`].
//! - **Concurrency**: at most [`SandboxConfig::max_concurrent`] runs at once per [`Sandbox`]
//!   (clones share the limit); the wall clock starts when a run gets its turn.
//!
//! What it does **not** protect against: a deliberate escape from the Python interpreter
//! (audit hooks are a tripwire, not a security boundary), reading files the user running
//! kaizen can read, network access by means the hook does not see (no network namespace is
//! created: that needs privileges kaizen does not assume), kernel exploits, or a solution that
//! tampers with the harness in its own interpreter to fake its result. For code from an
//! adversary, run the actors inside a container or VM (gVisor, nsjail, Firecracker).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

const HARNESS: &str = include_str!("sandbox/harness.py");
/// The `PATH` of an execution (its only environment variable besides `HOME`).
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The harness's exit status after a write past the file-size limit (Python ignores SIGXFSZ,
/// so the write fails with EFBIG and the harness ends the run).
const FILE_SIZE_EXIT: i32 = 96;
/// The harness's exit status after a forbidden operation.
const FORBIDDEN_EXIT: i32 = 97;
/// The harness's exit status after a `MemoryError`.
const MEMORY_EXIT: i32 = 98;

/// Limits of one execution (the `sandbox` table of the `code` environment's parameters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// The Python interpreter (3.8 or newer, for audit hooks): a path, or a name looked up in
    /// `/usr/local/bin:/usr/bin:/bin` and then in kaizen's own `PATH`.
    pub python: String,
    /// Wall-clock limit per execution, seconds.
    pub timeout_seconds: f64,
    /// CPU-time limit per execution, seconds (`RLIMIT_CPU`).
    pub cpu_seconds: u64,
    /// Address-space limit, MiB (`RLIMIT_AS`).
    pub memory_mib: u64,
    /// Most bytes of stdout plus stderr kept; more ends the run.
    pub max_output_bytes: usize,
    /// Largest file the code may write, bytes (`RLIMIT_FSIZE`).
    pub max_file_bytes: u64,
    /// Executions at once per sandbox (0: the machine's available parallelism).
    pub max_concurrent: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            python: "python3".into(),
            timeout_seconds: 5.0,
            cpu_seconds: 3,
            memory_mib: 512,
            max_output_bytes: 64 * 1024,
            max_file_bytes: 1 << 20,
            max_concurrent: 0,
        }
    }
}

impl SandboxConfig {
    /// Checks the limits.
    ///
    /// # Errors
    /// A message naming the field when a limit is zero, negative or not finite.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.timeout_seconds.is_finite() && self.timeout_seconds > 0.0) {
            return Err(format!(
                "`sandbox.timeout_seconds` must be > 0, got {}",
                self.timeout_seconds
            ));
        }
        for (name, value) in [
            ("cpu_seconds", self.cpu_seconds),
            ("memory_mib", self.memory_mib),
            ("max_file_bytes", self.max_file_bytes),
            ("max_output_bytes", self.max_output_bytes as u64),
        ] {
            if value == 0 {
                return Err(format!("`sandbox.{name}` must be > 0"));
            }
        }
        if self.python.trim().is_empty() {
            return Err("`sandbox.python` must name an interpreter".into());
        }
        Ok(())
    }
}

/// Why an execution ended without a result: each is an episode fault with this reason.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The interpreter could not be started.
    #[error("sandbox: cannot start `{python}`: {source}")]
    Spawn {
        /// The interpreter asked for.
        python: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The temporary directory could not be prepared or read.
    #[error("sandbox: {0}")]
    Io(#[from] std::io::Error),
    /// The wall-clock limit passed (the process group was killed).
    #[error("sandbox: still running after the {0} s wall-clock limit (killed)")]
    Timeout(f64),
    /// The CPU-time limit passed (SIGXCPU).
    #[error("sandbox: used more than {0} s of CPU (killed)")]
    CpuTime(u64),
    /// The address-space limit was hit.
    #[error("sandbox: ran out of its {0} MiB memory limit")]
    Memory(u64),
    /// More output than allowed (the process group was killed).
    #[error("sandbox: wrote more than {0} bytes to stdout/stderr (killed)")]
    Output(usize),
    /// A file grew past the limit (`RLIMIT_FSIZE`).
    #[error("sandbox: wrote a file larger than {0} bytes (killed)")]
    FileSize(u64),
    /// The audit hook stopped a forbidden operation.
    #[error("sandbox: forbidden operation: {0}")]
    Forbidden(String),
    /// The interpreter died some other way (a signal, or an exit before the tests finished).
    #[error("sandbox: the program ended without a result: {0}")]
    Crashed(String),
}

/// One test's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResult {
    /// The test statement, e.g. `assert add(1, 2) == 3`.
    pub test: String,
    /// Whether it ran without an exception.
    pub passed: bool,
    /// What went wrong: `add(1, 2) returned 4, expected 3`, or the exception as `Type: text`.
    pub error: Option<String>,
}

/// The result of running a solution against its tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// Whether the solution's module ran (defined its functions) without an exception.
    pub loaded: bool,
    /// The exception that stopped the module, as `Type: text`.
    pub load_error: Option<String>,
    /// One result per test, in order.
    pub tests: Vec<TestResult>,
    /// What the solution printed (stdout, lossy UTF-8, at most `max_output_bytes`).
    pub stdout: String,
    /// Wall-clock time of the process, from spawn to exit.
    pub elapsed: Duration,
}

impl Execution {
    /// Number of tests that passed.
    pub fn passed(&self) -> usize {
        self.tests.iter().filter(|t| t.passed).count()
    }

    /// Whether every test passed (and there was at least one).
    pub fn all_passed(&self) -> bool {
        !self.tests.is_empty() && self.tests.iter().all(|t| t.passed)
    }
}

#[derive(Deserialize)]
struct HarnessResult {
    loaded: bool,
    load_error: Option<String>,
    tests: Vec<TestResult>,
}

/// Runs solutions against tests under [`SandboxConfig`]'s limits. Cheap to clone; clones share
/// the concurrency limit.
#[derive(Debug, Clone)]
pub struct Sandbox {
    config: SandboxConfig,
    /// `config.python` resolved to a path once ([`resolve`]).
    python: PathBuf,
    permits: Arc<Semaphore>,
}

impl Sandbox {
    /// A sandbox with these limits.
    pub fn new(config: SandboxConfig) -> Self {
        let n = match config.max_concurrent {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Self {
            python: resolve(&config.python),
            config,
            permits: Arc::new(Semaphore::new(n)),
        }
    }

    /// Its limits.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Runs `solution` (Python source) and then each of `tests` (Python statements) in the
    /// solution's namespace.
    ///
    /// # Errors
    /// A [`SandboxError`] when the run broke a limit, did something forbidden, or produced no
    /// result. An exception in the solution or a failed test is not an error: it is in the
    /// [`Execution`].
    pub async fn run_tests(
        &self,
        solution: &str,
        tests: &[String],
    ) -> Result<Execution, SandboxError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| SandboxError::Crashed(e.to_string()))?;
        let dir = tempfile::Builder::new()
            .prefix("kaizen-sandbox-")
            .tempdir()?;
        let root: PathBuf = dir.path().to_path_buf();
        tokio::fs::write(root.join("harness.py"), HARNESS).await?;
        tokio::fs::write(root.join("solution.py"), solution).await?;
        let tests_json = serde_json::to_string(tests).map_err(std::io::Error::other)?;
        tokio::fs::write(root.join("tests.json"), tests_json).await?;
        tokio::fs::write(root.join("result.json"), "").await?;
        let c = &self.config;
        // An absolute path: with a bare name and its own `PATH`, std would fork instead of
        // posix_spawn (posix_spawnp searches the parent's `PATH`, not the child's).
        let mut command = tokio::process::Command::new(&self.python);
        command
            .args(["-I", "-S", "-B", "harness.py"])
            .args(
                [
                    c.cpu_seconds,
                    c.memory_mib.saturating_mul(1 << 20),
                    c.max_file_bytes,
                ]
                .map(|v| v.to_string()),
            )
            .current_dir(&root)
            .env_clear()
            .env("PATH", SANDBOX_PATH)
            .env("HOME", &root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = command.spawn().map_err(|source| SandboxError::Spawn {
            python: c.python.clone(),
            source,
        })?;
        let group = child.id().map(|id| id as i32);
        let kill_group = || {
            if let Some(pgid) = group {
                // SAFETY: plain syscall; a group that is gone gives ESRCH, ignored.
                unsafe {
                    libc::killpg(pgid, libc::SIGKILL);
                }
            }
        };
        let cap = c.max_output_bytes;
        let stdout = child
            .stdout
            .take()
            .map(|s| tokio::spawn(read_capped(s, cap)));
        let stderr = child
            .stderr
            .take()
            .map(|s| tokio::spawn(read_capped(s, cap)));
        let wall = Duration::from_secs_f64(c.timeout_seconds);
        // The output readers finish when the group's pipes close; a flood ends them early.
        let outputs = async {
            let out = match stdout {
                Some(h) => h.await.unwrap_or_default(),
                None => Capped::default(),
            };
            let err = match stderr {
                Some(h) => h.await.unwrap_or_default(),
                None => Capped::default(),
            };
            (out, err)
        };
        tokio::pin!(outputs);
        let mut collected: Option<(Capped, Capped)> = None;
        let status = loop {
            tokio::select! {
                r = tokio::time::timeout_at((started + wall).into(), child.wait()) => {
                    match r {
                        Ok(status) => break status?,
                        Err(_) => {
                            kill_group();
                            let _ = child.wait().await;
                            return Err(SandboxError::Timeout(c.timeout_seconds));
                        }
                    }
                }
                o = &mut outputs, if collected.is_none() => {
                    if o.0.overflow || o.1.overflow {
                        kill_group();
                        let _ = child.wait().await;
                        return Err(SandboxError::Output(cap));
                    }
                    collected = Some(o);
                }
            }
        };
        let elapsed = started.elapsed();
        // Anything the program left behind in its group goes too.
        kill_group();
        let (out, err) = match collected {
            Some(o) => o,
            None => tokio::time::timeout(Duration::from_secs(1), &mut outputs)
                .await
                .unwrap_or_default(),
        };
        if out.overflow || err.overflow {
            return Err(SandboxError::Output(cap));
        }
        let stderr_text = String::from_utf8_lossy(&err.bytes).into_owned();
        classify(status, &stderr_text, c)?;
        let result = tokio::fs::read_to_string(root.join("result.json")).await?;
        let parsed: HarnessResult = serde_json::from_str(&result).map_err(|_| {
            SandboxError::Crashed(format!(
                "exited with {status} before the tests finished{}",
                last_line(&stderr_text)
            ))
        })?;
        if parsed.tests.len() != tests.len() {
            return Err(SandboxError::Crashed(format!(
                "{} results for {} tests",
                parsed.tests.len(),
                tests.len()
            )));
        }
        Ok(Execution {
            loaded: parsed.loaded,
            load_error: parsed.load_error,
            tests: parsed.tests,
            stdout: String::from_utf8_lossy(&out.bytes).into_owned(),
            elapsed,
        })
    }
}

/// `python` as an absolute path: itself when it names a file (has a `/`), else the first
/// executable of that name in [`SANDBOX_PATH`], then in the caller's `PATH`; unchanged when
/// none is found (the spawn then reports it).
fn resolve(python: &str) -> PathBuf {
    if python.contains('/') {
        return PathBuf::from(python);
    }
    let caller = std::env::var_os("PATH").unwrap_or_default();
    SANDBOX_PATH
        .split(':')
        .map(PathBuf::from)
        .chain(std::env::split_paths(&caller))
        .map(|dir| dir.join(python))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| PathBuf::from(python))
}

/// `": <the last line of stderr>"`, or nothing.
fn last_line(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.chars().take(200).collect::<String>()))
        .unwrap_or_default()
}

/// The fault an exit status means, if any.
fn classify(
    status: std::process::ExitStatus,
    stderr: &str,
    c: &SandboxConfig,
) -> Result<(), SandboxError> {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        return Err(match signal {
            libc::SIGXCPU => SandboxError::CpuTime(c.cpu_seconds),
            libc::SIGXFSZ => SandboxError::FileSize(c.max_file_bytes),
            s => SandboxError::Crashed(format!("killed by signal {s}{}", last_line(stderr))),
        });
    }
    match status.code() {
        Some(0) => Ok(()),
        Some(FORBIDDEN_EXIT) => {
            let what = stderr
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("KAIZEN_SANDBOX_FORBIDDEN "))
                .unwrap_or("unknown");
            Err(SandboxError::Forbidden(what.chars().take(200).collect()))
        }
        Some(MEMORY_EXIT) => Err(SandboxError::Memory(c.memory_mib)),
        Some(FILE_SIZE_EXIT) => Err(SandboxError::FileSize(c.max_file_bytes)),
        Some(_) if stderr.contains("MemoryError") => Err(SandboxError::Memory(c.memory_mib)),
        Some(code) => Err(SandboxError::Crashed(format!(
            "exit status {code}{}",
            last_line(stderr)
        ))),
        None => Err(SandboxError::Crashed(format!("{status}"))),
    }
}

#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    overflow: bool,
}

/// Reads `stream` to its end, keeping at most `cap` bytes; stops at once past the cap.
async fn read_capped(mut stream: impl tokio::io::AsyncRead + Unpin, cap: usize) -> Capped {
    let mut out = Capped::default();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                if out.bytes.len() + n > cap {
                    out.overflow = true;
                    return out;
                }
                out.bytes.extend_from_slice(&buf[..n]);
            }
        }
    }
}
