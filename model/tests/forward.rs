//! Forward-pass correctness on random weights: KV cache vs full forward, causality, padding.

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use common::{device, max_abs_diff, tiny_config, tiny_model};
use kaizen_model::Llama;

fn tokens(rows: &[Vec<u32>]) -> Tensor<2, Int> {
    let seq = rows[0].len();
    let data: Vec<i64> = rows.iter().flatten().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(data, [rows.len(), seq]), &device())
}

fn full_logits(model: &Llama, rows: &[Vec<u32>]) -> Vec<f32> {
    model
        .forward(tokens(rows))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

#[test]
fn kv_cache_decoding_matches_full_forward() {
    let model = tiny_model(&device(), 1);
    let vocab = model.config().vocab_size;
    let seq: Vec<u32> = (0..40).map(|i| (i * 37 % 290) as u32).collect();
    let full = full_logits(&model, std::slice::from_ref(&seq));

    // Prefill 7 tokens, then decode one at a time; compare every position.
    let mut cache = model.new_cache(vec![0]);
    let mut got = Vec::new();
    let h = model.forward_hidden(tokens(&[seq[..7].to_vec()]), &[], Some(&mut cache));
    got.extend(
        model
            .logits(h.reshape([7, 64]))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
    );
    for &token in &seq[7..] {
        let h = model.forward_hidden(tokens(&[vec![token]]), &[], Some(&mut cache));
        got.extend(
            model
                .logits(h.reshape([1, 64]))
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
        );
    }
    assert_eq!(got.len(), seq.len() * vocab);
    let diff = max_abs_diff(&got, &full);
    assert!(
        diff < 1e-4,
        "KV-cache logits differ from the full forward by {diff}"
    );
    // The cache grew past one 64-column chunk boundary? (40 tokens: one chunk.)
    assert_eq!(cache.len(), 40);
}

#[test]
fn kv_cache_across_chunk_growth_matches_full_forward() {
    let model = tiny_model(&device(), 2);
    let seq: Vec<u32> = (0..150).map(|i| (i * 11 % 283) as u32).collect();
    let full = full_logits(&model, std::slice::from_ref(&seq));
    let vocab = model.config().vocab_size;
    let mut cache = model.new_cache(vec![0]);
    let h = model.forward_hidden(tokens(&[seq[..100].to_vec()]), &[], Some(&mut cache));
    let first = model
        .logits(h.reshape([100, 64]))
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(max_abs_diff(&first, &full[..100 * vocab]) < 1e-4);
    for t in 100..150 {
        let h = model.forward_hidden(tokens(&[vec![seq[t]]]), &[], Some(&mut cache));
        let got = model
            .logits(h.reshape([1, 64]))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let diff = max_abs_diff(&got, &full[t * vocab..(t + 1) * vocab]);
        assert!(diff < 1e-4, "position {t}: {diff}");
    }
    assert!(cache.capacity() >= 150 && cache.capacity().is_multiple_of(64));
}

#[test]
fn changing_a_later_token_never_changes_earlier_logits() {
    let model = tiny_model(&device(), 3);
    let vocab = model.config().vocab_size;
    let a: Vec<u32> = (0..20).map(|i| (i * 13 % 250) as u32).collect();
    let mut b = a.clone();
    b[12] = 299;
    b[19] = 5;
    let la = full_logits(&model, &[a]);
    let lb = full_logits(&model, &[b]);
    assert_eq!(
        la[..12 * vocab],
        lb[..12 * vocab],
        "positions before 12 must be bit-identical"
    );
    assert!(max_abs_diff(&la[12 * vocab..13 * vocab], &lb[12 * vocab..13 * vocab]) > 1e-3);
}

#[test]
fn left_padding_never_leaks_into_attention() {
    let model = tiny_model(&device(), 4);
    let vocab = model.config().vocab_size;
    let short: Vec<u32> = vec![5, 6, 7, 8, 9];
    let alone = full_logits(&model, std::slice::from_ref(&short));
    // The same row left-padded by 6 tokens of arbitrary content, next to another row.
    for pad_token in [0u32, 123, 299] {
        let mut padded = vec![pad_token; 6];
        padded.extend(&short);
        let other: Vec<u32> = (0..11).map(|i| (i * 7) as u32).collect();
        let h = model.forward_hidden(tokens(&[padded, other]), &[6, 0], None);
        let logits = model
            .logits(h.reshape([22, 64]))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let diff = max_abs_diff(&logits[6 * vocab..11 * vocab], &alone);
        assert!(diff < 1e-4, "pad token {pad_token}: {diff}");
    }
}

#[test]
fn gqa_and_bias_and_untied_configs_build() {
    let mut config = tiny_config();
    config.num_key_value_heads = 1;
    config.tie_word_embeddings = true;
    config.attention_bias = false;
    config.value_head = true;
    let model = Llama::init(&config, &device(), 0).unwrap();
    let logits = model.forward(tokens(&[vec![1, 2, 3]]));
    assert_eq!(logits.dims(), [1, 3, 300]);
    assert!(model.lm_head.is_none());
    assert_eq!(config.num_parameters(), {
        use burn::module::Module;
        model.num_params()
    });
}

#[test]
fn same_seed_same_weights() {
    let a = tiny_model(&device(), 9).to_named();
    let b = tiny_model(&device(), 9).to_named();
    let c = tiny_model(&device(), 10).to_named();
    assert_eq!(a, b);
    assert_ne!(a, c);
}
