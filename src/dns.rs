//! Resolving upstream host names with hickory's resolver (the system's configuration, or
//! `dns.servers`), without a cache: at load (`lookup_blocking`, from `Live::build`) and on every
//! `dns_refresh` (`lookup`, from addresses.rs).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

/// One lookup may take this long; at load time, the rules wait for it at most this long.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

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

/// `lookup`, blocking, for load time (`crate::blocking`).
pub fn lookup_blocking(servers: &[SocketAddr], host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    crate::blocking::run(|| async { lookup(&resolver(servers)?, host, port).await })
}
