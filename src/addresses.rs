//! Keeping upstream addresses current: every host name is resolved again when its
//! `dns_refresh` is due, and its `UpstreamState` takes the new answer.
//!
//! Every address of the answer becomes a `Target` with its own circuit and health; an address
//! that stays in the answer keeps them. A failed or empty lookup keeps the last good addresses
//! and is counted (`strangler_dns_lookups_total{result="failed"}`), and logged once until a
//! lookup of that name works again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use hickory_resolver::TokioResolver;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::time::Instant;

use crate::dns::{lookup, resolver};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::rules::Address;

/// How often the service looks for names that are due.
const TICK: Duration = Duration::from_millis(100);

/// Resolves every upstream host name again when its `dns_refresh` is due.
pub struct DnsService {
    pub live: Arc<ArcSwap<Live>>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for DnsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut resolvers: HashMap<Vec<SocketAddr>, Arc<TokioResolver>> = HashMap::new();
        let mut next: HashMap<String, Instant> = HashMap::new();
        // Whether the last lookup of each name failed, so a failure is logged once, not every refresh.
        let failing: Arc<std::sync::Mutex<HashMap<String, bool>>> = Default::default();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let live = self.live.load_full();
            let servers = live.rules.dns_servers.clone();
            let resolver = match resolvers.get(&servers) {
                Some(r) => r.clone(),
                None => match resolver(&servers) {
                    Ok(r) => resolvers.entry(servers).or_insert(Arc::new(r)).clone(),
                    Err(e) => {
                        tracing::warn!("dns: {e}; upstream addresses stay as they are");
                        continue;
                    }
                },
            };
            let now = Instant::now();
            for (i, up) in live.rules.upstreams.iter().enumerate() {
                let Address::Name { host, port, refresh } = &up.address else {
                    continue;
                };
                let due = next.entry(up.name.clone()).or_insert(now + *refresh);
                if now < *due {
                    continue;
                }
                *due = now + *refresh;
                let (state, template) = (live.states[i].clone(), up.peer.clone());
                let (resolver, metrics, failing) = (resolver.clone(), self.metrics.clone(), failing.clone());
                let (host, port) = (host.clone(), *port);
                tokio::spawn(async move {
                    let result = lookup(&resolver, &host, port).await;
                    metrics.dns_lookup(&state.name, result.is_ok());
                    let was_failing = failing
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(state.name.clone(), result.is_err())
                        .unwrap_or(false);
                    match result {
                        Ok(addrs) => {
                            if state.set_addresses(&addrs, &template) {
                                tracing::info!(upstream = %state.name, host = %host, addresses = ?addrs, "dns: upstream addresses changed");
                            }
                        }
                        Err(e) if !was_failing => {
                            let kept = state.targets().len();
                            tracing::warn!(upstream = %state.name, host = %host, "dns: lookup failed: {e}; keeping the last {kept} addresses");
                        }
                        Err(_) => {}
                    }
                });
            }
            next.retain(|name, _| live.rules.upstreams.iter().any(|u| &u.name == name));
        }
    }
}
