//! One module per subcommand.

pub mod envs;
pub mod generate;
pub mod report;
pub mod runs;
