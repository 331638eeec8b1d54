//! One module per subcommand.

pub mod attach;
pub mod ci;
pub mod cut;
pub mod daemon;
pub mod demo;
pub mod doctor;
pub mod export;
pub mod gdb;
pub mod gdbserver;
pub mod history;
pub mod info;
pub mod last_branch;
pub mod run;
pub mod via_daemon;
