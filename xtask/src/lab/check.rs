//! `cargo xtask lab check`: proves each router's behaviour with real traffic.

use std::path::Path;

use super::Options;

/// Entry point of `cargo xtask lab check`.
pub(crate) fn run(_root: &Path, _opts: &Options) -> Result<(), String> {
    Err("not yet".into())
}
