//! Upstreams in the compiler: URLs parsed (a host name is resolved later, by dns.rs), peers
//! built with their timeouts and TLS, and the retry, circuit-breaker and health-check settings of
//! each; and `dns:`, the name servers to ask.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::config::Spanned;
use http::HeaderValue;
use pingora_core::upstreams::peer::HttpPeer;

use super::compile::{relative_to, Compiler};
use super::*;
use crate::config::{self, RulesFile};

impl Compiler<'_> {
    pub(super) fn upstreams(&mut self, raw: &RulesFile) -> Vec<Upstream> {
        let mut out = Vec::with_capacity(raw.upstreams.len());
        for (name, u) in &raw.upstreams {
            let at = &u.value.url.referenced;
            let (address, tls, url_host) = match parse_url(&u.value.url.value) {
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
            let dns_refresh = self.duration(
                &u.value.dns_refresh,
                &format!("upstream \"{name}\": dns_refresh"),
                DEFAULT_DNS_REFRESH,
            );
            let address = match address {
                Host::Ip(addr) => Address::Fixed(addr),
                Host::Name(host, port) => Address::Name {
                    host,
                    port,
                    refresh: dns_refresh.max(MIN_DNS_REFRESH),
                },
            };
            let mut peer = HttpPeer::new(address.placeholder(), tls, String::new());
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
                address,
                host,
                connect_timeout,
                response_timeout,
                idle_timeout,
                peer: UpstreamPeer::new(peer),
                retry,
                breaker,
                max_in_flight,
                health,
            });
        }
        out
    }

    /// `dns.servers`: IP or IP:port (53 by default) each.
    pub(super) fn dns_servers(&mut self, raw: &RulesFile) -> Vec<SocketAddr> {
        let Some(dns) = &raw.dns else { return Vec::new() };
        let mut out = Vec::new();
        for s in &dns.value.servers {
            let v = s.value.trim();
            let parsed = v
                .parse::<SocketAddr>()
                .or_else(|_| v.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            match parsed {
                Ok(a) => out.push(a),
                Err(_) => self.err(
                    &s.referenced,
                    None,
                    format!("dns.servers: \"{v}\" is not an IP address or IP:port (e.g. 10.96.0.10 or 127.0.0.1:5353)"),
                ),
            }
        }
        out
    }

    pub(super) fn count<T: Copy + PartialOrd + std::fmt::Display>(
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
}

/// `http://host[:port]` to a socket address, resolved once at load time.
/// Where an upstream URL points: its address, whether it is `https://`, and its host name.
fn parse_url(url: &str) -> Result<(Host, bool, String), String> {
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
    let parsed = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Host::Ip(SocketAddr::new(ip, port)),
        // Resolved when the rules are put in force, and again every `dns_refresh` (see dns.rs).
        Err(_) => Host::Name(host.to_ascii_lowercase(), port),
    };
    Ok((parsed, tls, host.to_string()))
}

enum Host {
    Ip(SocketAddr),
    Name(String, u16),
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
