//! Generation: ragged batches, seeds, shared prefill, stop conditions, bad input.

mod common;

use common::{device, tiny_model};
use kaizen_core::FinishReason;
use kaizen_model::{
    DecodeBatch, GenerateOptions, GenerationRequest, SamplingParams, Tokenizer, generate,
};

fn request(prompt: Vec<u32>, params: SamplingParams) -> GenerationRequest {
    GenerationRequest {
        prompt,
        params,
        session: None,
    }
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![3, 4, 5],
        (0..17).map(|i| (i * 13 % 280) as u32).collect(),
        vec![42],
        (0..9).map(|i| (200 + i) as u32).collect(),
    ]
}

#[test]
fn ragged_batched_greedy_generation_equals_each_row_alone() {
    let model = tiny_model(&device(), 11);
    let options = GenerateOptions::default();
    let requests: Vec<_> = prompts()
        .into_iter()
        .map(|p| request(p, SamplingParams::greedy(24)))
        .collect();
    let batched = generate(&model, None, &requests, &options).unwrap();
    for (r, b) in requests.iter().zip(&batched) {
        let alone = generate(&model, None, std::slice::from_ref(r), &options).unwrap();
        assert_eq!(alone[0].tokens, b.tokens, "prompt {:?}", r.prompt);
        assert_eq!(b.tokens.len(), 24);
        assert_eq!(b.finish_reason, FinishReason::Length);
    }
}

#[test]
fn sampled_rows_do_not_depend_on_the_rest_of_the_batch() {
    let model = tiny_model(&device(), 12);
    let options = GenerateOptions::default();
    let params = |seed| SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        max_new_tokens: 20,
        seed,
        ..SamplingParams::default()
    };
    let requests: Vec<_> = prompts()
        .into_iter()
        .enumerate()
        .map(|(i, p)| request(p, params(100 + i as u64)))
        .collect();
    let batched = generate(&model, None, &requests, &options).unwrap();
    for (r, b) in requests.iter().zip(&batched) {
        let alone = generate(&model, None, std::slice::from_ref(r), &options).unwrap();
        assert_eq!(alone[0].tokens, b.tokens);
        for (x, y) in alone[0].logprobs.iter().zip(&b.logprobs) {
            assert!((x - y).abs() < 1e-4);
        }
    }
    // Same seeds again: identical; other seeds: different.
    let again = generate(&model, None, &requests, &options).unwrap();
    assert_eq!(again, batched);
    let other: Vec<_> = prompts()
        .into_iter()
        .enumerate()
        .map(|(i, p)| request(p, params(900 + i as u64)))
        .collect();
    let other = generate(&model, None, &other, &options).unwrap();
    assert!(
        other
            .iter()
            .zip(&batched)
            .any(|(a, b)| a.tokens != b.tokens)
    );
}

#[test]
fn shared_prefill_gives_the_same_tokens_as_separate_prefills() {
    let model = tiny_model(&device(), 13);
    let prompt: Vec<u32> = (0..40).map(|i| (i * 7 % 290) as u32).collect();
    let group: Vec<_> = (0..8)
        .map(|g| {
            request(
                prompt.clone(),
                SamplingParams {
                    temperature: 1.0,
                    max_new_tokens: 16,
                    seed: 7 + g,
                    ..SamplingParams::default()
                },
            )
        })
        .collect();
    let shared_options = GenerateOptions::default();
    let separate_options = GenerateOptions {
        share_prefill: false,
        ..GenerateOptions::default()
    };
    let shared = generate(&model, None, &group, &shared_options).unwrap();
    let separate = generate(&model, None, &group, &separate_options).unwrap();
    for (a, b) in shared.iter().zip(&separate) {
        assert_eq!(a.tokens, b.tokens);
        for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
            assert!((x - y).abs() < 1e-4);
        }
    }
    assert!(
        shared.iter().any(|g| g.tokens != shared[0].tokens),
        "different seeds differ"
    );

    let mut batch = DecodeBatch::new(model.clone(), None, shared_options);
    batch
        .add(
            group
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, r)| (i as u64, r))
                .collect(),
        )
        .unwrap();
    assert_eq!(
        batch.stats().prefill_tokens,
        40,
        "the prompt is prefilled once"
    );
    assert_eq!(batch.stats().prompt_tokens, 8 * 40);
    assert_eq!(batch.cache().rows(), 8);
}

#[test]
fn rows_stop_on_eos_max_tokens_and_stop_strings() {
    let model = tiny_model(&device(), 14);
    let tok = Tokenizer::byte_level();
    // Find what greedy decoding produces, then declare its 3rd token an EOS id.
    let probe = generate(
        &model,
        None,
        &[request(vec![1, 2, 3], SamplingParams::greedy(10))],
        &GenerateOptions::default(),
    )
    .unwrap();
    let eos = probe[0].tokens[2];
    let first_eos = probe[0].tokens.iter().position(|&t| t == eos).unwrap();
    let options = GenerateOptions {
        eos_token_ids: vec![eos],
        ..GenerateOptions::default()
    };
    let out = generate(
        &model,
        None,
        &[
            request(vec![1, 2, 3], SamplingParams::greedy(10)),
            request(vec![9, 9], SamplingParams::greedy(3)),
        ],
        &options,
    )
    .unwrap();
    assert_eq!(out[0].finish_reason, FinishReason::Eos);
    assert_eq!(out[0].tokens, probe[0].tokens[..=first_eos]);
    assert!(out[1].tokens.len() <= 3);

    // Stop strings: use the decoded greedy text to pick a stop string that must trigger.
    let plain = generate(
        &model,
        Some(&tok),
        &[request(vec![72, 105], SamplingParams::greedy(12))],
        &GenerateOptions::default(),
    )
    .unwrap();
    let text = plain[0].text.clone().unwrap();
    let ids = &plain[0].tokens;
    // A stop string made of the bytes of tokens 4..6 (printable or not, decoded as text).
    let stop = tok.decode(&ids[4..6], true).unwrap();
    if !stop.is_empty() && !stop.contains('\u{FFFD}') {
        let params = SamplingParams {
            stop: vec![stop.clone()],
            ..SamplingParams::greedy(12)
        };
        let out = generate(
            &model,
            Some(&tok),
            &[request(vec![72, 105], params)],
            &GenerateOptions::default(),
        )
        .unwrap();
        assert_eq!(out[0].finish_reason, FinishReason::Stop);
        let cut = out[0].text.clone().unwrap();
        assert!(!cut.contains(&stop), "text {cut:?} still contains {stop:?}");
        assert!(text.starts_with(&cut));
        assert!(out[0].tokens.len() <= 6);
    }
}

#[test]
fn continuous_batching_admits_rows_between_steps() {
    let model = tiny_model(&device(), 15);
    let options = GenerateOptions::default();
    let reqs: Vec<_> = prompts()
        .into_iter()
        .map(|p| request(p, SamplingParams::greedy(8)))
        .collect();
    let expected = generate(&model, None, &reqs, &options).unwrap();
    let mut batch = DecodeBatch::new(model.clone(), None, options);
    batch.add(vec![(0, reqs[0].clone())]).unwrap();
    batch.step();
    batch.step();
    batch
        .add(vec![(1, reqs[1].clone()), (2, reqs[2].clone())])
        .unwrap();
    batch.step();
    batch.add(vec![(3, reqs[3].clone())]).unwrap();
    let mut got = vec![None; 4];
    while batch.active() > 0 {
        batch.step();
        for (id, g) in batch.take_finished() {
            got[id as usize] = Some(g);
        }
    }
    for (id, g) in batch.take_finished() {
        got[id as usize] = Some(g);
    }
    for (g, e) in got.into_iter().zip(&expected) {
        assert_eq!(g.unwrap().tokens, e.tokens);
    }
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let model = tiny_model(&device(), 16);
    let options = GenerateOptions::default();
    let err = generate(
        &model,
        None,
        &[request(vec![], SamplingParams::default())],
        &options,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("empty prompt"), "{err}");
    let err = generate(
        &model,
        None,
        &[request(vec![1, 999], SamplingParams::default())],
        &options,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("999") && err.contains("vocab"), "{err}");
    let err = generate(
        &model,
        None,
        &[request(vec![1; 256], SamplingParams::default())],
        &options,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
    let params = SamplingParams {
        stop: vec!["x".into()],
        ..SamplingParams::default()
    };
    let err = generate(&model, None, &[request(vec![1], params)], &options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer"), "{err}");
}

#[test]
fn generation_stops_at_the_context_length() {
    let model = tiny_model(&device(), 17);
    let out = generate(
        &model,
        None,
        &[request(vec![1; 250], SamplingParams::greedy(100))],
        &GenerateOptions::default(),
    )
    .unwrap();
    assert_eq!(out[0].finish_reason, FinishReason::Length);
    assert!(250 + out[0].tokens.len() <= 256);
}

#[test]
fn guided_choice_completions_are_always_one_of_the_choices() {
    let model = tiny_model(&device(), 16);
    let eos = 7;
    let options = GenerateOptions {
        eos_token_ids: vec![eos],
        ..GenerateOptions::default()
    };
    // Shared prefixes, one choice a prefix of another, and a choice the random model would
    // rarely write.
    let choices: Vec<Vec<u32>> = vec![
        vec![40, 41, 42],
        vec![40, 41],
        vec![40, 99, 3, 250],
        vec![255],
    ];
    let requests: Vec<_> = (0..48)
        .map(|seed| {
            let params = SamplingParams {
                temperature: 1.5,
                max_new_tokens: 8,
                seed,
                choices: choices.clone(),
                ..SamplingParams::default()
            };
            request(vec![1, 2, (seed % 200) as u32], params)
        })
        .collect();
    let out = generate(&model, None, &requests, &options).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for g in &out {
        assert_eq!(g.finish_reason, FinishReason::Eos, "{:?}", g.tokens);
        let (last, reply) = g.tokens.split_last().unwrap();
        assert_eq!(*last, eos);
        assert!(
            choices.contains(&reply.to_vec()),
            "{reply:?} is not a choice"
        );
        // The forced end of a choice that nothing extends has probability 1.
        if reply == [255] || reply == [40, 99, 3, 250] || reply == [40, 41, 42] {
            assert_eq!(*g.logprobs.last().unwrap(), 0.0);
        }
        assert!(g.logprobs.iter().all(|&l| l <= 0.0 && l.is_finite()));
        seen.insert(reply.to_vec());
    }
    assert!(seen.len() >= 3, "sampling at T 1.5 reached only {seen:?}");

    // Greedy decoding picks the same choice as the batch's greedy row alone, and without an
    // EOS id a whole choice that nothing extends ends the row.
    let greedy = SamplingParams {
        choices: vec![vec![255, 254], vec![3]],
        ..SamplingParams::greedy(8)
    };
    let out = generate(
        &model,
        None,
        &[request(vec![5, 6], greedy)],
        &GenerateOptions::default(),
    )
    .unwrap();
    assert_eq!(out[0].finish_reason, FinishReason::Stop);
    assert!(
        out[0].tokens == [255, 254] || out[0].tokens == [3],
        "{:?}",
        out[0].tokens
    );

    let bad = SamplingParams {
        choices: vec![vec![1], vec![]],
        ..SamplingParams::default()
    };
    let err = generate(&model, None, &[request(vec![1], bad)], &options).unwrap_err();
    assert!(err.to_string().contains("choices[1]"), "{err}");
}
