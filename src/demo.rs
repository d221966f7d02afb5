//! `strangler demo`: the bundled shop plus the proxy, on the ports the rules file names.

use std::path::Path;

pub fn run(_config: &Path, _data_dir: &Path, _traffic: bool) -> anyhow::Result<()> {
    anyhow::bail!("demo is not built yet")
}
