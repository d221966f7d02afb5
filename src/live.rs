//! The rule set in force, and the state carried across reloads: breakers, health, learned noise,
//! metric handles. Swapped whole (`ArcSwap`) by a reload; every request pins one snapshot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

use crate::metrics::{Metrics, RouteHandles};
use crate::ratelimit::Limiter;
use crate::rules::{Address, RuleSet, Upstream, NO_ROUTE};
use crate::shadow::RouteShadow;
use crate::upstream::UpstreamState;

/// The rules in force and everything built or carried over with them. Immutable once made.
pub struct Live {
    /// 0 for the rules loaded at start, +1 per applied reload.
    pub generation: u64,
    /// `rules::config_hash` of the file these rules were compiled from.
    pub config_hash: u64,
    pub rules: RuleSet,
    pub handles: RouteHandles,
    /// `x-strangler-route` values, indexed like `rules.routes`, plus `(none)` last.
    pub route_headers: Vec<HeaderValue>,
    /// `x-strangler-upstream` values, indexed like `rules.upstreams`.
    pub upstream_headers: Vec<HeaderValue>,
    /// `x-strangler-generation` and `x-strangler-config`, for a request that asks.
    pub generation_header: HeaderValue,
    pub config_header: HeaderValue,
    /// Breaker, bulkhead and health of each upstream, indexed like `rules.upstreams`.
    /// Carried over from the previous `Live` by upstream name.
    pub states: Vec<Arc<UpstreamState>>,
    /// Learned noise and recent mismatches of each shadowed route, indexed like `rules.routes`.
    /// Carried over by route name.
    pub shadow_states: Vec<Option<Arc<RouteShadow>>>,
    /// The new side's rate limit of each route, indexed like `rules.routes`. Carried over by
    /// route name while its `rate_limit:` is unchanged.
    pub limiters: Vec<Option<Arc<Limiter>>>,
}

impl Live {
    /// The rules loaded at start: generation 0, fresh state.
    pub fn first(rules: RuleSet, config_hash: u64, metrics: &Metrics) -> Live {
        Live::build(rules, config_hash, metrics, 0, None)
    }

    /// The rules that replace `old`: the next generation. Upstreams that keep their name keep
    /// their breaker and health, shadowed routes that keep their name keep their learned noise
    /// and mismatches, and the metric series of removed routes are dropped.
    pub fn replace(old: &Live, rules: RuleSet, config_hash: u64, metrics: &Metrics) -> Live {
        let new = Live::build(rules, config_hash, metrics, old.generation + 1, Some(old));
        metrics.forget_removed(&old.rules, &new.rules, |i| {
            old.shadow_states[i]
                .as_ref()
                .map(|st| st.path_labels())
                .unwrap_or_default()
        });
        new
    }

    fn build(rules: RuleSet, config_hash: u64, metrics: &Metrics, generation: u64, previous: Option<&Live>) -> Live {
        let handles = metrics.handles(&rules, previous.map(|p| (&p.rules, &p.handles)));
        // An upstream that keeps its name and URL keeps its addresses, circuits and health.
        let states = rules
            .upstreams
            .iter()
            .map(|u| {
                let kept = previous.and_then(|p| p.states.iter().find(|s| s.name == u.name && s.url == u.url));
                match kept {
                    Some(s) => {
                        s.rebase(&u.peer);
                        s.clone()
                    }
                    None => Arc::new(UpstreamState::new(
                        &u.name,
                        &u.url,
                        &first_addresses(u, &rules.dns_servers),
                        &u.peer,
                    )),
                }
            })
            .collect();
        let before: HashMap<&str, &Arc<RouteShadow>> = previous
            .map(|p| {
                p.rules
                    .routes
                    .iter()
                    .zip(&p.shadow_states)
                    .filter_map(|(r, s)| Some((r.name.as_str(), s.as_ref()?)))
                    .collect()
            })
            .unwrap_or_default();
        let shadow_states = rules
            .routes
            .iter()
            .map(|r| {
                r.shadow.as_ref()?;
                Some(
                    before
                        .get(r.name.as_str())
                        .map_or_else(|| Arc::new(RouteShadow::new(&r.name)), |s| Arc::clone(s)),
                )
            })
            .collect();
        let limiters = rules
            .routes
            .iter()
            .map(|r| {
                let spec = r.rate_limit.as_ref()?;
                let kept = previous.and_then(|p| {
                    let i = p.rules.routes.iter().position(|o| o.name == r.name)?;
                    p.limiters[i].clone().filter(|l| l.spec == *spec)
                });
                Some(kept.unwrap_or_else(|| Arc::new(Limiter::new(spec))))
            })
            .collect();
        let header = |s: &str| HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        let mut route_headers: Vec<HeaderValue> = rules.routes.iter().map(|r| header(&r.name)).collect();
        route_headers.push(HeaderValue::from_static(NO_ROUTE));
        let upstream_headers = rules.upstreams.iter().map(|u| header(&u.name)).collect();
        metrics.config_identity(config_hash);
        Live {
            generation,
            config_hash,
            generation_header: HeaderValue::from(generation),
            config_header: header(&crate::rules::show_hash(config_hash)),
            rules,
            handles,
            route_headers,
            upstream_headers,
            states,
            shadow_states,
            limiters,
        }
    }

    /// Every few seconds: drop rate-limit keys whose budget is full again.
    pub fn tidy(&self) {
        self.limiters.iter().flatten().for_each(|l| l.tidy());
    }
}

/// The addresses an upstream starts with: its URL's, or its host name's now. A name that does
/// not resolve yet starts with none (its requests fail until it does) and is tried again every
/// `dns_refresh`.
fn first_addresses(u: &Upstream, servers: &[SocketAddr]) -> Vec<SocketAddr> {
    match &u.address {
        Address::Fixed(a) => vec![*a],
        Address::Name { host, port, .. } => crate::dns::lookup_blocking(servers, host, *port).unwrap_or_else(|e| {
            tracing::warn!(upstream = %u.name, "dns: {host} does not resolve ({e}); its requests fail until it does, asked again every dns_refresh");
            Vec::new()
        }),
    }
}
