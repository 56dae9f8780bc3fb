//! `cargo xtask lab`: the NAT lab (network namespaces, veth pairs, nftables NAT routers).

use std::path::Path;

/// Entry point of `cargo xtask lab [args]`.
pub(crate) fn run(_root: &Path, _args: &[String]) -> Result<(), String> {
    Err("the NAT lab is not built yet (issue 3: NAT traversal)".into())
}
