//! `kaizen-device-check OUT.json [--model auto|random|smollm2|PATH]`: the GPU machine's checks
//! (`kaizen_gpu::device_check`), written as one JSON file. Built on the CPU machine and carried
//! to the GPU machine by `scripts/device/check.sh`; exits 1 when a check failed (the JSON says
//! which), 2 when the JSON cannot be written.

use std::path::PathBuf;
use std::process::ExitCode;

use kaizen_gpu::device_check::{Options, run};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let mut options = Options::default();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let parsed: Result<(), String> = match arg.as_str() {
            "--model" => value("--model").map(|v| options.model = v),
            "--gpu" => value("--gpu").and_then(|v| {
                v.parse()
                    .map(|o| options.ordinal = o)
                    .map_err(|_| format!("--gpu {v:?}: expected a device number"))
            }),
            "--decode-tokens" => value("--decode-tokens").and_then(|v| {
                v.parse()
                    .map(|n| options.decode_tokens = n)
                    .map_err(|_| format!("--decode-tokens {v:?}: expected a count"))
            }),
            "-h" | "--help" => {
                eprintln!(
                    "usage: kaizen-device-check OUT.json [--model auto|random|smollm2|PATH] \
                     [--gpu N] [--decode-tokens N]"
                );
                return ExitCode::SUCCESS;
            }
            other if out.is_none() && !other.starts_with('-') => {
                out = Some(PathBuf::from(other));
                Ok(())
            }
            other => Err(format!("unexpected argument {other:?}")),
        };
        if let Err(e) = parsed {
            eprintln!("kaizen-device-check: {e}");
            return ExitCode::from(2);
        }
    }
    let Some(out) = out else {
        eprintln!("kaizen-device-check: give the output path (OUT.json)");
        return ExitCode::from(2);
    };
    let summary = run(&options);
    let text = serde_json::to_string_pretty(&summary)
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    if let Err(e) = std::fs::write(&out, text + "\n") {
        eprintln!("kaizen-device-check: writing {}: {e}", out.display());
        return ExitCode::from(2);
    }
    println!("{}", out.display());
    if summary["ok"].as_bool() == Some(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
