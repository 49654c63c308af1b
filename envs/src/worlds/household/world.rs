//! `household`: an ALFWorld-like text world (Shridhar et al. 2021,
//! <https://arxiv.org/abs/2010.03768>), generated from the seed.
//!
//! A room (kitchen, living room, bedroom or bathroom) with numbered receptacles and objects,
//! and one of the six ALFWorld tasks. The `agent` writes one action per turn (its last line is
//! read: `go to X`, `take X from Y`, `put X in/on Y`, `open X`, `close X`, `clean X with Y`,
//! `heat X with Y`, `cool X with Y`, `use X`, `examine X`, `look`, `inventory`) and sees the
//! observation ("Nothing happens." for an invalid action), optionally followed by the
//! admissible actions. The episode ends when the task is done (reward 1 on that turn) or after
//! `max_steps` actions (all rewards 0). A scripted expert knows a solution from any state.

use std::sync::Arc;

use async_trait::async_trait;
use kaizen_core::{AgentId, Message, Outcome, Step};
use serde::{Deserialize, Serialize};

use super::actions::{NOTHING_HAPPENS, parse_action};
use super::scene::{Scene, TaskType};
use crate::{Dialogue, Env, EnvFactory, Error, Result, parse_params};

/// The agent that acts.
pub const AGENT: &str = "agent";

/// Parameters of `household` (its TOML table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HouseholdConfig {
    /// Most actions per episode (ALFWorld uses 50).
    #[serde(default = "default_max_steps")]
    pub max_steps: usize,
    /// Whether each observation lists the admissible actions.
    #[serde(default = "default_true")]
    pub admissible_actions: bool,
    /// Task types to draw from (all six when empty).
    #[serde(default)]
    pub task_types: Vec<TaskType>,
}

fn default_max_steps() -> usize {
    50
}

fn default_true() -> bool {
    true
}

impl Default for HouseholdConfig {
    fn default() -> Self {
        Self {
            max_steps: default_max_steps(),
            admissible_actions: true,
            task_types: Vec::new(),
        }
    }
}

const RULES: &str = "You are an agent in a household. Each turn, write one action on the last \
line of your reply. Actions: look, inventory, go to X, open X, close X, take X from Y, \
put X in/on Y, clean X with Y, heat X with Y, cool X with Y, use X, examine X. You can carry \
one object at a time.";

/// Makes `household` episodes.
#[derive(Clone)]
pub struct HouseholdFactory {
    config: Arc<HouseholdConfig>,
}

impl HouseholdFactory {
    /// A factory with these settings.
    ///
    /// # Errors
    /// [`Error::Params`] when `max_steps` is 0.
    pub fn new(config: HouseholdConfig) -> Result<Self> {
        if config.max_steps == 0 {
            return Err(Error::Params {
                env: "household".into(),
                message: "`max_steps` must be at least 1".into(),
            });
        }
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// A factory from a TOML table (see [`HouseholdConfig`]).
    ///
    /// # Errors
    /// [`Error::Params`] for unknown or invalid fields.
    pub fn from_params(env: &str, params: &toml::Table) -> Result<Self> {
        Self::new(parse_params(env, params)?)
    }
}

impl EnvFactory for HouseholdFactory {
    fn make(&self) -> Box<dyn Env> {
        Box::new(Household {
            config: self.config.clone(),
            scene: None,
            dialogue: Dialogue::new(),
            steps: 0,
            invalid: 0,
        })
    }

    fn can_fork(&self) -> bool {
        true
    }
}

#[derive(Clone)]
struct Household {
    config: Arc<HouseholdConfig>,
    scene: Option<Scene>,
    dialogue: Dialogue,
    steps: usize,
    invalid: usize,
}

impl Household {
    fn observation(&self, scene: &Scene, text: String) -> Message {
        if self.config.admissible_actions {
            let actions = scene.admissible_actions().join(", ");
            Message::user(format!("{text}\n\nAdmissible actions: {actions}"))
        } else {
            Message::user(text)
        }
    }

    fn done(&mut self, success: bool, scene: &Scene) -> Step {
        self.dialogue.finish();
        let mut rewards = vec![0.0; self.steps];
        if success && let Some(last) = rewards.last_mut() {
            *last = 1.0;
        }
        let mut outcome = Outcome::single(AGENT, rewards)
            .with_metric("success", f64::from(u8::from(success)))
            .with_metric("steps", self.steps as f64)
            .with_metric(
                "invalid_actions",
                self.invalid as f64 / self.steps.max(1) as f64,
            );
        outcome.info =
            serde_json::json!({ "task_type": scene.task.kind, "goal": scene.task.describe() });
        Step::Done(outcome)
    }
}

#[async_trait]
impl Env for Household {
    async fn reset(&mut self, seed: u64) -> Result<Step> {
        let scene = Scene::generate(seed, &self.config.task_types);
        self.dialogue = Dialogue::new();
        self.steps = 0;
        self.invalid = 0;
        let intro = format!("{RULES}\n\n{}", scene.introduction());
        let first = self.observation(&scene, intro);
        self.scene = Some(scene);
        Ok(Step::Request(self.dialogue.ask(AGENT, [first])))
    }

    async fn step(&mut self, agent: &AgentId, text: &str) -> Result<Step> {
        self.dialogue.answer(agent, text)?;
        let mut scene = self.scene.take().ok_or(Error::NoEpisode)?;
        self.steps += 1;
        let observation = match parse_action(text) {
            Some(action) => scene.apply(&action),
            None => NOTHING_HAPPENS.to_string(),
        };
        if observation == NOTHING_HAPPENS {
            self.invalid += 1;
        }
        let step = if scene.goal_reached() {
            self.done(true, &scene)
        } else if self.steps >= self.config.max_steps {
            self.done(false, &scene)
        } else {
            let message = self.observation(&scene, observation);
            Step::Request(self.dialogue.ask(AGENT, [message]))
        };
        self.scene = Some(scene);
        Ok(step)
    }

    fn expert_answer(&self) -> Option<String> {
        self.dialogue.pending()?;
        self.scene.as_ref()?.expert_action()
    }

    fn fork(&self) -> Option<Box<dyn Env>> {
        Some(Box::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EpisodeLimits, demonstrate};

    #[tokio::test]
    async fn the_expert_solves_every_task_of_1000_seeds_with_admissible_actions() {
        let factory = HouseholdFactory::new(HouseholdConfig::default()).unwrap();
        let mut per_type = std::collections::BTreeMap::new();
        for seed in 0..1000 {
            let ep = demonstrate(factory.make(), seed, EpisodeLimits::default()).await;
            let outcome = ep
                .outcome()
                .unwrap_or_else(|| panic!("seed {seed}: {:?}", ep.end));
            assert_eq!(outcome.metrics["success"], 1.0, "seed {seed}");
            assert_eq!(outcome.metrics["invalid_actions"], 0.0, "seed {seed}");
            let rewards = &outcome.rewards[&AgentId::new(AGENT)];
            assert_eq!(rewards.last(), Some(&1.0));
            assert_eq!(rewards.iter().sum::<f32>(), 1.0);
            for turn in &ep.turns {
                let shown = &turn.request.messages.last().unwrap().content;
                assert!(shown.contains("Admissible actions: "), "seed {seed}");
                let admissible = shown.rsplit("Admissible actions: ").next().unwrap();
                assert!(
                    admissible.split(", ").any(|a| a == turn.answer),
                    "seed {seed}: `{}` not admissible",
                    turn.answer
                );
            }
            *per_type
                .entry(outcome.info["task_type"].to_string())
                .or_insert(0) += 1;
        }
        assert_eq!(per_type.len(), 6, "{per_type:?}");
    }

    #[tokio::test]
    async fn invalid_actions_say_nothing_happens_and_the_step_limit_ends_with_zero_reward() {
        let config = HouseholdConfig {
            max_steps: 3,
            admissible_actions: false,
            ..HouseholdConfig::default()
        };
        let mut env = HouseholdFactory::new(config).unwrap().make();
        let Step::Request(first) = env.reset(5).await.unwrap() else {
            panic!()
        };
        assert!(first.messages[0].content.contains("Your task is to: "));
        assert!(!first.messages[0].content.contains("Admissible"));
        let Step::Request(second) = env.step(&first.agent, "fly to the moon").await.unwrap() else {
            panic!()
        };
        assert_eq!(second.messages.last().unwrap().content, NOTHING_HAPPENS);
        assert!(second.continues(&first, "fly to the moon"));
        let Step::Request(third) = env.step(&first.agent, "look").await.unwrap() else {
            panic!()
        };
        assert!(
            third
                .messages
                .last()
                .unwrap()
                .content
                .starts_with("You are in the middle of a")
        );
        let Step::Done(o) = env.step(&first.agent, "inventory").await.unwrap() else {
            panic!()
        };
        assert_eq!(o.rewards[&AgentId::new(AGENT)], vec![0.0, 0.0, 0.0]);
        assert_eq!(o.metrics["success"], 0.0);
        assert!((o.metrics["invalid_actions"] - 1.0 / 3.0).abs() < 1e-12);
    }

    #[tokio::test]
    async fn the_expert_recovers_after_random_moves() {
        let factory = HouseholdFactory::new(HouseholdConfig::default()).unwrap();
        for seed in 0..100u64 {
            let mut env = factory.make();
            let Step::Request(mut r) = env.reset(seed).await.unwrap() else {
                panic!()
            };
            let mut done = None;
            // Ten admissible but aimless moves, then the expert takes over.
            for k in 0..10usize {
                let shown = r.messages.last().unwrap().content.clone();
                let actions: Vec<&str> = shown
                    .rsplit("Admissible actions: ")
                    .next()
                    .unwrap()
                    .split(", ")
                    .collect();
                let pick = actions[(seed as usize + 5 * k) % actions.len()].to_string();
                match env.step(&r.agent, &pick).await.unwrap() {
                    Step::Request(next) => r = next,
                    Step::Done(o) => {
                        done = Some(o);
                        break;
                    }
                }
            }
            for _ in 0..40 {
                if done.is_some() {
                    break;
                }
                let Some(action) = env.expert_answer() else {
                    break;
                };
                match env.step(&r.agent, &action).await.unwrap() {
                    Step::Request(next) => r = next,
                    Step::Done(o) => {
                        done = Some(o);
                        break;
                    }
                }
            }
            if let Some(o) = done {
                assert_eq!(o.metrics["success"], 1.0, "seed {seed}");
            } else {
                panic!("seed {seed}: the expert did not finish");
            }
        }
    }
}
