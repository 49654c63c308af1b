//! Rank, world size and the coordinator's address, as the launchers people use set them:
//! torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), Slurm
//! (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_JOB_NODELIST`), or explicit flags.
//! Kubernetes manifests set the torchrun names (see `examples/cluster/`).

use crate::ClusterError;

/// Where a process stands in a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// Processes in the launch.
    pub world_size: usize,
    /// Rank on this node.
    pub local_rank: usize,
    /// The coordinator's host (learner rank 0), when the launcher says.
    pub master_addr: Option<String>,
    /// The coordinator's port, when the launcher says.
    pub master_port: Option<u16>,
    /// Which launcher's variables these came from (`torchrun`, `slurm`, `flags`).
    pub source: &'static str,
}

impl LaunchEnv {
    /// Reads the launch from `get` (the process environment in [`LaunchEnv::from_env`]):
    /// torchrun's variables first, then Slurm's. `Ok(None)` when neither is set.
    ///
    /// # Errors
    /// [`ClusterError::Launch`] naming the variable that is malformed or out of range.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, ClusterError> {
        let num = |name: &str| -> Result<Option<usize>, ClusterError> {
            match get(name) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    ClusterError::Launch(format!("{name}={v:?}: expected a whole number"))
                }),
            }
        };
        let port = match get("MASTER_PORT") {
            None => None,
            Some(v) => Some(v.trim().parse::<u16>().map_err(|_| {
                ClusterError::Launch(format!("MASTER_PORT={v:?}: expected a port (0-65535)"))
            })?),
        };
        // Half of torchrun's pair is a misconfiguration, not "no launcher". (Slurm's batch step
        // sets SLURM_PROCID without SLURM_NTASKS when no task count was asked for: that is
        // "not launched by srun".)
        {
            let (a, b) = ("RANK", "WORLD_SIZE");
            match (get(a).is_some(), get(b).is_some()) {
                (true, false) => {
                    return Err(ClusterError::Launch(format!("{a} is set but {b} is not")));
                }
                (false, true) => {
                    return Err(ClusterError::Launch(format!("{b} is set but {a} is not")));
                }
                _ => {}
            }
        }
        let env = if let (Some(rank), Some(world_size)) = (num("RANK")?, num("WORLD_SIZE")?) {
            Self {
                rank,
                world_size,
                local_rank: num("LOCAL_RANK")?.unwrap_or(0),
                master_addr: get("MASTER_ADDR").filter(|a| !a.is_empty()),
                master_port: port,
                source: "torchrun",
            }
        } else if let (Some(rank), Some(world_size)) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?)
        {
            let first = match get("SLURM_JOB_NODELIST").or_else(|| get("SLURM_NODELIST")) {
                Some(list) => Some(first_host(&list)?),
                None => None,
            };
            Self {
                rank,
                world_size,
                local_rank: num("SLURM_LOCALID")?.unwrap_or(0),
                master_addr: get("MASTER_ADDR").filter(|a| !a.is_empty()).or(first),
                master_port: port,
                source: "slurm",
            }
        } else {
            return Ok(None);
        };
        if env.world_size == 0 || env.rank >= env.world_size {
            return Err(ClusterError::Launch(format!(
                "rank {} is not below world size {} ({} variables)",
                env.rank, env.world_size, env.source
            )));
        }
        Ok(Some(env))
    }

    /// [`LaunchEnv::from_vars`] over the process environment.
    ///
    /// # Errors
    /// As [`LaunchEnv::from_vars`].
    pub fn from_env() -> Result<Option<Self>, ClusterError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }
}

/// The first host of a Slurm node list: `node[01-04,07],gpu3` → `node01`; `a,b` → `a`.
///
/// # Errors
/// [`ClusterError::Launch`] for an empty or unbalanced list.
pub fn first_host(list: &str) -> Result<String, ClusterError> {
    let bad = || ClusterError::Launch(format!("SLURM_JOB_NODELIST={list:?}: not a node list"));
    let list = list.trim();
    // The first entry ends at the first comma outside brackets.
    let mut depth = 0usize;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1).ok_or_else(bad)?,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let entry = &list[..end];
    if entry.is_empty() || depth != 0 {
        return Err(bad());
    }
    first_name(entry).ok_or_else(bad)
}

/// The first name of one node-list entry: each `[..]` group contributes its first number.
fn first_name(entry: &str) -> Option<String> {
    let Some(open) = entry.find('[') else {
        return (!entry.contains(']')).then(|| entry.to_string());
    };
    let close = open + entry[open..].find(']')?;
    let first = entry[open + 1..close]
        .split(',')
        .next()?
        .split('-')
        .next()?;
    if first.is_empty() || !first.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(format!(
        "{}{first}{}",
        &entry[..open],
        first_name(&entry[close + 1..])?
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn torchrun_variables() {
        let env = LaunchEnv::from_vars(vars(&[
            ("RANK", "2"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29501"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((env.rank, env.world_size, env.local_rank), (2, 4, 0));
        assert_eq!(env.master_addr.as_deref(), Some("10.0.0.1"));
        assert_eq!(env.master_port, Some(29501));
        assert_eq!(env.source, "torchrun");
    }

    #[test]
    fn slurm_variables_take_the_first_node() {
        let env = LaunchEnv::from_vars(vars(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[07-09,12],cpu1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((env.rank, env.world_size, env.local_rank), (3, 4, 1));
        assert_eq!(env.master_addr.as_deref(), Some("gpu07"));
        assert_eq!(env.source, "slurm");
    }

    #[test]
    fn no_launcher_is_none_and_bad_values_name_the_variable() {
        assert_eq!(LaunchEnv::from_vars(vars(&[])).unwrap(), None);
        let e = LaunchEnv::from_vars(vars(&[("RANK", "1")])).unwrap_err();
        assert!(
            e.to_string().contains("RANK is set but WORLD_SIZE is not"),
            "{e}"
        );
        let e = LaunchEnv::from_vars(vars(&[("WORLD_SIZE", "3")])).unwrap_err();
        assert!(
            e.to_string().contains("WORLD_SIZE is set but RANK is not"),
            "{e}"
        );
        assert_eq!(
            LaunchEnv::from_vars(vars(&[("SLURM_PROCID", "0")])).unwrap(),
            None,
            "a Slurm batch step without a task count is no launch"
        );
        let e = LaunchEnv::from_vars(vars(&[("RANK", "x"), ("WORLD_SIZE", "2")])).unwrap_err();
        assert!(e.to_string().contains("RANK=\"x\""), "{e}");
        let e = LaunchEnv::from_vars(vars(&[("RANK", "2"), ("WORLD_SIZE", "2")])).unwrap_err();
        assert!(
            e.to_string().contains("rank 2 is not below world size 2"),
            "{e}"
        );
        let e = LaunchEnv::from_vars(vars(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_PORT", "99999"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("MASTER_PORT"), "{e}");
    }

    #[test]
    fn node_lists() {
        assert_eq!(first_host("node01").unwrap(), "node01");
        assert_eq!(first_host("a,b,c").unwrap(), "a");
        assert_eq!(first_host("n[3-5]").unwrap(), "n3");
        assert_eq!(first_host("rack[2-3]-node[1-4]").unwrap(), "rack2-node1");
        assert_eq!(first_host("x[010,020]y").unwrap(), "x010y");
        assert!(first_host("").is_err());
        assert!(first_host("n[1-2").is_err());
        assert!(first_host("n]").is_err());
    }
}
