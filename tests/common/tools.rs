//! External tools some tests drive (Chromium, Prometheus). `./dev test` installs them; a run
//! without them fails under CI and is skipped, loudly, elsewhere.

use std::path::PathBuf;
use std::process::Child;

/// A child process killed on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The tool's path, or `None` (after saying so) when it is missing outside CI.
pub fn require(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed; `./dev test` installs it"
        );
        eprintln!("SKIPPED: {name} is not installed here; run `./dev test` to install it");
    }
    found
}

/// `require` for a daemon Debian installs in an sbin directory (haproxy in /usr/sbin), which a
/// non-root user's PATH often lacks: those directories are looked in first.
pub fn require_daemon(name: &str) -> Option<PathBuf> {
    ["/usr/local/sbin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|p| p.is_file())
        .or_else(|| require(name))
}
