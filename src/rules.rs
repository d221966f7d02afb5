//! The compiled, immutable rule set: validation of a parsed rules file, and route lookup.
//!
//! `RuleSet::compile` turns `config::RulesFile` into lookup structures once, at load time.
//! `RuleSet::lookup` then matches a request with hash and radix-tree lookups, never a scan
//! of every rule. Precedence: literal `path` > templated `path` > longest `prefix`;
//! within one pattern the first rule in the file whose methods and headers match wins.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora_core::upstreams::peer::HttpPeer;
use serde_saphyr::{Location, Spanned};

use crate::config::{self, ConfigError, ConfigErrors, Mode, Place, RulesFile};
use crate::diff::{self, ArrayOrder, Compare};
use crate::resilience::{BreakerConfig, HealthConfig, RetryConfig};

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

/// Which side of the migration serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub url: String,
    pub addr: SocketAddr,
    /// `Host` to send instead of the client's.
    pub host: Option<HeaderValue>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    /// Built once; each proxied request clones it (Pingora takes it by value), copies and probes
    /// share it.
    pub peer: crate::client::UpstreamPeer,
    pub retry: RetryConfig,
    /// `None` when `circuit_breaker: { enabled: false }`.
    pub breaker: Option<BreakerConfig>,
    pub max_in_flight: usize,
    pub health: HealthConfig,
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
    pub fn describe(&self) -> String {
        match self {
            PathMatch::Literal(p) => format!("path {p}"),
            PathMatch::Template(p) => format!("path template {p}"),
            PathMatch::Prefix(p) => format!("prefix {p}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderWant {
    Exact(HeaderValue),
    Present,
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub want: HeaderWant,
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
    pub line: u64,
    pub path: PathMatch,
    /// Bit set of `method_bit`s; `None` matches every method.
    pub methods: Option<u16>,
    pub method_names: Vec<String>,
    pub headers: Vec<HeaderMatch>,
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
pub enum Skip {
    Method,
    Header(HeaderName),
}

/// The compiled rules. Immutable; a reload builds a new one.
#[derive(Debug)]
pub struct RuleSet {
    /// Peers whose x-forwarded-* headers are kept (appended to) rather than replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub shadow_max_in_flight: usize,
    pub admin_token: Option<String>,
    pub allow_semicolons: bool,
    pub preserve_header_case: bool,
    pub limits: Limits,
    pub listen_tls: Option<ListenTls>,
    pub listen: Option<String>,
    pub admin: Option<String>,
    pub response_headers: bool,
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
            && self
                .headers
                .iter()
                .all(|h| later.headers.iter().any(|l| l.name == h.name && l.want == h.want))
    }

    /// Does this service status fall back (when the request is safe to send twice)?
    pub fn falls_back_on(&self, status: u16) -> bool {
        (500..=627).contains(&status) && self.fallback_on & (1 << (status - 500)) != 0
    }

    fn accepts(&self, method: &Method, headers: &HeaderMap) -> Result<(), Skip> {
        if let Some(set) = self.methods {
            if set & method_bit(method) == 0 {
                return Err(Skip::Method);
            }
        }
        for h in &self.headers {
            let ok = match &h.want {
                HeaderWant::Present => headers.contains_key(&h.name),
                HeaderWant::Exact(v) => headers.get_all(&h.name).iter().any(|got| got == v),
            };
            if !ok {
                return Err(Skip::Header(h.name.clone()));
            }
        }
        Ok(())
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

/// The value of cookie `name` in one `Cookie` header, without allocating.
fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
    })
}

impl RuleSet {
    /// The route that takes this request, if any. `path` must be normalized.
    pub fn lookup(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<RouteId> {
        self.lookup_traced(method, path, headers, |_, _| {})
    }

    /// `lookup`, reporting every candidate that was passed over and why.
    pub fn lookup_traced(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        mut skipped: impl FnMut(RouteId, Skip),
    ) -> Option<RouteId> {
        let mut first = |ids: &[RouteId]| {
            ids.iter()
                .copied()
                .find(|&id| match self.routes[id].accepts(method, headers) {
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

    /// Read, parse and compile a rules file.
    pub fn load(path: &Path) -> Result<RuleSet, ConfigErrors> {
        Self::load_with_text(path).map(|(rules, _)| rules)
    }

    /// `load`, also returning the text the rules were compiled from.
    pub fn load_with_text(path: &Path) -> Result<(RuleSet, String), ConfigErrors> {
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
        let rules = Self::compile(path, &config::parse(path, &text)?)?;
        Ok((rules, text))
    }

    /// Validate a parsed file and build the lookup structures. Reports every mistake found.
    pub fn compile(file: &Path, raw: &RulesFile) -> Result<RuleSet, ConfigErrors> {
        let mut c = Compiler {
            file,
            errors: Vec::new(),
        };
        let upstreams = c.upstreams(raw);
        let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        let known = names.join(", ");
        let legacy = match names.iter().position(|n| *n == raw.legacy.value) {
            Some(id) => id,
            None => {
                c.err(
                    &raw.legacy.referenced,
                    None,
                    format!("legacy: unknown upstream \"{}\" (known: {known})", raw.legacy.value),
                );
                0
            }
        };

        let mut routes = Vec::with_capacity(raw.routes.len());
        let mut by_name: HashMap<&str, u64> = HashMap::new();
        let mut by_match: HashMap<MatchKey, (String, u64)> = HashMap::new();
        for r in &raw.routes {
            let name_loc = &r.value.name.referenced;
            if let Some(line) = by_name.insert(&r.value.name.value, name_loc.line()) {
                c.err(
                    name_loc,
                    Some(&r.value.name.value),
                    format!("duplicate route name (first used on line {line})"),
                );
                continue;
            }
            let Some(route) = c.route(r, &names, &known) else {
                continue;
            };
            let key = (
                match &route.path {
                    PathMatch::Template(t) => PathMatch::Template(template_shape(t)),
                    other => other.clone(),
                },
                route.methods,
                route
                    .headers
                    .iter()
                    .map(|h| {
                        let want = match &h.want {
                            HeaderWant::Present => "\0present".to_string(),
                            HeaderWant::Exact(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        };
                        (h.name.to_string(), want)
                    })
                    .collect::<BTreeMap<_, _>>()
                    .into_iter()
                    .collect(),
            );
            if let Some((other, line)) = by_match.get(&key) {
                c.err(
                    &r.value.matcher.referenced,
                    Some(&route.name),
                    format!("same match as route \"{other}\" (line {line}); it would never be used"),
                );
                continue;
            }
            by_match.insert(key, (route.name.clone(), route.line));
            routes.push(route);
        }

        // Within one pattern the first matching rule wins, so a later rule whose requests an
        // earlier rule always takes can never match: refuse it rather than let it sit unused.
        let mut by_pattern: HashMap<PathMatch, Vec<RouteId>> = HashMap::new();
        for (id, r) in routes.iter().enumerate() {
            let key = match &r.path {
                PathMatch::Template(t) => PathMatch::Template(template_shape(t)),
                other => other.clone(),
            };
            let earlier = by_pattern.entry(key).or_default();
            if let Some(&first) = earlier.iter().find(|&&e| routes[e].takes_all_of(r)) {
                let (a, b) = (&routes[first], r);
                if let Some(at) = raw.routes.iter().find(|f| f.value.name.value.trim() == b.name) {
                    c.err(
                        &at.value.matcher.referenced,
                        Some(&b.name),
                        format!(
                            "never matches: route \"{}\" (line {}) has the same path and takes every request this one would; put the more specific route first",
                            a.name, a.line
                        ),
                    );
                }
            }
            earlier.push(id);
        }

        let mut exact: HashMap<String, Vec<RouteId>> = HashMap::new();
        let mut prefixes: HashMap<String, Vec<RouteId>> = HashMap::new();
        let mut shapes: BTreeMap<String, Vec<RouteId>> = BTreeMap::new();
        for (id, r) in routes.iter().enumerate() {
            match &r.path {
                PathMatch::Literal(p) => exact.entry(p.clone()).or_default().push(id),
                PathMatch::Prefix(p) => prefixes.entry(p.clone()).or_default().push(id),
                PathMatch::Template(t) => shapes.entry(template_shape(t)).or_default().push(id),
            }
        }
        let mut templates = matchit::Router::new();
        for (shape, ids) in shapes {
            if let Err(e) = templates.insert(shape, ids.clone()) {
                let r = &raw.routes.iter().find(|f| f.value.name.value == routes[ids[0]].name);
                if let Some(r) = r {
                    c.err(
                        &r.value.matcher.referenced,
                        Some(&routes[ids[0]].name),
                        format!("path template can't be used: {e}"),
                    );
                }
            }
        }

        let mut trusted_proxies = Vec::new();
        for t in raw.trusted_proxies.iter().flatten() {
            let v = t.value.trim();
            match v
                .parse::<ipnet::IpNet>()
                .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            {
                Ok(net) => trusted_proxies.push(net),
                Err(_) => c.err(
                    &t.referenced,
                    None,
                    format!("trusted_proxies: \"{v}\" is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
                ),
            }
        }
        let limits = c.limits(&raw.limits);
        let listen_tls = raw.listen_tls.as_ref().map(|t| {
            let t = &t.value;
            for f in [&t.cert, &t.key] {
                if let Err(e) = std::fs::metadata(relative_to(file, &f.value)) {
                    c.err(
                        &f.referenced,
                        None,
                        format!("listen_tls: can't read \"{}\": {e}", f.value),
                    );
                }
            }
            ListenTls {
                addr: t.addr.value.clone(),
                cert: relative_to(file, &t.cert.value),
                key: relative_to(file, &t.key.value),
            }
        });
        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        let shadow_max_in_flight = match &raw.shadow_max_in_flight {
            None => DEFAULT_SHADOW_MAX_IN_FLIGHT,
            Some(n) => n.value as usize,
        };
        Ok(RuleSet {
            trusted_proxies,
            shadow_max_in_flight,
            allow_semicolons: raw.allow_semicolons,
            preserve_header_case: raw.preserve_header_case,
            limits,
            listen_tls,
            admin_token: raw.admin_token.clone().filter(|t| !t.is_empty()),
            listen: raw.listen.as_ref().map(|s| s.value.clone()),
            admin: raw.admin.as_ref().map(|s| s.value.clone()),
            response_headers: raw.response_headers,
            legacy,
            upstreams,
            routes,
            exact,
            templates,
            prefixes,
        })
    }
}

/// What makes two rules' matches identical: pattern (templates by shape), methods, headers.
type MatchKey = (PathMatch, Option<u16>, Vec<(String, String)>);

/// A template with its parameter names replaced by position, so `/a/{id}` and `/a/{x}` are one shape.
fn template_shape(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let mut chars = t.chars().peekable();
    let mut n = 0;
    while let Some(ch) = chars.next() {
        match ch {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push_str("{{");
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push_str("}}");
            }
            '{' => {
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                }
                out.push_str(&format!("{{p{n}}}"));
                n += 1;
            }
            c => out.push(c),
        }
    }
    out
}

struct Compiler<'a> {
    file: &'a Path,
    errors: Vec<ConfigError>,
}

impl Compiler<'_> {
    fn err(&mut self, at: &Location, route: Option<&str>, message: String) {
        self.errors.push(ConfigError {
            place: Place {
                file: self.file.to_path_buf(),
                line: at.line().max(1),
                col: at.column().max(1),
            },
            route: route.map(str::to_string),
            message,
        });
    }

    fn size(&mut self, v: &Option<Spanned<String>>, route: Option<&str>, what: &str, default: u64) -> u64 {
        let Some(v) = v else { return default };
        match v.value.trim().parse::<bytesize::ByteSize>() {
            Ok(b) if b.as_u64() > 0 => b.as_u64(),
            _ => {
                self.err(
                    &v.referenced,
                    route,
                    format!("{what}: bad size \"{}\" (use e.g. 64KiB, 1MiB)", v.value),
                );
                default
            }
        }
    }

    fn limits(&mut self, f: &config::LimitsFile) -> Limits {
        let d = Limits::default();
        Limits {
            max_header_bytes: self.size(
                &f.max_header_bytes,
                None,
                "limits.max_header_bytes",
                d.max_header_bytes as u64,
            ) as usize,
            max_headers: self.count(&f.max_headers, "limits.max_headers", 1..=256, d.max_headers as u64) as usize,
            max_uri_bytes: self.size(&f.max_uri_bytes, None, "limits.max_uri_bytes", d.max_uri_bytes as u64) as usize,
            max_body: self.size(&f.max_body, None, "limits.max_body", d.max_body),
            client_header_timeout: self.duration(
                &f.client_header_timeout,
                "limits.client_header_timeout",
                d.client_header_timeout,
            ),
            max_connections: self.count(
                &f.max_connections,
                "limits.max_connections",
                1..=1_000_000,
                d.max_connections as u64,
            ) as usize,
        }
    }

    fn duration(&mut self, v: &Option<Spanned<String>>, what: &str, default: Duration) -> Duration {
        self.duration_in(v, None, what, default)
    }

    fn duration_in(
        &mut self,
        v: &Option<Spanned<String>>,
        route: Option<&str>,
        what: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.value.trim()) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                self.err(
                    &v.referenced,
                    route,
                    format!("{what}: bad duration \"{}\" (use e.g. 250ms, 2s, 1m)", v.value),
                );
                default
            }
        }
    }

    fn upstreams(&mut self, raw: &RulesFile) -> Vec<Upstream> {
        let mut out = Vec::with_capacity(raw.upstreams.len());
        for (name, u) in &raw.upstreams {
            let at = &u.value.url.referenced;
            let (addr, tls, url_host) = match parse_url(&u.value.url.value) {
                Ok(a) => a,
                Err(why) => {
                    self.err(
                        at,
                        None,
                        format!("upstream \"{name}\": bad url \"{}\": {why}", u.value.url.value),
                    );
                    continue;
                }
            };
            let host = match &u.value.host {
                None => None,
                Some(h) => match HeaderValue::from_str(&h.value) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        self.err(
                            &h.referenced,
                            None,
                            format!("upstream \"{name}\": bad host \"{}\"", h.value),
                        );
                        None
                    }
                },
            };
            let t = &u.value.timeouts;
            let connect_timeout = self.duration(
                &t.connect,
                &format!("upstream \"{name}\": timeouts.connect"),
                DEFAULT_CONNECT_TIMEOUT,
            );
            let response_timeout = self.duration(
                &t.response,
                &format!("upstream \"{name}\": timeouts.response"),
                DEFAULT_RESPONSE_TIMEOUT,
            );
            let idle_timeout = self.duration(
                &t.idle,
                &format!("upstream \"{name}\": timeouts.idle"),
                DEFAULT_IDLE_TIMEOUT,
            );
            let mut peer = HttpPeer::new(addr, tls, String::new());
            if let Some(t) = &u.value.tls {
                if !tls {
                    self.err(
                        &t.referenced,
                        None,
                        format!("upstream \"{name}\": `tls` needs an https:// url"),
                    );
                }
            }
            if tls {
                let t = u.value.tls.as_ref().map(|t| &t.value);
                peer.sni = t
                    .and_then(|t| t.sni.as_ref())
                    .map_or(url_host, |s| s.value.trim().to_string());
                if let Some(ca) = t.and_then(|t| t.ca.as_ref()) {
                    match load_ca(&relative_to(self.file, &ca.value)) {
                        Ok(certs) => {
                            peer.options.ca = Some(certs);
                            // Pooled connections are keyed by address and SNI, not by CA.
                            peer.group_key = xxhash_rust::xxh3::xxh3_64(ca.value.as_bytes());
                        }
                        Err(why) => self.err(&ca.referenced, None, format!("upstream \"{name}\": tls.ca: {why}")),
                    }
                }
            }
            peer.options.connection_timeout = Some(connect_timeout);
            peer.options.read_timeout = Some(response_timeout);
            peer.options.write_timeout = Some(response_timeout);
            peer.options.idle_timeout = Some(idle_timeout);
            let what = format!("upstream \"{name}\"");
            let retry = self.retry(&u.value.retries, &what);
            let breaker = self.breaker(&u.value.circuit_breaker, &what);
            let health = self.health(&u.value.health, &what);
            let max_in_flight = match &u.value.max_in_flight {
                None => DEFAULT_MAX_IN_FLIGHT,
                Some(n) if n.value >= 1 => n.value as usize,
                Some(n) => {
                    self.err(&n.referenced, None, format!("{what}: max_in_flight must be at least 1"));
                    DEFAULT_MAX_IN_FLIGHT
                }
            };
            out.push(Upstream {
                name: name.clone(),
                url: u.value.url.value.clone(),
                addr,
                host,
                connect_timeout,
                response_timeout,
                idle_timeout,
                peer: crate::client::UpstreamPeer::new(peer),
                retry,
                breaker,
                max_in_flight,
                health,
            });
        }
        out
    }

    fn count<T: Copy + PartialOrd + std::fmt::Display>(
        &mut self,
        v: &Option<Spanned<T>>,
        what: &str,
        range: std::ops::RangeInclusive<T>,
        default: T,
    ) -> T {
        match v {
            None => default,
            Some(x) if range.contains(&x.value) => x.value,
            Some(x) => {
                let (lo, hi) = (range.start(), range.end());
                self.err(
                    &x.referenced,
                    None,
                    format!("{what} must be within {lo}..={hi}, got {}", x.value),
                );
                default
            }
        }
    }

    fn retry(&mut self, f: &Option<Spanned<config::RetriesFile>>, what: &str) -> RetryConfig {
        let d = RetryConfig::default();
        let Some(f) = f else { return d };
        let attempts = self.count(
            &Some(f.value.attempts.clone()),
            &format!("{what}: retries.attempts"),
            1..=10,
            1,
        );
        let (base, max) = match &f.value.backoff {
            None => (d.base, d.max),
            Some(b) => (
                self.duration(&b.base, &format!("{what}: retries.backoff.base"), d.base),
                self.duration(&b.max, &format!("{what}: retries.backoff.max"), d.max),
            ),
        };
        RetryConfig { attempts, base, max }
    }

    fn breaker(&mut self, f: &Option<Spanned<config::BreakerFile>>, what: &str) -> Option<BreakerConfig> {
        let d = BreakerConfig::default();
        let Some(f) = f else { return Some(d) };
        let b = &f.value;
        let failure_ratio = self.count(
            &b.failure_ratio,
            &format!("{what}: circuit_breaker.failure_ratio"),
            0.01..=1.0,
            d.failure_ratio,
        );
        let min_requests = self.count(
            &b.min_requests,
            &format!("{what}: circuit_breaker.min_requests"),
            1..=1_000_000,
            d.min_requests,
        );
        let half_open_probes = self.count(
            &b.half_open_probes,
            &format!("{what}: circuit_breaker.half_open_probes"),
            1..=1000,
            d.half_open_probes,
        );
        let window = self.duration(&b.window, &format!("{what}: circuit_breaker.window"), d.window);
        let open_for = self.duration(&b.open_for, &format!("{what}: circuit_breaker.open_for"), d.open_for);
        (b.enabled != Some(false)).then_some(BreakerConfig {
            failure_ratio,
            min_requests,
            window,
            open_for,
            half_open_probes,
        })
    }

    fn health(&mut self, f: &Option<Spanned<config::HealthFile>>, what: &str) -> HealthConfig {
        let d = HealthConfig::default();
        let Some(f) = f else { return d };
        let h = &f.value;
        let path = match &h.path {
            Some(p)
                if !p.value.starts_with('/')
                    || p.value.contains('#')
                    || p.value.parse::<http::uri::PathAndQuery>().is_err() =>
            {
                self.err(
                    &p.referenced,
                    None,
                    format!("{what}: health.path must be a path that starts with '/' (a query is fine, a fragment is not), like /healthz"),
                );
                None
            }
            Some(p) => Some(p.value.clone()),
            None => None,
        };
        HealthConfig {
            path,
            interval: self.duration(&h.interval, &format!("{what}: health.interval"), d.interval),
            timeout: self.duration(&h.timeout, &format!("{what}: health.timeout"), d.timeout),
            unhealthy_after: self.count(
                &h.unhealthy_after,
                &format!("{what}: health.unhealthy_after"),
                1..=100,
                d.unhealthy_after,
            ),
            healthy_after: self.count(
                &h.healthy_after,
                &format!("{what}: health.healthy_after"),
                1..=100,
                d.healthy_after,
            ),
        }
    }

    fn route(&mut self, r: &Spanned<config::RouteFile>, upstreams: &[&str], known: &str) -> Option<Route> {
        let f = &r.value;
        let name = f.name.value.trim().to_string();
        let n = Some(name.as_str());
        let errors_before = self.errors.len();
        if name.is_empty() || name == NO_ROUTE || name.chars().any(char::is_control) {
            self.err(
                &f.name.referenced,
                n,
                format!("bad name (use letters, digits, '-', '_'; \"{NO_ROUTE}\" is reserved)"),
            );
        }

        let m = &f.matcher.value;
        let path = match (&m.path, &m.prefix) {
            (Some(p), None) => self.path(p, n, false),
            (None, Some(p)) => self.path(p, n, true),
            (Some(_), Some(_)) | (None, None) => {
                self.err(
                    &f.matcher.referenced,
                    n,
                    "match: set exactly one of path or prefix".into(),
                );
                None
            }
        };

        let mut methods = None;
        let mut method_names = Vec::new();
        if let Some(list) = &m.methods {
            let mut set = 0u16;
            for meth in list {
                let upper = meth.value.trim().to_ascii_uppercase();
                match Method::from_bytes(upper.as_bytes()).ok().map(|m| method_bit(&m)) {
                    Some(bit) if bit != 0 => {
                        set |= bit;
                        method_names.push(upper);
                    }
                    _ => self.err(&meth.referenced, n, format!("unknown method \"{}\" (allowed: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT)", meth.value)),
                }
            }
            if list.is_empty() {
                self.err(
                    &f.matcher.referenced,
                    n,
                    "match.methods is empty; remove it to match every method".into(),
                );
            }
            methods = Some(set);
        }

        let mut headers = Vec::new();
        for (hname, want) in m.headers.iter().flatten() {
            let Ok(hn) = HeaderName::from_bytes(hname.as_bytes()) else {
                self.err(&want.referenced, n, format!("bad header name \"{hname}\""));
                continue;
            };
            let want = if want.value == "present" {
                HeaderWant::Present
            } else {
                match HeaderValue::from_str(&want.value) {
                    Ok(v) => HeaderWant::Exact(v),
                    Err(_) => {
                        self.err(&want.referenced, n, format!("bad value for header \"{hname}\""));
                        continue;
                    }
                }
            };
            headers.push(HeaderMatch { name: hn, want });
        }

        let mode = f.mode.value;
        let service = match (&f.service, mode) {
            (Some(s), Mode::Legacy) => {
                self.err(
                    &s.referenced,
                    n,
                    "a legacy route has no service; remove `service` or change `mode`".into(),
                );
                None
            }
            (None, Mode::Legacy) => None,
            (None, m) => {
                self.err(
                    &f.mode.referenced,
                    n,
                    format!("mode {m} needs `service:` (one of: {known})"),
                );
                None
            }
            (Some(s), _) => match upstreams.iter().position(|u| *u == s.value) {
                Some(id) => Some(id),
                None => {
                    self.err(
                        &s.referenced,
                        n,
                        format!("unknown upstream \"{}\" (known: {known})", s.value),
                    );
                    None
                }
            },
        };

        let canary = match (&f.canary, mode) {
            (Some(c), Mode::Canary) => self.canary(c, n),
            (Some(c), m) => {
                self.err(
                    &c.referenced,
                    n,
                    format!("`canary` is only for mode canary, not {m}; remove it or change `mode`"),
                );
                None
            }
            (None, Mode::Canary) => {
                self.err(
                    &f.mode.referenced,
                    n,
                    "mode canary needs `canary: { percent: N }`".into(),
                );
                None
            }
            (None, _) => None,
        };

        let mut fallback_on = 0u128;
        match &f.fallback_on {
            None => fallback_on = DEFAULT_FALLBACK_ON.iter().fold(0, |m, c| m | 1 << (c - 500)),
            Some(codes) => {
                for c in codes {
                    if (500..=599).contains(&c.value) {
                        fallback_on |= 1 << (c.value - 500);
                    } else {
                        self.err(
                            &c.referenced,
                            n,
                            format!("fallback_on: {} is not a 5xx status (500..=599)", c.value),
                        );
                    }
                }
            }
        }
        let timeout = self.duration_in(&f.timeout, n, "timeout", DEFAULT_ROUTE_TIMEOUT);
        let max_body = f.max_body.as_ref().map(|_| self.size(&f.max_body, n, "max_body", 0));
        let shadow = match (&f.shadow, mode) {
            (Some(sh), Mode::Shadow | Mode::Canary) => self.shadow(Some(sh), n).map(Arc::new),
            (None, Mode::Shadow) => self.shadow(None, n).map(Arc::new),
            (Some(sh), m) => {
                self.err(
                    &sh.referenced,
                    n,
                    format!("`shadow` is for shadow and canary routes, not {m}; remove it or change `mode`"),
                );
                None
            }
            (None, _) => None,
        };

        if self.errors.len() > errors_before {
            return None;
        }
        Some(Route {
            fallback: f.fallback.unwrap_or(true),
            fallback_on,
            fallback_writes: f.fallback_writes.unwrap_or(false),
            timeout,
            shadow,
            max_body,
            name,
            line: r.referenced.line(),
            path: path?,
            methods,
            method_names,
            headers,
            mode,
            service,
            canary,
        })
    }

    fn path(&mut self, p: &Spanned<String>, route: Option<&str>, prefix: bool) -> Option<PathMatch> {
        let v = p.value.trim();
        let field = if prefix { "prefix" } else { "path" };
        if !v.starts_with('/') {
            self.err(
                &p.referenced,
                route,
                format!("match.{field} must start with '/': \"{v}\""),
            );
            return None;
        }
        match crate::path::normalize(v) {
            Ok(n) if n == v || (prefix && n.trim_end_matches('/') == v.trim_end_matches('/')) => {}
            _ if v.contains('{') => {}
            _ => {
                self.err(
                    &p.referenced,
                    route,
                    format!("match.{field} \"{v}\" is not a normalized path; requests are matched after normalization"),
                );
                return None;
            }
        }
        if prefix {
            if v.contains('{') {
                self.err(
                    &p.referenced,
                    route,
                    "match.prefix can't hold {params}; use `path` for templates".into(),
                );
                return None;
            }
            let trimmed = v.trim_end_matches('/');
            return Some(PathMatch::Prefix(if trimmed.is_empty() {
                "/".into()
            } else {
                trimmed.into()
            }));
        }
        if v.contains("{*") {
            self.err(
                &p.referenced,
                route,
                "match.path can't hold a catch-all {*param}; use `prefix`".into(),
            );
            return None;
        }
        if v.contains('{') {
            let mut probe = matchit::Router::new();
            if let Err(e) = probe.insert(v, ()) {
                self.err(&p.referenced, route, format!("bad path template \"{v}\": {e}"));
                return None;
            }
            return Some(PathMatch::Template(v.into()));
        }
        Some(PathMatch::Literal(v.into()))
    }

    fn shadow(&mut self, f: Option<&Spanned<config::ShadowFile>>, route: Option<&str>) -> Option<ShadowSpec> {
        let before = self.errors.len();
        let mut spec = ShadowSpec {
            sample: 1.0,
            methods: method_bit(&Method::GET) | method_bit(&Method::HEAD),
            method_names: vec!["GET".into(), "HEAD".into()],
            max_body: DEFAULT_SHADOW_MAX_BODY,
            compare: Compare {
                compare_headers: vec![http::header::CONTENT_TYPE],
                ..Compare::default()
            },
            ignore_text: Vec::new(),
            noise_sample: None,
            redact: Vec::new(),
            forward_credentials: true,
        };
        let Some(f) = f else { return Some(spec) };
        let f = &f.value;
        let share = |c: &mut Self, v: &Spanned<f64>, what: &str| {
            if (0.0..=1.0).contains(&v.value) {
                v.value
            } else {
                c.err(
                    &v.referenced,
                    route,
                    format!("shadow.{what} must be within 0..=1, got {}", v.value),
                );
                0.0
            }
        };
        if let Some(s) = &f.sample {
            spec.sample = share(self, s, "sample");
        }
        if let Some(noise) = &f.noise {
            spec.noise_sample = Some(share(self, &noise.value.sample, "noise.sample"));
        }
        if let Some(list) = &f.methods {
            spec.methods = 0;
            spec.method_names.clear();
            for m in list {
                let upper = m.value.trim().to_ascii_uppercase();
                match Method::from_bytes(upper.as_bytes()).ok().map(|m| method_bit(&m)) {
                    Some(bit) if bit != 0 => {
                        spec.methods |= bit;
                        spec.method_names.push(upper);
                    }
                    _ => self.err(
                        &m.referenced,
                        route,
                        format!("shadow.methods: unknown method \"{}\"", m.value),
                    ),
                }
            }
        }
        spec.max_body = self.size(&f.max_body, route, "shadow.max_body", spec.max_body as u64) as usize;
        for ig in f.ignore.iter().flatten() {
            match diff::parse_ignore(ig.value.trim()) {
                Ok(diff::Ignore::Json(p)) => spec.compare.ignore.push(p),
                Ok(diff::Ignore::Header(h)) => spec.compare.ignore_headers.push(h),
                Err(why) => self.err(&ig.referenced, route, format!("shadow.ignore: {why}")),
            }
            spec.ignore_text.push(ig.value.trim().to_string());
        }
        let header_list = |c: &mut Self, list: &Option<Vec<Spanned<String>>>, what: &str| -> Vec<HeaderName> {
            let mut out = Vec::new();
            for h in list.iter().flatten() {
                match HeaderName::from_bytes(h.value.trim().as_bytes()) {
                    Ok(n) => out.push(n),
                    Err(_) => c.err(
                        &h.referenced,
                        route,
                        format!("shadow.{what}: bad header name \"{}\"", h.value),
                    ),
                }
            }
            out
        };
        if f.compare_headers.is_some() {
            spec.compare.compare_headers = header_list(self, &f.compare_headers, "compare_headers");
        }
        spec.redact = header_list(self, &f.redact, "redact");
        spec.forward_credentials = f.forward_credentials.unwrap_or(true);
        if let Some(order) = &f.array_order {
            spec.compare.array_order = match order.value.as_str() {
                "strict" => ArrayOrder::Strict,
                "any" => ArrayOrder::Any,
                other => {
                    self.err(
                        &order.referenced,
                        route,
                        format!("shadow.array_order: \"{other}\" (allowed: strict, any)"),
                    );
                    ArrayOrder::Strict
                }
            };
        }
        if let Some(t) = &f.numeric_tolerance {
            if t.value >= 0.0 && t.value.is_finite() {
                spec.compare.numeric_tolerance = t.value;
            } else {
                self.err(
                    &t.referenced,
                    route,
                    format!("shadow.numeric_tolerance must be 0 or more, got {}", t.value),
                );
            }
        }
        (self.errors.len() == before).then_some(spec)
    }

    fn canary(&mut self, c: &Spanned<config::CanaryFile>, route: Option<&str>) -> Option<Canary> {
        let pct = &c.value.percent;
        if !(0.0..=100.0).contains(&pct.value) || pct.value.is_nan() {
            self.err(
                &pct.referenced,
                route,
                format!("canary.percent must be within 0..=100, got {}", pct.value),
            );
            return None;
        }
        let sticky = match &c.value.sticky {
            None => None,
            Some(s) => match s.value.split_once(':') {
                Some(("header", h)) if HeaderName::from_bytes(h.trim().as_bytes()).is_ok() => {
                    HeaderName::from_bytes(h.trim().as_bytes()).ok().map(Sticky::Header)
                }
                Some(("cookie", k)) if !k.trim().is_empty() => Some(Sticky::Cookie(k.trim().to_string())),
                _ => {
                    self.err(
                        &s.referenced,
                        route,
                        format!("canary.sticky \"{}\" must be header:NAME or cookie:NAME", s.value),
                    );
                    return None;
                }
            },
        };
        Some(Canary {
            percent: pct.value,
            threshold: (pct.value * (CANARY_BUCKETS as f64) / 100.0).round() as u64,
            sticky,
        })
    }
}

/// `http://host[:port]` to a socket address, resolved once at load time.
/// A path in rules.yaml, relative to the file's directory unless absolute.
fn relative_to(file: &Path, p: &str) -> PathBuf {
    let p = Path::new(p.trim());
    match file.parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// Where an upstream URL points: its address, whether it is `https://`, and its host name.
fn parse_url(url: &str) -> Result<(SocketAddr, bool, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "not a URL (want http://host:port or https://host:port)".to_string())?;
    let (tls, default_port) = match uri.scheme_str() {
        Some("http") => (false, 80),
        Some("https") => (true, 443),
        _ => return Err("scheme must be http:// or https://".into()),
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("a path is not allowed; give only http://host:port".into());
    }
    let host = uri.host().ok_or("missing host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(default_port);
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("can't resolve host: {e}"))?
        .next()
        .ok_or_else(|| "host has no address".to_string())?;
    Ok((addr, tls, host.to_string()))
}

/// The CA certificates in a PEM file, for verifying an upstream.
fn load_ca(path: &Path) -> Result<Arc<pingora_core::protocols::tls::CaType>, String> {
    use pingora_core::utils::tls::WrappedX509;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let pem = std::fs::read(path).map_err(|e| format!("can't read \"{}\": {e}", path.display()))?;
    let mut certs = Vec::new();
    for der in CertificateDer::pem_slice_iter(&pem) {
        let der = der.map_err(|e| format!("\"{}\" is not PEM: {e}", path.display()))?;
        if x509_parser::parse_x509_certificate(&der).is_err() {
            return Err(format!(
                "\"{}\" holds a certificate that does not parse",
                path.display()
            ));
        }
        certs.push(WrappedX509::new(der.to_vec(), pingora_core::utils::tls::parse_x509));
    }
    if certs.is_empty() {
        return Err(format!("\"{}\" holds no certificate", path.display()));
    }
    Ok(Arc::from(certs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSTREAMS: &str = "legacy: mono\nupstreams:\n  mono: { url: \"http://127.0.0.1:1\" }\n  svc: { url: \"http://127.0.0.1:2\" }\nroutes:\n";

    fn compile(routes: &str) -> Result<RuleSet, ConfigErrors> {
        let text = format!("{UPSTREAMS}{routes}");
        let file = Path::new("rules.yaml");
        RuleSet::compile(file, &config::parse(file, &text)?)
    }

    fn name_of(rules: &RuleSet, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        rules
            .lookup(&m, path, &map)
            .map_or(NO_ROUTE.to_string(), |id| rules.routes[id].name.clone())
    }

    #[test]
    fn precedence_and_boundaries() {
        let rules = compile(
            "  - { name: root, match: { prefix: / }, mode: legacy }\n\
             \x20 - { name: api, match: { prefix: /api }, mode: legacy }\n\
             \x20 - { name: orders, match: { prefix: /api/orders }, mode: legacy }\n\
             \x20 - { name: order, match: { path: \"/api/orders/{id}\" }, mode: legacy }\n\
             \x20 - { name: order-new, match: { path: /api/orders/new }, mode: legacy }\n\
             \x20 - { name: order-post, match: { path: /api/orders, methods: [POST] }, mode: legacy }\n\
             \x20 - { name: items, match: { path: \"/api/orders/{id}/items\" }, mode: legacy }\n\
             \x20 - { name: v2, match: { prefix: /api/v2, headers: { x-api-version: \"2\" } }, mode: legacy }\n\
             \x20 - { name: v2-any, match: { prefix: /api/v2, headers: { x-beta: present } }, mode: legacy }\n",
        )
        .unwrap();
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("GET", "/", &[], "root"),
            ("GET", "/apix", &[], "root"),
            ("GET", "/api", &[], "api"),
            ("GET", "/api/", &[], "api"),
            ("GET", "/api/ordersx", &[], "api"),
            ("GET", "/api/orders", &[], "orders"),
            ("POST", "/api/orders", &[], "order-post"),
            ("GET", "/api/orders/7", &[], "order"),
            ("GET", "/api/orders/new", &[], "order-new"),
            ("GET", "/api/orders/7/items", &[], "items"),
            ("GET", "/api/orders/7/other", &[], "orders"),
            ("GET", "/api/v2/x", &[("x-api-version", "2")], "v2"),
            ("GET", "/api/v2/x", &[("x-api-version", "3")], "api"),
            ("GET", "/api/v2/x", &[("x-beta", "")], "v2-any"),
            ("GET", "/api/v2/x", &[("x-api-version", "2"), ("x-beta", "1")], "v2"),
        ];
        for (m, p, h, want) in cases {
            assert_eq!(name_of(&rules, m, p, h), *want, "{m} {p} {h:?}");
        }
    }

    #[test]
    fn no_rule_means_none() {
        let rules = compile("  - { name: a, match: { prefix: /a }, mode: legacy }\n").unwrap();
        assert_eq!(name_of(&rules, "GET", "/b", &[]), NO_ROUTE);
        assert_eq!(name_of(&rules, "GET", "/", &[]), NO_ROUTE);
    }

    #[test]
    fn ties_go_to_the_first_rule() {
        let rules = compile(
            "  - { name: first, match: { prefix: /a, methods: [GET, POST] }, mode: legacy }\n\
             \x20 - { name: second, match: { prefix: /a, methods: [GET, PUT] }, mode: legacy }\n",
        )
        .unwrap();
        assert_eq!(name_of(&rules, "GET", "/a", &[]), "first");
        assert_eq!(name_of(&rules, "PUT", "/a", &[]), "second");
    }

    #[test]
    fn a_rule_an_earlier_one_always_beats_is_refused() {
        let never = [
            "  - { name: a, match: { prefix: /a }, mode: legacy }\n  - { name: b, match: { prefix: /a, methods: [GET] }, mode: legacy }\n",
            "  - { name: a, match: { prefix: /a, methods: [GET, POST] }, mode: legacy }\n  - { name: b, match: { prefix: /a, methods: [GET] }, mode: legacy }\n",
            "  - { name: a, match: { path: \"/o/{id}\" }, mode: legacy }\n  - { name: b, match: { path: \"/o/{x}\", headers: { x-v: \"2\" } }, mode: legacy }\n",
            "  - { name: a, match: { path: /o, headers: { x-v: present } }, mode: legacy }\n  - { name: b, match: { path: /o, headers: { x-v: present, x-w: \"1\" } }, mode: legacy }\n",
        ];
        for routes in never {
            let err = compile(routes).expect_err("refused").to_string();
            assert!(
                err.contains("route \"b\": never matches: route \"a\" (line 6)"),
                "{routes}\n{err}"
            );
        }
        let fine = [
            "  - { name: b, match: { prefix: /a, methods: [GET] }, mode: legacy }\n  - { name: a, match: { prefix: /a }, mode: legacy }\n",
            "  - { name: a, match: { path: /o, headers: { x-v: \"1\" } }, mode: legacy }\n  - { name: b, match: { path: /o, headers: { x-v: \"2\" } }, mode: legacy }\n",
            "  - { name: a, match: { prefix: /a }, mode: legacy }\n  - { name: b, match: { path: /a, methods: [GET] }, mode: legacy }\n",
        ];
        for routes in fine {
            compile(routes).unwrap_or_else(|e| panic!("{routes}\n{e}"));
        }
    }

    #[test]
    fn refusals_name_the_route_and_place() {
        let cases = [
            ("  - { name: a, match: { prefix: /a }, mode: migrated, service: nope }\n", "rules.yaml:6:64: route \"a\": unknown upstream \"nope\" (known: mono, svc)"),
            ("  - { name: a, match: { prefix: /a }, mode: legacy, service: svc }\n", "route \"a\": a legacy route has no service"),
            ("  - { name: a, match: { prefix: /a }, mode: canary, service: svc }\n", "route \"a\": mode canary needs `canary: { percent: N }`"),
            ("  - { name: a, match: { prefix: /a }, mode: shadow }\n", "route \"a\": mode shadow needs `service:`"),
            ("  - { name: a, match: { prefix: /a }, mode: canary, service: svc, canary: { percent: 101 } }\n", "canary.percent must be within 0..=100, got 101"),
            ("  - { name: a, match: { prefix: /a }, mode: canary, service: svc, canary: { percent: -1 } }\n", "canary.percent must be within 0..=100, got -1"),
            ("  - { name: a, match: { prefix: /a }, mode: canary, service: svc, canary: { percent: 5, sticky: ip } }\n", "canary.sticky \"ip\" must be header:NAME or cookie:NAME"),
            ("  - { name: a, match: { prefix: /a }, mode: legacy }\n  - { name: a, match: { prefix: /b }, mode: legacy }\n", "rules.yaml:7:13: route \"a\": duplicate route name (first used on line 6)"),
            ("  - { name: a, match: { prefix: /a }, mode: legacy }\n  - { name: b, match: { prefix: /a/ }, mode: legacy }\n", "route \"b\": same match as route \"a\" (line 6)"),
            ("  - { name: a, match: { path: /a, prefix: /a }, mode: legacy }\n", "match: set exactly one of path or prefix"),
            ("  - { name: a, match: { path: a }, mode: legacy }\n", "match.path must start with '/'"),
            ("  - { name: a, match: { path: /a/../b }, mode: legacy }\n", "is not a normalized path"),
            ("  - { name: a, match: { path: \"/a/{*rest}\" }, mode: legacy }\n", "catch-all"),
            ("  - { name: a, match: { prefix: /a, methods: [FETCH] }, mode: legacy }\n", "unknown method \"FETCH\""),
            ("  - { name: a, match: { prefix: /a, colour: red }, mode: legacy }\n", "route \"a\": unknown field `colour`"),
            ("  - { name: a, match: { prefix: /a }, mode: sideways }\n", "route \"a\": unknown variant `sideways`"),
        ];
        for (routes, want) in cases {
            let err = compile(routes)
                .err()
                .unwrap_or_else(|| panic!("accepted: {routes}"))
                .to_string();
            assert!(err.contains(want), "for {routes}\n got: {err}\nwant: {want}");
        }
    }

    #[test]
    fn bad_upstreams_and_durations() {
        let file = Path::new("rules.yaml");
        let cases = [
            (
                "legacy: m\nupstreams:\n  m: { url: \"ftp://x:1\" }\n",
                "rules.yaml:3:13: upstream \"m\": bad url \"ftp://x:1\": scheme must be http://",
            ),
            (
                "legacy: m\nupstreams:\n  m: { url: \"http://127.0.0.1:1/base\" }\n",
                "a path is not allowed",
            ),
            (
                "legacy: m\nupstreams:\n  m: { url: \"http://127.0.0.1:1\", timeouts: { connect: soon } }\n",
                "timeouts.connect: bad duration \"soon\"",
            ),
            (
                "legacy: x\nupstreams:\n  m: { url: \"http://127.0.0.1:1\" }\n",
                "rules.yaml:1:9: legacy: unknown upstream \"x\" (known: m)",
            ),
        ];
        for (text, want) in cases {
            let err = config::parse(file, text)
                .and_then(|f| RuleSet::compile(file, &f))
                .expect_err("refused")
                .to_string();
            assert!(err.contains(want), "got: {err}\nwant: {want}");
        }
    }

    #[test]
    fn canary_buckets_are_fixed() {
        // The documented hash must never change: these values are part of the contract.
        assert_eq!(canary_bucket(b"42"), xxhash_rust::xxh3::xxh3_64(b"42") % 10_000);
        let c = Canary {
            percent: 10.0,
            threshold: 1000,
            sticky: None,
        };
        assert_eq!(c.side_of_bucket(999), Side::New);
        assert_eq!(c.side_of_bucket(1000), Side::Legacy);
    }

    #[test]
    fn cookie_values() {
        assert_eq!(cookie_value(b"a=1; uid=42; b=2", b"uid"), Some(&b"42"[..]));
        assert_eq!(cookie_value(b"uid=7", b"uid"), Some(&b"7"[..]));
        assert_eq!(cookie_value(b"xuid=7", b"uid"), None);
    }
}
