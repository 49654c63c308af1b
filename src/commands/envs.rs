//! `kaizen envs`: list the registered environments, or play one episode by hand in the terminal
//! (typing the model's turns) to debug an environment.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use kaizen_core::{AgentId, Request};
use kaizen_envs::{Episode, EpisodeLimits, Registry, Responder, demonstrate, run_episode};

/// Arguments of `kaizen envs`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: EnvsCommand,
}

#[derive(clap::Subcommand, Debug)]
enum EnvsCommand {
    /// Print every registered environment with a one-line description.
    List,
    /// Play one episode in the terminal: you type each model turn (a line; end a line with `\`
    /// to continue it on the next, `\n` is a newline). Ctrl-D ends the episode.
    Play(PlayArgs),
}

#[derive(clap::Args, Debug)]
struct PlayArgs {
    /// The environment's name (see `kaizen envs list`).
    name: String,
    /// The episode's seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// One parameter as TOML `key=value` (repeatable), e.g. `--param attempts=3` or
    /// `--param 'generator={difficulty="hard"}'`.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// A TOML file with the environment's parameters (`--param` values override it).
    #[arg(long, value_name = "FILE")]
    params_file: Option<PathBuf>,
    /// Let the environment's expert answer every request (shows a demonstration).
    #[arg(long)]
    expert: bool,
    /// Longest one environment call may take, in seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

/// Runs `kaizen envs`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let registry = super::registry();
    match args.command {
        EnvsCommand::List => {
            let width = registry.names().map(str::len).max().unwrap_or(0);
            for (name, description) in registry.list() {
                println!("{name:width$}  {description}");
            }
            Ok(())
        }
        EnvsCommand::Play(play_args) => play(&registry, play_args),
    }
}

fn params(args: &PlayArgs) -> anyhow::Result<toml::Table> {
    let mut table = match &args.params_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --params-file {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("--params-file {} is not a TOML table", path.display()))?
        }
        None => toml::Table::new(),
    };
    for param in &args.params {
        let parsed: toml::Table = toml::from_str(param).with_context(|| {
            format!("--param {param:?} is not TOML `key=value` (quote strings: key=\"text\")")
        })?;
        table.extend(parsed);
    }
    Ok(table)
}

fn play(registry: &Registry, args: PlayArgs) -> anyhow::Result<()> {
    let factory = registry.build(&args.name, &params(&args)?)?;
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| {
            format!(
                "--timeout must be a positive number of seconds, got {}",
                args.timeout
            )
        })?;
    let limits = EpisodeLimits {
        env_call_timeout: timeout,
        ..EpisodeLimits::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let episode = runtime.block_on(async {
        if args.expert {
            let episode = demonstrate(factory.make(), args.seed, limits).await;
            let mut shown = Transcript::default();
            for turn in &episode.turns {
                shown.show(&turn.request);
                println!("{}> {}", turn.request.agent, turn.answer);
            }
            episode
        } else {
            let mut terminal = Terminal::default();
            run_episode(factory.make(), args.seed, &mut terminal, limits).await
        }
    });
    report(&episode)
}

fn report(episode: &Episode) -> anyhow::Result<()> {
    match &episode.end {
        Ok(outcome) => {
            println!("\n=== done after {} turns ===", episode.turns.len());
            for (agent, rewards) in &outcome.rewards {
                println!("rewards {agent}: {rewards:?}");
            }
            for (name, value) in &outcome.metrics {
                println!("metric {name} = {value}");
            }
            if !outcome.info.is_null() {
                println!("info {}", outcome.info);
            }
            Ok(())
        }
        Err(fault) => bail!(
            "the episode ended early after {} turns: {fault}",
            episode.turns.len()
        ),
    }
}

/// Prints requests, showing only what is new since the agent's previous request.
#[derive(Default)]
struct Transcript {
    previous: BTreeMap<AgentId, Request>,
}

impl Transcript {
    fn show(&mut self, request: &Request) {
        let mut new = &request.messages[..];
        if let Some(previous) = self.previous.get(&request.agent) {
            let n = previous.messages.len() + 1;
            if request.messages.len() >= n && request.messages[..n - 1] == previous.messages[..] {
                new = &request.messages[n..];
            }
        }
        let trained = if request.trainable {
            ""
        } else {
            ", not trained"
        };
        println!("\n--- {} is asked{trained} ---", request.agent);
        for message in new {
            println!("[{}] {}", message.role, message.content);
        }
        self.previous.insert(request.agent.clone(), request.clone());
    }
}

/// A person at the terminal answering requests.
#[derive(Default)]
struct Terminal {
    transcript: Transcript,
}

#[async_trait]
impl Responder for Terminal {
    async fn respond(&mut self, request: &Request) -> Result<String, String> {
        self.transcript.show(request);
        let agent = request.agent.clone();
        tokio::task::spawn_blocking(move || read_answer(&agent))
            .await
            .map_err(|e| format!("reading the terminal failed: {e}"))?
    }
}

fn read_answer(agent: &AgentId) -> Result<String, String> {
    print!("{agent}> ");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let stdin = std::io::stdin();
    let mut answer = String::new();
    loop {
        let mut line = String::new();
        let n = stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading stdin: {e}"))?;
        if n == 0 {
            return Err("stdin closed (the player stopped)".into());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.strip_suffix('\\') {
            Some(start) => {
                answer.push_str(start);
                answer.push('\n');
            }
            None => {
                answer.push_str(line);
                return Ok(answer.replace("\\n", "\n"));
            }
        }
    }
}
