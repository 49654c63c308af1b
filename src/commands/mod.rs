//! One module per subcommand.

pub mod bench;
pub mod envs;
pub mod eval;
pub mod export;
pub mod generate;
pub mod launch;
pub mod report;
pub mod runs;
pub mod serve;
pub mod train;
