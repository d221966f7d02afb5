//! The compiled, immutable rule set and route lookup. `compile` builds it from a parsed file.
//!
//! `load` reads, parses and compiles a rules file once, at load time (start-up and reload
//! alike). `RuleSet::lookup` then matches a request with hash and radix-tree lookups, never a
//! scan of every rule. Precedence: literal `path` > templated `path` > longest `prefix`;
//! within one pattern the first rule in the file whose methods and headers match wins.

mod compile;
mod compose;
mod force;
mod matching;
mod openapi;
mod otel;
mod rate;
mod rewrite;
mod rollout;
mod upstreams;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora_core::upstreams::peer::HttpPeer;
use serde_saphyr::Location;

use crate::config::{self, ConfigError, ConfigErrors, Mode, Place};
use crate::diff::Compare;
use crate::resilience::{BreakerConfig, HealthConfig, RetryConfig};

pub use compile::compile;
pub use compose::{Compose, ComposePart, ForEach, Step as JsonStep};
pub use force::ForceSide;
pub use matching::{Condition, Field, HostMatch, Request, Want};
pub use otel::{Protocol, Root, Sampler, Tracing};
pub use rate::{LimitKey, RateLimit};
pub use rewrite::{Part as PathPiece, Rewrite};

pub type UpstreamId = usize;
pub type RouteId = usize;

/// The route label for requests that match no rule.
pub const NO_ROUTE: &str = "(none)";

/// Default peer timeouts. Pingora's own default is none at all, so a hung service would hang us.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
pub const DEFAULT_FALLBACK_ON: [u16; 3] = [502, 503, 504];
pub const DEFAULT_MAX_ENDPOINTS: usize = 2000;
pub const DEFAULT_FOLD_AFTER: usize = 25;
/// How often an upstream's host name is resolved again, and the least that may be set.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
pub const MIN_DNS_REFRESH: Duration = Duration::from_millis(100);

/// Which side of the migration serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Legacy,
    New,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::New => "new",
        }
    }
}

/// Where an upstream is: an address written in its URL, or a host name to resolve.
#[derive(Debug, Clone, PartialEq)]
pub enum Address {
    Fixed(SocketAddr),
    /// Resolved when the rules are put in force and again every `refresh`; each address gets
    /// its own circuit and health (a `Target` in upstream.rs).
    Name {
        host: String,
        port: u16,
        refresh: Duration,
    },
}

impl Address {
    /// The address the peer template is built with; a name's are filled in per target.
    pub fn placeholder(&self) -> SocketAddr {
        match self {
            Address::Fixed(a) => *a,
            Address::Name { port, .. } => SocketAddr::from(([0, 0, 0, 0], *port)),
        }
    }
}

#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub url: String,
    pub address: Address,
    /// `Host` to send instead of the client's.
    pub host: Option<HeaderValue>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    /// Built once; each proxied request clones it (Pingora takes it by value), copies and probes
    /// share it.
    pub peer: UpstreamPeer,
    pub retry: RetryConfig,
    /// `None` when `circuit_breaker: { enabled: false }`.
    pub breaker: Option<BreakerConfig>,
    pub max_in_flight: usize,
    pub health: HealthConfig,
}

/// An upstream as strangler sends to it: the peer, shared, and its pool key, both made once when
/// the rules are compiled (not per request or copy).
#[derive(Clone, Debug)]
pub struct UpstreamPeer {
    peer: Arc<HttpPeer>,
    key: u64,
}

impl UpstreamPeer {
    pub fn new(peer: HttpPeer) -> UpstreamPeer {
        let key = pingora_core::upstreams::peer::Peer::reuse_hash(&peer);
        UpstreamPeer {
            peer: Arc::new(peer),
            key,
        }
    }

    /// The key of this upstream's idle connections: address, TLS, SNI and CA.
    pub fn pool_key(&self) -> u64 {
        self.key
    }

    /// The same peer (TLS, SNI, CA, timeouts) at another address: one of a host name's.
    pub fn with_address(&self, addr: SocketAddr) -> UpstreamPeer {
        let mut peer = HttpPeer::clone(&self.peer);
        peer._address = pingora_core::protocols::l4::socket::SocketAddr::Inet(addr);
        UpstreamPeer::new(peer)
    }
}

impl Deref for UpstreamPeer {
    type Target = HttpPeer;
    fn deref(&self) -> &HttpPeer {
        &self.peer
    }
}

/// How a route's path is matched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Literal(String),
    /// The template as written, e.g. `/api/orders/{id}`.
    Template(String),
    Prefix(String),
}

impl PathMatch {
    /// The pattern as OpenTelemetry's `http.route`: a template or literal as written, a prefix
    /// with `*` after it.
    pub fn route_text(&self) -> String {
        match self {
            PathMatch::Literal(p) | PathMatch::Template(p) => p.clone(),
            PathMatch::Prefix(p) if p.ends_with('/') => format!("{p}*"),
            PathMatch::Prefix(p) => format!("{p}/*"),
        }
    }

    /// What makes two patterns one: templates by their shape (`/a/{id}` and `/a/{x}` are one).
    pub fn key(&self) -> PathMatch {
        match self {
            PathMatch::Template(t) => PathMatch::Template(compile::template_shape(t)),
            other => other.clone(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            PathMatch::Literal(p) => format!("path {p}"),
            PathMatch::Template(p) => format!("path template {p}"),
            PathMatch::Prefix(p) => format!("prefix {p}"),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Sticky {
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone)]
pub struct Canary {
    pub percent: f64,
    /// New side when `bucket < threshold`, buckets 0..10_000.
    threshold: u64,
    pub sticky: Option<Sticky>,
}

/// The number of canary buckets: percent is honoured to two decimals.
pub const CANARY_BUCKETS: u64 = 10_000;

/// The fixed, documented sticky hash: XXH3-64 (seed 0) of the key's bytes, modulo 10,000.
/// Every replica, restart and release computes the same bucket for the same key.
pub fn canary_bucket(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key) % CANARY_BUCKETS
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// Where the route starts in the file (its line, for `explain` and the admin API).
    pub line: u64,
    /// Where its `match:` is: errors found after the route is compiled point here.
    pub match_at: Location,
    pub path: PathMatch,
    /// Bit set of `method_bit`s; `None` matches every method.
    pub methods: Option<u16>,
    pub method_names: Vec<String>,
    /// Header, cookie and query conditions, all of which must hold.
    pub conditions: Vec<Condition>,
    pub host: Option<HostMatch>,
    pub mode: Mode,
    pub service: Option<UpstreamId>,
    pub canary: Option<Canary>,
    /// Fall back to legacy when the service fails.
    pub fallback: bool,
    /// Bit `code - 500` set for each service status that falls back.
    fallback_on: u128,
    /// Every request on the route counts as safe to send twice.
    pub fallback_writes: bool,
    /// Overall deadline: every try and the fallback together.
    pub timeout: Duration,
    /// Shadow copies: always on shadow routes; on canary routes when `shadow:` is given.
    pub shadow: Option<Arc<ShadowSpec>>,
    /// Request body limit set on this route; `None`: `limits.max_body`.
    pub max_body: Option<u64>,
    /// `capability:` as written; `None`: from the path.
    pub capability: Option<String>,
    /// The steps the autopilot moves this route through.
    pub rollout: Option<Rollout>,
    /// The path the new side gets instead of the client's.
    pub rewrite: Option<Rewrite>,
    /// The cap on what the new side receives (ratelimit.rs keeps the counts).
    pub rate_limit: Option<RateLimit>,
    /// The new side as one answer composed from several services' (compose.rs runs it).
    pub compose: Option<Arc<Compose>>,
}

/// A route's compiled `shadow:` block.
#[derive(Debug)]
pub struct ShadowSpec {
    pub sample: f64,
    /// Bit set of `method_bit`s copied.
    methods: u16,
    pub method_names: Vec<String>,
    pub max_body: usize,
    pub compare: Compare,
    /// The ignore list as written, for the admin API and `explain`.
    pub ignore_text: Vec<String>,
    /// Share of copied requests also sent to the legacy upstream a second time, to learn noise.
    pub noise_sample: Option<f64>,
    /// Request headers never stored with a mismatch.
    pub redact: Vec<HeaderName>,
    /// Keep `authorization` and `cookie` on the copy.
    pub forward_credentials: bool,
}

impl ShadowSpec {
    pub fn copies(&self, m: &Method) -> bool {
        self.methods & method_bit(m) != 0
    }
}

pub const DEFAULT_SHADOW_MAX_BODY: usize = 1 << 20;
pub const DEFAULT_SHADOW_MAX_IN_FLIGHT: usize = 256;

/// Request and connection limits, with their defaults in `Default`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Request line plus headers: 431 past it.
    pub max_header_bytes: usize,
    /// Header lines: 431 past it.
    pub max_headers: usize,
    /// Path and query: 414 past it.
    pub max_uri_bytes: usize,
    /// Request body, unless the route sets its own: 413 past it.
    pub max_body: u64,
    /// Time to finish a request head, from connection open or the end of the previous response.
    pub client_header_timeout: Duration,
    /// Client connections open at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body: 10 * 1024 * 1024,
            client_header_timeout: Duration::from_secs(30),
            max_connections: 10_000,
        }
    }
}

/// The client-facing TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenTls {
    pub addr: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a candidate route did not take a request (for `explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    Method,
    Host,
    /// The index of the condition in `Route::conditions`.
    Condition(usize),
}

/// The process's own settings: where it listens, who may use the admin API, and the limits
/// on every client. Kept apart from the routing table; listeners and `max_connections` are
/// bound at start, the rest applies on reload.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub listen: Option<String>,
    pub admin: Option<String>,
    pub admin_token: Option<String>,
    pub listen_tls: Option<ListenTls>,
    pub limits: Limits,
    /// Which limits the file sets itself (a default may be fitted to the machine).
    pub limits_set: LimitsSet,
}

/// The limits a rules file sets explicitly.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitsSet {
    pub max_connections: bool,
}

/// The compiled rules. Immutable; a reload builds a new one.
#[derive(Debug)]
pub struct RuleSet {
    pub settings: Settings,
    /// Peers whose x-forwarded-* headers are kept (appended to) rather than replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Testers first: who may choose a request's side (`force_side:`).
    pub force_side: Option<ForceSide>,
    /// `dns.servers`: the name servers that resolve upstream host names; empty means the
    /// system's (/etc/resolv.conf, with its search domains, and /etc/hosts).
    pub dns_servers: Vec<SocketAddr>,
    pub shadow_max_in_flight: usize,
    pub allow_semicolons: bool,
    pub preserve_header_case: bool,
    pub response_headers: bool,
    pub discovery: Discovery,
    pub autopilot: Autopilot,
    /// `tracing:` as the file says; the `OTEL_*` variables are laid over it at start.
    pub tracing: Tracing,
    pub legacy: UpstreamId,
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
    exact: HashMap<String, Vec<RouteId>>,
    templates: matchit::Router<Vec<RouteId>>,
    prefixes: HashMap<String, Vec<RouteId>>,
}

const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// The bit of a standard method; extension methods get none and match only routes without `methods`.
fn method_bit(m: &Method) -> u16 {
    METHODS.iter().position(|k| k == m).map_or(0, |i| 1 << i)
}

impl Route {
    /// Does this route take every request `later` could (same pattern assumed)?
    fn takes_all_of(&self, later: &Route) -> bool {
        let methods = match (self.methods, later.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b & !a == 0,
        };
        methods
            && self.host.as_ref().is_none_or(|h| later.host.as_ref() == Some(h))
            && self.conditions.iter().all(|c| later.conditions.contains(c))
    }

    /// How many conditions past the path it has (for `explain`).
    pub fn describe_match(&self) -> String {
        let mut why = self.path.describe();
        if !self.method_names.is_empty() {
            why.push_str(&format!(", method in [{}]", self.method_names.join(", ")));
        }
        if let Some(h) = &self.host {
            why.push_str(&format!(", {}", h.describe()));
        }
        for c in &self.conditions {
            why.push_str(&format!(", {}", c.describe()));
        }
        why
    }

    /// Does this service status fall back (when the request is safe to send twice)?
    pub fn falls_back_on(&self, status: u16) -> bool {
        (500..=627).contains(&status) && self.fallback_on & (1 << (status - 500)) != 0
    }

    fn accepts(&self, req: &Request) -> Result<(), Miss> {
        if let Some(set) = self.methods {
            if set & method_bit(req.method) == 0 {
                return Err(Miss::Method);
            }
        }
        if let Some(h) = &self.host {
            if !req.host().is_some_and(|got| h.accepts(got)) {
                return Err(Miss::Host);
            }
        }
        match self.conditions.iter().position(|c| !c.accepts(req)) {
            Some(i) => Err(Miss::Condition(i)),
            None => Ok(()),
        }
    }

    /// Which side serves this request on this route.
    pub fn side(&self, headers: &HeaderMap) -> Side {
        match self.mode {
            Mode::Legacy | Mode::Shadow => Side::Legacy,
            Mode::Migrated => Side::New,
            Mode::Canary => match &self.canary {
                Some(c) => c.side(headers),
                None => Side::Legacy,
            },
        }
    }
}

impl Canary {
    /// The sticky key of a request, if the route has one and the request carries it.
    pub fn key<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        match self.sticky.as_ref()? {
            Sticky::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            Sticky::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .find_map(|v| cookie_value(v.as_bytes(), name.as_bytes())),
        }
    }

    pub fn side(&self, headers: &HeaderMap) -> Side {
        let bucket = match self.key(headers) {
            Some(key) => canary_bucket(key),
            None => rand::random_range(0..CANARY_BUCKETS),
        };
        self.side_of_bucket(bucket)
    }

    pub fn side_of_bucket(&self, bucket: u64) -> Side {
        if bucket < self.threshold {
            Side::New
        } else {
            Side::Legacy
        }
    }
}

/// The value of cookie `name` in one `Cookie` header, as sent (no decoding), without allocating.
pub fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    matching::cookies(header).find_map(|(k, v)| (k == name).then_some(v))
}

impl RuleSet {
    /// The route that takes this request, if any.
    pub fn lookup(&self, req: &Request) -> Option<RouteId> {
        self.lookup_traced(req, |_, _| {})
    }

    /// `lookup`, reporting every candidate that was passed over and why.
    pub fn lookup_traced(&self, req: &Request, mut skipped: impl FnMut(RouteId, Miss)) -> Option<RouteId> {
        let path = req.path;
        let mut first = |ids: &[RouteId]| {
            ids.iter().copied().find(|&id| match self.routes[id].accepts(req) {
                Ok(()) => true,
                Err(why) => {
                    skipped(id, why);
                    false
                }
            })
        };
        if let Some(id) = self.exact.get(path).and_then(|ids| first(ids)) {
            return Some(id);
        }
        if let Some(id) = self.templates.at(path).ok().and_then(|m| first(m.value)) {
            return Some(id);
        }
        // Longest prefix first: the whole path, then each shorter whole-segment prefix.
        let mut end = path.len();
        loop {
            let candidate = if end == 0 { "/" } else { &path[..end] };
            if let Some(id) = self.prefixes.get(candidate).and_then(|ids| first(ids)) {
                return Some(id);
            }
            if end == 0 {
                return None;
            }
            end = path[..end].rfind('/').unwrap_or(0);
        }
    }

    /// Is this peer a trusted proxy?
    pub fn trusted(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    pub fn upstream_id(&self, name: &str) -> Option<UpstreamId> {
        self.upstreams.iter().position(|u| u.name == name)
    }

    /// Where a request on `route` (or on no route) goes, given the side.
    pub fn target(&self, route: Option<&Route>, side: Side) -> UpstreamId {
        match (route.and_then(|r| r.service), side) {
            (Some(svc), Side::New) => svc,
            _ => self.legacy,
        }
    }

    /// Route counts by mode, in `Mode::ALL` order.
    pub fn mode_counts(&self) -> [usize; 4] {
        let mut n = [0; 4];
        for r in &self.routes {
            n[Mode::ALL.iter().position(|m| *m == r.mode).unwrap_or(0)] += 1;
        }
        n
    }
}

/// The capability of a template: the first segment after `/api` and a version segment (`v1`),
/// or the first segment of any other path; `/` is `home`.
pub fn default_capability(template: &str) -> String {
    let mut segs = template.split('/').filter(|s| !s.is_empty()).peekable();
    if segs.peek() == Some(&"api") {
        segs.next();
    }
    let is_version = |s: &str| {
        let b = s.as_bytes();
        b.len() >= 2 && (b[0] == b'v' || b[0] == b'V') && b[1..].iter().all(u8::is_ascii_digit)
    };
    while segs.peek().is_some_and(|s| is_version(s)) {
        segs.next();
    }
    match segs.next() {
        Some(s) if !s.starts_with('{') => s.to_string(),
        Some(_) => "(other)".to_string(),
        None => "home".to_string(),
    }
}

/// The migration map's settings (`discovery:`), compiled.
#[derive(Debug)]
pub struct Discovery {
    pub enabled: bool,
    pub max_endpoints: usize,
    pub fold_after: usize,
    /// `discovery.templates`, then `discovery.openapi`'s, as a router: used before a learned template.
    templates: matchit::Router<String>,
    /// `discovery.openapi`'s operations: upper-case method and path template.
    pub openapi: Vec<(String, String)>,
    /// Where the map is kept: `state_dir`, or `.strangler/` beside the rules file.
    pub state_dir: PathBuf,
    /// The capabilities the rules name (a route's `capability:`, or its path's): the only
    /// capability label values a metric may carry.
    pub capabilities: std::collections::HashSet<String>,
}

impl Discovery {
    /// The template written in `discovery.templates` that this path matches, if any.
    pub fn written_template(&self, path: &str) -> Option<&str> {
        self.templates.at(path).ok().map(|m| m.value.as_str())
    }
}

/// One step of a rollout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    Legacy,
    Shadow,
    /// A canary percent, 0 < p < 100.
    Canary(f64),
    Migrated,
}

impl Step {
    /// Steps go forward in this order.
    pub fn order(self) -> f64 {
        match self {
            Step::Legacy => -2.0,
            Step::Shadow => -1.0,
            Step::Canary(p) => p,
            Step::Migrated => 101.0,
        }
    }

    pub fn mode(self) -> Mode {
        match self {
            Step::Legacy => Mode::Legacy,
            Step::Shadow => Mode::Shadow,
            Step::Canary(_) => Mode::Canary,
            Step::Migrated => Mode::Migrated,
        }
    }

    /// As written in `steps`: `shadow`, `5`, `migrated`.
    pub fn label(self) -> String {
        match self {
            Step::Canary(p) => format!("{p}"),
            other => other.mode().as_str().to_string(),
        }
    }
}

/// The evidence a rollout step needs before the route moves on.
#[derive(Debug, Clone, PartialEq)]
pub struct Gates {
    /// Compared copies (shadow) or new-side requests (canary, migrated) needed at a step.
    pub min_requests: u64,
    /// Shadow: least share of compared copies that matched.
    pub match_rate: f64,
    /// Most the new side's 5xx rate may exceed the monolith's.
    pub error_rate: f64,
    /// Most the new side's p99 latency may be, as a multiple of the monolith's.
    pub p99: f64,
    /// Most share of the new side's requests that fell back.
    pub fallback_rate: f64,
}

impl Default for Gates {
    fn default() -> Gates {
        Gates {
            min_requests: 500,
            match_rate: 0.99,
            error_rate: 0.01,
            p99: 1.5,
            fallback_rate: 0.01,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Back to the first step, and paused until a person resumes.
    Rollback,
    /// Stay at the step, paused.
    Pause,
}

/// A route's `rollout:`, compiled.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub steps: Vec<Step>,
    pub hold: Duration,
    pub gates: Gates,
    pub on_failure: OnFailure,
    pub paused: bool,
}

impl Rollout {
    /// The step the route is at now (its mode and canary percent), if it is one of the steps.
    pub fn current(&self, route: &Route) -> Option<usize> {
        self.steps.iter().position(|s| match (s, route.mode) {
            (Step::Canary(p), Mode::Canary) => route.canary.as_ref().is_some_and(|c| (c.percent - p).abs() < 1e-9),
            (s, m) => s.mode() == m && m != Mode::Canary,
        })
    }
}

/// `autopilot:`, compiled.
#[derive(Debug, Clone)]
pub struct Autopilot {
    pub enabled: bool,
    /// `controller: external`: the replicas don't act; `strangler autopilot` does.
    pub external: bool,
    pub interval: Duration,
}

impl Default for Autopilot {
    fn default() -> Autopilot {
        Autopilot {
            enabled: true,
            external: false,
            interval: Duration::from_secs(1),
        }
    }
}

/// A rules file, read and compiled: the rules, the text they came from and its hash.
pub struct Loaded {
    pub rules: RuleSet,
    pub text: String,
    pub hash: u64,
}

/// Read, parse and compile a rules file: the one loader, for start-up, reload and `check`.
/// An unreadable file is one error at its `1:1`.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            place: Place {
                file: path.to_path_buf(),
                line: 1,
                col: 1,
            },
            route: None,
            message: format!("can't read the file: {e}"),
        }])
    })?;
    let rules = compile(path, &config::parse(path, &text)?)?;
    let hash = config_hash(&text);
    Ok(Loaded { rules, text, hash })
}

/// The identity of a rules file's contents: XXH3-64 of its bytes. Replicas that read the same
/// file report the same hash (`strangler_config_info{hash}`, `x-strangler-config`).
pub fn config_hash(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// A config hash as shown: 16 lowercase hex digits.
pub fn show_hash(hash: u64) -> String {
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests;
