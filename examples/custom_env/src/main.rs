//! Registers the example environments next to kaizen's built-ins, lists them, and plays one
//! `letter_count` episode with the environment's expert.
//!
//!     cargo run -p kaizen-example-custom-env

use kaizen_envs::{EpisodeLimits, Registry, demonstrate};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut registry = Registry::with_builtins();
    kaizen_example_custom_env::register(&mut registry)?;
    for (name, description) in registry.list() {
        println!("{name:14} {description}");
    }
    let factory = registry.build("letter_count", &toml::Table::new())?;
    let episode = demonstrate(factory.make(), 7, EpisodeLimits::default()).await;
    for turn in &episode.turns {
        println!(
            "> {}\n{}",
            turn.request
                .messages
                .last()
                .map_or("", |m| m.content.as_str()),
            turn.answer
        );
    }
    println!("outcome: {:?}", episode.end);
    Ok(())
}
