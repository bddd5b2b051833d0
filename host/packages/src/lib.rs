//! Hoist's package manager, on the registry client (`hoist-registry`): plugins
//! installed from a registry (`$HOIST_HOME/plugins/NS/NAME.wasm` beside `NAME.json`,
//! the layout `hoist_policy::package` names), a project's `hoist.lock`, the keys the
//! user trusts, and the operations over them: publish, install (a requirement or the
//! lock's pins), `ensure` (what a project's steps `require`, before a run: the CLI's
//! `build`/`push`/`pull`/`deploy` and the worker's pull steps), update, search, info,
//! yank, ls, rm. Each prints its progress and the capability review on stderr, as the
//! `hoist plugin` commands show them.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod ensure;
pub mod install;
pub mod lock;
pub mod signing;
pub mod update;

pub use ensure::ensure;
pub use install::{How, Installed};
pub use lock::path_for as lock_for;
