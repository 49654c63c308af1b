//! Teacher-forced scoring agrees with the sampler; gradients reach every parameter.

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use common::{device, tiny_config, tiny_model};
use kaizen_model::{
    GenerateOptions, GenerationRequest, Llama, SamplingParams, ScoreBatch, ScoreOptions, generate,
    score, score_with,
};

fn sample_and_score(temperature: f32) {
    let model = tiny_model(&device(), 21);
    let prompts: Vec<Vec<u32>> = vec![vec![5, 6, 7], (0..12).map(|i| i * 3).collect(), vec![250]];
    let requests: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| GenerationRequest {
            session: None,
            prompt: p.clone(),
            params: SamplingParams {
                temperature,
                max_new_tokens: 30,
                seed: 3 + i as u64,
                ..SamplingParams::default()
            },
        })
        .collect();
    let options = GenerateOptions {
        entropy: true,
        ..GenerateOptions::default()
    };
    let gens = generate(&model, None, &requests, &options).unwrap();
    let mut batch = ScoreBatch::default();
    for (p, g) in prompts.iter().zip(&gens) {
        let mut seq = p.clone();
        seq.extend(&g.tokens);
        let mut mask = vec![false; p.len()];
        mask.extend(vec![true; g.tokens.len()]);
        batch.sequences.push(seq);
        batch.loss_masks.push(mask);
    }
    let scores = score(&model, &batch, temperature, true).unwrap();
    let scored = scores.logprobs.into_data().try_to_vec::<f32>().unwrap();
    let entropy = scores
        .entropy
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let sampled: Vec<f32> = gens.iter().flat_map(|g| g.logprobs.clone()).collect();
    let sampled_entropy: Vec<f32> = gens.iter().flat_map(|g| g.entropies.clone()).collect();
    assert_eq!(scored.len(), sampled.len());
    let gap = common::max_abs_diff(&scored, &sampled);
    assert!(
        gap < 1e-4,
        "T={temperature}: sampler/learner log-prob gap {gap}"
    );
    let gap = common::max_abs_diff(&entropy, &sampled_entropy);
    assert!(gap < 1e-4, "T={temperature}: entropy gap {gap}");
}

#[test]
fn scored_logprobs_equal_generation_logprobs_at_temperature_1() {
    sample_and_score(1.0);
}

#[test]
fn scored_logprobs_equal_generation_logprobs_at_temperature_0_7() {
    sample_and_score(0.7);
}

/// Collects the gradient norm of every float parameter.
struct GradNorms<'a> {
    grads: &'a burn::tensor::Gradients,
    norms: Vec<f32>,
    missing: usize,
}

impl ModuleVisitor for GradNorms<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        match param.val().grad(self.grads) {
            Some(g) => self.norms.push(g.square().sum().into_scalar::<f32>()),
            None => self.missing += 1,
        }
    }
}

#[test]
fn gradients_reach_every_parameter() {
    let mut config = tiny_config();
    config.value_head = true;
    let device = device().autodiff();
    let model = Llama::init(&config, &device, 5).unwrap();
    let batch = ScoreBatch {
        sequences: vec![vec![1, 2, 3, 4, 5, 6], vec![7, 8, 9]],
        loss_masks: vec![
            vec![false, false, true, true, true, true],
            vec![false, true, true],
        ],
    };
    let scores = score(&model, &batch, 0.8, true).unwrap();
    let loss = scores.logprobs.sum().neg()
        + scores.entropy.unwrap().sum() * 0.01
        + scores.values.unwrap().square().sum();
    let grads = loss.backward();
    let mut visitor = GradNorms {
        grads: &grads,
        norms: Vec::new(),
        missing: 0,
    };
    model.visit(&mut visitor);
    assert_eq!(visitor.missing, 0, "parameters without gradient");
    // embed + lm_head; per layer: 2 norms, q/k/v weights and biases, o, 3 MLP; final norm;
    // value head weight and bias.
    let expected = 2 + 2 * (2 + 6 + 1 + 3) + 1 + 2;
    assert_eq!(visitor.norms.len(), expected);
    assert!(
        visitor.norms.iter().all(|n| n.is_finite() && *n > 0.0),
        "{:?}",
        visitor.norms
    );
}

#[test]
fn invalid_score_input_is_an_error() {
    let model = tiny_model(&device(), 1);
    let bad = ScoreBatch {
        sequences: vec![vec![1, 2]],
        loss_masks: vec![vec![true, true]],
    };
    assert!(
        score(&model, &bad, 1.0, false)
            .unwrap_err()
            .to_string()
            .contains("first token")
    );
    let bad = ScoreBatch {
        sequences: vec![vec![1, 2]],
        loss_masks: vec![vec![false]],
    };
    assert!(
        score(&model, &bad, 1.0, false)
            .unwrap_err()
            .to_string()
            .contains("loss-mask")
    );
    let ok = ScoreBatch {
        sequences: vec![vec![1, 2]],
        loss_masks: vec![vec![false, true]],
    };
    assert!(
        score(&model, &ok, 0.0, false)
            .unwrap_err()
            .to_string()
            .contains("temperature")
    );
}

/// A deterministic direction for the parameter at `path`: values in [-1, 1].
fn direction(path: &str, len: usize) -> Vec<f32> {
    let mut state = path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Tracks the module path while visiting or mapping parameters.
#[derive(Default)]
struct ModulePath(Vec<String>);

impl ModulePath {
    fn current(&self) -> String {
        self.0.join(".")
    }
}

/// `Σ ⟨∂L/∂θ, d⟩` over the parameters whose path contains `filter`.
struct DirectionalGrad<'a> {
    path: ModulePath,
    grads: &'a burn::tensor::Gradients,
    filter: &'a str,
    dot: f64,
    params: usize,
}

impl ModuleVisitor for DirectionalGrad<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.0.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.0.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.path.current();
        if !path.contains(self.filter) {
            return;
        }
        let grad: Vec<f32> = param
            .val()
            .grad(self.grads)
            .expect("gradient")
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let d = direction(&path, grad.len());
        self.dot += grad
            .iter()
            .zip(&d)
            .map(|(g, d)| f64::from(*g) * f64::from(*d))
            .sum::<f64>();
        self.params += 1;
    }
}

/// θ + eps·d on the parameters whose path contains `filter`.
struct Shift<'a> {
    path: ModulePath,
    filter: &'a str,
    eps: f32,
}

impl burn::module::ModuleMapper for Shift<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.0.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.0.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.current();
        if !path.contains(self.filter) {
            return param;
        }
        let eps = self.eps;
        param.map(|t| {
            let shape = t.shape();
            let d = direction(&path, shape.num_elements());
            let d = Tensor::<1>::from_floats(d.as_slice(), &t.device()).reshape(shape);
            t + d * eps
        })
    }
}

/// The learner's gradient is the true gradient: for each part of the model (attention scores
/// through q/k, values, output and MLP products, norms, embeddings), the autodiff directional
/// derivative equals a central finite difference of the scored loss, on a ragged, left-padded
/// batch. (A wrong backward — e.g. through the attention softmax or the padding mask — would
/// still give non-zero gradients, which is all `gradients_reach_every_parameter` checks.)
#[test]
fn gradients_match_finite_differences() {
    let device = device().autodiff();
    let model = Llama::init(&tiny_config(), &device, 17).unwrap();
    let batch = ScoreBatch {
        sequences: vec![
            vec![3, 14, 15, 92, 65, 35, 89, 79, 32, 38],
            vec![26, 43, 38, 32],
            vec![7, 1, 8, 28, 18, 28],
        ],
        loss_masks: vec![
            vec![
                false, false, false, true, true, true, true, true, true, true,
            ],
            vec![false, true, true, true],
            vec![false, false, true, true, true, true],
        ],
    };
    let loss = |m: &Llama| score(m, &batch, 0.9, false).unwrap().logprobs.sum().neg();
    let grads = loss(&model).backward();
    let eps = 2e-3;
    for filter in [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "norm",
        "embed",
        "lm_head",
    ] {
        let mut visitor = DirectionalGrad {
            path: ModulePath::default(),
            grads: &grads,
            filter,
            dot: 0.0,
            params: 0,
        };
        model.visit(&mut visitor);
        assert!(visitor.params > 0, "no parameter matches {filter}");
        let at = |eps: f32| {
            let shifted = model.clone().valid().map(&mut Shift {
                path: ModulePath::default(),
                filter,
                eps,
            });
            f64::from(loss(&shifted).into_scalar::<f32>())
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * f64::from(eps));
        let analytic = visitor.dot;
        assert!(
            (numeric - analytic).abs() <= 1e-2 + 2e-2 * analytic.abs(),
            "{filter}: autodiff {analytic:.5} vs finite difference {numeric:.5}"
        );
    }
}

/// Every parameter's gradient, flattened, in visiting order.
struct AllGrads<'a> {
    grads: &'a burn::tensor::Gradients,
    out: Vec<f32>,
}

impl ModuleVisitor for AllGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            self.out.extend(g.into_data().iter::<f32>());
        }
    }
}

/// A batch shaped like a learner step: two GRPO groups (one prompt, several ragged two-turn
/// completions each, the environment's reply in between unscored), a row alone, and a row with
/// nothing scored.
fn grouped_batch() -> ScoreBatch {
    let prompt_a: Vec<u32> = vec![1, 40, 41, 42, 43, 44, 45];
    let prompt_b: Vec<u32> = vec![1, 50, 51, 52];
    let mut batch = ScoreBatch::default();
    let mut push = |prompt: &[u32], turns: &[(&[u32], &[u32])]| {
        let mut seq = prompt.to_vec();
        let mut mask = vec![false; prompt.len()];
        for (i, (reply, answer)) in turns.iter().enumerate() {
            if i > 0 {
                seq.extend_from_slice(reply);
                mask.extend(vec![false; reply.len()]);
            }
            seq.extend_from_slice(answer);
            mask.extend(vec![true; answer.len()]);
        }
        batch.sequences.push(seq);
        batch.loss_masks.push(mask);
    };
    push(&prompt_a, &[(&[], &[7, 8, 9]), (&[60, 61], &[10, 11])]);
    push(&prompt_b, &[(&[], &[200, 201, 202, 203, 204, 205, 206])]);
    push(&prompt_a, &[(&[], &[7]), (&[60, 61], &[12, 13, 14, 15])]);
    push(&prompt_a, &[(&[], &[9, 9, 9, 9, 9, 9])]);
    push(&prompt_b, &[(&[], &[3])]);
    push(&[2, 70, 71], &[(&[], &[5, 6])]);
    batch.sequences.push(vec![1, 40, 41, 42]);
    batch.loss_masks.push(vec![false; 4]);
    batch
}

/// Computing a group's shared prompt once (prefix pass, repeated KV cache, suffix pass) gives
/// the plain forward's log-probs, entropies and gradients.
#[test]
fn shared_prefix_scoring_equals_the_plain_forward() {
    let device = device().autodiff();
    let model = Llama::init(&tiny_config(), &device, 29).unwrap();
    let batch = grouped_batch();
    let run = |share_prefixes: bool| {
        let scores = score_with(
            &model,
            &batch,
            &ScoreOptions {
                temperature: 0.8,
                with_entropy: true,
                share_prefixes,
            },
        )
        .unwrap();
        let logprobs: Vec<f32> = scores.logprobs.clone().into_data().iter::<f32>().collect();
        let entropy: Vec<f32> = scores.entropy.unwrap().into_data().iter::<f32>().collect();
        let grads = scores.logprobs.sum().neg().backward();
        let mut all = AllGrads {
            grads: &grads,
            out: Vec::new(),
        };
        model.visit(&mut all);
        (logprobs, entropy, scores.rows, all.out)
    };
    let (lp_plain, ent_plain, rows_plain, g_plain) = run(false);
    let (lp_shared, ent_shared, rows_shared, g_shared) = run(true);
    assert_eq!(lp_plain.len(), batch.num_scored());
    assert_eq!(rows_plain, rows_shared);
    let gap = common::max_abs_diff(&lp_plain, &lp_shared);
    assert!(gap < 1e-5, "log-prob gap {gap}");
    let gap = common::max_abs_diff(&ent_plain, &ent_shared);
    assert!(gap < 1e-5, "entropy gap {gap}");
    assert_eq!(g_plain.len(), g_shared.len());
    let scale = g_plain.iter().fold(0f32, |m, g| m.max(g.abs()));
    let gap = common::max_abs_diff(&g_plain, &g_shared);
    assert!(
        scale > 0.0 && gap < 1e-4 * scale,
        "gradient gap {gap} (scale {scale})"
    );

    // And without autodiff (the KL reference, the CPU kernels' cache).
    let plain = model.valid();
    let inference = score(&plain, &batch, 0.8, false).unwrap();
    let values: Vec<f32> = inference.logprobs.into_data().iter::<f32>().collect();
    let gap = common::max_abs_diff(&lp_plain, &values);
    assert!(gap < 1e-4, "inference log-prob gap {gap}");
}
