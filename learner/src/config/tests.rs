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

/// `[cluster]` values that would panic or livelock a multi-process job are refused by name.
#[test]
fn cluster_ranges_are_checked() {
    for (set, key) in [
        ("cluster.join_timeout_s=-1", "cluster.join_timeout_s"),
        ("cluster.peer_timeout_s=nan", "cluster.peer_timeout_s"),
        ("cluster.peer_timeout_s=0", "cluster.peer_timeout_s"),
        (
            "cluster.reconnect_timeout_s=1e30",
            "cluster.reconnect_timeout_s",
        ),
        ("cluster.max_message_mib=0", "cluster.max_message_mib"),
        ("cluster.learners=0", "cluster.learners"),
        ("cluster.actor_processes=0", "cluster.actor_processes"),
        ("cluster.weights_chunk_kib=0", "cluster.weights_chunk_kib"),
    ] {
        let err = JobConfig::parse(MINIMAL, Path::new("job.toml"), &[set.into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{set}: {err}");
    }
    JobConfig::parse(
        MINIMAL,
        Path::new("job.toml"),
        &[
            "cluster.peer_timeout_s=5".into(),
            "cluster.learners=2".into(),
        ],
    )
    .unwrap();
}

/// `algorithm` picks the learner's objective; each algorithm's section needs it, sections an
/// algorithm does not read are errors naming the fix, and the sections' ranges are checked.
#[test]
fn algorithm_sections_must_match_the_algorithm() {
    let parse = |text: &str| JobConfig::parse(text, Path::new("job.toml"), &[]);
    let (c, _) = parse(&format!(
        "algorithm = \"ppo\"\n{MINIMAL}\n[ppo]\ngamma = 0.99\n"
    ))
    .unwrap();
    assert_eq!(c.algorithm, Algorithm::Ppo);
    let objective = c.objective_at(0);
    assert!(objective.needs_value_head() && !objective.needs_critic());
    assert_eq!(objective.ppo.gamma, 0.99);
    // Default PPO puts a KL in the reward, so it keeps a reference.
    assert!(objective.needs_reference());
    let (c, _) = parse(&format!(
        "algorithm = \"ppo\"\n{MINIMAL}\n[ppo]\ncritic = \"separate\"\nkl_coef = 0.0\n"
    ))
    .unwrap();
    let objective = c.objective_at(0);
    assert!(objective.needs_critic() && !objective.needs_value_head());
    assert!(!objective.needs_reference());
    // DPO always compares with a reference.
    let (c, _) = parse(&format!("algorithm = \"dpo\"\n{MINIMAL}")).unwrap();
    assert!(c.objective_at(0).needs_reference());

    let err = |text: String| parse(&text).unwrap_err().to_string();
    let e = err(format!("{MINIMAL}\n[ppo]\ngamma = 0.9\n"));
    assert!(
        e.contains("[ppo] is set") && e.contains("algorithm = \"ppo\""),
        "{e}"
    );
    let e = err(format!(
        "algorithm = \"ppo\"\n{MINIMAL}\n[advantage]\nadv_estimator = \"rloo\"\n"
    ));
    assert!(e.contains("[advantage]") && e.contains("GAE"), "{e}");
    let e = err(format!(
        "algorithm = \"nft\"\n{MINIMAL}\n[loss]\nbeta = 0.1\n"
    ));
    assert!(e.contains("[loss]") && e.contains("[nft]"), "{e}");
    let e = err(format!(
        "algorithm = \"dpo\"\n{MINIMAL}\n[score]\nstage1_steps = 1\nstage1_beta = 0.1\nstage2_beta = 0.0\nprogress_bonus = 0.0\n"
    ));
    assert!(e.contains("[score]") && e.contains("dpo"), "{e}");
    let e = err(format!(
        "algorithm = \"ppo\"\n{MINIMAL}\n[ppo]\nlam = 2.0\n"
    ));
    assert!(e.contains("[ppo]") && e.contains("`lam`"), "{e}");
    let e = err(format!(
        "algorithm = \"dpo\"\n{MINIMAL}\n[dpo]\nbeta = 0.0\n"
    ));
    assert!(e.contains("dpo.beta"), "{e}");
    let e = err(format!(
        "algorithm = \"nft\"\n{MINIMAL}\n[nft]\nclamp_negative = -1.0\n"
    ));
    assert!(e.contains("[nft]") && e.contains("clamp_negative"), "{e}");
    let e = err(format!("algorithm = \"a2c\"\n{MINIMAL}"));
    assert!(e.contains("a2c") && e.contains("ppo"), "{e}");
    let e = err(format!(
        "{MINIMAL}\n[preference]\nsource = \"p.jsonl\"\nsteps = 1\nbeta = 0.0\n"
    ));
    assert!(e.contains("preference.beta"), "{e}");
}

/// `[advantage]` and `[loss]` under an algorithm that does not read them are errors even when
/// every key is at its default; a critic learning rate without a separate critic too.
#[test]
fn unread_sections_are_errors_even_at_their_defaults() {
    let parse = |text: String| JobConfig::parse(&text, Path::new("job.toml"), &[]);
    let e = parse(format!(
        "algorithm = \"nft\"\n{MINIMAL}\n[advantage]\ngamma = 1.0\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("[advantage]") && !e.contains("GAE"), "{e}");
    let e = parse(format!(
        "algorithm = \"dpo\"\n{MINIMAL}\n[loss]\nepsilon = 0.2\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("[loss]"), "{e}");
    let e = parse(format!(
        "algorithm = \"ppo\"\n{MINIMAL}\n[ppo]\ncritic_learning_rate = 1e-3\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("critic_learning_rate") && e.contains("separate"),
        "{e}"
    );
    assert!(
        parse(format!(
            "algorithm = \"ppo\"\n{MINIMAL}\n[loss]\nepsilon = 0.2\n"
        ))
        .is_ok()
    );
}

#[test]
fn self_generated_warm_start_defaults_and_checks() {
    let parse = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        JobConfig::parse(MINIMAL, Path::new("job.toml"), &sets)
    };
    let (c, _) = parse(&["sft.source=\"self\"", "sft.steps=4"]).unwrap();
    let sft = c.sft.unwrap();
    assert_eq!(sft.self_generated, None);
    let (c, _) = parse(&[
        "sft.source=\"self\"",
        "sft.steps=4",
        "sft.self_generated.rounds=3",
    ])
    .unwrap();
    let g = c.sft.unwrap().self_generated.unwrap();
    assert_eq!((g.rounds, g.samples_per_problem), (3, 4));
    assert_eq!(g.select, crate::Selection::Verifier);
    assert!(g.temperatures.is_empty());
    let (c, _) = parse(&[
        "sft.source=\"self\"",
        "sft.steps=4",
        "sft.self_generated.select=\"self_certainty\"",
        "sft.self_generated.temperatures=[0.7, 1.0, 1.3]",
    ])
    .unwrap();
    let g = c.sft.unwrap().self_generated.unwrap();
    assert_eq!(g.select, crate::Selection::SelfCertainty);
    assert_eq!(g.temperatures, vec![0.7, 1.0, 1.3]);
    assert!(g.certainty_quantile == 0.0 && g.certainty_quantiles.is_empty());
    // B-STaR's reward threshold: quantiles of self-certainty, only with that selector.
    let certain = [
        "sft.source=\"self\"",
        "sft.steps=4",
        "sft.self_generated.select=\"self_certainty\"",
    ];
    let (c, _) = parse(
        &[
            &certain[..],
            &["sft.self_generated.certainty_quantiles=[0.0, 0.5]"],
        ]
        .concat(),
    )
    .unwrap();
    let g = c.sft.unwrap().self_generated.unwrap();
    assert_eq!(g.certainty_quantiles, vec![0.0, 0.5]);
    for bad in [
        "sft.self_generated.certainty_quantile=1.0",
        "sft.self_generated.certainty_quantiles=[0.5, -0.1]",
    ] {
        let e = parse(&[&certain[..], &[bad]].concat())
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be in [0, 1)"), "{bad}: {e}");
    }
    let e = parse(&[
        "sft.source=\"self\"",
        "sft.steps=4",
        "sft.self_generated.certainty_quantile=0.5",
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("certainty_quantile(s)` needs `select = \"self_certainty\""),
        "{e}"
    );
    let (c, _) = parse(&["grpo.reward_source=\"self_certainty\""]).unwrap();
    assert_eq!(c.grpo.reward_source, crate::RewardSource::SelfCertainty);
    // Co-Reward needs every environment's twin; the twin slot follows the evaluation slots.
    let e = parse(&["grpo.reward_source=\"co_reward\""])
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no `twin`"), "{e}");
    let (c, _) = parse(&[
        "grpo.reward_source=\"co_reward\"",
        "env.twin={ ask = \"twin\" }",
    ])
    .unwrap();
    assert_eq!(c.grpo.groups_per_prompt(), 2);
    assert_eq!(c.twin_slot(0), Some(2 * c.envs.len()));
    assert_eq!(
        c.envs[0].twin_params().unwrap()["ask"].as_str(),
        Some("twin")
    );
    for bad in [
        "sft.self_generated.rounds=0",
        "sft.self_generated.max_per_problem=0",
        "sft.self_generated.temperature=0.0",
        "sft.self_generated.temperatures=[0.7, 0.0]",
        "sft.self_generated.balance_target=0",
        "sft.self_generated.select=\"best\"",
        "sft.self_generated.rationalize_turns=[0]",
    ] {
        let e = parse(&["sft.source=\"self\"", "sft.steps=4", bad])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sft.self_generated"), "{bad}: {e}");
    }
    // Rationalisation: off by default; its hint is the gold answer, so only with the verifier.
    assert!(g.rationalize_turns.is_empty() && !g.evaluate_rounds);
    let (c, _) = parse(&[
        "sft.source=\"self\"",
        "sft.steps=4",
        "sft.self_generated.rationalize_turns=[2]",
        "sft.self_generated.rationalize_samples=2",
    ])
    .unwrap();
    let g = c.sft.unwrap().self_generated.unwrap();
    assert_eq!((g.rationalize_turns, g.rationalize_samples), (vec![2], 2));
    for bad in [
        "sft.self_generated.select=\"self_certainty\"",
        "sft.self_generated.rationalize_samples=0",
    ] {
        let e = parse(&[
            "sft.source=\"self\"",
            "sft.steps=4",
            "sft.self_generated.rationalize_turns=[2]",
            bad,
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("rationalize"), "{bad}: {e}");
    }
    // The rounds' table is not read with another source: an error, not silently ignored.
    let e = parse(&[
        "sft.source=\"demonstrations\"",
        "sft.steps=4",
        "sft.self_generated.rounds=2",
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("sft.self_generated") && e.contains("demonstrations"),
        "{e}"
    );
}

#[test]
fn learner_bf16_defaults_off_and_needs_the_cpu_pass() {
    let (c, _) = JobConfig::parse(MINIMAL, Path::new("job.toml"), &[]).unwrap();
    assert!(!c.learner.bf16, "f32 products by default");
    let (c, _) = JobConfig::parse(
        MINIMAL,
        Path::new("job.toml"),
        &["learner.bf16=true".into()],
    )
    .unwrap();
    assert!(c.learner.bf16);
    c.validate().unwrap();
    let err = JobConfig::parse(
        MINIMAL,
        Path::new("job.toml"),
        &[
            "learner.bf16=true".into(),
            "learner.cpu_kernels=false".into(),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("learner.bf16") && err.contains("cpu_kernels"),
        "{err}"
    );
}

#[test]
fn learner_device_and_collective_default_to_cpu_and_mpi_and_parse() {
    let (c, _) = JobConfig::parse(MINIMAL, Path::new("job.toml"), &[]).unwrap();
    assert_eq!(c.learner.device, crate::LearnerDevice::Cpu);
    assert_eq!(c.learner.collective, crate::LearnerCollective::Mpi);
    let (c, _) = JobConfig::parse(
        MINIMAL,
        Path::new("job.toml"),
        &[
            "learner.device=\"cuda\"".into(),
            "learner.collective=\"nccl\"".into(),
        ],
    )
    .unwrap();
    assert_eq!(c.learner.device, crate::LearnerDevice::Cuda);
    assert_eq!(c.learner.collective, crate::LearnerCollective::Nccl);
    let err = JobConfig::parse(
        MINIMAL,
        Path::new("job.toml"),
        &["learner.device=\"tpu\"".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tpu") && err.contains("cuda"), "{err}");
}

#[test]
fn a_cuda_learner_refuses_the_options_the_gpu_pass_lacks_naming_them() {
    let cuda = |more: &[&str]| {
        let mut overrides = vec!["learner.device=\"cuda\"".to_string()];
        overrides.extend(more.iter().map(|s| s.to_string()));
        JobConfig::parse(MINIMAL, Path::new("job.toml"), &overrides)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    // The default `share_prompt_prefix = true` is accepted: the GPU pass scores rows in full.
    cuda(&[]).unwrap();
    cuda(&["learner.share_prompt_prefix=false"]).unwrap();
    for (set, names) in [
        ("learner.bf16=true", "learner.bf16"),
        ("loss.entropy_coef=0.01", "loss.entropy_coef"),
        ("algorithm=\"ppo\"", "ppo"),
    ] {
        let err = cuda(&[set]).unwrap_err();
        assert!(
            err.contains(names) && err.contains("learner.device"),
            "{set}: {err}"
        );
    }
}

#[test]
fn cuda_actors_refuse_the_options_the_gpu_sampler_lacks_naming_them() {
    let (c, _) = JobConfig::parse(MINIMAL, Path::new("job.toml"), &[]).unwrap();
    assert_eq!(c.actors.device, crate::ActorsDevice::Cpu);
    let cuda = |more: &[&str]| {
        let mut overrides = vec!["actors.device=\"cuda\"".to_string()];
        overrides.extend(more.iter().map(|s| s.to_string()));
        JobConfig::parse(MINIMAL, Path::new("job.toml"), &overrides)
            .map(|(c, _)| c)
            .map_err(|e| e.to_string())
    };
    // The default `kv_cache_mib` is accepted (unused on the GPU: it keeps nothing).
    let c = cuda(&[]).unwrap();
    assert_eq!(c.actors.device, crate::ActorsDevice::Cuda);
    for (set, names) in [
        ("actors.decode_weights=\"int8\"", "actors.decode_weights"),
        ("actors.decode_weights=\"bf16\"", "actors.decode_weights"),
        (
            "actors.kv_across_versions=\"keep\"",
            "actors.kv_across_versions",
        ),
        ("sampling.top_k=20", "sampling.top_k"),
        ("sampling.min_p=0.1", "sampling.min_p"),
        ("grpo.reward_source=\"self_certainty\"", "self_certainty"),
    ] {
        let err = cuda(&[set]).unwrap_err();
        assert!(
            err.contains(names) && err.contains("actors.device"),
            "{set}: {err}"
        );
    }
    let err = JobConfig::parse(
        MINIMAL,
        Path::new("job.toml"),
        &["actors.device=\"tpu\"".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tpu") && err.contains("cuda"), "{err}");
}
