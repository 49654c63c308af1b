//! The serving engine on the tiny model: concurrent requests share decode steps and get the
//! tokens they would get alone; streams deliver every token; dropped callers are cancelled.

use std::sync::Arc;
use std::time::Duration;

use burn::tensor::Device;
use kaizen_actors::{ServingEngine, StreamEvent};
use kaizen_model::{GenerateOptions, GenerationRequest, Policy, SamplingParams, generate};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn policy() -> Policy {
    Policy::tiny(&Device::default(), 3).unwrap()
}

fn request(policy: &Policy, text: &str, seed: u64, max_new_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: policy.tokenizer.encode(text, false).unwrap(),
        params: SamplingParams {
            temperature: 1.0,
            max_new_tokens,
            seed,
            top_logprobs: Some(3),
            ..SamplingParams::default()
        },
        session: None,
    }
}

#[test]
fn concurrent_requests_share_steps_and_match_generating_alone() {
    let policy = policy();
    let rt = runtime();
    let engine = Arc::new(
        ServingEngine::spawn(
            policy.model.clone(),
            Arc::new(policy.tokenizer.clone()),
            GenerateOptions::default(),
        )
        .unwrap(),
    );
    let requests: Vec<_> = (0..8)
        .map(|i| request(&policy, &format!("question {i}:"), 40 + i, 24))
        .collect();
    let served: Vec<_> = rt.block_on(async {
        let handles: Vec<_> = requests
            .iter()
            .map(|r| {
                let engine = engine.clone();
                let r = r.clone();
                tokio::spawn(async move { engine.complete(vec![r]).await })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap().remove(0).unwrap());
        }
        out
    });
    let alone = generate(
        &policy.model,
        Some(&policy.tokenizer),
        &requests,
        &GenerateOptions::default(),
    )
    .unwrap();
    let mut tokens = 0;
    for (s, a) in served.iter().zip(&alone) {
        assert_eq!(s.generation.tokens, a.tokens, "same seed, same tokens");
        assert_eq!(s.generation.token_logprobs.len(), s.generation.tokens.len());
        for (t, lp) in s.generation.tokens.iter().zip(&s.generation.token_logprobs) {
            assert_eq!(lp.top.len(), 3);
            assert!(lp.logprob <= 0.0);
            assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1), "sorted");
            if let Some(&(_, lp_t)) = lp.top.iter().find(|(id, _)| id == t) {
                assert!((lp_t - lp.logprob).abs() < 1e-6);
            }
        }
        tokens += s.generation.tokens.len() as u64;
    }
    let steps = engine
        .counters()
        .decode_steps
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        steps < tokens / 2,
        "8 concurrent requests share decode steps: {steps} steps for {tokens} tokens"
    );
}

#[test]
fn a_stream_delivers_every_token_then_the_completion() {
    let policy = policy();
    let rt = runtime();
    let engine = ServingEngine::spawn(
        policy.model.clone(),
        Arc::new(policy.tokenizer.clone()),
        GenerateOptions::default(),
    )
    .unwrap();
    let choices = vec![
        request(&policy, "stream me", 7, 20),
        request(&policy, "stream me", 8, 20),
    ];
    let (streamed, done) = rt.block_on(async {
        let mut rx = engine.stream(choices);
        let mut streamed = vec![Vec::new(), Vec::new()];
        let mut done = vec![None, None];
        while let Some(event) = rx.recv().await {
            match event {
                StreamEvent::Tokens {
                    choice,
                    tokens,
                    token_logprobs,
                } => {
                    assert_eq!(tokens.len(), token_logprobs.len());
                    assert!(done[choice].is_none(), "no tokens after Done");
                    streamed[choice].extend(tokens);
                }
                StreamEvent::Done { choice, result } => done[choice] = Some(result.unwrap()),
            }
            if done.iter().all(Option::is_some) {
                break;
            }
        }
        (streamed, done)
    });
    for (s, d) in streamed.iter().zip(&done) {
        let g = &d.as_ref().unwrap().generation;
        assert!(!s.is_empty(), "tokens arrive before the end");
        assert!(g.tokens.starts_with(s), "streamed tokens are a prefix");
        assert_eq!(g.tokens.len(), 20);
    }
    assert_ne!(
        done[0].as_ref().unwrap().generation.tokens,
        done[1].as_ref().unwrap().generation.tokens
    );
}

#[test]
fn a_dropped_stream_is_cancelled_and_a_rejected_request_says_why() {
    let policy = policy();
    let rt = runtime();
    let engine = ServingEngine::spawn(
        policy.model.clone(),
        Arc::new(policy.tokenizer.clone()),
        GenerateOptions::default(),
    )
    .unwrap();
    rt.block_on(async {
        let long = request(&policy, "go on", 1, 100_000);
        let mut rx = engine.stream(vec![long]);
        assert!(matches!(rx.recv().await, Some(StreamEvent::Tokens { .. })));
        drop(rx);
        // The row leaves the batch: a later request is answered and the engine goes idle.
        let ok = engine.complete(vec![request(&policy, "next", 2, 5)]).await;
        assert_eq!(ok[0].as_ref().unwrap().generation.tokens.len(), 5);
        let generated = || {
            engine
                .counters()
                .generated_tokens
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = generated();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            generated(),
            before,
            "nothing decodes for the dropped stream"
        );
        // Left alone it would run to the 2,048-token context.
        assert!(
            before < 1000,
            "the dropped row stopped early: {before} tokens"
        );

        let bad = GenerationRequest {
            prompt: vec![u32::MAX],
            ..request(&policy, "x", 3, 4)
        };
        let answers = engine
            .complete(vec![bad, request(&policy, "fine", 4, 4)])
            .await;
        let err = answers[0].as_ref().unwrap_err();
        assert!(err.contains("vocab") || err.contains("token"), "{err}");
        assert!(answers[1].is_ok(), "the other choice proceeds");
    });
}
