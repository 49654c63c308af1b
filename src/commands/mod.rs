//! One module per subcommand.

pub mod bench;
#[cfg(feature = "gpu")]
pub mod device_check;
pub mod envs;
pub mod eval;
pub mod export;
pub mod generate;
pub mod launch;
pub mod report;
pub mod runs;
pub mod serve;
pub mod train;

/// The environments every command knows: kaizen's built-ins and `openai_agent` (an agent
/// program talking to an OpenAI endpoint, from kaizen-serve).
pub fn registry() -> kaizen_envs::Registry {
    let mut registry = kaizen_envs::Registry::with_builtins();
    kaizen_serve::agent::register(&mut registry)
        .expect("`openai_agent` is registered once, on a registry without it");
    registry
}
