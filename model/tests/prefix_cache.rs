//! Keys and values kept between a session's turns: a continued turn samples what a full prefill
//! of the whole conversation samples, prefills only the new tokens, and memory stays within
//! its budget.

mod common;

use common::{device, tiny_model};
use kaizen_model::{DecodeBatch, GenerateOptions, Generation, GenerationRequest, SamplingParams};

fn params(seed: u64, n: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        max_new_tokens: n,
        seed,
        ..SamplingParams::default()
    }
}

/// Runs `requests` to completion in `batch`; completions by id.
fn run(batch: &mut DecodeBatch, requests: Vec<(u64, GenerationRequest)>) -> Vec<(u64, Generation)> {
    batch.complete(requests).unwrap()
}

/// Turn-1 prompts of four sessions (ragged) and the replies appended before turn 2 (two of one
/// length, two of another, so continued rows are stacked and run in two passes).
fn sessions() -> Vec<(Vec<u32>, Vec<u32>)> {
    vec![
        (vec![3, 4, 5, 6, 7], vec![250, 251, 252]),
        (
            (0..17).map(|i| (i * 13 % 250) as u32).collect(),
            vec![250, 251, 252],
        ),
        (vec![42, 43], vec![9, 8, 7, 6, 5, 4, 3]),
        (
            (0..9).map(|i| (100 + i) as u32).collect(),
            vec![11, 12, 13, 14, 15, 16, 17],
        ),
    ]
}

fn turn_two(model: &kaizen_model::Llama, keep: Option<usize>) -> (Vec<Generation>, DecodeBatch) {
    let mut batch = DecodeBatch::new(model.clone(), None, GenerateOptions::default());
    if let Some(bytes) = keep {
        batch.enable_prefix_cache(bytes);
    }
    let first: Vec<(u64, GenerationRequest)> = sessions()
        .into_iter()
        .enumerate()
        .map(|(i, (prompt, _))| {
            let request = GenerationRequest {
                prompt,
                params: params(10 + i as u64, 6 + i),
                session: Some(i as u64),
            };
            (i as u64, request)
        })
        .collect();
    let firsts = run(&mut batch, first.clone());
    let second: Vec<(u64, GenerationRequest)> = firsts
        .iter()
        .zip(sessions())
        .zip(&first)
        .map(|(((id, g), (_, reply)), (_, r1))| {
            let mut prompt = r1.prompt.clone();
            prompt.extend_from_slice(&g.tokens);
            prompt.extend_from_slice(&reply);
            let request = GenerationRequest {
                prompt,
                params: params(50 + id, 8),
                session: Some(*id),
            };
            (100 + id, request)
        })
        .collect();
    let seconds = run(&mut batch, second);
    (seconds.into_iter().map(|(_, g)| g).collect(), batch)
}

#[test]
fn a_continued_turn_samples_what_a_full_prefill_samples_and_prefills_only_the_new_tokens() {
    let model = tiny_model(&device(), 21);
    let (full, plain) = turn_two(&model, None);
    let (kept, cached) = turn_two(&model, Some(64 << 20));
    for (a, b) in full.iter().zip(&kept) {
        assert_eq!(a.tokens, b.tokens, "same tokens sampled");
        for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
            assert!((x - y).abs() < 1e-4, "behaviour log-probs {x} vs {y}");
        }
    }
    let (p, c) = (plain.stats(), cached.stats());
    assert_eq!(p.reused_prompt_tokens, 0);
    assert_eq!(p.prompt_tokens, c.prompt_tokens);
    // Turn 2 reuses every token of turn 1 but its last sampled one (never fed).
    let turn_one: usize = sessions().iter().map(|(p, _)| p.len()).sum::<usize>()
        + (0..4).map(|i| 6 + i - 1).sum::<usize>();
    assert!(
        full.iter().all(|g| !g.tokens.is_empty()),
        "every turn sampled"
    );
    assert_eq!(c.reused_prompt_tokens, turn_one);
    assert!(
        c.prefill_tokens + c.reused_prompt_tokens <= p.prefill_tokens,
        "kept {} + prefilled {} vs {} without keeping",
        c.reused_prompt_tokens,
        c.prefill_tokens,
        p.prefill_tokens
    );
    let store = cached.prefix_cache().unwrap();
    let stats = store.stats();
    assert_eq!((stats.hits, stats.misses, stats.evicted), (4, 4, 0));
    assert_eq!(store.len(), 4, "each session's turn 2 is kept for a turn 3");
}

#[test]
fn under_a_small_budget_kept_turns_are_evicted_counted_and_prefilled_again() {
    let model = tiny_model(&device(), 21);
    let (full, _) = turn_two(&model, None);
    // 256 bytes a token (k and v × 2 layers × 2 heads × 16 dims × 4 bytes): room for ~20
    // tokens, less than the four sessions keep.
    let one = 256 * 20;
    let (kept, cached) = turn_two(&model, Some(one));
    for (a, b) in full.iter().zip(&kept) {
        assert_eq!(a.tokens, b.tokens, "same tokens, kept or not");
    }
    let store = cached.prefix_cache().unwrap();
    assert!(store.stats().evicted >= 3, "{:?}", store.stats());
    assert!(store.bytes() <= one, "{} bytes kept", store.bytes());
    let c = cached.stats();
    assert!(c.reused_prompt_tokens > 0 || store.stats().hits == 0);
}

#[test]
fn a_prompt_that_diverges_reuses_the_common_prefix_and_forget_drops_a_session() {
    let model = tiny_model(&device(), 22);
    let mut batch = DecodeBatch::new(model.clone(), None, GenerateOptions::default());
    batch.enable_prefix_cache(64 << 20);
    let prompt: Vec<u32> = (1..=12).collect();
    let req = |prompt: Vec<u32>, session| GenerationRequest {
        prompt,
        params: params(3, 4),
        session: Some(session),
    };
    run(&mut batch, vec![(0, req(prompt.clone(), 7))]);
    // The same session re-rendered its thread differently after token 8.
    let mut changed = prompt[..8].to_vec();
    changed.extend([200, 201, 202]);
    let before = batch.stats().reused_prompt_tokens;
    let reference = {
        let mut plain = DecodeBatch::new(model.clone(), None, GenerateOptions::default());
        run(&mut plain, vec![(1, req(changed.clone(), 7))])
    };
    let got = run(&mut batch, vec![(1, req(changed.clone(), 7))]);
    assert_eq!(batch.stats().reused_prompt_tokens - before, 8);
    assert_eq!(got[0].1.tokens, reference[0].1.tokens);
    // Another session never sees it; a forgotten session starts over.
    assert_eq!(batch.prefix_cache().unwrap().len(), 1);
    batch.forget(7);
    assert!(batch.prefix_cache().unwrap().is_empty());
    assert_eq!(batch.prefix_cache().unwrap().bytes(), 0);
    let before = batch.stats().reused_prompt_tokens;
    run(&mut batch, vec![(2, req(changed, 7))]);
    assert_eq!(batch.stats().reused_prompt_tokens, before);
}

#[test]
fn forked_branches_sample_what_full_prefills_sample_and_share_the_parent_prefix() {
    let model = tiny_model(&device(), 23);
    let req = |prompt: Vec<u32>, seed, session| GenerationRequest {
        prompt,
        params: params(seed, 5),
        session,
    };
    let mut batch = DecodeBatch::new(model.clone(), None, GenerateOptions::default());
    batch.enable_prefix_cache(64 << 20);
    let root: Vec<u32> = (20..40).collect();
    let first = run(&mut batch, vec![(0, req(root.clone(), 1, Some(1)))]);
    let mut thread = root.clone();
    thread.extend_from_slice(&first[0].1.tokens);
    // Three branches continue the parent's thread, each with its own reply and seed.
    let branches: Vec<Vec<u32>> = (0..3u32)
        .map(|b| {
            let mut p = thread.clone();
            p.extend([100 + b, 101 + b]);
            p
        })
        .collect();
    let kept_tokens = root.len() + first[0].1.tokens.len() - 1;
    for b in 0..branches.len() {
        let child = 10 + b as u64;
        assert_eq!(batch.fork_session(1, child), kept_tokens, "branch {b}");
    }
    let before = batch.stats();
    let got = run(
        &mut batch,
        branches
            .iter()
            .enumerate()
            .map(|(b, p)| {
                (
                    1 + b as u64,
                    req(p.clone(), 7 + b as u64, Some(10 + b as u64)),
                )
            })
            .collect(),
    );
    let after = batch.stats();
    assert_eq!(
        after.reused_prompt_tokens - before.reused_prompt_tokens,
        3 * kept_tokens,
        "every branch reuses the parent's keys and values"
    );
    assert_eq!(
        after.prefill_tokens - before.prefill_tokens,
        3 * 3,
        "each branch prefills its parent's last sampled token and its reply"
    );
    let stats = batch.prefix_cache().unwrap().stats();
    assert_eq!(
        (stats.forks, stats.forked_tokens),
        (3, 3 * kept_tokens as u64)
    );
    // The parent keeps its entry for more branches; an unknown session forks nothing.
    assert_eq!(batch.fork_session(1, 99), kept_tokens);
    assert_eq!(batch.fork_session(12345, 98), 0);
    // A full prefill of each branch's whole conversation samples the same.
    for (b, prompt) in branches.into_iter().enumerate() {
        let mut plain = DecodeBatch::new(model.clone(), None, GenerateOptions::default());
        let reference = run(&mut plain, vec![(0, req(prompt, 7 + b as u64, None))]);
        let forked = &got.iter().find(|(id, _)| *id == 1 + b as u64).unwrap().1;
        assert_eq!(forked.tokens, reference[0].1.tokens, "branch {b}");
        for (x, y) in forked.logprobs.iter().zip(&reference[0].1.logprobs) {
            assert!((x - y).abs() < 1e-4, "branch {b}: {x} vs {y}");
        }
    }
}
