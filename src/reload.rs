//! Hot reload of rules.yaml: its triggers (file watch, a poll for edits no event reports, SIGHUP,
//! `POST /api/reload`, the autopilot) share one path.
//!
//! A reload reads, validates and compiles the whole file off the request path, then swaps the
//! new `Live` in with one `ArcSwap::store`. A bad file changes nothing: the rules in force keep
//! serving and the errors are logged, counted and shown in `GET /api/config`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::Serialize;

use crate::config::{ConfigError, ConfigErrors};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::rules::{self, ListenTls, Loaded, RuleSet};
use crate::tls::CertStore;

/// Events closer together than this are one edit (editors write several times per save).
pub const COALESCE: Duration = Duration::from_millis(100);

/// How often the rules file is read back, for an edit no watch event reported: on a network
/// file system (NFS, a ReadWriteMany volume), another node's write makes no inotify event here.
/// A look reads the file; only bytes other than those in force, and than those last refused, compile.
pub const POLL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Start,
    Watch,
    Signal,
    Api,
    /// The autopilot edited the file.
    Autopilot,
    /// The file's bytes changed with no event seen (a network file system, say).
    Poll,
}

/// What a reload did.
#[derive(Debug)]
pub enum Outcome {
    Applied {
        generation: u64,
        routes: usize,
    },
    /// The file is byte-for-byte what is in force (a watch event that changed nothing).
    Unchanged {
        generation: u64,
    },
    Refused(ConfigErrors),
}

/// One error, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorView {
    pub file: String,
    pub line: u64,
    pub col: u64,
    pub route: Option<String>,
    pub message: String,
    /// The whole line as `check` prints it.
    pub text: String,
}

impl From<&ConfigError> for ErrorView {
    fn from(e: &ConfigError) -> Self {
        ErrorView {
            file: e.place.file.display().to_string(),
            line: e.place.line,
            col: e.place.col,
            route: e.route.clone(),
            message: e.message.clone(),
            text: e.to_string(),
        }
    }
}

/// The reload history the admin API reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub file: String,
    pub generation: u64,
    pub last_success_unix: f64,
    pub last_attempt_unix: f64,
    pub last_trigger: Trigger,
    pub last_result: &'static str,
    /// The errors of the last attempt; empty when it succeeded.
    pub errors: Vec<ErrorView>,
    #[serde(skip)]
    applied_text: String,
    /// The hash of the bytes last refused: a watch event or a poll that finds them again tries
    /// nothing and logs nothing (the refusal stands).
    #[serde(skip)]
    refused: Option<u64>,
}

pub struct Reloader {
    path: PathBuf,
    live: Arc<ArcSwap<Live>>,
    metrics: Arc<Metrics>,
    /// Also serializes reloads: two triggers at once compile one after the other.
    status: Mutex<Status>,
    /// The addresses bound at start; a change needs a restart.
    listen: String,
    admin: String,
    /// The client TLS certificate, when `listen_tls` is set; re-read on every reload.
    certs: Option<Arc<CertStore>>,
    /// Fixed at start like the addresses: a change needs a restart.
    max_connections: usize,
    listen_tls: Option<ListenTls>,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Reloader {
    /// `applied_text` is the file text the running rules were compiled from.
    pub fn new(
        path: &Path,
        applied_text: String,
        live: Arc<ArcSwap<Live>>,
        metrics: Arc<Metrics>,
        listen: String,
        admin: String,
    ) -> Reloader {
        let now = now_unix();
        let generation = live.load().generation;
        let (max_connections, listen_tls) = {
            let l = live.load();
            (
                l.rules.settings.limits.max_connections,
                l.rules.settings.listen_tls.clone(),
            )
        };
        metrics.config_loaded(true, generation, now);
        Reloader {
            path: path.to_path_buf(),
            live,
            metrics,
            status: Mutex::new(Status {
                file: path.display().to_string(),
                generation,
                last_success_unix: now,
                last_attempt_unix: now,
                last_trigger: Trigger::Start,
                last_result: "success",
                errors: Vec::new(),
                applied_text,
                refused: None,
            }),
            listen,
            admin,
            certs: None,
            max_connections,
            listen_tls,
        }
    }

    /// Re-read the `listen_tls` certificate and key on every reload too.
    pub fn with_certs(mut self, certs: Option<Arc<CertStore>>) -> Reloader {
        self.certs = certs;
        self
    }

    /// The directories whose changes trigger a reload: the rules file's and the certificate's.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        let parent = |p: &Path| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut dirs = vec![parent(&self.path)];
        for f in self.certs.iter().flat_map(|c| c.files()) {
            let d = parent(f);
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        dirs
    }

    /// Settings bound when the process started that this edit changes: (what, now, in force).
    fn fixed_at_start(&self, rules: &RuleSet) -> Vec<(&'static str, String, String)> {
        let mut changed = Vec::new();
        for (what, now, bound) in [
            ("listen", &rules.settings.listen, &self.listen),
            ("admin", &rules.settings.admin, &self.admin),
        ] {
            if let Some(now) = now.as_ref().filter(|now| *now != bound) {
                changed.push((what, now.clone(), format!("on {bound}")));
            }
        }
        let max = (rules.settings.limits.max_connections, self.max_connections);
        if max.0 != max.1 {
            changed.push(("limits.max_connections", max.0.to_string(), max.1.to_string()));
        }
        if rules.settings.listen_tls != self.listen_tls {
            let show = |t: &Option<ListenTls>| t.as_ref().map_or("off".to_string(), |t| format!("on {}", t.addr));
            changed.push(("listen_tls", show(&rules.settings.listen_tls), show(&self.listen_tls)));
        }
        changed
    }

    /// A replaced certificate or key file takes effect; a broken one is refused and the one in
    /// force keeps serving.
    fn reload_certs(&self) {
        let Some(certs) = &self.certs else { return };
        match certs.reload() {
            Ok(true) => tracing::info!("TLS certificate reloaded from {}", certs.files()[0].display()),
            Ok(false) => {}
            Err(e) => tracing::error!("TLS certificate not reloaded, the one in force keeps serving: {e}"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Read, validate, compile and swap. Blocking (file I/O and compile): call it off the request path.
    pub fn reload(&self, trigger: Trigger) -> Outcome {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        self.reload_certs();
        // A watch event or a poll: bytes in force, or refused already, change nothing. A person's
        // ask (SIGHUP, the API) and the autopilot always try.
        let mut seen = None;
        if matches!(trigger, Trigger::Watch | Trigger::Poll) {
            if let Ok(bytes) = std::fs::read(&self.path) {
                let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
                if bytes == st.applied_text.as_bytes() || st.refused == Some(hash) {
                    return Outcome::Unchanged {
                        generation: st.generation,
                    };
                }
                seen = Some(hash);
            }
        }
        let Loaded { rules, text, hash } = match rules::load(&self.path) {
            Ok(loaded) => loaded,
            // A watch event can land between an editor's delete and its write; the next event retries.
            Err(errors) => {
                st.refused = seen;
                return self.refuse(&mut st, trigger, errors);
            }
        };
        st.refused = None;
        for (what, now, bound) in self.fixed_at_start(&rules) {
            tracing::warn!(
                "{}: `{what}: {now}` takes effect only after a restart; still {bound}. The rest of the edit is applied",
                self.path.display()
            );
        }
        let routes = rules.routes.len();
        let old = self.live.load_full();
        let new = Live::replace(&old, rules, hash, &self.metrics);
        let generation = new.generation;
        self.live.store(Arc::new(new));

        let now = now_unix();
        st.generation = generation;
        st.last_success_unix = now;
        st.last_attempt_unix = now;
        st.last_trigger = trigger;
        st.last_result = "success";
        st.errors.clear();
        st.applied_text = text;
        self.metrics.config_loaded(true, generation, now);
        tracing::info!(
            generation,
            routes,
            ?trigger,
            "rules reloaded from {}",
            self.path.display()
        );
        Outcome::Applied { generation, routes }
    }

    fn refuse(&self, st: &mut Status, trigger: Trigger, errors: ConfigErrors) -> Outcome {
        for e in &errors.0 {
            tracing::error!(?trigger, "reload refused, the rules in force keep serving: {e}");
        }
        st.last_attempt_unix = now_unix();
        st.last_trigger = trigger;
        st.last_result = "failure";
        st.errors = errors.0.iter().map(ErrorView::from).collect();
        self.metrics.config_loaded(false, st.generation, st.last_success_unix);
        Outcome::Refused(errors)
    }
}

/// Catches SIGHUP from the moment it is made until the reload service listens for it. A SIGHUP's
/// default action ends the process, and the listeners are bound (and answer) before Pingora starts
/// the background services: a reload asked for just after start-up must not kill the proxy.
pub struct EarlyHangup {
    id: signal_hook::SigId,
    caught: Arc<std::sync::atomic::AtomicBool>,
}

impl EarlyHangup {
    pub fn catch() -> std::io::Result<EarlyHangup> {
        let caught = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let id = signal_hook::flag::register(signal_hook::consts::SIGHUP, caught.clone())?;
        Ok(EarlyHangup { id, caught })
    }

    /// Stops catching; whether a SIGHUP came meanwhile.
    fn release(self) -> bool {
        signal_hook::low_level::unregister(self.id);
        self.caught.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Watches the rules file's directory and SIGHUP, polls the file, and reloads on any of them.
pub struct ReloadService {
    pub reloader: Arc<Reloader>,
    /// Taken when the service starts listening for SIGHUP itself.
    pub early_hangup: std::sync::Mutex<Option<EarlyHangup>>,
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        // Watch the directories, not the files: editors and ConfigMaps replace a file (rename,
        // symlink swap), which would orphan a watch on the old inode.
        let dirs = self.reloader.watched_dirs();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| {
            for dir in &dirs {
                w.watch(dir, RecursiveMode::NonRecursive)?;
            }
            Ok(w)
        });
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(
                    "can't watch {} ({e}); reload with SIGHUP or POST /api/reload",
                    self.reloader.path().display()
                );
                None
            }
        };
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        // Listening now: a SIGHUP that came during start-up is served here, once.
        let early = self.early_hangup.lock().ok().and_then(|mut e| e.take());
        if early.is_some_and(EarlyHangup::release) {
            let reloader = self.reloader.clone();
            let _ = tokio::task::spawn_blocking(move || reloader.reload(Trigger::Signal)).await;
        }
        let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + POLL, POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let trigger = tokio::select! {
                _ = shutdown.changed() => return,
                _ = poll.tick() => Trigger::Poll,
                Some(()) = rx.recv() => {
                    // Coalesce the burst of events one save makes.
                    tokio::time::sleep(COALESCE).await;
                    while rx.try_recv().is_ok() {}
                    Trigger::Watch
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => Trigger::Signal,
            };
            let reloader = self.reloader.clone();
            let _ = tokio::task::spawn_blocking(move || reloader.reload(trigger)).await;
        }
    }
}
