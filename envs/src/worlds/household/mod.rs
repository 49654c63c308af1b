//! The `household` world: scene generation ([`scene`]), rules ([`actions`]), the scripted
//! expert, and the environment ([`world`]).

pub mod actions;
mod expert;
pub mod scene;
pub mod world;

pub use scene::TaskType;
pub use world::{AGENT, HouseholdConfig, HouseholdFactory};
