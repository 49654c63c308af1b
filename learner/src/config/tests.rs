use super::*;

const MINIMAL: &str = r#"
[run]
experiment = "t"
max_steps = 3

[model]
source = "tiny"

[[env]]
name = "self_correct"
"#;

/// Every job under `configs/` loads and validates, so a shipped recipe never fails on its
/// own keys (data files are not read here).
#[test]
fn every_shipped_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (config, _) =
                JobConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            config
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            count += 1;
        }
    }
    assert!(count >= 7, "{count} configs");
}

#[test]
fn minimal_config_gets_defaults() {
    let (c, _) = JobConfig::parse(MINIMAL, Path::new("job.toml"), &[]).unwrap();
    assert_eq!(c.grpo.num_generations, 8);
    assert_eq!(c.run.mode, Mode::Sync);
    assert_eq!(c.envs[0].weight, 1.0);
    assert_eq!(c.loss.epsilon, 0.2);
}

#[test]
fn unknown_keys_name_the_key_and_the_file() {
    let text = format!("{MINIMAL}\n[grpo]\nnum_generation = 4\n");
    let err = JobConfig::parse(&text, Path::new("jobs/x.toml"), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("jobs/x.toml") && err.contains("num_generation"),
        "{err}"
    );
    let err = JobConfig::parse(
        &format!("{MINIMAL}\n[loss]\nepsilonn = 1\n"),
        Path::new("a.toml"),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("epsilonn"), "{err}");
}

#[test]
fn set_overrides_any_field() {
    let (c, table) = JobConfig::parse(
        MINIMAL,
        Path::new("job.toml"),
        &[
            "optim.learning_rate=3e-5".into(),
            "grpo.num_generations=4".into(),
            "run.name=my-run".into(),
            "env.params.attempts=3".into(),
        ],
    )
    .unwrap();
    assert_eq!(c.optim.learning_rate, 3e-5);
    assert_eq!(c.grpo.num_generations, 4);
    assert_eq!(c.run.name.as_deref(), Some("my-run"));
    assert_eq!(c.envs[0].params["attempts"].as_integer(), Some(3));
    assert_eq!(table["optim"]["learning_rate"].as_float(), Some(3e-5));
    let err = JobConfig::parse(MINIMAL, Path::new("job.toml"), &["grpo.bogus=1".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("bogus"), "{err}");
    let err = JobConfig::parse(MINIMAL, Path::new("job.toml"), &["novalue".into()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--set") && err.contains("key.path=value"),
        "{err}"
    );
}

#[test]
fn cache_paths_in_env_params_expand() {
    let text = format!("{MINIMAL}[env.params]\nproblems = \"${{KAIZEN_CACHE}}/data/x.jsonl\"\n");
    let (c, _) = JobConfig::parse(&text, Path::new("job.toml"), &[]).unwrap();
    let p = c.envs[0].params["problems"].as_str().unwrap().to_string();
    assert!(p.ends_with("/data/x.jsonl") && !p.contains("${"), "{p}");
    assert!(p.starts_with(&kaizen_cache().display().to_string()));
    let (c, _) = JobConfig::parse(
        MINIMAL,
        Path::new("job.toml"),
        &[
            "sft.source=\"${KAIZEN_CACHE}/data/sft.jsonl\"".into(),
            "sft.steps=1".into(),
        ],
    )
    .unwrap();
    let source = c.sft.unwrap().source;
    assert_eq!(
        source,
        format!("{}/data/sft.jsonl", kaizen_cache().display())
    );
}

#[test]
fn invalid_values_name_the_key() {
    let err = JobConfig::parse(
        MINIMAL,
        Path::new("job.toml"),
        &["grpo.num_generations=0".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("grpo.num_generations"), "{err}");
}
