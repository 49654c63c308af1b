//! Hugging Face directories: export → load round trips (tiny and, when present, SmolLM2),
//! sharded checkpoints, clear errors.

mod common;

use std::collections::HashMap;

use burn::tensor::Device;
use common::{device, tiny_config};
use kaizen_model::{
    GenerateOptions, GenerationRequest, HostTensor, Llama, Policy, SamplingParams, Tokenizer,
    generate, read_safetensors, smollm2_path, write_safetensors,
};

fn greedy(policy: &Policy, prompt: &[u32], n: usize) -> Vec<u32> {
    generate(
        &policy.model,
        None,
        &[GenerationRequest {
            session: None,
            prompt: prompt.to_vec(),
            params: SamplingParams::greedy(n),
        }],
        &GenerateOptions::default(),
    )
    .unwrap()
    .remove(0)
    .tokens
}

/// A value head (PPO's critic) survives save and load: its `v_head.summary.*` tensors were
/// written but the loaded config had no value head, so loading such a checkpoint failed on an
/// unexpected tensor.
#[test]
fn a_value_head_round_trips_through_a_hugging_face_directory() {
    let mut policy = Policy::tiny(&device(), 5).unwrap();
    let config = kaizen_model::LlamaConfig {
        value_head: true,
        ..policy.model.config().clone()
    };
    policy.model = Llama::init(&config, &device(), 9).unwrap();
    let dir = tempfile::tempdir().unwrap();
    policy.save_dir(dir.path()).unwrap();
    let tensors = read_safetensors(&dir.path().join("model.safetensors")).unwrap();
    assert!(tensors.contains_key("v_head.summary.weight"));
    let back = Policy::load(dir.path().to_str().unwrap(), &device()).unwrap();
    assert!(back.model.config().value_head);
    assert_eq!(back.model.to_named(), policy.model.to_named());
    // And a policy without one still loads without one.
    let plain = Policy::tiny(&device(), 5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    plain.save_dir(dir.path()).unwrap();
    let back = Policy::load(dir.path().to_str().unwrap(), &device()).unwrap();
    assert!(!back.model.config().value_head);
}

#[test]
fn tiny_policy_round_trips_through_a_hugging_face_directory() {
    let policy = Policy::tiny(&device(), 5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    policy.save_dir(dir.path()).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} written");
    }
    // Tied embeddings stay tied: no separate output matrix in the file.
    let tensors = read_safetensors(&dir.path().join("model.safetensors")).unwrap();
    assert!(!tensors.contains_key("lm_head.weight"));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["tie_word_embeddings"], true);

    let back = Policy::load(dir.path().to_str().unwrap(), &device()).unwrap();
    assert_eq!(back.model.to_named(), policy.model.to_named());
    assert_eq!(back.model.config(), policy.model.config());
    assert_eq!(back.template, policy.template);
    assert_eq!(
        back.tokenizer.eos_token_ids(),
        policy.tokenizer.eos_token_ids()
    );
    let text = "round trip";
    assert_eq!(
        back.tokenizer.encode(text, false).unwrap(),
        policy.tokenizer.encode(text, false).unwrap()
    );
    let prompt = policy.tokenizer.encode("hello", false).unwrap();
    assert_eq!(greedy(&back, &prompt, 16), greedy(&policy, &prompt, 16));
}

#[test]
fn sharded_checkpoints_load() {
    let mut config = tiny_config();
    config.vocab_size = 259;
    let model = Llama::init(&config, &device(), 3).unwrap();
    let policy = Policy {
        model,
        tokenizer: Tokenizer::byte_level(),
        template: kaizen_model::ChatTemplate::chatml(),
        name: "t".into(),
    };
    let dir = tempfile::tempdir().unwrap();
    policy.save_dir(dir.path()).unwrap();
    let named = policy.model.to_named();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let (a, b) = named.split_at(named.len() / 2);
    write_safetensors(
        &dir.path().join("model-00001-of-00002.safetensors"),
        a,
        None,
    )
    .unwrap();
    write_safetensors(
        &dir.path().join("model-00002-of-00002.safetensors"),
        b,
        None,
    )
    .unwrap();
    let mut map = serde_json::Map::new();
    for (name, _) in a {
        map.insert(name.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (name, _) in b {
        map.insert(name.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let back = Policy::load_dir(dir.path(), &device()).unwrap();
    assert_eq!(back.model.to_named(), named);

    // A shard listed in the index but missing is named in the error.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = Policy::load_dir(dir.path(), &device())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

#[test]
fn bad_directories_name_the_file_or_field() {
    let policy = Policy::tiny(&device(), 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    policy.save_dir(dir.path()).unwrap();
    let cfg_path = dir.path().join("config.json");
    let original = std::fs::read_to_string(&cfg_path).unwrap();

    std::fs::write(
        &cfg_path,
        original
            .replace("LlamaForCausalLM", "GPT2LMHeadModel")
            .replace("\"llama\"", "\"gpt2\""),
    )
    .unwrap();
    let err = Policy::load_dir(dir.path(), &device())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("architectures"),
        "{err}"
    );

    std::fs::write(
        &cfg_path,
        original.replace("\"hidden_size\": 256", "\"hidden_size\": 128"),
    )
    .unwrap();
    let err = Policy::load_dir(dir.path(), &device())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.embed_tokens.weight") && err.contains("shape"),
        "{err}"
    );

    std::fs::write(&cfg_path, &original).unwrap();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = Policy::load_dir(dir.path(), &device())
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");

    let err = Policy::load("/no/such/model", &device())
        .unwrap_err()
        .to_string();
    assert!(err.contains("/no/such/model"), "{err}");
}

#[test]
fn smollm2_exports_and_reloads_with_identical_greedy_output() {
    let path = smollm2_path();
    if !path.is_file() {
        assert!(
            std::env::var("KAIZEN_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{} missing with KAIZEN_REQUIRE_SERVICES=1",
            path.display()
        );
        eprintln!(
            "SKIPPED: {} not found (run scripts/fetch_model.sh)",
            path.display()
        );
        return;
    }
    let device = Device::default();
    let policy = Policy::load("smollm2", &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    policy.save_dir(dir.path()).unwrap();
    let back = Policy::load_dir(dir.path(), &device).unwrap();
    assert_eq!(
        back.template, policy.template,
        "ChatML default system prompt survives"
    );
    let prompt = policy
        .template
        .render_ids(
            &policy.tokenizer,
            &[kaizen_core::Message::user("Name a color.")],
            true,
        )
        .unwrap();
    assert_eq!(
        back.template
            .render_ids(
                &back.tokenizer,
                &[kaizen_core::Message::user("Name a color.")],
                true
            )
            .unwrap(),
        prompt
    );
    assert_eq!(greedy(&back, &prompt, 12), greedy(&policy, &prompt, 12));
    let _: HashMap<String, HostTensor> =
        read_safetensors(&dir.path().join("model.safetensors")).unwrap();
}
