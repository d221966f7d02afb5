//! The state directory (`state_dir`): what a replica learns, kept across restarts and upgrades.
//! Opened once at start, written atomically, read forgivingly; optional.
//!
//! Without a writable directory everything works in memory and one warning says so. A file is
//! written to a temporary name in the same directory, synced, then renamed over the old one, so a
//! crash leaves the old file or the new one, never half of one. A file that can't be parsed is
//! moved aside (`NAME.corrupt`), never deleted, and the owner starts empty.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

/// How often learned state is written (and once more at shutdown).
pub const SAVE_EVERY: Duration = Duration::from_secs(60);

/// The directory learned state is kept in, or none: memory only.
#[derive(Debug, Clone, Default)]
pub struct StateDir {
    dir: Option<PathBuf>,
}

impl StateDir {
    /// Create `dir` if needed and prove it writable. When it isn't, say so once (here) and keep
    /// everything in memory.
    pub fn open(dir: &Path) -> StateDir {
        match std::fs::create_dir_all(dir).and_then(|_| probe(dir)) {
            Ok(()) => StateDir {
                dir: Some(dir.to_path_buf()),
            },
            Err(e) => {
                tracing::warn!(
                    "state_dir {} is not writable ({e}): learned noise, mismatch samples, the endpoint map and the autopilot journal live in memory only; set state_dir to a writable directory to keep them across restarts",
                    dir.display()
                );
                StateDir::memory()
            }
        }
    }

    /// No directory: state lives in memory only.
    pub fn memory() -> StateDir {
        StateDir { dir: None }
    }

    /// The directory, when state is kept.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Where `name` is kept, when state is kept (for a file appended to, like a journal).
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(name))
    }

    /// Replace `name` with `bytes` atomically: a temporary file in the same directory, synced,
    /// then renamed over it. Returns the written file's `Stamp`; does nothing (`None`) when state
    /// lives in memory.
    pub fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<Option<Stamp>> {
        let Some(dir) = &self.dir else { return Ok(None) };
        let tmp = dir.join(temp_name(name));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(bytes)?;
                f.sync_all()?;
                f.metadata()
            })
            .and_then(|meta| std::fs::rename(&tmp, dir.join(name)).map(|_| meta));
        let meta = match written {
            Ok(meta) => meta,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // The rename itself is durable once the directory is synced; not every file system can.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(Some(Stamp::of(&meta)))
    }

    /// The `Stamp` of `name` as it is now; `None` when it is missing or state lives in memory.
    pub fn stamp(&self, name: &str) -> Option<Stamp> {
        std::fs::metadata(self.path(name)?).ok().map(|m| Stamp::of(&m))
    }

    /// Read `name` and `parse` it. A missing file, or state in memory, is `None`. A file that
    /// can't be read is a warning and `None`; one that `parse` refuses is moved aside to
    /// `NAME.corrupt` (or `NAME.corrupt.N`), with a warning, and is `None`. `what` names the
    /// content in those warnings ("the endpoint map").
    pub fn read<T>(&self, name: &str, what: &str, parse: impl FnOnce(&[u8]) -> Result<T, String>) -> Option<T> {
        let path = self.path(name)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("{what} not loaded, starting empty: can't read {}: {e}", path.display());
                return None;
            }
        };
        let why = match parse(&bytes) {
            Ok(v) => return Some(v),
            Err(why) => why,
        };
        match set_aside(&path) {
            Ok(aside) => tracing::warn!(
                "{} is not {what} ({why}): moved aside to {}, starting empty",
                path.display(),
                aside.display()
            ),
            Err(e) => tracing::warn!(
                "{} is not {what} ({why}), and can't be moved aside ({e}): starting empty",
                path.display()
            ),
        }
        None
    }

    /// `read` for a JSON file.
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str, what: &str) -> Option<T> {
        self.read(name, what, |b| serde_json::from_slice(b).map_err(|e| e.to_string()))
    }
}

/// Which version of a file is on disk. Every `write` makes a new inode (a new file renamed over
/// the old one, which still holds its inode meanwhile), so a changed stamp means another writer
/// (the old process of a graceful upgrade, finishing) replaced the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            inode: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

/// A name no other writer of the same directory picks: in containers every process is pid 1, and
/// two replicas may share a volume, so the pid gets a random suffix.
fn temp_name(name: &str) -> String {
    format!(".{name}.{}-{:016x}.tmp", std::process::id(), rand::random::<u64>())
}

fn probe(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(temp_name("probe"));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Rename `path` to `path.corrupt`, or `.corrupt.1`, `.2`, ... when that is taken: an earlier
/// corrupt file is never replaced.
fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let base = format!("{}.corrupt", path.display());
    for n in 0..1000 {
        let aside = PathBuf::from(if n == 0 { base.clone() } else { format!("{base}.{n}") });
        if !aside.exists() {
            std::fs::rename(path, &aside)?;
            return Ok(aside);
        }
    }
    Err(std::io::Error::other("1000 corrupt copies already"))
}

/// Runs `save` every `every`, and once more at shutdown (a Pingora background service).
pub struct SaveService {
    pub every: Duration,
    pub save: Box<dyn Fn() + Send + Sync>,
}

#[async_trait]
impl BackgroundService for SaveService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    (self.save)();
                    return;
                }
                _ = tick.tick() => (self.save)(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temporary_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state"));
        let first = state.write("a.json", b"[1]").unwrap();
        assert_eq!(first, state.stamp("a.json"));
        let second = state.write("a.json", b"[1,2]").unwrap();
        assert!(second.is_some() && second != first, "a new file: {first:?} {second:?}");
        assert_eq!(second, state.stamp("a.json"));
        assert_eq!(state.read_json::<Vec<u8>>("a.json", "a list"), Some(vec![1, 2]));
        assert_eq!(names(&tmp.path().join("state")), ["a.json"]);
    }

    #[test]
    fn missing_is_empty_and_corrupt_is_moved_aside_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path());
        assert_eq!(state.read_json::<Vec<u8>>("a.json", "a list"), None);
        for text in ["{not json", "also not"] {
            std::fs::write(tmp.path().join("a.json"), text).unwrap();
            assert_eq!(state.read_json::<Vec<u8>>("a.json", "a list"), None);
        }
        assert_eq!(names(tmp.path()), ["a.json.corrupt", "a.json.corrupt.1"]);
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("a.json.corrupt")).unwrap(),
            "{not json"
        );
    }

    #[test]
    fn a_file_in_place_of_the_directory_means_memory_only() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("state");
        std::fs::write(&file, "x").unwrap();
        for dir in [file.clone(), file.join("below")] {
            let state = StateDir::open(&dir);
            assert_eq!(state.dir(), None);
            assert_eq!(state.write("a.json", b"[]").unwrap(), None);
            assert_eq!(state.read_json::<Vec<u8>>("a.json", "a list"), None);
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    }

    #[test]
    fn temporary_names_differ_within_one_process() {
        assert_ne!(temp_name("a.json"), temp_name("a.json"));
        assert!(temp_name("a.json").starts_with(".a.json."));
    }
}
