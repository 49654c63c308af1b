//! Weights and config round trips; malformed files give clear errors.

mod common;

use common::{device, tiny_config, tiny_model};
use kaizen_model::{HostTensor, Llama, LlamaConfig, write_safetensors};

#[test]
fn safetensors_round_trip_is_exact_and_gives_identical_logits() {
    let model = tiny_model(&device(), 31);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    model.save_safetensors(&path).unwrap();
    let back = Llama::load_safetensors(&tiny_config(), &path, &device()).unwrap();
    assert_eq!(back.to_named(), model.to_named());
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, tiny_config().to_json_string()).unwrap();
    assert_eq!(LlamaConfig::from_file(&config_path).unwrap(), tiny_config());
}

#[test]
fn malformed_weights_name_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage").unwrap();
    let err = Llama::load_safetensors(&tiny_config(), &path, &device())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("safetensors"),
        "{err}"
    );

    let mut named = tiny_model(&device(), 1).to_named();
    // Wrong shape.
    let i = named
        .iter()
        .position(|(n, _)| n == "model.norm.weight")
        .unwrap();
    named[i].1 = HostTensor::new(vec![3], vec![1.0; 3]);
    write_safetensors(&path, &named, None).unwrap();
    let err = Llama::load_safetensors(&tiny_config(), &path, &device())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`model.norm.weight`") && err.contains("[3]"),
        "{err}"
    );
    // Missing tensor.
    named.remove(i);
    write_safetensors(&path, &named, None).unwrap();
    let err = Llama::load_safetensors(&tiny_config(), &path, &device())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing tensor `model.norm.weight`"), "{err}");
    // Unexpected tensor.
    named.push((
        "model.norm.weight".into(),
        HostTensor::new(vec![64], vec![1.0; 64]),
    ));
    named.push((
        "model.extra.weight".into(),
        HostTensor::new(vec![1], vec![1.0]),
    ));
    write_safetensors(&path, &named, None).unwrap();
    let err = Llama::load_safetensors(&tiny_config(), &path, &device())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unexpected tensor `model.extra.weight`"),
        "{err}"
    );
    // Missing file.
    let err = Llama::load_safetensors(
        &tiny_config(),
        dir.path().join("none.safetensors"),
        &device(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("none.safetensors"), "{err}");
}

#[test]
fn truncated_weights_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    tiny_model(&device(), 2).save_safetensors(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert!(
            Llama::load_safetensors(&tiny_config(), &path, &device()).is_err(),
            "cut at {cut}"
        );
    }
}
