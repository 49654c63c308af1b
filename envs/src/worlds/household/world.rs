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
use kaizen_core::{AgentId, Message, Outcome, SamplingOverrides, Step};
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
    /// Maps a reply that is not a valid action onto the admissible action sharing the most
    /// words with its last line (word-overlap F1, at least this value, in (0, 1]); counted in
    /// `matched_actions`. LLM agents on ALFWorld map free text onto the admissible commands
    /// the same way; a small model's "Putting the soapbar in a shelf" becomes
    /// `put soapbar 1 in/on shelf 1`. Unset: a reply must be an action.
    #[serde(default)]
    pub match_admissible: Option<f64>,
    /// Solved example episodes shown before the task (ReAct's in-context examples on ALFWorld,
    /// Yao et al. 2023, <https://arxiv.org/abs/2210.03629>, §4), as earlier turns of the
    /// conversation: each is another room with a task of the episode's type (never the
    /// episode's own task), its observations as user turns (admissible actions listed when
    /// `admissible_actions` is on) and the scripted expert's actions as assistant turns. The
    /// policy is never trained on them (they are prompt). A small chat model given the rules
    /// alone answers in prose; earlier turns that are bare actions show it the reply format.
    /// The rooms come from seeds derived from the episode's. 0: none.
    #[serde(default)]
    pub examples: usize,
    /// A reward for each of the task's subgoals (`Scene::subgoals`: the task's object held;
    /// for clean/heat/cool tasks, that object treated; then the agent with it in hand at the
    /// place the task ends), given once per episode at the turn it is first reached, in (0, 1);
    /// success still earns 1 at the last turn. Counted in `subgoals` (the fraction reached) and
    /// `object_held` (the first). ALFWorld's reward is success only, which a small model's
    /// sampled episodes may never reach; subgoals give its groups a signal. Unset: success only.
    #[serde(default)]
    pub subgoal_reward: Option<f64>,
    /// Each reply must be one of the admissible actions that change the room or the agent's
    /// hands (all but `look`, `inventory` and `examine X`, which only describe it): every
    /// request carries them as its
    /// `sampling.choices` (guided choice, as vLLM's `guided_choice`), so the actor samples the
    /// policy's distribution restricted, token by token, to the actions' continuations. Every
    /// action is then valid and the policy still chooses which: a policy over the admissible
    /// actions as in GLAM (Carta et al. 2023, <https://arxiv.org/abs/2302.02662>), which
    /// normalises each action's likelihood over the set instead. The learner trains the
    /// unconstrained log-probs of the chosen action's tokens. A small model that answers in
    /// prose otherwise never acts. With `admissible_actions` on, the observation then lists
    /// only the choices other than `go to` ("Actions here: take book 1 from shelf 1, …, or go
    /// to a receptacle."): the room description already names every receptacle.
    #[serde(default)]
    pub choose_admissible: bool,
    /// Added to every episode's seed before its room and task are generated. Training and an
    /// evaluation with `[env.eval_params]` both number their tasks from seed 0, so a held-out
    /// variant of this generated world must set it, or it evaluates the training tasks.
    /// `1099511627776` (2^40, `kaizen_learner::EVAL_SEED_OFFSET`) gives the tasks an
    /// evaluation without `eval_params` draws. 0 by default.
    #[serde(default)]
    pub seed_offset: u64,
    /// Every observation after the first ends with the task again ("Your task is to: put a
    /// book in/on shelf."). The room's introduction states it once, at the top of a
    /// conversation that grows by two turns an action; agent prompts for small models restate
    /// the goal next to the latest observation for the same reason (the goal is where the
    /// model attends). Off by default (ALFWorld states it once).
    #[serde(default)]
    pub repeat_task: bool,
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
            match_admissible: None,
            examples: 0,
            subgoal_reward: None,
            choose_admissible: false,
            seed_offset: 0,
            repeat_task: false,
        }
    }
}

const RULES: &str = "You are an agent in a household. Each turn, write one action on the last \
line of your reply. Actions: look, inventory, go to X, open X, close X, take X from Y, \
put X in/on Y, clean X with Y, heat X with Y, cool X with Y, use X, examine X. You can carry \
one object at a time.";

/// Most solved examples an episode may show ([`HouseholdConfig::examples`]).
pub const MAX_EXAMPLES: usize = 4;

/// Expert actions an example shows at most (the expert needs at most ~12 in any room).
const EXAMPLE_STEPS: usize = 30;

/// The room of example `k` ([`HouseholdConfig::examples`]) for an episode of seed `seed` with task `goal` (type `kind`),
/// before any action: from SplitMix64 draws of the pair, the first whose task differs from
/// `goal` (so an example never solves the episode's own task).
fn example_scene(seed: u64, k: usize, kind: TaskType, goal: &str) -> Scene {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(k as u64 + 1));
    let mut scene = None;
    for _ in 0..64 {
        z = z.wrapping_add(0xE7A3_9D1C);
        let mut x = z;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        let candidate = Scene::generate(x, &[kind]);
        let differs = candidate.task.describe() != goal;
        scene = Some(candidate);
        if differs {
            break;
        }
    }
    scene.unwrap_or_else(|| Scene::generate(seed ^ 1, &[kind]))
}

/// Makes `household` episodes.
#[derive(Clone)]
pub struct HouseholdFactory {
    config: Arc<HouseholdConfig>,
}

impl HouseholdFactory {
    /// A factory with these settings.
    ///
    /// # Errors
    /// [`Error::Params`] when `max_steps` is 0, `match_admissible` is not in (0, 1] or
    /// `examples` is above [`MAX_EXAMPLES`].
    pub fn new(config: HouseholdConfig) -> Result<Self> {
        let bad = |message: String| Error::Params {
            env: "household".into(),
            message,
        };
        if config.max_steps == 0 {
            return Err(bad("`max_steps` must be at least 1".into()));
        }
        if config.examples > MAX_EXAMPLES {
            return Err(bad(format!(
                "`examples` must be at most {MAX_EXAMPLES} (each adds a solved episode to the \
                 first prompt), got {}",
                config.examples
            )));
        }
        if let Some(r) = config.subgoal_reward
            && !(r > 0.0 && r < 1.0)
        {
            return Err(bad(format!(
                "`subgoal_reward` must be in (0, 1) (success earns 1), got {r}"
            )));
        }
        if let Some(t) = config.match_admissible
            && !(t > 0.0 && t <= 1.0)
        {
            return Err(bad(format!(
                "`match_admissible` must be in (0, 1] (a word-overlap F1), got {t}"
            )));
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
            matched: 0,
            reached: Vec::new(),
            turn_rewards: Vec::new(),
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
    matched: usize,
    /// Subgoals reached so far (`subgoal_reward`).
    reached: Vec<bool>,
    /// Each turn's subgoal rewards.
    turn_rewards: Vec<f32>,
}

impl Household {
    /// Example `k` of an episode of seed `seed` in `episode`'s room, as conversation turns:
    /// the room of [`example_scene`] solved by the scripted expert (the rules open example 0).
    fn example_messages(&self, seed: u64, k: usize, episode: &Scene) -> Vec<Message> {
        let mut scene = example_scene(seed, k, episode.task.kind, &episode.task.describe());
        let intro = scene.introduction();
        let head = if k == 0 {
            format!("{RULES}\n\n{intro}")
        } else {
            format!("Next task. {intro}")
        };
        let mut out = vec![self.observation(&scene, head)];
        for _ in 0..EXAMPLE_STEPS {
            let Some(action) = scene.expert_action() else {
                break;
            };
            let Some(parsed) = parse_action(&action) else {
                break;
            };
            let text = scene.apply(&parsed);
            out.push(Message::assistant(action));
            out.push(if scene.goal_reached() {
                Message::user(text)
            } else {
                self.observation(&scene, self.remind(&scene, text))
            });
        }
        out
    }

    /// `text` with the task restated after it when `repeat_task` is on.
    fn remind(&self, scene: &Scene, text: String) -> String {
        if self.config.repeat_task {
            format!("{text}\n\n{}", scene.task_line())
        } else {
            text
        }
    }

    fn observation(&self, scene: &Scene, text: String) -> Message {
        if self.config.admissible_actions && self.config.choose_admissible {
            // The reply is constrained to the choices anyway: list the ones at hand, not the
            // `go to` of every receptacle the room description already names (a quarter of
            // the prompt tokens, and SmolLM2 takes the task's object 5x as often when the
            // `take` is listed).
            let here: Vec<String> = choices(scene)
                .into_iter()
                .filter(|a| !a.starts_with("go to "))
                .collect();
            let line = if here.is_empty() {
                "Actions: go to a receptacle.".to_string()
            } else {
                format!("Actions here: {}, or go to a receptacle.", here.join(", "))
            };
            Message::user(format!("{text}\n\n{line}"))
        } else if self.config.admissible_actions {
            let actions = scene.admissible_actions().join(", ");
            Message::user(format!("{text}\n\nAdmissible actions: {actions}"))
        } else {
            Message::user(text)
        }
    }

    /// The agent's next turn after `messages`, its reply constrained to the admissible actions
    /// when `choose_admissible` is on.
    fn ask(&mut self, scene: &Scene, messages: Vec<Message>) -> Step {
        let request = self.dialogue.ask(AGENT, messages);
        Step::Request(if self.config.choose_admissible {
            request.with_sampling(SamplingOverrides {
                choices: choices(scene),
                ..SamplingOverrides::default()
            })
        } else {
            request
        })
    }

    fn done(&mut self, success: bool, scene: &Scene) -> Step {
        self.dialogue.finish();
        let mut rewards = self.turn_rewards.clone();
        rewards.resize(self.steps, 0.0);
        if success && let Some(last) = rewards.last_mut() {
            *last += 1.0;
        }
        let mut outcome = Outcome::single(AGENT, rewards)
            .with_metric("success", f64::from(u8::from(success)))
            .with_metric("steps", self.steps as f64)
            .with_metric(
                "invalid_actions",
                self.invalid as f64 / self.steps.max(1) as f64,
            );
        if self.config.subgoal_reward.is_some() {
            let reached = self.reached.iter().filter(|&&r| r).count();
            outcome = outcome
                .with_metric(
                    "subgoals",
                    reached as f64 / self.reached.len().max(1) as f64,
                )
                .with_metric(
                    "object_held",
                    f64::from(u8::from(self.reached.first() == Some(&true))),
                );
        }
        if self.config.match_admissible.is_some() {
            outcome = outcome.with_metric(
                "matched_actions",
                self.matched as f64 / self.steps.max(1) as f64,
            );
        }
        outcome.info =
            serde_json::json!({ "task_type": scene.task.kind, "goal": scene.task.describe() });
        Step::Done(outcome)
    }
}

#[async_trait]
impl Env for Household {
    async fn reset(&mut self, seed: u64) -> Result<Step> {
        let seed = seed.wrapping_add(self.config.seed_offset);
        let scene = Scene::generate(seed, &self.config.task_types);
        self.dialogue = Dialogue::new();
        self.steps = 0;
        self.invalid = 0;
        self.matched = 0;
        self.reached = vec![false; scene.subgoals().len()];
        self.turn_rewards.clear();
        let mut messages = Vec::new();
        for k in 0..self.config.examples {
            messages.extend(self.example_messages(seed, k, &scene));
        }
        let intro = scene.introduction();
        let first = match messages.pop() {
            // The last example's closing observation and the new task share one user turn.
            Some(last) => {
                self.observation(&scene, format!("{}\n\nNext task. {intro}", last.content))
            }
            None => self.observation(&scene, format!("{RULES}\n\n{intro}")),
        };
        messages.push(first);
        let step = self.ask(&scene, messages);
        self.scene = Some(scene);
        Ok(step)
    }

    async fn step(&mut self, agent: &AgentId, text: &str) -> Result<Step> {
        self.dialogue.answer(agent, text)?;
        let mut scene = self.scene.take().ok_or(Error::NoEpisode)?;
        self.steps += 1;
        let mut observation = match parse_action(text) {
            Some(action) => scene.apply(&action),
            None => NOTHING_HAPPENS.to_string(),
        };
        if observation == NOTHING_HAPPENS
            && let Some(threshold) = self.config.match_admissible
            && let Some(action) = closest_admissible(text, &scene.admissible_actions(), threshold)
                .and_then(|a| parse_action(&a))
        {
            observation = scene.apply(&action);
            self.matched += 1;
        }
        if observation == NOTHING_HAPPENS {
            self.invalid += 1;
        }
        let mut reward = 0.0;
        if let Some(r) = self.config.subgoal_reward {
            for (reached, now) in self.reached.iter_mut().zip(scene.subgoals()) {
                if now && !*reached {
                    *reached = true;
                    reward += r as f32;
                }
            }
        }
        self.turn_rewards.push(reward);
        let step = if scene.goal_reached() {
            self.done(true, &scene)
        } else if self.steps >= self.config.max_steps {
            self.done(false, &scene)
        } else {
            let message = self.observation(&scene, self.remind(&scene, observation));
            self.ask(&scene, vec![message])
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

/// The choices of a `choose_admissible` turn: the admissible actions that can change the room
/// or what the agent holds, in their order. `look`, `inventory` and `examine X` only describe
/// what the observations already show; SmolLM2-135M-Instruct, asked to "look at the book under
/// the desklamp", samples `look` at almost every turn when it is offered.
fn choices(scene: &Scene) -> Vec<String> {
    scene
        .admissible_actions()
        .into_iter()
        .filter(|a| a != "look" && a != "inventory" && !a.starts_with("examine "))
        .collect()
}

/// The admissible action whose words best match the last non-empty line of `text`: the highest
/// word-overlap F1 (words are lower-cased runs of letters and digits; counted with
/// multiplicity), the first in `admissible`'s order on a tie; `None` below `threshold`.
pub fn closest_admissible(text: &str, admissible: &[String], threshold: f64) -> Option<String> {
    fn words(s: &str) -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    }
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let reply = words(line);
    if reply.is_empty() {
        return None;
    }
    let mut best: Option<(f64, &String)> = None;
    for action in admissible {
        let mut left = words(action);
        let n = left.len();
        let overlap = reply
            .iter()
            .filter(|w| match left.iter().position(|a| a == *w) {
                Some(i) => {
                    left.swap_remove(i);
                    true
                }
                None => false,
            })
            .count();
        if overlap == 0 {
            continue;
        }
        let (p, r) = (
            overlap as f64 / reply.len() as f64,
            overlap as f64 / n as f64,
        );
        let f1 = 2.0 * p * r / (p + r);
        if best.is_none_or(|(b, _)| f1 > b) {
            best = Some((f1, action));
        }
    }
    best.filter(|(f1, _)| *f1 >= threshold)
        .map(|(_, a)| a.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EpisodeLimits, demonstrate};

    #[test]
    fn free_text_maps_to_the_admissible_action_with_the_most_words_in_common() {
        let admissible: Vec<String> = [
            "go to shelf 1",
            "take soapbar 1 from countertop 1",
            "put soapbar 1 in/on shelf 1",
            "examine shelf 1",
        ]
        .map(String::from)
        .to_vec();
        let pick = |text: &str, t| closest_admissible(text, &admissible, t);
        assert_eq!(
            pick("I think...\nFinally, putting the soapbar in a shelf.", 0.3).as_deref(),
            Some("put soapbar 1 in/on shelf 1")
        );
        assert_eq!(
            pick("Go to the shelf", 0.3).as_deref(),
            Some("go to shelf 1")
        );
        assert_eq!(pick("Go to the shelf", 0.9), None, "below the threshold");
        assert_eq!(pick("Hello there!", 0.1), None, "no word in common");
        assert_eq!(pick("   \n", 0.1), None);
        assert_eq!(
            pick("take soapbar 1 from countertop 1", 1.0).as_deref(),
            Some("take soapbar 1 from countertop 1")
        );
    }

    #[tokio::test]
    async fn a_matched_reply_acts_and_is_counted_and_the_threshold_is_validated() {
        let seed = 3;
        let config = |m| HouseholdConfig {
            match_admissible: m,
            ..HouseholdConfig::default()
        };
        let factory = HouseholdFactory::new(config(Some(0.5))).unwrap();
        let mut env = factory.make();
        let Step::Request(_) = env.reset(seed).await.unwrap() else {
            panic!()
        };
        let scene = Scene::generate(seed, &[]);
        let target = scene
            .admissible_actions()
            .into_iter()
            .find(|a| a.split_whitespace().count() >= 3)
            .unwrap();
        // The action in prose: every word of it, plus filler that keeps the F1 above 0.5.
        let prose = format!("Let me now {target} please");
        assert!(parse_action(&prose).is_none(), "{prose}");
        let plain = {
            let mut s = scene.clone();
            s.apply(&parse_action(&target).unwrap())
        };
        let Step::Request(next) = env.step(&AgentId::new(AGENT), &prose).await.unwrap() else {
            panic!("the episode ended after one action")
        };
        let shown = next.messages.last().unwrap().content.clone();
        assert!(shown.starts_with(&plain), "{shown} vs {plain}");

        for bad in [0.0, 1.5, f64::NAN] {
            let err = HouseholdFactory::new(config(Some(bad)))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("match_admissible"), "{err}");
        }
    }

    #[tokio::test]
    async fn subgoals_are_rewarded_once_at_the_turn_they_are_reached() {
        let config = HouseholdConfig {
            subgoal_reward: Some(0.25),
            ..HouseholdConfig::default()
        };
        let factory = HouseholdFactory::new(config).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200u64 {
            let ep = demonstrate(factory.make(), seed, EpisodeLimits::default()).await;
            let outcome = ep.outcome().unwrap();
            let rewards = &outcome.rewards[&AgentId::new(AGENT)];
            // Replay the expert's actions: the turns where a subgoal first holds.
            let mut scene = Scene::generate(seed, &[]);
            let mut reached = vec![false; scene.subgoals().len()];
            let mut expected = Vec::new();
            let mut at_goal_turn = None;
            for (t, turn) in ep.turns.iter().enumerate() {
                scene.apply(&parse_action(&turn.answer).unwrap());
                let mut r = 0.0;
                let now = scene.subgoals();
                for (was, now) in reached.iter_mut().zip(&now) {
                    if *now && !*was {
                        *was = true;
                        r += 0.25;
                    }
                }
                if at_goal_turn.is_none() && now.last() == Some(&true) {
                    at_goal_turn = Some(t);
                }
                expected.push(r);
            }
            // The last subgoal, at the goal's place with the object, is reached by walking
            // there with it (or taking it there) before the task's own last action.
            let last = ep.turns.len() - 1;
            let t = at_goal_turn.unwrap_or_else(|| panic!("seed {seed}: never at the goal"));
            assert!(t < last, "seed {seed}: at the goal only at the end");
            let answer = &ep.turns[t].answer;
            assert!(
                answer.starts_with("go to ") || answer.starts_with("take "),
                "seed {seed}: {answer}"
            );
            let finish = &ep.turns[last].answer;
            assert!(
                finish.starts_with("put ") || finish.starts_with("use "),
                "seed {seed}: {finish}"
            );
            *expected.last_mut().unwrap() += 1.0;
            assert_eq!(rewards, &expected, "seed {seed}");
            let subgoals = reached.len() as f32;
            assert_eq!(
                rewards.iter().sum::<f32>(),
                1.0 + 0.25 * subgoals,
                "seed {seed}"
            );
            assert_eq!(outcome.metrics["subgoals"], 1.0, "seed {seed}");
            assert_eq!(outcome.metrics["object_held"], 1.0, "seed {seed}");
            seen.insert(reached.len());
        }
        assert_eq!(seen, [2, 3].into(), "tasks with and without a treatment");
        // An episode that reaches no subgoal earns nothing.
        let mut env = factory.make();
        env.reset(5).await.unwrap();
        let mut last = None;
        for _ in 0..HouseholdConfig::default().max_steps {
            match env.step(&AgentId::new(AGENT), "look").await.unwrap() {
                Step::Done(o) => {
                    last = Some(o);
                    break;
                }
                Step::Request(_) => {}
            }
        }
        let o = last.unwrap();
        assert!(o.rewards[&AgentId::new(AGENT)].iter().all(|&r| r == 0.0));
        assert_eq!(o.metrics["subgoals"], 0.0);
        assert_eq!(o.metrics["object_held"], 0.0);
        for bad in [0.0, 1.0, f64::NAN] {
            let e = HouseholdFactory::new(HouseholdConfig {
                subgoal_reward: Some(bad),
                ..HouseholdConfig::default()
            })
            .err()
            .unwrap()
            .to_string();
            assert!(e.contains("subgoal_reward"), "{e}");
        }
    }

    #[tokio::test]
    async fn seed_offset_moves_every_task_to_another_seed() {
        let first = |offset: u64, seed: u64| async move {
            let factory = HouseholdFactory::new(HouseholdConfig {
                seed_offset: offset,
                ..HouseholdConfig::default()
            })
            .unwrap();
            let Step::Request(r) = factory.make().reset(seed).await.unwrap() else {
                panic!()
            };
            r.messages.last().unwrap().content.clone()
        };
        let offset = 1 << 40;
        let mut differ = 0;
        for seed in 0..8 {
            assert_eq!(first(offset, seed).await, first(0, offset + seed).await);
            differ += usize::from(first(offset, seed).await != first(0, seed).await);
        }
        assert_eq!(differ, 8, "an offset split shares no task with seeds 0..8");
        let params: toml::Table = toml::from_str("seed_offset = 1099511627776").unwrap();
        assert!(HouseholdFactory::from_params("household", &params).is_ok());
    }

    #[tokio::test]
    async fn repeat_task_restates_the_task_after_every_observation_but_the_first() {
        let play = |repeat_task: bool| async move {
            let factory = HouseholdFactory::new(HouseholdConfig {
                repeat_task,
                ..HouseholdConfig::default()
            })
            .unwrap();
            let mut env = factory.make();
            let Step::Request(first) = env.reset(5).await.unwrap() else {
                panic!()
            };
            let Step::Request(second) = env.step(&first.agent, "inventory").await.unwrap() else {
                panic!()
            };
            let intro = first.messages.last().unwrap().content.clone();
            (intro, second.messages.last().unwrap().content.clone())
        };
        let (intro, plain) = play(false).await;
        let (intro_again, reminded) = play(true).await;
        assert_eq!(
            intro, intro_again,
            "the first observation states the task once either way"
        );
        let task = intro
            .split("Your task is to: ")
            .nth(1)
            .and_then(|t| t.lines().next())
            .unwrap()
            .to_string();
        assert!(!plain.contains(&task), "{plain}");
        assert!(
            reminded.starts_with(plain.split("\n\n").next().unwrap())
                && reminded.contains(&format!("Your task is to: {task}")),
            "{reminded}"
        );
        let params: toml::Table = toml::from_str("repeat_task = true").unwrap();
        assert!(HouseholdFactory::from_params("household", &params).is_ok());
    }

    #[tokio::test]
    async fn choose_admissible_makes_every_request_a_choice_among_the_admissible_actions() {
        let factory = HouseholdFactory::new(HouseholdConfig {
            choose_admissible: true,
            ..HouseholdConfig::default()
        })
        .unwrap();
        let informational = |a: &str| a == "look" || a == "inventory" || a.starts_with("examine ");
        for seed in 0..20 {
            let mut env = factory.make();
            let mut step = env.reset(seed).await.unwrap();
            let mut turns = 0;
            while let Step::Request(request) = step {
                let choices = &request.sampling.choices;
                assert!(!choices.is_empty() && !choices.iter().any(|a| informational(a)));
                // Every choice acts; the listing names the choices other than `go to`.
                for choice in choices {
                    let mut fork = env.fork().unwrap();
                    let reply = fork.step(&request.agent, choice).await.unwrap();
                    if let Step::Request(r) = reply {
                        let seen = &r.messages.last().unwrap().content;
                        assert!(!seen.starts_with(NOTHING_HAPPENS), "{choice}: {seen}");
                    }
                }
                let shown = &request.messages.last().unwrap().content;
                let listed = shown.rsplit("\n\n").next().unwrap();
                let here: Vec<&String> = choices
                    .iter()
                    .filter(|a| !a.starts_with("go to "))
                    .collect();
                if here.is_empty() {
                    assert_eq!(listed, "Actions: go to a receptacle.");
                } else {
                    let names: Vec<&str> = here.iter().map(|a| a.as_str()).collect();
                    let want =
                        format!("Actions here: {}, or go to a receptacle.", names.join(", "));
                    assert_eq!(listed, want);
                }
                let action = env.expert_answer().unwrap();
                assert!(choices.contains(&action), "seed {seed}: {action}");
                step = env.step(&request.agent, &action).await.unwrap();
                turns += 1;
            }
            let Step::Done(outcome) = step else {
                unreachable!()
            };
            assert!(turns > 0);
            assert_eq!(outcome.metrics["success"], 1.0, "seed {seed}");
            assert_eq!(outcome.metrics["invalid_actions"], 0.0);
        }
        // Off (the default), requests carry no choices and list every admissible action.
        let mut env = HouseholdFactory::new(HouseholdConfig::default())
            .unwrap()
            .make();
        let Step::Request(request) = env.reset(0).await.unwrap() else {
            unreachable!()
        };
        assert!(request.sampling.choices.is_empty());
        let shown = &request.messages.last().unwrap().content;
        assert!(
            shown.contains("Admissible actions: look, inventory, go to "),
            "{shown}"
        );
    }

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
    async fn examples_are_earlier_turns_solving_other_tasks_of_the_same_type() {
        let config = |examples| HouseholdConfig {
            examples,
            ..HouseholdConfig::default()
        };
        for seed in 0..60u64 {
            let mut env = HouseholdFactory::new(config(2)).unwrap().make();
            let Step::Request(first) = env.reset(seed).await.unwrap() else {
                panic!()
            };
            let episode = Scene::generate(seed, &[]);
            let messages = &first.messages;
            assert!(messages[0].content.starts_with(RULES), "seed {seed}");
            let last = &messages.last().unwrap().content;
            assert!(
                last.contains(&format!(
                    "Next task. {}\n\nAdmissible actions: ",
                    episode.introduction()
                )),
                "seed {seed}: the episode's own room comes last: {last}"
            );
            // Replaying each example's assistant turns in its room solves its task.
            let mut solved = 0;
            let mut scene = example_scene(seed, 0, episode.task.kind, &episode.task.describe());
            for m in messages {
                if m.role != kaizen_core::Role::Assistant {
                    continue;
                }
                let observation = scene.apply(&parse_action(&m.content).unwrap());
                assert_ne!(observation, NOTHING_HAPPENS, "seed {seed}: {}", m.content);
                if scene.goal_reached() {
                    assert_eq!(scene.task.kind, episode.task.kind, "seed {seed}");
                    assert_ne!(
                        scene.task.describe(),
                        episode.task.describe(),
                        "seed {seed}"
                    );
                    solved += 1;
                    scene =
                        example_scene(seed, solved, episode.task.kind, &episode.task.describe());
                }
            }
            assert_eq!(solved, 2, "seed {seed}");
            // The same seed always shows the same examples; without examples, one message.
            let mut again = HouseholdFactory::new(config(2)).unwrap().make();
            let Step::Request(second) = again.reset(seed).await.unwrap() else {
                panic!()
            };
            assert_eq!(&second.messages, messages);
            let mut plain = HouseholdFactory::new(config(0)).unwrap().make();
            let Step::Request(plain) = plain.reset(seed).await.unwrap() else {
                panic!()
            };
            assert_eq!(plain.messages.len(), 1);
        }
        let err = HouseholdFactory::new(config(MAX_EXAMPLES + 1))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("`examples`"), "{err}");
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
