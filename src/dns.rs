//! Upstream host names: resolved when rules are put in force, and again every `dns_refresh` in
//! the background, with hickory's resolver (the system's configuration, or `dns.servers`).
//!
//! Every address of the answer becomes a `Target` with its own circuit and health; an address
//! that stays in the answer keeps them. A failed or empty lookup keeps the last good addresses
//! and is counted (`strangler_dns_lookups_total{result="failed"}`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::time::Instant;

use crate::live::Live;
use crate::metrics::Metrics;
use crate::rules::Address;

/// One lookup may take this long; at load time, the rules wait for it at most this long.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the service looks for names that are due.
const TICK: Duration = Duration::from_millis(100);

/// A resolver asking `servers`, or the system's name servers when there are none. It keeps no
/// cache: each refresh asks again, so a changed record shows at the next refresh.
pub fn resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let provider = TokioConnectionProvider::default();
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("the system's resolver configuration: {e}"))?
    } else {
        let group: NameServerConfigGroup = servers
            .iter()
            .map(|&a| NameServerConfig::new(a, Protocol::Udp))
            .collect::<Vec<_>>()
            .into();
        TokioResolver::builder_with_config(ResolverConfig::from_parts(None, vec![], group), provider)
    };
    let o = builder.options_mut();
    o.cache_size = 0;
    o.timeout = Duration::from_secs(1);
    o.attempts = 2;
    Ok(builder.build())
}

/// The addresses of `host`, with `port`.
pub async fn lookup(resolver: &TokioResolver, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let answer = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(host))
        .await
        .map_err(|_| format!("no answer in {LOOKUP_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let addrs: Vec<SocketAddr> = answer.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    if addrs.is_empty() {
        return Err("no addresses".into());
    }
    Ok(addrs)
}

/// `lookup`, blocking, for load time: on a thread and runtime of its own, so that it may be
/// called from sync code running inside another runtime.
pub fn lookup_blocking(servers: &[SocketAddr], host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async { lookup(&resolver(servers)?, host, port).await })
        })
        .join()
        .unwrap_or_else(|_| Err("the lookup panicked".into()))
    })
}

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
