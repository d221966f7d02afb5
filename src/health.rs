//! Active health checks: every upstream is probed on its own interval, TCP connect or HTTP GET.
//!
//! An unhealthy service is treated like an open circuit (its requests fall back); an unhealthy
//! legacy upstream makes `/readyz` answer 503.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::time::Instant;

use crate::proxy::Live;
use crate::resilience::HealthConfig;

/// How often the scheduler looks for due probes; the finest useful `interval`.
const TICK: Duration = Duration::from_millis(50);

pub struct HealthService {
    pub live: Arc<ArcSwap<Live>>,
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = match reqwest::Client::builder().no_proxy().build() {
            Ok(c) => c,
            Err(e) => return tracing::error!("health checks are off: can't build a client: {e}"),
        };
        let mut next: HashMap<String, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            // The rules may have been reloaded: probe what is in force now, keyed by name.
            let live = self.live.load_full();
            let now = Instant::now();
            for (i, up) in live.rules.upstreams.iter().enumerate() {
                let due = next.entry(up.name.clone()).or_insert(now);
                if now < *due {
                    continue;
                }
                *due = now + up.health.interval;
                let (state, cfg, addr, client) = (live.states[i].clone(), up.health.clone(), up.addr, client.clone());
                tokio::spawn(async move {
                    let ok = probe(&client, addr, &cfg).await;
                    let was = state.healthy();
                    if state.probe_result(&cfg, ok) != was {
                        let now_up = state.healthy();
                        tracing::warn!(upstream = %state.name, healthy = now_up, "upstream health changed");
                    }
                });
            }
            next.retain(|name, _| live.rules.upstreams.iter().any(|u| &u.name == name));
        }
    }
}

async fn probe(client: &reqwest::Client, addr: SocketAddr, cfg: &HealthConfig) -> bool {
    match &cfg.path {
        None => matches!(
            tokio::time::timeout(cfg.timeout, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        ),
        Some(path) => client
            .get(format!("http://{addr}{path}"))
            .timeout(cfg.timeout)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success()),
    }
}
