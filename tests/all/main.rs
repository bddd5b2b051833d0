//! Hoist's integration tests: real components built from `plugins/` and
//! `tests/plugins/`, run through the library and through the real `hoist` binary.

mod builtins;
mod cli;
mod docker;
mod fixtures;
mod git;
mod hostile;
mod hostile_git;
mod hostile_output;
mod net;
mod pipeline;
mod prefect;
mod projects;
mod python;
mod registry;
mod sandbox;
mod storage;
mod stores;
mod support;
mod worker;
