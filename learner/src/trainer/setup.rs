//! A job's parts: the policy and the environments (training and evaluation variants).

use super::*;

/// Loads the policy a job trains, on `device`.
///
/// # Errors
/// Model loading errors.
pub fn load_policy(config: &JobConfig, device: &Device) -> Result<Policy, Error> {
    let mut policy = if config.model.source == "tiny" {
        let tokenizer = kaizen_model::Tokenizer::byte_level();
        let llama_config = config
            .model
            .tiny
            .clone()
            .unwrap_or_else(|| LlamaConfig::tiny(tokenizer.vocab_size()));
        Policy {
            model: Llama::init(&llama_config, device, config.model.init_seed)?,
            tokenizer,
            template: ChatTemplate::chatml(),
            name: "tiny".into(),
        }
    } else {
        Policy::load(&config.model.source, device)?
    };
    match config.model.chat_template.as_str() {
        "model" => {}
        "plain" => policy.template = ChatTemplate::plain(&policy.tokenizer),
        "chatml" => policy.template = ChatTemplate::chatml(),
        other => {
            return Err(Error::Config {
                path: "[model]".into(),
                message: format!(
                    "`chat_template` = {other:?}: expected \"model\", \"chatml\" or \"plain\""
                ),
            });
        }
    }
    Ok(policy)
}

/// Builds the actors' environment list: the training environments, then their evaluation
/// variants, then the twins of those that have one (`[[env]] twin`, named `<name>_twin`; see
/// [`JobConfig::twin_slot`]). Returns the slots and the evaluation targets.
///
/// # Errors
/// Environment construction errors (unknown name, bad parameters); [`Error::Config`] when a
/// searched warm start (`[sft.self_generated] search`) names an environment that cannot fork.
pub fn build_envs(
    config: &JobConfig,
    registry: &Registry,
) -> Result<(Vec<EnvSlot>, Vec<EvalTarget>), Error> {
    let mut slots = Vec::new();
    let searched = config
        .sft
        .as_ref()
        .and_then(|s| s.self_generated.as_ref())
        .is_some_and(|g| g.search.is_some());
    for e in &config.envs {
        let factory = registry.build(&e.name, &e.params)?;
        if searched && !factory.can_fork() {
            return Err(Error::Config {
                path: "[sft.self_generated] search".into(),
                message: format!(
                    "environment `{}` cannot fork (its factory's `can_fork` is false), and \
                     tree search forks the environment at every node",
                    e.name
                ),
            });
        }
        slots.push(EnvSlot {
            name: e.name.clone(),
            factory,
        });
    }
    let mut targets = Vec::new();
    for e in &config.envs {
        let params = e.eval_params.as_ref().unwrap_or(&e.params);
        targets.push(EvalTarget {
            slot: slots.len(),
            name: e.name.clone(),
            held_out: e.eval_params.is_some(),
        });
        slots.push(EnvSlot {
            name: e.name.clone(),
            factory: registry.build(&e.name, params)?,
        });
    }
    for e in &config.envs {
        if let Some(params) = e.twin_params() {
            slots.push(EnvSlot {
                name: format!("{}_twin", e.name),
                factory: registry.build(&e.name, &params)?,
            });
        }
    }
    Ok((slots, targets))
}

pub(super) fn load_policy_template(
    config: &JobConfig,
    policy: &Policy,
) -> Result<ChatTemplate, Error> {
    Ok(match config.model.chat_template.as_str() {
        "plain" => ChatTemplate::plain(&policy.tokenizer),
        "chatml" => ChatTemplate::chatml(),
        _ => policy.template.clone(),
    })
}

pub(super) fn rl_schedule(config: &JobConfig) -> Schedule {
    Schedule {
        lr: config.optim.learning_rate,
        warmup_steps: config.optim.warmup_steps,
        total_steps: config.run.max_steps,
        kind: config.optim.lr_scheduler_type,
    }
}

/// `spec` as a model source: a run directory (`runs/<experiment>/<run-id>`, or one of its
/// checkpoints) stands for the policy of its newest checkpoint; anything else is returned as is
/// (`tiny`, `smollm2`, a .gguf file, a model directory).
///
/// # Errors
/// [`Error::Checkpoint`] for a run directory without checkpoints.
pub fn resolve_model_source(spec: &str) -> Result<String, Error> {
    let path = Path::new(spec);
    if path.join("policy").join("config.json").is_file() {
        return Ok(path.join("policy").display().to_string());
    }
    if checkpoint::checkpoints_dir(path).is_dir() {
        return Ok(checkpoint::latest(path)?
            .join("policy")
            .display()
            .to_string());
    }
    Ok(spec.to_string())
}
