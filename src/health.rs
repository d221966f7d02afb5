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
use http::HeaderValue;
use pingora_core::connectors::TransportConnector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::time::Instant;

use crate::live::Live;
use crate::resilience::HealthConfig;

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
        let mut next: HashMap<String, Instant> = HashMap::new();
        let mut wake = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(wake) => {}
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
                let (state, cfg, connector) = (live.states[i].clone(), up.health.clone(), connector.clone());
                let (addr, peer, host) = (up.addr, up.peer.clone(), up.host.clone());
                tokio::spawn(async move {
                    let ok = probe(&connector, addr, &peer, host, &cfg).await;
                    let was = state.healthy();
                    if state.probe_result(&cfg, ok) != was {
                        let now_up = state.healthy();
                        tracing::warn!(upstream = %state.name, healthy = now_up, "upstream health changed");
                    }
                });
            }
            next.retain(|name, _| live.rules.upstreams.iter().any(|u| &u.name == name));
            wake = next.values().copied().fold(now + MAX_SLEEP, Instant::min);
        }
    }
}

async fn probe(
    connector: &TransportConnector,
    addr: SocketAddr,
    peer: &crate::rules::UpstreamPeer,
    host: Option<HeaderValue>,
    cfg: &HealthConfig,
) -> bool {
    let Some(path) = &cfg.path else {
        return matches!(
            tokio::time::timeout(cfg.timeout, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        );
    };
    let host = host.unwrap_or_else(|| {
        let name = if peer.sni.is_empty() {
            addr.to_string()
        } else {
            peer.sni.clone()
        };
        HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("localhost"))
    });
    let mut head = crate::client::HeadBuilder::new(&http::Method::GET, path.as_bytes());
    head.field(&http::header::HOST, &host);
    let req = head.finish(0);
    crate::client::send(connector, peer, &req, &[], 64 * 1024, &[], cfg.timeout)
        .await
        .is_ok_and(|(answer, _)| (200..300).contains(&answer.status))
}
