//! One module per subcommand.

pub(crate) mod agent;
pub(crate) mod config_check;
pub(crate) mod exec;
pub(crate) mod plan;
pub(crate) mod register;
pub(crate) mod run;
