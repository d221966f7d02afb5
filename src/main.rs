//! The `strangler` command line: run | check | explain | endpoints | suggest | demo.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use strangler::server::{self, Options};

mod demo;

/// mimalloc: fewer cycles per allocation than the system allocator on the request path
/// (see BENCHMARKS.md, "Speed"). Built with `--features system-alloc`, the system allocator
/// instead, which heap profilers (heaptrack, valgrind) can follow.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "strangler",
    version,
    about = "A strangler-fig migration proxy: move routes legacy -> shadow -> canary -> migrated by editing rules.yaml"
)]
struct Cli {
    /// Log format: text for a terminal, json for log pipelines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short, default_value = "rules.yaml")]
        config: PathBuf,
        /// Proxy listener; overrides `listen:` in the rules file.
        #[arg(long)]
        listen: Option<String>,
        /// Admin and metrics listener; overrides `admin:` in the rules file.
        #[arg(long)]
        admin: Option<String>,
        /// Worker threads (0 = one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// After SIGTERM, seconds in-flight requests get to finish (new connections are refused).
        #[arg(long, default_value_t = server::DEFAULT_GRACE_SECS)]
        grace_period: u64,
        /// After the grace period, seconds the runtime gets to stop.
        #[arg(long, default_value_t = server::DEFAULT_SHUTDOWN_TIMEOUT_SECS)]
        shutdown_timeout: u64,
        /// Take the listening socket over from the running strangler: start this, then send the old one SIGQUIT.
        #[arg(long)]
        upgrade: bool,
        /// Unix socket the listening socket is handed over on (both processes must agree).
        #[arg(long, default_value = server::DEFAULT_UPGRADE_SOCK)]
        upgrade_sock: PathBuf,
        /// Bearer token for admin POSTs (needed when the admin port is not loopback).
        #[arg(long, env = "STRANGLER_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Write one access log line per request (JSON with --log-format json).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        access_log: bool,
    },
    /// Validate a rules file; print every mistake with file:line:col.
    Check {
        #[arg(default_value = "rules.yaml")]
        file: PathBuf,
    },
    /// Show where a request would go, and why.
    Explain {
        #[arg(long, short, default_value = "rules.yaml")]
        config: PathBuf,
        /// HTTP method, e.g. GET.
        method: String,
        /// Request path, with an optional query string.
        path: String,
        /// A request header, 'name: value'; repeat for more.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// List the endpoints the running proxy has seen, busiest first, with their migration state.
    Endpoints {
        /// The running proxy's admin address.
        #[arg(long, default_value = server::DEFAULT_ADMIN)]
        admin: String,
        /// Only endpoints in this state: legacy, shadow, canary, migrated, or unseen (documented in
        /// discovery.openapi, never called).
        #[arg(long)]
        state: Option<String>,
        /// Only endpoints of this capability.
        #[arg(long)]
        capability: Option<String>,
    },
    /// Print the rules.yaml routes that put a capability in shadow on a service.
    Suggest {
        /// The capability to move, as `strangler endpoints` shows it (e.g. payments).
        capability: String,
        /// The upstream that will serve it (a name under `upstreams:`).
        #[arg(long)]
        service: String,
        /// The running proxy's admin address.
        #[arg(long, default_value = server::DEFAULT_ADMIN)]
        admin: String,
        /// The rules file the routes are meant for.
        #[arg(long, short, default_value = "rules.yaml")]
        config: PathBuf,
    },
    /// The fleet's autopilot: decide every rollout from Prometheus's sums over all replicas, and
    /// edit the rules file they all read (needs `autopilot: { controller: external }`).
    Autopilot {
        #[arg(long, short, default_value = "rules.yaml")]
        config: PathBuf,
        /// The Prometheus server that scrapes every replica, e.g. http://prometheus:9090.
        #[arg(long)]
        prometheus: String,
        /// Decide once and exit (for cron jobs and tests).
        #[arg(long)]
        once: bool,
    },
    /// Start the bundled shop (monolith + new services) and the proxy in front of it.
    Demo {
        #[arg(long, short, default_value = "rules.yaml")]
        config: PathBuf,
        /// Where the demo's SQLite databases live.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Also send a steady, realistic mix of requests through the proxy.
        #[arg(long)]
        traffic: bool,
    },
    /// Print the JSON Schema of rules.yaml (the repository keeps it as rules.schema.json).
    Schema,
}

/// `strangler autopilot`: the external controller's loop.
fn run_controller(config: PathBuf, prometheus: String, once: bool) -> anyhow::Result<ExitCode> {
    use strangler::autopilot::{prometheus_reading, Autopilot};
    let metrics = std::sync::Arc::new(strangler::metrics::Metrics::new());
    let autopilot = Autopilot::external(config.clone(), metrics).map_err(|e| anyhow::anyhow!("{e}"))?;
    let live = autopilot.rules();
    if !live.rules.autopilot.external {
        anyhow::bail!(
            "{}: set `autopilot: {{ controller: external }}` first, so the replicas stop deciding on their own",
            config.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = reqwest::Client::new();
    tracing::info!("autopilot: deciding for {} from {prometheus}", config.display());
    runtime.block_on(async {
        loop {
            let live = autopilot.rules();
            let mut readings = std::collections::HashMap::new();
            for r in live.rules.routes.iter().filter(|r| r.rollout.is_some()) {
                match prometheus_reading(&client, &prometheus, &r.name).await {
                    Ok(reading) => {
                        readings.insert(r.name.clone(), reading);
                    }
                    Err(e) => tracing::warn!(route = %r.name, "autopilot: no figures: {e}"),
                }
            }
            autopilot.tick_with(&live, readings);
            if once {
                println!("{}", serde_json::to_string_pretty(&autopilot.view())?);
                return Ok(ExitCode::SUCCESS);
            }
            tokio::time::sleep(live.rules.autopilot.interval).await;
        }
    })
}

/// `GET /api/endpoints` from a running proxy.
fn fetch_endpoints(admin: &str, query: &[(&str, String)]) -> anyhow::Result<serde_json::Value> {
    let url = reqwest::Url::parse_with_params(&format!("http://{admin}/api/endpoints"), query)
        .with_context(|| format!("bad admin address {admin}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let resp = reqwest::get(url.clone()).await.with_context(|| {
            format!("can't reach the proxy's admin API at {admin}; is `strangler run` up? (--admin ADDR)")
        })?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.with_context(|| format!("{url}: not JSON"))?;
        anyhow::ensure!(status.is_success(), "{url}: {status}: {body}");
        Ok(body)
    })
}

/// The endpoint map as a table, busiest first.
fn endpoints_table(map: &serde_json::Value) -> String {
    use std::fmt::Write;
    let rows: Vec<&serde_json::Value> = map["endpoints"].as_array().into_iter().flatten().collect();
    let mut out = String::new();
    let width = rows
        .iter()
        .map(|e| e["template"].as_str().unwrap_or("").len())
        .max()
        .unwrap_or(8)
        .max(8);
    let _ = writeln!(
        out,
        "{:<7} {:<width$} {:<14} {:<9} {:>9} {:>7} {:>6}  ROUTE",
        "METHOD", "TEMPLATE", "CAPABILITY", "STATE", "REQUESTS", "RATE/S", "NEW%"
    );
    for e in rows {
        let _ = writeln!(
            out,
            "{:<7} {:<width$} {:<14} {:<9} {:>9} {:>7.2} {:>5.0}%  {}",
            e["method"].as_str().unwrap_or(""),
            e["template"].as_str().unwrap_or(""),
            e["capability"].as_str().unwrap_or(""),
            e["state"].as_str().unwrap_or(""),
            e["requests"].as_u64().unwrap_or(0),
            e["rate_per_s"].as_f64().unwrap_or(0.0),
            e["new_share"].as_f64().unwrap_or(0.0) * 100.0,
            e["route"].as_str().unwrap_or("-"),
        );
    }
    let p = &map["progress"];
    let _ = writeln!(
        out,
        "progress: {:.1}% of the last hour's requests on new services; {:.1}% of endpoints migrated ({:.1}% weighted by requests)",
        p["by_requests"].as_f64().unwrap_or(0.0) * 100.0,
        p["by_endpoints"].as_f64().unwrap_or(0.0) * 100.0,
        p["by_endpoints_weighted"].as_f64().unwrap_or(0.0) * 100.0,
    );
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's terminal shows its banner and warnings; RUST_LOG still overrides.
    // Pingora's connection pool reports, at error level, a reuse that lost a race with the
    // connection's idle watcher on another thread; the request just gets a new connection
    // (BENCHMARKS.md, issue 8). Not an error anyone can act on: off by default.
    let default_filter = if matches!(cli.command, Command::Demo { .. }) {
        "warn,pingora_core::connectors=off"
    } else {
        "info,pingora_core::connectors=off"
    };
    // Held to the end: dropping it writes out the last lines.
    let _log = init_logging(cli.log_format, default_filter);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Run {
            config,
            listen,
            admin,
            threads,
            grace_period,
            shutdown_timeout,
            upgrade,
            upgrade_sock,
            admin_token,
            access_log,
        } => {
            let opts = Options {
                listen,
                admin,
                threads,
                grace_period_secs: grace_period,
                shutdown_timeout_secs: shutdown_timeout,
                upgrade,
                upgrade_sock,
                admin_token,
                access_log,
                ..Options::new(config)
            };
            let prepared = server::prepare(&opts)?;
            prepared.run(None);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { file } => match strangler::rules::load(&file) {
            Ok(strangler::rules::Loaded { rules, .. }) => {
                // Tracing as `run` would start it here: the file with this shell's OTEL_* over it.
                let tracing = match rules.tracing.clone().with_env(|name| std::env::var(name).ok()) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("{e}");
                        return Ok(ExitCode::FAILURE);
                    }
                };
                let [l, s, c, m] = rules.mode_counts();
                println!(
                    "ok: {} routes ({l} legacy, {s} shadow, {c} canary, {m} migrated)",
                    rules.routes.len()
                );
                if let Some(endpoint) = &tracing.endpoint {
                    println!(
                        "tracing: {} to {endpoint}, sampler {}, service {}",
                        tracing.protocol, tracing.sampler, tracing.service_name
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                eprintln!(
                    "{} error{} in {}",
                    errors.0.len(),
                    if errors.0.len() == 1 { "" } else { "s" },
                    file.display()
                );
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Explain {
            config,
            method,
            path,
            headers,
        } => {
            let rules = strangler::rules::load(&config)?.rules;
            let text = strangler::explain::explain(&rules, &method, &path, &headers).map_err(anyhow::Error::msg)?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Endpoints {
            admin,
            state,
            capability,
        } => {
            let mut query = Vec::new();
            query.extend(state.map(|s| ("state", s)));
            query.extend(capability.map(|c| ("capability", c)));
            let map = fetch_endpoints(&admin, &query)?;
            print!("{}", endpoints_table(&map));
            Ok(ExitCode::SUCCESS)
        }
        Command::Suggest {
            capability,
            service,
            admin,
            config,
        } => {
            let rules = strangler::rules::load(&config)?.rules;
            if rules.upstream_id(&service).is_none() {
                let known: Vec<&str> = rules.upstreams.iter().map(|u| u.name.as_str()).collect();
                anyhow::bail!(
                    "{}: unknown upstream \"{service}\" (known: {})",
                    config.display(),
                    known.join(", ")
                );
            }
            let map = fetch_endpoints(&admin, &[])?;
            let seen: Vec<strangler::suggest::Seen> = map["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| strangler::suggest::Seen {
                    method: e["method"].as_str().unwrap_or_default().to_string(),
                    template: e["template"].as_str().unwrap_or_default().to_string(),
                    capability: e["capability"].as_str().unwrap_or_default().to_string(),
                    state: e["state"].as_str().unwrap_or_default().to_string(),
                })
                .collect();
            if !seen.iter().any(|e| e.capability == capability) {
                let mut known: Vec<&str> = seen.iter().map(|e| e.capability.as_str()).collect();
                known.sort();
                known.dedup();
                anyhow::bail!(
                    "no endpoint of capability \"{capability}\" seen yet (seen: {})",
                    known.join(", ")
                );
            }
            let s = strangler::suggest::suggest(&seen, &rules, &capability, &service);
            for edit in &s.edits {
                println!("# {edit}");
            }
            if s.moving > 0 {
                println!(
                    "# {} endpoint(s) of {capability} already move (shadow, canary or migrated): left as they are",
                    s.moving
                );
            }
            if s.routes > 0 {
                println!(
                    "# Paste under `routes:` in {}, then run `strangler check {}`.",
                    config.display(),
                    config.display()
                );
                print!("{}", s.yaml);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Autopilot {
            config,
            prometheus,
            once,
        } => run_controller(config, prometheus, once),
        Command::Demo {
            config,
            data_dir,
            traffic,
        } => {
            demo::run(&config, &data_dir, traffic).context("demo failed")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            println!("{}", strangler::config::schema());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Log lines (the access log is one per request) are formatted on the thread that logs them and
/// written to stderr by a thread of their own, in batches: one `write` per batch, not per line
/// (see BENCHMARKS.md). Nothing is dropped: past 128,000 lines waiting, logging waits.
fn init_logging(format: LogFormat, default_filter: &str) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("strangler-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a terminal, never into a file or a log pipeline.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.fmt_fields(PlainFields).init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// Text-format fields as `tracing-subscriber`'s default writes them (`name=value`, the message
/// bare, `log.*` fields left out), without its styling: with colours off, the default still
/// formatted every field name and `=` through `nu_ansi_term`. Under callgrind the access line
/// went from 18,700 to 13,000 instructions a request (`bench/instructions.sh`'s setup).
struct PlainFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for PlainFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'w> {
    writer: tracing_subscriber::fmt::format::Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl tracing::field::Visit for PlainVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let space = if std::mem::take(&mut self.first) { "" } else { " " };
        self.result = match name {
            "message" => write!(self.writer, "{space}{value:?}"),
            name => write!(
                self.writer,
                "{space}{}={value:?}",
                name.strip_prefix("r#").unwrap_or(name)
            ),
        };
    }
}
