//! The CPU kernels' training pass (`CpuScorePass`) computes what `score_with` plus burn's
//! autodiff compute: the same log-probs and entropies, and the same gradient for every
//! parameter.

mod common;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use common::{device, max_abs_diff, score_batch as batch, tiny_config};
use kaizen_model::{
    CpuGrads, CpuScorePass, Llama, LlamaConfig, ScoreBatch, ScoreOptions, Scores, TrainProducts,
    score_with,
};

/// `Σ a_i log p_i + Σ b_i H_i + Σ c_i V_i` with fixed, distinct weights per token.
fn loss(scores: &Scores) -> Tensor<1> {
    let n = scores.rows.len();
    let device = scores.logprobs.device();
    let weights = |seed: f32| {
        let v: Vec<f32> = (0..n).map(|i| ((i as f32 + seed) * 0.731).sin()).collect();
        Tensor::<1>::from_data(TensorData::new(v, [n]), &device)
    };
    let mut loss = (scores.logprobs.clone() * weights(1.0)).sum();
    if let Some(entropy) = &scores.entropy {
        loss = loss + (entropy.clone() * weights(5.0)).sum() * 0.3;
    }
    if let Some(values) = &scores.values {
        loss = loss + (values.clone() * weights(9.0)).sum() * 0.7;
    }
    loss
}

/// Every parameter's id and rank.
struct Ids(Vec<(ParamId, usize)>);

impl ModuleVisitor for Ids {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((param.id, D));
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn grad_values(grads: &GradientsParams, (id, rank): (ParamId, usize)) -> Option<Vec<f32>> {
    match rank {
        1 => grads.get::<1>(id).map(host),
        _ => grads.get::<2>(id).map(host),
    }
}

fn compare(config: &LlamaConfig, options: &ScoreOptions) {
    compare_with(config, options, &TrainProducts::f32(), 1e-4, 1e-3);
}

/// The CPU pass with `products` against burn's f32 pass: log-probs, entropies and values
/// within `tol`, every gradient within `rel` of its norm. Returns the largest log-prob gap.
fn compare_with(
    config: &LlamaConfig,
    options: &ScoreOptions,
    products: &TrainProducts,
    tol: f32,
    rel: f32,
) -> f32 {
    let device = device().autodiff();
    let model = Llama::init(config, &device, 9).unwrap();
    let batch = batch();

    let reference = score_with(&model, &batch, options).unwrap();
    let reference_logprobs = host(reference.logprobs.clone());
    let reference_entropy = reference.entropy.clone().map(host);
    let reference_grads = GradientsParams::from_grads(loss(&reference).backward(), &model);

    let (scores, pass) = CpuScorePass::forward_with(&model, &batch, options, products)
        .unwrap()
        .expect("the CPU pass applies to a float32 flex model under autodiff");
    assert_eq!(scores.rows, reference.rows);
    let logprobs = host(scores.logprobs.clone());
    let lp_gap = max_abs_diff(&logprobs, &reference_logprobs);
    assert!(lp_gap < tol, "log-probs differ by {lp_gap}");
    match (&scores.entropy, reference_entropy) {
        (Some(e), Some(r)) => {
            let diff = max_abs_diff(&host(e.clone()), &r);
            assert!(diff < tol, "entropies differ by {diff}");
        }
        (None, None) => {}
        _ => panic!("entropy requested on one path only"),
    }
    match (&scores.values, &reference.values) {
        (Some(v), Some(r)) => {
            let diff = max_abs_diff(&host(v.clone()), &host(r.clone()));
            assert!(diff < tol, "values differ by {diff}");
        }
        (None, None) => {}
        _ => panic!("a value head on one path only"),
    }
    let grads = loss(&scores).backward();
    let mut into = CpuGrads::new(&model).unwrap();
    pass.backward(&grads, &mut into).unwrap();
    let inner = model.embed_tokens.val().inner().device();
    let ours = into.into_params(&inner);

    let mut ids = Ids(Vec::new());
    model.visit(&mut ids);
    assert_eq!(ours.len(), ids.0.len(), "one gradient per parameter");
    for (i, &id) in ids.0.iter().enumerate() {
        let expected = grad_values(&reference_grads, id)
            .unwrap_or_else(|| panic!("parameter {i}: burn computed no gradient"));
        let got = grad_values(&ours, id).unwrap_or_else(|| panic!("parameter {i}: missing"));
        assert_eq!(got.len(), expected.len(), "parameter {i}: size");
        let norm = expected.iter().map(|v| v * v).sum::<f32>().sqrt();
        let err = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt();
        assert!(norm > 0.0, "parameter {i}: zero reference gradient");
        assert!(
            err <= rel * norm + 1e-6,
            "parameter {i}: |Δ| {err:.3e} vs |g| {norm:.3e} ({options:?}, {products:?})"
        );
    }
    lp_gap
}

/// bf16 mixed precision (the products' operands rounded to bfloat16, f32 sums) stays within
/// bf16's rounding of the f32 pass — log-probs within 0.1 nats, every gradient within 5% of
/// its norm — on an untied model with biases, a tied one and a value head, and does round
/// (the log-probs are not the f32 ones).
#[test]
fn bf16_products_stay_within_bf16_rounding_of_f32() {
    let options = ScoreOptions {
        with_entropy: true,
        ..ScoreOptions::new(0.7)
    };
    let mut untied = tiny_config();
    untied.tie_word_embeddings = false;
    untied.attention_bias = true;
    let mut tied = tiny_config();
    tied.tie_word_embeddings = true;
    let mut valued = tiny_config();
    valued.value_head = true;
    for config in [untied, tied, valued] {
        let gap = compare_with(&config, &options, &TrainProducts::bf16(), 0.1, 5e-2);
        assert!(
            gap > 1e-6,
            "bf16 products left the log-probs unrounded ({gap})"
        );
    }
}

#[test]
fn untied_with_biases_and_shared_prefixes() {
    compare(
        &tiny_config(),
        &ScoreOptions {
            temperature: 0.7,
            with_entropy: true,
            share_prefixes: true,
        },
    );
}

#[test]
fn untied_without_prefix_sharing_or_entropy() {
    compare(
        &tiny_config(),
        &ScoreOptions {
            temperature: 1.0,
            with_entropy: false,
            share_prefixes: false,
        },
    );
}

#[test]
fn tied_without_biases() {
    let mut config = tiny_config();
    config.tie_word_embeddings = true;
    config.attention_bias = false;
    config.num_key_value_heads = 1;
    compare(
        &config,
        &ScoreOptions {
            temperature: 1.3,
            with_entropy: true,
            share_prefixes: true,
        },
    );
}

/// PPO's critic on the shared trunk: the value head's estimates and the gradients of its weight,
/// its bias and every trunk parameter (the value loss flows into the trunk) match burn's.
#[test]
fn with_a_value_head() {
    let mut config = tiny_config();
    config.value_head = true;
    compare(
        &config,
        &ScoreOptions {
            temperature: 0.9,
            with_entropy: true,
            share_prefixes: true,
        },
    );
    config.tie_word_embeddings = true;
    compare(
        &config,
        &ScoreOptions {
            temperature: 1.0,
            with_entropy: false,
            share_prefixes: false,
        },
    );
}

#[test]
fn gradients_accumulate_over_passes() {
    let device = device().autodiff();
    let model = Llama::init(&tiny_config(), &device, 4).unwrap();
    let batch = batch();
    let options = ScoreOptions::new(1.0);
    let mut once = CpuGrads::new(&model).unwrap();
    let mut twice = CpuGrads::new(&model).unwrap();
    for (into, times) in [(&mut once, 1), (&mut twice, 2)] {
        for _ in 0..times {
            let (scores, pass) = CpuScorePass::forward(&model, &batch, &options)
                .unwrap()
                .unwrap();
            pass.backward(&loss(&scores).backward(), into).unwrap();
        }
    }
    let inner = model.embed_tokens.val().inner().device();
    let (once, twice) = (once.into_params(&inner), twice.into_params(&inner));
    let id = (model.layers[1].mlp.down_proj.weight.id, 2);
    let a = grad_values(&once, id).unwrap();
    let b = grad_values(&twice, id).unwrap();
    let doubled: Vec<f32> = a.iter().map(|v| 2.0 * v).collect();
    assert!(max_abs_diff(&b, &doubled) < 1e-5);
    assert!(a.iter().any(|v| *v != 0.0));
}

#[test]
fn does_not_apply_without_autodiff() {
    let batch = batch();
    let options = ScoreOptions::new(1.0);
    let plain = Llama::init(&tiny_config(), &device(), 1).unwrap();
    assert!(!CpuScorePass::applies(&plain));
    assert!(
        CpuScorePass::forward(&plain, &batch, &options)
            .unwrap()
            .is_none()
    );
    // A value head attached to a loaded model trains on this path too.
    let critic = Llama::init(&tiny_config(), &device().autodiff(), 1)
        .unwrap()
        .with_value_head(3)
        .unwrap();
    assert!(critic.config().value_head);
    assert!(CpuScorePass::applies(&critic));
    assert!(CpuGrads::new(&critic).is_some());
}

#[test]
fn bad_input_is_an_error() {
    let model = Llama::init(&tiny_config(), &device().autodiff(), 1).unwrap();
    let bad = ScoreBatch {
        sequences: vec![vec![1, 2, 3]],
        loss_masks: vec![vec![true, true, true]],
    };
    let err = CpuScorePass::forward(&model, &bad, &ScoreOptions::new(1.0)).unwrap_err();
    assert!(err.to_string().contains("first token"), "{err}");
    let out_of_vocab = ScoreBatch {
        sequences: vec![vec![1, 9999]],
        loss_masks: vec![vec![false, true]],
    };
    let err = CpuScorePass::forward(&model, &out_of_vocab, &ScoreOptions::new(1.0)).unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
}

/// Scoring a model nothing back-propagates into (a frozen reference, without autodiff) on the
/// CPU pass gives `score_with`'s log-probs and entropies, in f32 and within bf16's rounding.
#[test]
fn detached_scores_equal_score_with_on_a_plain_model() {
    let batch = batch();
    let options = ScoreOptions {
        with_entropy: true,
        ..ScoreOptions::new(0.8)
    };
    for autodiff in [false, true] {
        let device = if autodiff {
            device().autodiff()
        } else {
            device()
        };
        let model = Llama::init(&tiny_config(), &device, 5).unwrap();
        let reference = score_with(&model, &batch, &options).unwrap();
        for (products, tol) in [(TrainProducts::f32(), 1e-4), (TrainProducts::bf16(), 0.1)] {
            let scores = CpuScorePass::score_detached(&model, &batch, &options, &products)
                .unwrap()
                .expect("float32 flex weights");
            assert_eq!(scores.rows, reference.rows);
            let gap = max_abs_diff(&host(scores.logprobs), &host(reference.logprobs.clone()));
            assert!(
                gap < tol,
                "autodiff {autodiff}, {products:?}: log-probs differ by {gap}"
            );
            let gap = max_abs_diff(
                &host(scores.entropy.expect("entropy asked for")),
                &host(reference.entropy.clone().expect("entropy asked for")),
            );
            assert!(
                gap < tol,
                "autodiff {autodiff}, {products:?}: entropies differ by {gap}"
            );
        }
    }
}
