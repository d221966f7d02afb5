//! Command-line pieces the three server binaries share: fault flags, logging, Ctrl-C.

use std::time::Duration;

use crate::faults::{Drift, FaultSettings};

/// `--error-rate F --latency-ms N --refuse --drift FIELD=JSONVALUE`, also from `FAULT_*` env.
#[derive(Debug, Clone, clap::Args)]
pub struct FaultArgs {
    /// Fraction of requests (0.0..=1.0) answered 503 injected_fault.
    #[arg(long, env = "FAULT_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Delay added before handling each request.
    #[arg(long, env = "FAULT_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Start refusing connections (clear it with an in-process handle only).
    #[arg(long, env = "FAULT_REFUSE")]
    pub refuse: bool,
    /// Overwrite a field of every JSON response, e.g. `available=999`.
    #[arg(long, env = "FAULT_DRIFT")]
    pub drift: Option<Drift>,
}

impl FaultArgs {
    pub fn settings(&self) -> anyhow::Result<FaultSettings> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.error_rate),
            "--error-rate {}: must be between 0.0 and 1.0",
            self.error_rate
        );
        Ok(FaultSettings {
            error_rate: self.error_rate,
            latency: Duration::from_millis(self.latency_ms),
            refuse: self.refuse,
            drift: self.drift.clone(),
        })
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

/// Resolves on Ctrl-C (or never, if the signal handler can't be installed).
pub async fn ctrl_c() {
    if let Err(err) = tokio::signal::ctrl_c().await {
        tracing::error!(%err, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
    tracing::info!("Ctrl-C: shutting down");
}
