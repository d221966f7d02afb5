//! Starting the proxy: load the rules, bind the listeners, assemble and run the Pingora server.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownSignalWatch};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::admin::{AdminListener, AdminService, AdminState};
use crate::config::ConfigErrors;
use crate::health::HealthService;
use crate::limits::{ConnectionCap, HeadDeadline};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::proxy::Strangler;
use crate::reload::{ReloadService, Reloader};
use crate::shadow::Shadower;
use crate::state::{SaveService, StateDir};
use crate::stats::{Stats, StatsService};
use crate::tls::CertStore;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9911";
/// Pingora's own default grace period is 300 s; in-flight requests rarely need more than a few.
pub const DEFAULT_GRACE_SECS: u64 = 5;
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 5;
pub const DEFAULT_UPGRADE_SOCK: &str = "/tmp/strangler_upgrade.sock";
/// Pingora puts a 64 KiB read buffer under every client connection, on top of the HTTP layer's
/// own header buffer: most of the ~100 KiB an idle connection costs. The HTTP layer reads into its
/// own buffer anyway, so none is used here (see BENCHMARKS.md for memory and CPU with each).
const L4_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: None,
};

/// What `strangler run` needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// Overrides `listen:` in the rules file.
    pub listen: Option<String>,
    /// Overrides `admin:` in the rules file.
    pub admin: Option<String>,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// After SIGTERM: how long in-flight requests may take before the runtime stops.
    pub grace_period_secs: u64,
    /// After the grace period: how long the runtime may take to stop.
    pub shutdown_timeout_secs: u64,
    /// Take the listening socket over from a running strangler (graceful binary upgrade).
    pub upgrade: bool,
    /// The Unix socket the listening sockets are handed over on.
    pub upgrade_sock: PathBuf,
    /// Admin token (STRANGLER_ADMIN_TOKEN); overrides `admin_token` in the rules.
    pub admin_token: Option<String>,
    /// One log line per request, target `access`.
    pub access_log: bool,
}

impl Options {
    pub fn new(config: impl Into<PathBuf>) -> Options {
        Options {
            config: config.into(),
            listen: None,
            admin: None,
            threads: 0,
            grace_period_secs: DEFAULT_GRACE_SECS,
            shutdown_timeout_secs: DEFAULT_SHUTDOWN_TIMEOUT_SECS,
            upgrade: false,
            upgrade_sock: PathBuf::from(DEFAULT_UPGRADE_SOCK),
            admin_token: None,
            access_log: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("refusing to serve the admin API on {addr} without a token: anyone who can reach it could reload the rules. Set STRANGLER_ADMIN_TOKEN (or admin_token in the rules), or bind the admin port to loopback")]
    Insecure { addr: String },
    #[error("can't listen on {addr} ({what}): {source}; choose another address for {what}")]
    Bind {
        addr: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("listen_tls: {0}")]
    Tls(String),
    /// `tracing:` or an `OTEL_*` variable that can't be used.
    #[error("{0}")]
    Tracing(String),
}

/// Descriptors kept aside for listeners, upstream pools' spare, files and the admin API.
const SPARE_FDS: u64 = 256;

/// Each client connection needs a descriptor, and so does its upstream connection. Raise the soft
/// open-file limit to the hard one first, as nginx's `worker_rlimit_nofile` does. If that is still
/// too low, fit the default `max_connections` to it (one info line), and warn only when a value
/// the user set can't be met. Returns the connection cap to use.
fn fit_fd_limit(max_connections: usize, set_by_user: bool) -> usize {
    let got = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(got) => got,
        Err(e) => {
            tracing::warn!("can't raise the open-file limit: {e}");
            return max_connections;
        }
    };
    fit_connections(max_connections, set_by_user, got)
}

fn fit_connections(max_connections: usize, set_by_user: bool, fd_limit: u64) -> usize {
    let want = max_connections as u64 * 2 + SPARE_FDS;
    if fd_limit >= want {
        return max_connections;
    }
    let fits = (fd_limit.saturating_sub(SPARE_FDS) / 2).max(1) as usize;
    if set_by_user {
        tracing::warn!(
            "open-file limit is {fd_limit}, below the {want} that limits.max_connections: {max_connections} needs; raise it (ulimit -n) or set max_connections to {fits} at most"
        );
        max_connections
    } else {
        tracing::info!(
            "open-file limit is {fd_limit}: serving up to {fits} connections at once (set limits.max_connections to choose)"
        );
        fits
    }
}

/// True when every address `addr` resolves to is a loopback address.
fn is_loopback(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .is_ok_and(|mut all| all.all(|a| a.ip().is_loopback()))
}

fn bind(addr: &str, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).map_err(|source| StartError::Bind {
        addr: addr.to_string(),
        what,
        source,
    })
}

/// A loaded, bound proxy that has not started serving yet.
pub struct Prepared {
    pub server: Server,
    pub listen: String,
    pub admin: String,
    pub routes: usize,
    /// Spans still queued are sent when the server has stopped.
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

/// Load the rules and bind both listeners, so every start-up mistake surfaces here.
pub fn prepare(opts: &Options) -> Result<Prepared, StartError> {
    // First: from here on a SIGHUP is a reload, never the end of the process.
    let early_hangup = match crate::reload::EarlyHangup::catch() {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!("can't catch SIGHUP during start-up ({e}); a SIGHUP before the proxy serves ends it");
            None
        }
    };
    let crate::rules::Loaded { rules, text, hash } = crate::rules::load(&opts.config)?;
    let listen = opts
        .listen
        .clone()
        .or_else(|| rules.settings.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.into());
    let admin = opts
        .admin
        .clone()
        .or_else(|| rules.settings.admin.clone())
        .unwrap_or_else(|| DEFAULT_ADMIN.into());

    let token = opts
        .admin_token
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| rules.settings.admin_token.clone());
    if token.is_none() && !is_loopback(&admin) {
        return Err(StartError::Insecure { addr: admin });
    }
    let admin_listener = if opts.upgrade {
        // The old process still holds both ports: the proxy socket arrives over the upgrade
        // socket, and the admin port is bound once the old process lets it go.
        AdminListener::Later(admin.clone())
    } else {
        // Pingora binds from an address string later and panics on failure; try it first for a clear error.
        drop(bind(&listen, "listen")?);
        AdminListener::Bound(bind(&admin, "admin")?)
    };

    let listen_tls = rules.settings.listen_tls.clone();
    let certs = match &listen_tls {
        Some(t) => {
            if !opts.upgrade {
                drop(bind(&t.addr, "listen_tls")?);
            }
            Some(Arc::new(CertStore::open(&t.cert, &t.key).map_err(StartError::Tls)?))
        }
        None => None,
    };
    let max_connections = fit_fd_limit(
        rules.settings.limits.max_connections,
        rules.settings.limits_set.max_connections,
    );
    let metrics = Arc::new(Metrics::new().with_refusals(crate::limits::reasons()));
    // Taken at start, like state_dir: a reload that changes `tracing:` (but `link`) takes
    // effect at the next start.
    let tracing = rules
        .tracing
        .clone()
        .with_env(|name| std::env::var(name).ok())
        .map_err(StartError::Tracing)?;
    let telemetry = crate::telemetry::Telemetry::start(
        tracing,
        crate::telemetry::Counters {
            exported: metrics.trace_exported.clone(),
            dropped: metrics.trace_dropped.clone(),
        },
    )
    .map_err(StartError::Tracing)?;
    let routes = rules.routes.len();
    let live = Arc::new(ArcSwap::from_pointee(Live::first(rules, hash, &metrics)));
    let live_for_health = live.clone();
    let live_for_stats = live.clone();
    let live_for_map = live.clone();
    let stats = Arc::new(Stats::default());
    // Opened once: every owner of learned state shares it, and one warning covers them all.
    let state = StateDir::open(&live.load().rules.discovery.state_dir);
    let map = {
        let d = &live.load().rules.discovery;
        Arc::new(crate::discovery::Map::open(
            &state,
            crate::discovery::Settings {
                max_endpoints: d.max_endpoints,
                fold_after: d.fold_after,
            },
        ))
    };
    let shadow_state = {
        let first = live.load();
        Arc::new(crate::shadow::saved::Store::open(
            state.clone(),
            &first.rules,
            &first.shadow_states,
        ))
    };
    let live_for_shadow_state = live.clone();
    let shadower = Arc::new(Shadower::default());
    let reloader = Arc::new(
        Reloader::new(
            &opts.config,
            text,
            live.clone(),
            metrics.clone(),
            listen.clone(),
            admin.clone(),
        )
        .with_certs(certs.clone()),
    );
    let autopilot = Arc::new(crate::autopilot::Autopilot::new(
        live.clone(),
        reloader.clone(),
        metrics.clone(),
        &state,
    ));

    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.threads
    };
    let conf = ServerConf {
        threads,
        // One runtime per thread: requests stay on the thread that accepted them (see BENCHMARKS.md).
        work_stealing: false,
        grace_period_seconds: Some(opts.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(opts.shutdown_timeout_secs),
        upgrade_sock: opts.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut app = pingora_proxy::http_proxy(
        &server.configuration,
        Strangler {
            live: live.clone(),
            metrics: metrics.clone(),
            shadower: shadower.clone(),
            access_log: opts.access_log,
            telemetry: telemetry.clone(),
        },
    );
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    let mut h1_options = options.clone();
    h1_options.h2c = false;
    app.server_options = Some(options);
    // Outside in: the connection cap, the request-head deadline, then Pingora's proxy.
    let guarded = ConnectionCap {
        inner: Arc::new(HeadDeadline {
            inner: Arc::new(app),
            live: live.clone(),
            metrics: metrics.clone(),
            h1_options: Some(h1_options),
        }),
        open: Arc::new(tokio::sync::Semaphore::new(max_connections)),
        metrics: metrics.clone(),
        live: live.clone(),
        h2c: true,
    };
    let mut proxy = Service::new("strangler proxy".to_string(), guarded);
    proxy.add_listener(ListenerConfig::tcp(&listen).l4_buffer(L4_BUFFERS));
    if let (Some(t), Some(certs)) = (&listen_tls, &certs) {
        let mut tls = TlsSettings::intermediate(&t.cert.display().to_string(), &t.key.display().to_string())
            .map_err(|e| StartError::Tls(e.to_string()))?;
        tls.set_cert_resolver(certs.clone());
        tls.enable_h2();
        proxy.add_listener(ListenerConfig::tcp(&t.addr).tls(tls).l4_buffer(L4_BUFFERS));
    }
    server.add_service(proxy);

    let admin_service = AdminService {
        listener: Mutex::new(Some(admin_listener)),
        state: AdminState {
            live,
            metrics: metrics.clone(),
            map: map.clone(),
            autopilot: autopilot.clone(),
            reloader: reloader.clone(),
            shadower,
            stats: stats.clone(),
            token: token.clone(),
        },
    };
    server.add_service(background_service(
        "strangler stats",
        StatsService {
            live: live_for_stats,
            stats,
        },
    ));
    server.add_service(background_service("strangler admin", admin_service));
    server.add_service(background_service(
        "strangler autopilot",
        crate::autopilot::AutopilotService { autopilot },
    ));
    server.add_service(background_service(
        "strangler endpoint map",
        crate::discovery::MapService {
            map: map.clone(),
            live: live_for_map,
            metrics: metrics.clone(),
            previous: std::sync::Mutex::new(None),
        },
    ));
    server.add_service(background_service(
        "strangler shadow state",
        SaveService {
            every: crate::state::SAVE_EVERY,
            save: Box::new(move || {
                let live = live_for_shadow_state.load();
                shadow_state.save(&live.rules, &live.shadow_states);
            }),
        },
    ));
    server.add_service(background_service(
        "strangler reload",
        ReloadService {
            reloader,
            early_hangup: Mutex::new(early_hangup),
        },
    ));
    server.add_service(background_service(
        "strangler dns",
        crate::addresses::DnsService {
            live: live_for_health.clone(),
            metrics: metrics.clone(),
        },
    ));
    server.add_service(background_service(
        "strangler health",
        HealthService { live: live_for_health },
    ));

    Ok(Prepared {
        server,
        listen,
        admin,
        routes,
        telemetry,
    })
}

impl Prepared {
    /// Serve until the shutdown signal (SIGTERM/SIGINT by default) and return.
    pub fn run(self, shutdown: Option<Box<dyn ShutdownSignalWatch>>) {
        tracing::info!(listen = %self.listen, admin = %self.admin, routes = self.routes, "strangler serving");
        let args = match shutdown {
            Some(shutdown_signal) => RunArgs { shutdown_signal },
            None => RunArgs::default(),
        };
        self.server.run(args);
        if let Some(t) = &self.telemetry {
            t.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_open_file_limit() {
        // (max_connections, set by the user, open-file limit) -> the cap used
        let cases = [
            (10_000, false, 1_048_576, 10_000),
            (10_000, false, 1_024, 384),
            (10_000, true, 1_024, 10_000),
            (100, false, 1_024, 100),
            (10_000, false, 100, 1),
        ];
        for (max, set, limit, want) in cases {
            assert_eq!(fit_connections(max, set, limit), want, "{max} {set} {limit}");
        }
    }
}
