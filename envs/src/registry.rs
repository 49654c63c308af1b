use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::rewards::GroupReward;
use crate::{EnvFactory, Error, Result};

/// Builds an environment factory from the environment's TOML table (its parameters).
pub type Builder = Arc<dyn Fn(&toml::Table) -> Result<Arc<dyn EnvFactory>> + Send + Sync>;

struct Entry {
    description: String,
    build: Builder,
}

/// Maps environment names to builders, so that a job config selects an environment by name
/// with a table of parameters.
///
/// [`Registry::with_builtins`] holds kaizen's own worlds (`self_correct`, `self_verify`, `spc`, `household`,
/// `translate`) and `remote` (an HTTP/JSON environment given by `url`). User crates add theirs
/// with [`Registry::register`]:
///
/// ```
/// use std::sync::Arc;
/// use kaizen_envs::{EnvFactory, Registry, worlds::SelfCorrectFactory};
///
/// let mut registry = Registry::with_builtins();
/// registry
///     .register("my_math", "self-correction on my problems", |params| {
///         let factory = SelfCorrectFactory::from_params("my_math", params)?;
///         Ok(Arc::new(factory) as Arc<dyn EnvFactory>)
///     })
///     .unwrap();
/// let factory = registry.build("my_math", &toml::Table::new()).unwrap();
/// let _env = factory.make();
/// ```
///
/// It also holds the user's group rewards ([`Registry::register_group_reward`]), selected by
/// `[grpo] reward_source = "group"` and `group_reward = "<name>"`.
#[derive(Default, Clone)]
pub struct Registry {
    entries: BTreeMap<String, Arc<Entry>>,
    group_rewards: BTreeMap<String, Arc<dyn GroupReward>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.entries.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with kaizen's built-in environments and `remote`.
    pub fn with_builtins() -> Self {
        let mut registry = Self::new();
        for (name, description, build) in crate::worlds::builtins() {
            registry.entries.insert(
                name.to_string(),
                Arc::new(Entry {
                    description: description.to_string(),
                    build,
                }),
            );
        }
        registry
    }

    /// Registers an environment under `name`, with a one-line description (shown by
    /// `kaizen envs list`) and a builder called with the environment's parameters.
    ///
    /// # Errors
    /// [`Error::DuplicateEnv`] when the name is taken.
    pub fn register<F>(
        &mut self,
        name: impl Into<String>,
        description: impl Into<String>,
        build: F,
    ) -> Result<()>
    where
        F: Fn(&toml::Table) -> Result<Arc<dyn EnvFactory>> + Send + Sync + 'static,
    {
        let name = name.into();
        if self.entries.contains_key(&name) {
            return Err(Error::DuplicateEnv(name));
        }
        let entry = Entry {
            description: description.into(),
            build: Arc::new(build),
        };
        self.entries.insert(name, Arc::new(entry));
        Ok(())
    }

    /// Builds the factory of environment `name` from its parameters.
    ///
    /// # Errors
    /// [`Error::UnknownEnv`] (listing the registered names) or the builder's error, e.g.
    /// [`Error::Params`] naming a bad field.
    pub fn build(&self, name: &str, params: &toml::Table) -> Result<Arc<dyn EnvFactory>> {
        let entry = self.entries.get(name).ok_or_else(|| Error::UnknownEnv {
            name: name.to_string(),
            known: self.names().collect::<Vec<_>>().join(", "),
        })?;
        (entry.build)(params)
    }

    /// Registers a reward over whole groups under `name` (see [`GroupReward`]).
    ///
    /// # Errors
    /// [`Error::DuplicateGroupReward`] when the name is taken.
    pub fn register_group_reward(
        &mut self,
        name: impl Into<String>,
        reward: Arc<dyn GroupReward>,
    ) -> Result<()> {
        let name = name.into();
        if self.group_rewards.contains_key(&name) {
            return Err(Error::DuplicateGroupReward(name));
        }
        self.group_rewards.insert(name, reward);
        Ok(())
    }

    /// The group reward registered as `name`.
    ///
    /// # Errors
    /// [`Error::UnknownGroupReward`], listing the registered names.
    pub fn group_reward(&self, name: &str) -> Result<Arc<dyn GroupReward>> {
        self.group_rewards
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownGroupReward {
                name: name.to_string(),
                known: if self.group_rewards.is_empty() {
                    "none (a program that calls kaizen_learner::train registers its own with \
                     Registry::register_group_reward)"
                        .into()
                } else {
                    self.group_rewards
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }

    /// Registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// `(name, description)` of every registered environment, sorted by name.
    pub fn list(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(name, entry)| (name.as_str(), entry.description.as_str()))
    }
}

/// Deserializes an environment's parameters into its config struct (use
/// `#[serde(deny_unknown_fields)]` on it so typos are caught).
///
/// # Errors
/// [`Error::Params`] naming the environment and the offending field.
pub fn parse_params<T: DeserializeOwned>(env: &str, params: &toml::Table) -> Result<T> {
    T::deserialize(params.clone()).map_err(|e| Error::Params {
        env: env.to_string(),
        message: e.to_string().trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_listed_with_descriptions() {
        let registry = Registry::with_builtins();
        let names: Vec<&str> = registry.names().collect();
        for name in [
            "household",
            "remote",
            "self_correct",
            "self_verify",
            "spc",
            "translate",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        assert!(
            registry
                .list()
                .all(|(_, d)| !d.is_empty() && !d.contains('\n'))
        );
    }

    #[test]
    fn unknown_name_lists_the_registered_ones() {
        let err = Registry::with_builtins()
            .build("self_corect", &toml::Table::new())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("`self_corect`") && err.contains("self_correct"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_registration_is_refused() {
        let mut registry = Registry::with_builtins();
        let err = registry
            .register("spc", "again", |_| Err(Error::Env("unused".into())))
            .unwrap_err();
        assert!(matches!(err, Error::DuplicateEnv(name) if name == "spc"));
    }

    #[test]
    fn misspelt_parameter_is_named() {
        let params: toml::Table = toml::from_str("atempts = 3").unwrap();
        let err = Registry::with_builtins()
            .build("self_correct", &params)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("self_correct") && err.contains("atempts"),
            "{err}"
        );
    }
}
