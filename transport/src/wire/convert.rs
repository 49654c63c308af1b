//! Episode tasks and reports to and from their wire messages. Token ids and behaviour log-probs
//! travel as packed `uint32` / `float` fields, so they arrive bit for bit as sampled; free-form
//! parts (an outcome's `info`, the readable turns) travel as JSON strings; a fault's kind travels
//! as its serde name (`env_timeout`).
//!
//! `*_from_proto` validates everything a peer sends and names the field that is wrong; a
//! trajectory must also pass [`Trajectory::validate`] (one log-prob per token, one finite reward
//! per agent turn).

use std::collections::BTreeMap;

use kaizen_core::{
    AgentId, FinishReason, Outcome, SamplingOverrides, Segment, Trajectory, WeightsVersion,
};
use kaizen_envs::{Fault, FaultKind, Turn};

use super::proto;
use crate::{EpisodeReport, EpisodeTask, Error, RolloutReport, SearchReport};

fn protocol(peer: &str, message: impl Into<String>) -> Error {
    Error::Protocol {
        peer: peer.to_string(),
        message: message.into(),
    }
}

fn to_usize(value: u64, field: &str, peer: &str) -> Result<usize, Error> {
    usize::try_from(value).map_err(|_| {
        protocol(
            peer,
            format!(
                "`{field}` = {value} does not fit this machine's usize (at most {})",
                usize::MAX
            ),
        )
    })
}

fn sampling_to_proto(s: &SamplingOverrides) -> proto::SamplingOverrides {
    proto::SamplingOverrides {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k.map(|k| k as u64),
        min_p: s.min_p,
        max_new_tokens: s.max_new_tokens.map(|n| n as u64),
        stop: s.stop.clone(),
        choices: s.choices.clone(),
    }
}

fn sampling_from_proto(
    s: proto::SamplingOverrides,
    peer: &str,
) -> Result<SamplingOverrides, Error> {
    Ok(SamplingOverrides {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s
            .top_k
            .map(|k| to_usize(k, "task.sampling.top_k", peer))
            .transpose()?,
        min_p: s.min_p,
        max_new_tokens: s
            .max_new_tokens
            .map(|n| to_usize(n, "task.sampling.max_new_tokens", peer))
            .transpose()?,
        stop: s.stop,
        choices: s.choices,
    })
}

/// A task as its wire message.
pub fn task_to_proto(task: &EpisodeTask) -> proto::EpisodeTask {
    proto::EpisodeTask {
        id: task.id,
        group_id: task.group_id,
        env: task.env as u64,
        seed: task.seed,
        sample: task.sample,
        sampling_seed: task.sampling_seed,
        sampling: Some(sampling_to_proto(&task.sampling)),
        hint_turns: task.hint_turns.clone(),
        // A search spec holds only numbers, which always serialise.
        search_json: task
            .search
            .as_ref()
            .map(|s| serde_json::to_string(s).unwrap_or_default())
            .unwrap_or_default(),
    }
}

/// A task from its wire message, sent by `peer` (absent sampling overrides mean none).
///
/// # Errors
/// [`Error::Protocol`] naming a `u64` field whose value does not fit `usize` (`task.env`,
/// `task.sampling.top_k`, `task.sampling.max_new_tokens`).
pub fn task_from_proto(task: proto::EpisodeTask, peer: &str) -> Result<EpisodeTask, Error> {
    Ok(EpisodeTask {
        id: task.id,
        group_id: task.group_id,
        env: to_usize(task.env, "task.env", peer)?,
        seed: task.seed,
        sample: task.sample,
        sampling_seed: task.sampling_seed,
        sampling: match task.sampling {
            Some(s) => sampling_from_proto(s, peer)?,
            None => SamplingOverrides::default(),
        },
        hint_turns: task.hint_turns,
        search: if task.search_json.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&task.search_json).map_err(|e| {
                protocol(peer, format!("task.search_json is not a tree search: {e}"))
            })?)
        },
    })
}

fn finish_to_proto(f: FinishReason) -> proto::FinishReason {
    match f {
        FinishReason::Eos => proto::FinishReason::Eos,
        FinishReason::Stop => proto::FinishReason::Stop,
        FinishReason::Length => proto::FinishReason::Length,
    }
}

fn finish_from_proto(value: i32, index: usize, peer: &str) -> Result<FinishReason, Error> {
    match proto::FinishReason::try_from(value) {
        Ok(proto::FinishReason::Eos) => Ok(FinishReason::Eos),
        Ok(proto::FinishReason::Stop) => Ok(FinishReason::Stop),
        Ok(proto::FinishReason::Length) => Ok(FinishReason::Length),
        Err(_) => Err(protocol(
            peer,
            format!(
                "trajectory.segments[{index}].finish_reason = {value} is not a FinishReason \
                 (expected 0 eos, 1 stop or 2 length)"
            ),
        )),
    }
}

fn segment_to_proto(s: &Segment) -> proto::Segment {
    proto::Segment {
        agent: s.agent.0.clone(),
        thread: s.thread,
        prompt_tokens: s.prompt_tokens.clone(),
        completion_tokens: s.completion_tokens.clone(),
        behavior_logprobs: s.behavior_logprobs.clone(),
        trainable: s.trainable,
        temperature: s.temperature,
        weights_version: s.weights_version.0,
        finish_reason: finish_to_proto(s.finish_reason) as i32,
        self_certainty: s.self_certainty,
    }
}

fn segment_from_proto(s: proto::Segment, index: usize, peer: &str) -> Result<Segment, Error> {
    if s.behavior_logprobs.len() != s.completion_tokens.len() {
        return Err(protocol(
            peer,
            format!(
                "trajectory.segments[{index}].behavior_logprobs has {} values for {} \
                 completion_tokens (expected one log-prob per sampled token)",
                s.behavior_logprobs.len(),
                s.completion_tokens.len()
            ),
        ));
    }
    Ok(Segment {
        agent: AgentId(s.agent),
        thread: s.thread,
        prompt_tokens: s.prompt_tokens,
        completion_tokens: s.completion_tokens,
        behavior_logprobs: s.behavior_logprobs,
        trainable: s.trainable,
        temperature: s.temperature,
        weights_version: WeightsVersion(s.weights_version),
        finish_reason: finish_from_proto(s.finish_reason, index, peer)?,
        self_certainty: s.self_certainty,
    })
}

fn trajectory_to_proto(t: &Trajectory) -> proto::Trajectory {
    proto::Trajectory {
        id: t.id,
        env: t.env.clone(),
        seed: t.seed,
        group_id: t.group_id,
        segments: t.segments.iter().map(segment_to_proto).collect(),
        rewards: t
            .outcome
            .rewards
            .iter()
            .map(|(agent, values)| {
                let values = values.clone();
                (agent.0.clone(), proto::Rewards { values })
            })
            .collect(),
        outcome_metrics: t
            .outcome
            .metrics
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        info_json: if t.outcome.info.is_null() {
            String::new()
        } else {
            // A `serde_json::Value` always serialises (its map keys are strings).
            t.outcome.info.to_string()
        },
    }
}

fn trajectory_from_proto(t: proto::Trajectory, peer: &str) -> Result<Trajectory, Error> {
    let segments = t
        .segments
        .into_iter()
        .enumerate()
        .map(|(i, s)| segment_from_proto(s, i, peer))
        .collect::<Result<Vec<_>, _>>()?;
    let info = if t.info_json.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&t.info_json).map_err(|e| {
            protocol(
                peer,
                format!("trajectory.info_json is not JSON (expected \"\" or a value): {e}"),
            )
        })?
    };
    let trajectory = Trajectory {
        id: t.id,
        env: t.env,
        seed: t.seed,
        group_id: t.group_id,
        segments,
        outcome: Outcome {
            rewards: t
                .rewards
                .into_iter()
                .map(|(agent, r)| (AgentId(agent), r.values))
                .collect(),
            metrics: t.outcome_metrics.into_iter().collect(),
            info,
        },
    };
    trajectory.validate().map_err(|e| {
        let field = match e {
            kaizen_core::Error::RewardCount { .. } | kaizen_core::Error::NonFiniteReward { .. } => {
                "trajectory.rewards"
            }
            _ => "trajectory",
        };
        protocol(peer, format!("{field}: {e}"))
    })?;
    Ok(trajectory)
}

/// The serde name of a fault kind (`env_timeout`), as the wire carries it.
fn fault_kind_name(kind: FaultKind) -> String {
    // `FaultKind` is a fieldless enum with `rename_all = "snake_case"`: it serialises to a
    // string, so the fallback is never taken.
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{kind:?}"),
    }
}

fn fault_kind_from_name(name: &str, peer: &str) -> Result<FaultKind, Error> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
        protocol(
            peer,
            format!(
                "report.fault.kind = {name:?} is not a known fault kind (expected a snake_case \
                 name such as \"env_error\")"
            ),
        )
    })
}

/// The actor's stream message for `report`: the report itself if it fits in
/// `max_message_bytes` (encoded), else a `report_too_large` fault for the same task, which the
/// peer accepts and counts; the second value is then the oversized report's encoded size (for
/// the log). `generated_tokens` is the actor's running count of sampled tokens.
pub fn report_message(
    report: &EpisodeReport,
    generated_tokens: u64,
    max_message_bytes: usize,
) -> (proto::ActorMessage, Option<usize>) {
    use prost::Message as _;
    let wrap = |mut p: proto::Report| {
        p.generated_tokens = generated_tokens;
        proto::ActorMessage {
            body: Some(proto::actor_message::Body::Report(p)),
        }
    };
    let message = wrap(report_to_proto(report));
    let bytes = message.encoded_len();
    if bytes <= max_message_bytes {
        return (message, None);
    }
    let fault = EpisodeReport::faulted(
        report.task.clone(),
        report.env.clone(),
        Fault {
            kind: FaultKind::ReportTooLarge,
            message: format!(
                "the episode's report is {bytes} bytes, more than the {max_message_bytes} \
                 the transport carries (cluster.max_message_mib)"
            ),
        },
    );
    (wrap(report_to_proto(&fault)), Some(bytes))
}

/// A report as its wire message (`generated_tokens` left 0 for the sender to fill).
pub fn report_to_proto(report: &EpisodeReport) -> proto::Report {
    proto::Report {
        task: Some(task_to_proto(&report.task)),
        env: report.env.clone(),
        result: Some(match result_to_proto(&report.result) {
            Ok(t) => proto::report::Result::Trajectory(t),
            Err(f) => proto::report::Result::Fault(f),
        }),
        metrics: metrics_to_proto(&report.metrics),
        turns_json: turns_to_json(&report.turns),
        generated_tokens: 0,
        tree: report.tree.as_ref().map(|tree| proto::SearchTree {
            // Nodes hold only numbers, bools and strings, which always serialise.
            nodes_json: serde_json::to_string(&tree.nodes).unwrap_or_default(),
            path: tree.path.iter().map(|&n| n as u64).collect(),
            rollouts: tree
                .rollouts
                .iter()
                .map(|r| proto::Rollout {
                    path: r.path.iter().map(|&n| n as u64).collect(),
                    result: Some(match result_to_proto(&r.result) {
                        Ok(t) => proto::rollout::Result::Trajectory(t),
                        Err(f) => proto::rollout::Result::Fault(f),
                    }),
                    metrics: metrics_to_proto(&r.metrics),
                    turns_json: turns_to_json(&r.turns),
                })
                .collect(),
        }),
    }
}

fn result_to_proto(result: &Result<Trajectory, Fault>) -> Result<proto::Trajectory, proto::Fault> {
    match result {
        Ok(t) => Ok(trajectory_to_proto(t)),
        Err(f) => Err(proto::Fault {
            kind: fault_kind_name(f.kind),
            message: f.message.clone(),
        }),
    }
}

fn metrics_to_proto(metrics: &BTreeMap<String, f64>) -> std::collections::HashMap<String, f64> {
    metrics.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

fn turns_to_json(turns: &[Turn]) -> String {
    if turns.is_empty() {
        String::new()
    } else {
        // Turns hold only strings, bools, numbers and string-named enums, which always
        // serialise; the empty fallback is never taken.
        serde_json::to_string(turns).unwrap_or_default()
    }
}

fn turns_from_json(json: &str, field: &str, peer: &str) -> Result<Vec<Turn>, Error> {
    if json.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(json)
        .map_err(|e| protocol(peer, format!("{field} is not a JSON list of turns: {e}")))
}

/// A trajectory or fault from the wire; the trajectory must be the task's (`field` names the
/// message in errors).
fn result_from_proto(
    result: Result<proto::Trajectory, proto::Fault>,
    task_id: u64,
    field: &str,
    peer: &str,
) -> Result<Result<Trajectory, Fault>, Error> {
    match result {
        Ok(t) => {
            let t = trajectory_from_proto(t, peer)?;
            if t.id != task_id {
                return Err(protocol(
                    peer,
                    format!(
                        "{field}.trajectory.id = {} but report.task.id = {task_id} (expected equal)",
                        t.id
                    ),
                ));
            }
            Ok(Ok(t))
        }
        Err(f) => Ok(Err(Fault {
            kind: fault_kind_from_name(&f.kind, peer)?,
            message: f.message,
        })),
    }
}

fn path_from_proto(path: Vec<u64>, field: &str, peer: &str) -> Result<Vec<usize>, Error> {
    path.into_iter().map(|n| to_usize(n, field, peer)).collect()
}

/// A report from its wire message, sent by `peer`.
///
/// # Errors
/// [`Error::Protocol`] naming the field that is missing or malformed: no task or result,
/// log-probs that do not match the sampled tokens, an unknown fault kind or finish reason,
/// unparsable JSON, a trajectory whose id is not the task's, a trajectory that fails
/// [`Trajectory::validate`].
pub fn report_from_proto(report: proto::Report, peer: &str) -> Result<EpisodeReport, Error> {
    let task = report
        .task
        .ok_or_else(|| protocol(peer, "report.task is missing (expected the task played)"))?;
    let task = task_from_proto(task, peer)?;
    let result = match report.result {
        Some(proto::report::Result::Trajectory(t)) => {
            result_from_proto(Ok(t), task.id, "report", peer)?
        }
        Some(proto::report::Result::Fault(f)) => {
            result_from_proto(Err(f), task.id, "report", peer)?
        }
        None => {
            return Err(protocol(
                peer,
                "report.result is missing (expected a trajectory or a fault)",
            ));
        }
    };
    let turns = turns_from_json(&report.turns_json, "report.turns_json", peer)?;
    let tree = match report.tree {
        None => None,
        Some(tree) => {
            let nodes = serde_json::from_str(&tree.nodes_json).map_err(|e| {
                protocol(
                    peer,
                    format!("report.tree.nodes_json is not a JSON list of tree nodes: {e}"),
                )
            })?;
            let mut rollouts = Vec::with_capacity(tree.rollouts.len());
            for (i, r) in tree.rollouts.into_iter().enumerate() {
                let field = format!("report.tree.rollouts[{i}]");
                let result = match r.result {
                    Some(proto::rollout::Result::Trajectory(t)) => Ok(t),
                    Some(proto::rollout::Result::Fault(f)) => Err(f),
                    None => {
                        return Err(protocol(
                            peer,
                            format!("{field}.result is missing (expected a trajectory or a fault)"),
                        ));
                    }
                };
                rollouts.push(RolloutReport {
                    path: path_from_proto(r.path, &format!("{field}.path"), peer)?,
                    result: result_from_proto(result, task.id, &field, peer)?,
                    metrics: r.metrics.into_iter().collect(),
                    turns: turns_from_json(&r.turns_json, &format!("{field}.turns_json"), peer)?,
                });
            }
            Some(SearchReport {
                nodes,
                path: path_from_proto(tree.path, "report.tree.path", peer)?,
                rollouts,
            })
        }
    };
    Ok(EpisodeReport {
        task,
        env: report.env,
        result,
        metrics: report.metrics.into_iter().collect::<BTreeMap<_, _>>(),
        turns,
        tree,
    })
}

#[cfg(test)]
mod tests {
    use kaizen_core::{Message, Request};

    use super::*;

    fn segment(agent: &str, thread: u32, logprobs: Vec<f32>, finish: FinishReason) -> Segment {
        Segment {
            agent: AgentId::from(agent),
            thread,
            prompt_tokens: vec![1, 2, 3, u32::MAX],
            completion_tokens: (10..).take(logprobs.len()).collect(),
            behavior_logprobs: logprobs,
            trainable: agent == "solver",
            temperature: 0.7,
            weights_version: WeightsVersion(4),
            finish_reason: finish,
            self_certainty: (thread == 0).then_some(0.75),
        }
    }

    /// Two turns of a solver and one of a judge (two agents, three segments), with log-probs
    /// that only a bit-exact transport keeps: -0.0, a subnormal, a large negative, -inf.
    fn trajectory() -> Trajectory {
        Trajectory {
            id: 9,
            env: "spc".into(),
            seed: 3,
            group_id: 2,
            segments: vec![
                segment(
                    "solver",
                    0,
                    vec![-0.0, f32::MIN_POSITIVE / 2.0, -1e30, f32::from_bits(1)],
                    FinishReason::Stop,
                ),
                segment(
                    "judge",
                    1,
                    vec![-3.25, f32::NEG_INFINITY],
                    FinishReason::Eos,
                ),
                segment(
                    "solver",
                    0,
                    vec![-1e-7, -88.5, f32::MIN],
                    FinishReason::Length,
                ),
            ],
            outcome: Outcome {
                rewards: BTreeMap::from([
                    (AgentId::from("solver"), vec![-0.0, 0.1]),
                    (AgentId::from("judge"), vec![f32::MIN_POSITIVE / 4.0]),
                ]),
                metrics: BTreeMap::from([
                    ("correct@t1".to_string(), 0.0),
                    ("correct@t2".to_string(), 1.0),
                    ("tokens".to_string(), 1e300),
                ]),
                info: serde_json::json!({"answer": 42, "notes": ["a", "b"], "score": 0.1}),
            },
        }
    }

    fn task() -> EpisodeTask {
        EpisodeTask {
            id: 9,
            group_id: 2,
            env: 1,
            seed: 3,
            sample: 5,
            sampling_seed: u64::MAX,
            sampling: SamplingOverrides {
                temperature: Some(0.0),
                top_p: Some(0.95),
                top_k: Some(50),
                min_p: Some(f32::MIN_POSITIVE / 2.0),
                max_new_tokens: Some(17),
                stop: vec!["\n\n".into(), "</answer>".into()],
                choices: vec!["go to desk 1".into(), "look".into()],
            },
            hint_turns: vec![2],
            search: None,
        }
    }

    fn turn(agent: &str, question: &str, answer: &str) -> Turn {
        Turn {
            request: Request {
                agent: AgentId::from(agent),
                messages: vec![Message::system("be brief"), Message::user(question)],
                trainable: agent == "solver",
                sampling: SamplingOverrides {
                    max_new_tokens: Some(8),
                    ..SamplingOverrides::default()
                },
                hint: (agent == "solver").then(|| "the answer is 4".to_string()),
            },
            answer: answer.into(),
        }
    }

    fn report() -> EpisodeReport {
        EpisodeReport {
            task: task(),
            env: "spc".into(),
            result: Ok(trajectory()),
            metrics: BTreeMap::from([("reward".to_string(), 0.25), ("fault".to_string(), 0.0)]),
            turns: vec![
                turn("solver", "2+2?", "5"),
                turn("judge", "is 5 right?", "no"),
                turn("solver", "try again", "4 ✓"),
            ],
            tree: None,
        }
    }

    fn logprob_bits(t: &Trajectory) -> Vec<Vec<u32>> {
        t.segments
            .iter()
            .map(|s| s.behavior_logprobs.iter().map(|x| x.to_bits()).collect())
            .collect()
    }

    fn reward_bits(t: &Trajectory) -> Vec<(AgentId, Vec<u32>)> {
        t.outcome
            .rewards
            .iter()
            .map(|(a, r)| (a.clone(), r.iter().map(|x| x.to_bits()).collect()))
            .collect()
    }

    fn trajectory_of(p: &mut proto::Report) -> &mut proto::Trajectory {
        match &mut p.result {
            Some(proto::report::Result::Trajectory(t)) => t,
            other => panic!("expected a trajectory, got {other:?}"),
        }
    }

    /// The error message of a refused report.
    fn refused(p: proto::Report) -> String {
        match report_from_proto(p, "actor-7") {
            Ok(_) => panic!("a malformed report was accepted"),
            Err(e @ Error::Protocol { .. }) => {
                let message = e.to_string();
                assert!(message.contains("actor-7"), "names the peer: {message}");
                message
            }
            Err(e) => panic!("expected a protocol error, got {e}"),
        }
    }

    #[test]
    fn tasks_round_trip_exactly() {
        let t = task();
        let back = task_from_proto(task_to_proto(&t), "peer").unwrap();
        assert_eq!(back, t);
        assert_eq!(
            back.sampling.min_p.map(f32::to_bits),
            t.sampling.min_p.map(f32::to_bits)
        );
        let plain = EpisodeTask {
            sampling: SamplingOverrides::default(),
            hint_turns: Vec::new(),
            search: None,
            ..task()
        };
        assert_eq!(
            task_from_proto(task_to_proto(&plain), "peer").unwrap(),
            plain
        );
    }

    #[test]
    fn a_task_without_sampling_overrides_has_none() {
        let mut p = task_to_proto(&task());
        p.sampling = None;
        let back = task_from_proto(p, "peer").unwrap();
        assert_eq!(back.sampling, SamplingOverrides::default());
        assert_eq!(back.env, 1);
    }

    #[test]
    fn sampling_sizes_travel_as_u64() {
        let p = task_to_proto(&task());
        let s = p.sampling.unwrap();
        assert_eq!((p.env, s.top_k, s.max_new_tokens), (1, Some(50), Some(17)));
    }

    #[test]
    fn two_agent_reports_round_trip_exactly() {
        let r = report();
        let back = report_from_proto(report_to_proto(&r), "peer").unwrap();
        assert_eq!(back.task, r.task);
        assert_eq!(back.env, r.env);
        assert_eq!(back.metrics, r.metrics);
        assert_eq!(back.turns, r.turns);
        let (a, b) = (r.result.as_ref().unwrap(), back.result.as_ref().unwrap());
        assert_eq!(a.segments.len(), 3);
        assert_eq!(a.id, b.id);
        assert_eq!(a.env, b.env);
        assert_eq!((a.seed, a.group_id), (b.seed, b.group_id));
        assert_eq!(a.outcome.metrics, b.outcome.metrics);
        assert_eq!(a.outcome.info, b.outcome.info);
        // Bit for bit: `==` would let -0.0 pass for 0.0 and never match -inf's neighbours.
        assert_eq!(logprob_bits(a), logprob_bits(b));
        assert_eq!(reward_bits(a), reward_bits(b));
        for (x, y) in a.segments.iter().zip(&b.segments) {
            assert_eq!(x.agent, y.agent);
            assert_eq!(x.thread, y.thread);
            assert_eq!(x.prompt_tokens, y.prompt_tokens);
            assert_eq!(x.completion_tokens, y.completion_tokens);
            assert_eq!(x.trainable, y.trainable);
            assert_eq!(x.temperature.to_bits(), y.temperature.to_bits());
            assert_eq!(x.weights_version, y.weights_version);
            assert_eq!(x.finish_reason, y.finish_reason);
        }
    }

    #[test]
    fn every_finish_reason_travels_as_its_enum_value() {
        let p = report_to_proto(&report());
        let Some(proto::report::Result::Trajectory(t)) = &p.result else {
            panic!("expected a trajectory");
        };
        let wire: Vec<i32> = t.segments.iter().map(|s| s.finish_reason).collect();
        let expected = [
            proto::FinishReason::Stop,
            proto::FinishReason::Eos,
            proto::FinishReason::Length,
        ];
        assert_eq!(wire, expected.map(|f| f as i32));
    }

    #[test]
    fn null_info_and_no_turns_travel_as_empty_strings() {
        let mut r = report();
        r.turns.clear();
        if let Ok(t) = &mut r.result {
            t.outcome.info = serde_json::Value::Null;
        }
        let mut p = report_to_proto(&r);
        assert_eq!(p.turns_json, "");
        assert_eq!(trajectory_of(&mut p).info_json, "");
        let back = report_from_proto(p, "peer").unwrap();
        assert!(back.turns.is_empty());
        assert_eq!(back.result.unwrap().outcome.info, serde_json::Value::Null);
    }

    #[test]
    fn faults_round_trip_with_their_serde_names() {
        let kinds = [
            (FaultKind::EnvError, "env_error"),
            (FaultKind::EnvPanic, "env_panic"),
            (FaultKind::EnvTimeout, "env_timeout"),
            (FaultKind::Policy, "policy"),
            (FaultKind::TurnLimit, "turn_limit"),
            (FaultKind::BadOutcome, "bad_outcome"),
            (FaultKind::NoExpert, "no_expert"),
            (FaultKind::ActorLost, "actor_lost"),
            (FaultKind::ReportTooLarge, "report_too_large"),
            (FaultKind::Sandbox, "sandbox"),
        ];
        for (kind, name) in kinds {
            let mut r = report();
            r.result = Err(Fault {
                kind,
                message: "no reply within 0.2 s".into(),
            });
            r.metrics.insert(kind.metric().to_string(), 1.0);
            let p = report_to_proto(&r);
            match &p.result {
                Some(proto::report::Result::Fault(f)) => assert_eq!(f.kind, name),
                other => panic!("expected a fault, got {other:?}"),
            }
            let back = report_from_proto(p, "peer").unwrap();
            assert_eq!(back.result.unwrap_err(), r.result.unwrap_err());
            assert_eq!(back.metrics, r.metrics);
            assert_eq!(back.turns, r.turns);
            assert_eq!(back.task, r.task);
        }
    }

    #[test]
    fn a_report_without_task_is_refused() {
        let mut p = report_to_proto(&report());
        p.task = None;
        assert!(refused(p).contains("report.task is missing"));
    }

    #[test]
    fn a_report_without_result_is_refused() {
        let mut p = report_to_proto(&report());
        p.result = None;
        assert!(refused(p).contains("report.result is missing"));
    }

    #[test]
    fn logprobs_not_matching_tokens_are_refused_naming_the_segment() {
        let mut p = report_to_proto(&report());
        trajectory_of(&mut p).segments[2]
            .behavior_logprobs
            .push(0.0);
        let e = refused(p);
        assert!(
            e.contains("trajectory.segments[2].behavior_logprobs has 4 values for 3"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_finish_reason_is_refused() {
        let mut p = report_to_proto(&report());
        trajectory_of(&mut p).segments[1].finish_reason = 9;
        let e = refused(p);
        assert!(
            e.contains("trajectory.segments[1].finish_reason = 9"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_fault_kind_is_refused() {
        let mut p = report_to_proto(&report());
        p.result = Some(proto::report::Result::Fault(proto::Fault {
            kind: "meltdown".into(),
            message: String::new(),
        }));
        let e = refused(p);
        assert!(
            e.contains("report.fault.kind = \"meltdown\" is not a known fault kind"),
            "{e}"
        );
        // Serde names only: the Rust variant name is not accepted.
        let mut p = report_to_proto(&report());
        p.result = Some(proto::report::Result::Fault(proto::Fault {
            kind: "EnvError".into(),
            message: String::new(),
        }));
        assert!(refused(p).contains("report.fault.kind"));
    }

    #[test]
    fn unparsable_json_is_refused_naming_the_field() {
        let mut p = report_to_proto(&report());
        trajectory_of(&mut p).info_json = "{not json".into();
        assert!(refused(p).contains("trajectory.info_json"));
        let mut p = report_to_proto(&report());
        p.turns_json = "[1, 2]".into();
        assert!(refused(p).contains("report.turns_json"));
        let mut p = report_to_proto(&report());
        p.turns_json = "[".repeat(10_000);
        assert!(refused(p).contains("report.turns_json"), "deep nesting");
    }

    #[test]
    fn rewards_that_break_the_trajectory_contract_are_refused() {
        let mut p = report_to_proto(&report());
        let t = trajectory_of(&mut p);
        if let Some(r) = t.rewards.get_mut("judge") {
            r.values.push(1.0);
        }
        let e = refused(p);
        assert!(
            e.contains("trajectory.rewards") && e.contains("`judge`"),
            "{e}"
        );
        let mut p = report_to_proto(&report());
        if let Some(r) = trajectory_of(&mut p).rewards.get_mut("solver") {
            r.values[1] = f32::NAN;
        }
        let e = refused(p);
        assert!(
            e.contains("trajectory.rewards") && e.contains("non-finite"),
            "{e}"
        );
    }

    #[test]
    fn a_trajectory_of_another_task_is_refused() {
        let mut p = report_to_proto(&report());
        trajectory_of(&mut p).id = 10;
        let e = refused(p);
        assert!(
            e.contains("report.trajectory.id = 10 but report.task.id = 9"),
            "{e}"
        );
    }

    #[test]
    fn sizes_that_do_not_fit_usize_are_refused_naming_the_field() {
        // On 64-bit targets every u64 fits; the check matters on 32-bit ones.
        let e = to_usize(u64::MAX, "task.sampling.top_k", "actor-7");
        if usize::BITS < 64 {
            let e = e.unwrap_err().to_string();
            assert!(
                e.contains("`task.sampling.top_k`") && e.contains("actor-7"),
                "{e}"
            );
        } else {
            assert_eq!(e.unwrap(), usize::MAX);
        }
    }
}
