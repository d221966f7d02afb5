//! Active health checks: every address of every upstream is probed on its upstream's interval,
//! TCP connect or HTTP GET.
//!
//! An unhealthy service is treated like an open circuit (its requests fall back); an unhealthy
//! legacy upstream makes `/readyz` answer 503.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::HeaderValue;
use pingora_core::connectors::TransportConnector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::time::Instant;

use crate::live::Live;
use crate::resilience::HealthConfig;
use crate::upstream::Target;

/// The longest the scheduler sleeps, so a reload's new upstreams are probed within a second.
/// Otherwise it sleeps until the next probe is due: a proxy with probes every 2 s wakes about
/// once a second, not 20 times (it shares its CPUs with the request path).
const MAX_SLEEP: Duration = Duration::from_secs(1);

pub struct HealthService {
    pub live: Arc<ArcSwap<Live>>,
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Pingora's connector, so an https:// upstream is probed over TLS with its own CA and SNI.
        let connector = Arc::new(TransportConnector::new(None));
        // Keyed by upstream name and address: each address of a host name is probed on its own.
        let mut next: HashMap<(String, SocketAddr), Instant> = HashMap::new();
        let mut wake = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(wake) => {}
            }
            // The rules may have been reloaded, and names resolved anew: probe what is in force now.
            let live = self.live.load_full();
            let now = Instant::now();
            let mut seen = std::collections::HashSet::new();
            for (i, up) in live.rules.upstreams.iter().enumerate() {
                let state = &live.states[i];
                for target in state.targets().iter() {
                    let key = (up.name.clone(), target.addr);
                    seen.insert(key.clone());
                    let due = next.entry(key).or_insert(now);
                    if now < *due {
                        continue;
                    }
                    *due = now + up.health.interval;
                    let (target, cfg, connector) = (target.clone(), up.health.clone(), connector.clone());
                    let (name, host) = (state.name.clone(), up.host.clone());
                    tokio::spawn(async move {
                        let ok = probe(&connector, &target, host.as_ref(), &cfg).await;
                        let was = target.healthy();
                        if target.probe_result(&cfg, ok) != was {
                            let now_up = target.healthy();
                            tracing::warn!(upstream = %name, address = %target.addr, healthy = now_up, "upstream health changed");
                        }
                    });
                }
            }
            next.retain(|key, _| seen.contains(key));
            wake = next.values().copied().fold(now + MAX_SLEEP, Instant::min);
        }
    }
}

async fn probe(
    connector: &TransportConnector,
    target: &Target,
    host: Option<&HeaderValue>,
    cfg: &HealthConfig,
) -> bool {
    let Some(path) = &cfg.path else {
        return matches!(
            tokio::time::timeout(cfg.timeout, tokio::net::TcpStream::connect(target.addr)).await,
            Ok(Ok(_))
        );
    };
    let host = target.host(host);
    let mut head = crate::client::HeadBuilder::new(&http::Method::GET, path.as_bytes());
    head.field(&http::header::HOST, &host);
    let req = head.finish(0);
    crate::client::send(connector, &target.peer(), &req, &[], 64 * 1024, &[], cfg.timeout)
        .await
        .is_ok_and(|(answer, _)| (200..300).contains(&answer.status))
}
