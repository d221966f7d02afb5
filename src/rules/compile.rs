//! The compiler: a parsed rules file to a `RuleSet`, reporting every mistake with `file:line:col`.
//!
//! It collects mistakes rather than stopping at the first, so one `check` shows them all.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Spanned;
use http::{HeaderName, Method};
use serde_saphyr::Location;

use super::*;
use crate::config::{self, ConfigError, ConfigErrors, Mode, Place, RulesFile};
use crate::diff::{self, ArrayOrder, Compare};

/// Validate a parsed file and build the lookup structures. Reports every mistake found.
pub fn compile(file: &Path, raw: &RulesFile) -> Result<RuleSet, ConfigErrors> {
    let mut c = Compiler {
        file,
        errors: Vec::new(),
    };
    let upstreams = c.upstreams(raw);
    let legacy = c.legacy(raw, &upstreams);
    let routes = c.routes(raw, &upstreams);
    c.refuse_shadowed(&routes);
    let (exact, templates, prefixes) = c.index(&routes);
    let trusted_proxies = c.trusted_proxies(raw);
    let settings = c.settings(raw);
    let discovery = c.discovery(raw, &routes);
    let autopilot = c.autopilot(raw);
    let force_side = c.force_side(raw);
    let dns_servers = c.dns_servers(raw);
    let tracing = c.tracing(raw);
    if !c.errors.is_empty() {
        return Err(ConfigErrors(c.errors));
    }
    Ok(RuleSet {
        settings,
        trusted_proxies,
        force_side,
        dns_servers,
        shadow_max_in_flight: raw
            .shadow_max_in_flight
            .as_ref()
            .map_or(DEFAULT_SHADOW_MAX_IN_FLIGHT, |n| n.value as usize),
        allow_semicolons: raw.allow_semicolons,
        preserve_header_case: raw.preserve_header_case,
        response_headers: raw.response_headers,
        discovery,
        autopilot,
        tracing,
        legacy,
        upstreams,
        routes,
        exact,
        templates,
        prefixes,
    })
}

/// What makes two rules' matches identical: pattern (templates by shape), methods, host and
/// conditions (in any order).
type MatchKey = (PathMatch, Option<u16>, Option<HostMatch>, Vec<String>);

fn match_key(route: &Route) -> MatchKey {
    let mut conditions: Vec<String> = route.conditions.iter().map(Condition::describe).collect();
    conditions.sort();
    (route.path.key(), route.methods, route.host.clone(), conditions)
}

/// A template with its parameter names replaced by position, so `/a/{id}` and `/a/{x}` are one shape.
pub(super) fn template_shape(t: &str) -> String {
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

/// The lookup tables: literal paths, templates (by shape) and prefixes, each to its routes in file order.
type Index = (
    HashMap<String, Vec<RouteId>>,
    matchit::Router<Vec<RouteId>>,
    HashMap<String, Vec<RouteId>>,
);

pub(super) struct Compiler<'a> {
    pub(super) file: &'a Path,
    pub(super) errors: Vec<ConfigError>,
}

impl Compiler<'_> {
    pub(super) fn err(&mut self, at: &Location, route: Option<&str>, message: String) {
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

    fn legacy(&mut self, raw: &RulesFile, upstreams: &[Upstream]) -> UpstreamId {
        match upstreams.iter().position(|u| u.name == raw.legacy.value) {
            Some(id) => id,
            None => {
                let known = upstreams.iter().map(|u| u.name.as_str()).collect::<Vec<_>>().join(", ");
                self.err(
                    &raw.legacy.referenced,
                    None,
                    format!("legacy: unknown upstream \"{}\" (known: {known})", raw.legacy.value),
                );
                0
            }
        }
    }

    /// Every route that compiles, without duplicate names or identical matches.
    fn routes(&mut self, raw: &RulesFile, upstreams: &[Upstream]) -> Vec<Route> {
        let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        let known = names.join(", ");
        let mut routes = Vec::with_capacity(raw.routes.len());
        let mut by_name: HashMap<&str, u64> = HashMap::new();
        let mut by_match: HashMap<MatchKey, (String, u64)> = HashMap::new();
        for r in &raw.routes {
            let name_loc = &r.value.name.referenced;
            if let Some(line) = by_name.insert(&r.value.name.value, name_loc.line()) {
                self.err(
                    name_loc,
                    Some(&r.value.name.value),
                    format!("duplicate route name (first used on line {line})"),
                );
                continue;
            }
            let Some(route) = self.route(r, &names, &known) else {
                continue;
            };
            let key = match_key(&route);
            if let Some((other, line)) = by_match.get(&key) {
                self.err(
                    &route.match_at,
                    Some(&route.name),
                    format!("same match as route \"{other}\" (line {line}); it would never be used"),
                );
                continue;
            }
            by_match.insert(key, (route.name.clone(), route.line));
            routes.push(route);
        }
        routes
    }

    /// Within one pattern the first matching rule wins, so a later rule whose requests an
    /// earlier rule always takes can never match: refuse it rather than let it sit unused.
    fn refuse_shadowed(&mut self, routes: &[Route]) {
        let mut by_pattern: HashMap<PathMatch, Vec<RouteId>> = HashMap::new();
        for (id, r) in routes.iter().enumerate() {
            let earlier = by_pattern.entry(r.path.key()).or_default();
            if let Some(&first) = earlier.iter().find(|&&e| routes[e].takes_all_of(r)) {
                let a = &routes[first];
                self.err(
                    &r.match_at,
                    Some(&r.name),
                    format!(
                        "never matches: route \"{}\" (line {}) has the same path and takes every request this one would; put the more specific route first",
                        a.name, a.line
                    ),
                );
            }
            earlier.push(id);
        }
    }

    fn index(&mut self, routes: &[Route]) -> Index {
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
                let r = &routes[ids[0]];
                self.err(&r.match_at, Some(&r.name), format!("path template can't be used: {e}"));
            }
        }
        (exact, templates, prefixes)
    }

    fn trusted_proxies(&mut self, raw: &RulesFile) -> Vec<ipnet::IpNet> {
        let mut nets = Vec::new();
        for t in raw.trusted_proxies.iter().flatten() {
            let v = t.value.trim();
            match v
                .parse::<ipnet::IpNet>()
                .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            {
                Ok(net) => nets.push(net),
                Err(_) => self.err(
                    &t.referenced,
                    None,
                    format!("trusted_proxies: \"{v}\" is not an IP address or CIDR (e.g. 10.0.0.0/8)"),
                ),
            }
        }
        nets
    }

    /// `discovery:` and `state_dir:`.
    fn discovery(&mut self, raw: &RulesFile, routes: &[Route]) -> Discovery {
        let d = raw.discovery.as_ref().map(|d| &d.value);
        let max_endpoints = self.count(
            &d.and_then(|d| d.max_endpoints.clone()),
            "discovery.max_endpoints",
            1..=100_000,
            DEFAULT_MAX_ENDPOINTS as u64,
        ) as usize;
        let fold_after = self.count(
            &d.and_then(|d| d.fold_after.clone()),
            "discovery.fold_after",
            2..=10_000,
            DEFAULT_FOLD_AFTER as u64,
        ) as usize;
        let mut templates = matchit::Router::new();
        for t in d.and_then(|d| d.templates.as_ref()).into_iter().flatten() {
            let v = t.value.trim();
            let bad = if !v.starts_with('/') {
                Some("must start with '/'".to_string())
            } else if v.contains("{*") {
                Some("can't hold a catch-all {*param}".to_string())
            } else {
                templates.insert(v, v.to_string()).err().map(|e| e.to_string())
            };
            if let Some(why) = bad {
                self.err(&t.referenced, None, format!("discovery.templates: \"{v}\" {why}"));
            }
        }
        // The monolith's OpenAPI templates, after the ones written above; one that clashes with
        // another's parameter names is left to the learner.
        let openapi = d
            .and_then(|d| d.openapi.as_ref())
            .map(|o| self.openapi(o))
            .unwrap_or_default();
        for (_, t) in &openapi {
            if templates.at(t).is_ok_and(|m| m.value == t) {
                continue;
            }
            if let Err(e) = templates.insert(t.as_str(), t.clone()) {
                tracing::debug!("discovery.openapi: {t} is not used as a template: {e}");
            }
        }
        let state_dir = match &raw.state_dir {
            Some(dir) if dir.value.trim().is_empty() => {
                self.err(
                    &dir.referenced,
                    None,
                    "state_dir is empty; give a directory, or remove it for the default .strangler/ beside this file"
                        .into(),
                );
                PathBuf::new()
            }
            Some(dir) => relative_to(self.file, &dir.value),
            None => relative_to(self.file, ".strangler"),
        };
        let mut capabilities: std::collections::HashSet<String> = routes
            .iter()
            .map(|r| {
                r.capability.clone().unwrap_or_else(|| {
                    let (PathMatch::Literal(p) | PathMatch::Template(p) | PathMatch::Prefix(p)) = &r.path;
                    default_capability(p)
                })
            })
            .collect();
        capabilities.remove("(other)");
        Discovery {
            enabled: d.and_then(|d| d.enabled).unwrap_or(true),
            max_endpoints,
            fold_after,
            templates,
            openapi,
            state_dir,
            capabilities,
        }
    }

    /// The process settings: listeners, admin token, client TLS and limits.
    fn settings(&mut self, raw: &RulesFile) -> Settings {
        let listen_tls = raw.listen_tls.as_ref().map(|t| {
            let t = &t.value;
            for f in [&t.cert, &t.key] {
                if let Err(e) = std::fs::metadata(relative_to(self.file, &f.value)) {
                    self.err(
                        &f.referenced,
                        None,
                        format!("listen_tls: can't read \"{}\": {e}", f.value),
                    );
                }
            }
            ListenTls {
                addr: t.addr.value.clone(),
                cert: relative_to(self.file, &t.cert.value),
                key: relative_to(self.file, &t.key.value),
            }
        });
        Settings {
            listen: raw.listen.as_ref().map(|s| s.value.clone()),
            admin: raw.admin.as_ref().map(|s| s.value.clone()),
            admin_token: raw.admin_token.clone().filter(|t| !t.is_empty()),
            listen_tls,
            limits: self.limits(&raw.limits),
            limits_set: LimitsSet {
                max_connections: raw.limits.max_connections.is_some(),
            },
        }
    }

    pub(super) fn size(&mut self, v: &Option<Spanned<String>>, route: Option<&str>, what: &str, default: u64) -> u64 {
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

    pub(super) fn duration(&mut self, v: &Option<Spanned<String>>, what: &str, default: Duration) -> Duration {
        self.duration_in(v, None, what, default)
    }

    pub(super) fn duration_in(
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

        let (methods, method_names) = match &m.methods {
            None => (None, Vec::new()),
            Some(list) => {
                if list.is_empty() {
                    self.err(
                        &f.matcher.referenced,
                        n,
                        "match.methods is empty; remove it to match every method".into(),
                    );
                }
                let (set, names) = self.methods(list, n, "match.methods");
                (Some(set), names)
            }
        };
        let (conditions, host) = self.conditions(m, n);

        let mode = f.mode.value.mode();
        let service = self.service(f, n, upstreams, known);
        let canary = self.route_canary(f, n);
        let fallback_on = self.fallback_on(f, n);
        let timeout = self.duration_in(&f.timeout, n, "timeout", DEFAULT_ROUTE_TIMEOUT);
        let max_body = f.max_body.as_ref().map(|_| self.size(&f.max_body, n, "max_body", 0));
        let shadow = self.route_shadow(f, n);
        let rollout = self.rollout(f, n);
        let rewrite = self.rewrite(f.rewrite.as_ref(), n, path.as_ref(), service.is_some());
        let compose = self.compose(f, n, path.as_ref(), upstreams, known).map(Arc::new);
        let rate_limit = self.rate_limit(f.rate_limit.as_ref(), n, service.is_some() || compose.is_some());
        let capability = f.capability.as_ref().and_then(|c| {
            let v = c.value.trim();
            let ok = !v.is_empty() && v.len() <= 64 && !v.contains(['/', '{', '}']) && !v.chars().any(char::is_control);
            if !ok {
                self.err(
                    &c.referenced,
                    n,
                    format!(
                        "capability \"{}\" must be a short name (like orders), without '/' or braces",
                        c.value
                    ),
                );
            }
            ok.then(|| v.to_string())
        });

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
            capability,
            rollout,
            rewrite,
            rate_limit,
            compose,
            name,
            line: r.referenced.line(),
            match_at: f.matcher.referenced,
            path: path?,
            methods,
            method_names,
            conditions,
            host,
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
            (spec.methods, spec.method_names) = self.methods(list, route, "shadow.methods");
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

    /// `service:`, checked against the mode and the known upstreams.
    fn service(
        &mut self,
        f: &config::RouteFile,
        n: Option<&str>,
        upstreams: &[&str],
        known: &str,
    ) -> Option<UpstreamId> {
        let mode = f.mode.value.mode();
        match (&f.service, mode) {
            // A legacy route may name the service it will move to: only requests that force their
            // side (`force_side:`) go there; a route with a rollout keeps it at every step.
            (None, Mode::Legacy) => None,
            // Its parts are its new side (checked by `compose`).
            (None, _) if f.compose.is_some() => None,
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
        }
    }

    /// `canary:`, only on a canary route, and required there.
    fn route_canary(&mut self, f: &config::RouteFile, n: Option<&str>) -> Option<Canary> {
        let mode = f.mode.value.mode();
        match (&f.canary, mode) {
            (Some(c), Mode::Canary) => self.canary(c, n),
            // The autopilot leaves the entry in place between canary steps: checked, unused.
            (Some(c), _) if f.rollout.is_some() => {
                self.canary(c, n);
                None
            }
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
        }
    }

    /// `fallback_on:` as a bit set of 5xx codes.
    fn fallback_on(&mut self, f: &config::RouteFile, n: Option<&str>) -> u128 {
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
        fallback_on
    }

    /// `shadow:`, on shadow routes (where it is optional) and canary routes.
    fn route_shadow(&mut self, f: &config::RouteFile, n: Option<&str>) -> Option<Arc<ShadowSpec>> {
        let mode = f.mode.value.mode();
        match (&f.shadow, mode) {
            (Some(sh), Mode::Shadow | Mode::Canary) => self.shadow(Some(sh), n).map(Arc::new),
            (None, Mode::Shadow) => self.shadow(None, n).map(Arc::new),
            // Kept for the shadow and canary steps of a rollout: checked, unused at this one.
            (Some(sh), _) if f.rollout.is_some() => {
                self.shadow(Some(sh), n);
                None
            }
            (Some(sh), m) => {
                self.err(
                    &sh.referenced,
                    n,
                    format!("`shadow` is for shadow and canary routes, not {m}; remove it or change `mode`"),
                );
                None
            }
            (None, _) => None,
        }
    }

    /// A list of methods as a bit set and the names as written (upper case). Every method must
    /// be a standard one: an extension method has no bit.
    fn methods(&mut self, list: &[Spanned<String>], route: Option<&str>, what: &str) -> (u16, Vec<String>) {
        let mut set = 0u16;
        let mut names = Vec::new();
        for meth in list {
            let upper = meth.value.trim().to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()).ok().map(|m| method_bit(&m)) {
                Some(bit) if bit != 0 => {
                    set |= bit;
                    names.push(upper);
                }
                _ => self.err(
                    &meth.referenced,
                    route,
                    format!(
                        "{what}: unknown method \"{}\" (allowed: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT)",
                        meth.value
                    ),
                ),
            }
        }
        (set, names)
    }
}

/// A path in rules.yaml, relative to the file's directory unless absolute.
pub(super) fn relative_to(file: &Path, p: &str) -> PathBuf {
    let p = Path::new(p.trim());
    match file.parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}
