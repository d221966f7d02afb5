//! The rules.yaml file format: serde types that mirror the file, with source locations.
//!
//! Nothing here decides anything; `rules.rs` turns these types into the compiled
//! `RuleSet` and reports mistakes against the `Spanned` locations kept here.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Location;

/// A value with where it was written, for errors that point at `file:line:col`. Read through
/// serde_saphyr's own `Spanned`; in the JSON Schema it is just the value.
#[derive(Debug, Clone)]
pub struct Spanned<T> {
    pub value: T,
    /// Where the value is used (an alias's place, for a YAML alias).
    pub referenced: Location,
    /// Where the value is written.
    pub defined: Location,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        Ok(Spanned {
            value: s.value,
            referenced: s.referenced,
            defined: s.defined,
        })
    }
}

impl<T: JsonSchema> JsonSchema for Spanned<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(g)
    }
}

/// The JSON Schema of the file (draft-07, which every editor's YAML support reads), pretty-printed.
pub fn schema() -> String {
    let mut settings = schemars::generate::SchemaSettings::draft07();
    settings.meta_schema = Some("http://json-schema.org/draft-07/schema#".into());
    let mut schema = settings.into_generator().into_root_schema_for::<RulesFile>();
    schema.insert("title".into(), "strangler rules.yaml".into());
    schema.insert(
        "description".into(),
        "Routes of a strangler-fig migration: legacy -> shadow -> canary -> migrated. `strangler check` checks what a schema can't.".into(),
    );
    serde_json::to_string_pretty(&schema).expect("a schema is JSON")
}

/// The whole file, as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// Where clients connect, host:port. Default 0.0.0.0:8080; `--listen` overrides it.
    pub listen: Option<Spanned<String>>,
    /// The admin API, metrics and dashboard, host:port. Default 127.0.0.1:9911; `--admin` overrides it.
    pub admin: Option<Spanned<String>>,
    /// The upstream (a name under `upstreams`) that is the monolith: it serves every request no route sends elsewhere.
    pub legacy: Spanned<String>,
    /// Tell clients who answered (`x-strangler-route`, `-upstream`, `-fallback`). Default true.
    #[serde(default = "default_true")]
    pub response_headers: bool,
    /// The monolith and the new services, by name.
    pub upstreams: BTreeMap<String, Spanned<UpstreamFile>>,
    /// Peers (IPs or CIDRs) whose x-forwarded-* headers are believed. Default: none.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// Bearer token every admin POST must carry. Prefer the STRANGLER_ADMIN_TOKEN env var.
    pub admin_token: Option<String>,
    /// Shadow copies in flight at once, over all routes; past it copies are skipped. Default 256.
    pub shadow_max_in_flight: Option<Spanned<u64>>,
    /// Keep `;` path parameters (`/a;jsessionid=1`) instead of refusing them with 400. Default false.
    #[serde(default)]
    pub allow_semicolons: bool,
    /// Forward header names in the case they came in. Default false: lowercase, as Envoy and
    /// HAProxy send them, which saves growing a second header map per request.
    #[serde(default)]
    pub preserve_header_case: bool,
    /// Request and connection limits; every field has a safe default.
    #[serde(default)]
    pub limits: LimitsFile,
    /// Terminate TLS for clients (HTTP/1.1 and h2 by ALPN).
    pub listen_tls: Option<Spanned<ListenTlsFile>>,
    /// Where learned state is kept (the endpoint map). Default: `.strangler/` beside this file.
    pub state_dir: Option<Spanned<String>>,
    /// The migration map: endpoints learned from traffic.
    pub discovery: Option<Spanned<DiscoveryFile>>,
    /// The autopilot: moves routes with a `rollout` through their steps on evidence.
    pub autopilot: Option<Spanned<AutopilotFile>>,
    /// Testers first: a trusted request may choose its side on any route with a service.
    pub force_side: Option<Spanned<ForceSideFile>>,
    /// How upstream host names are resolved. Default: the system's resolver configuration.
    pub dns: Option<Spanned<DnsFile>>,
    /// OpenTelemetry traces, sent by OTLP. The standard `OTEL_*` environment variables override
    /// these keys. Off when no endpoint is set here or in `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub tracing: Option<Spanned<TracingFile>>,
    /// `routes:` left empty (null) means no routes, like an absent key.
    #[serde(default, deserialize_with = "null_as_empty")]
    #[schemars(with = "Option<Vec<RouteFile>>")]
    pub routes: Vec<Spanned<RouteFile>>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// http://host:port or https://host:port, without a path. A host name is resolved again
    /// every `dns_refresh`, and its addresses take turns.
    pub url: Spanned<String>,
    /// How often a host name in `url` is resolved again (a Kubernetes Service's pods move).
    /// Default 5s.
    pub dns_refresh: Option<Spanned<String>>,
    /// Host header to send instead of the client's.
    pub host: Option<Spanned<String>>,
    /// Connect, response and idle timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    /// Retries of a failed try (new services only, idempotent requests only).
    pub retries: Option<Spanned<RetriesFile>>,
    /// Stop sending to a failing service for a while; on by default for services.
    pub circuit_breaker: Option<Spanned<BreakerFile>>,
    /// Bulkhead: requests in flight to this upstream at most.
    pub max_in_flight: Option<Spanned<u64>>,
    /// Active health checks.
    pub health: Option<Spanned<HealthFile>>,
    /// For `https://` URLs: which CA to trust and which name to verify.
    pub tls: Option<Spanned<UpstreamTlsFile>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryFile {
    /// Learn endpoints from traffic. Default true.
    pub enabled: Option<bool>,
    /// Endpoints kept; the least busy beyond it count as `(other)`. Default 2000.
    pub max_endpoints: Option<Spanned<u64>>,
    /// Distinct names at one position under one parent before it becomes `{param}`. Default 25.
    pub fold_after: Option<Spanned<u64>>,
    /// Templates of your own (`/reports/{name}`), used before learned ones.
    pub templates: Option<Vec<Spanned<String>>>,
    /// The monolith's OpenAPI document (JSON or YAML): a file (relative to this one) or an
    /// http(s):// URL read at load. Its operations join the map, and those nobody calls show as
    /// `unseen`; its path templates are used before learned ones.
    pub openapi: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Request line plus headers, in bytes (e.g. 64KiB). Past it: 431.
    pub max_header_bytes: Option<Spanned<String>>,
    /// Header lines. Past it: 431.
    pub max_headers: Option<Spanned<u64>>,
    /// Request target (path and query), in bytes. Past it: 414.
    pub max_uri_bytes: Option<Spanned<String>>,
    /// Request body, in bytes; a route's `max_body` overrides it. Past it: 413.
    pub max_body: Option<Spanned<String>>,
    /// A client must finish each request head within this, counted from when the connection
    /// opened or the request's first bytes came; otherwise the connection is closed. A kept-alive
    /// connection with no next request is closed after the same time, in whole seconds.
    pub client_header_timeout: Option<Spanned<String>>,
    /// Client connections open at once; past it new connections are closed at once.
    pub max_connections: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenTlsFile {
    /// Where TLS clients connect, host:port.
    pub addr: Spanned<String>,
    /// PEM certificate chain. Replaced on disk: picked up by the next reload.
    pub cert: Spanned<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<String>,
}

/// TLS to an `https://` upstream. Certificate and hostname are always verified.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    /// PEM file of the CA certificates to trust instead of the system's.
    pub ca: Option<Spanned<String>>,
    /// Server name to send and verify. Default: the URL's host.
    pub sni: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetriesFile {
    /// Tries of the service including the first; 1 means no retry.
    pub attempts: Spanned<u32>,
    /// Exponential backoff with full jitter between tries.
    pub backoff: Option<BackoffFile>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffFile {
    /// The first retry's wait, before jitter. Default 20ms.
    pub base: Option<Spanned<String>>,
    /// The longest wait between tries. Default 200ms.
    pub max: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerFile {
    /// Open when this share of tries in the window failed. Default 0.5.
    pub failure_ratio: Option<Spanned<f64>>,
    /// Tries in the window before the ratio counts. Default 20.
    pub min_requests: Option<Spanned<u32>>,
    /// How far back failures count. Default 10s.
    pub window: Option<Spanned<String>>,
    /// How long it stays open before probing. Default 15s.
    pub open_for: Option<Spanned<String>>,
    /// Successful probes that close it again. Default 3.
    pub half_open_probes: Option<Spanned<u32>>,
    /// `false` turns the breaker off.
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// HTTP path to GET; absent: a TCP connect check.
    pub path: Option<Spanned<String>>,
    /// Time between checks. Default 2s.
    pub interval: Option<Spanned<String>>,
    /// A check slower than this failed. Default 1s.
    pub timeout: Option<Spanned<String>>,
    /// Failed checks in a row that mark it down. Default 3.
    pub unhealthy_after: Option<Spanned<u32>>,
    /// Passed checks in a row that mark it up again. Default 2.
    pub healthy_after: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    /// Default 1s.
    pub connect: Option<Spanned<String>>,
    /// Time to the response head, and between body reads. Default 30s.
    pub response: Option<Spanned<String>>,
    /// How long an idle pooled connection is kept. Default 60s.
    pub idle: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Unique; the `route` label of every metric and the `x-strangler-route` header.
    pub name: Spanned<String>,
    /// Which requests the route takes: a path or prefix, and optionally methods, headers, cookies, query parameters and host.
    #[serde(rename = "match")]
    pub matcher: Spanned<MatchFile>,
    /// legacy, shadow, canary, migrated, or compose (migrated, answered by `compose:`).
    pub mode: Spanned<ModeFile>,
    /// The new service (a name under `upstreams`); needed by shadow, canary and migrated.
    pub service: Option<Spanned<String>>,
    /// The share sent to the service in mode canary, and what keeps a user on one side.
    pub canary: Option<Spanned<CanaryFile>>,
    /// Fall back to the legacy upstream when the service fails (canary and migrated). Default true.
    pub fallback: Option<bool>,
    /// Service statuses that fall back (when the request is safe to send twice). Default 502, 503, 504.
    pub fallback_on: Option<Vec<Spanned<u16>>>,
    /// Treat every request on this route as safe to send twice. Default false.
    pub fallback_writes: Option<bool>,
    /// Overall deadline for the request, retries and fallback included. Default 30s.
    pub timeout: Option<Spanned<String>>,
    /// Shadow copy and comparison settings (shadow routes, and the legacy share of canary routes).
    pub shadow: Option<Spanned<ShadowFile>>,
    /// Request body limit for this route (e.g. 1MiB); overrides `limits.max_body`. Past it: 413.
    pub max_body: Option<Spanned<String>>,
    /// The business capability this route belongs to (the migration map's unit). Default: from the path.
    pub capability: Option<Spanned<String>>,
    /// Steps the autopilot moves this route through, and the evidence each needs.
    pub rollout: Option<Spanned<RolloutFile>>,
    /// The path the new side gets instead of the client's (the monolith always gets the original).
    pub rewrite: Option<Spanned<RewriteFile>>,
    /// A cap on the requests per second the new side receives; past it the monolith answers
    /// (or 429 when the route can't fall back). Per replica.
    pub rate_limit: Option<Spanned<RateLimitFile>>,
    /// The new side as one JSON answer built from several services' answers, by part name
    /// (API-gateway aggregation). Instead of `service`.
    pub compose: Option<Spanned<BTreeMap<String, Spanned<ComposePartFile>>>>,
    /// With `compose`: the most requests one `for_each` part may make. Default 50.
    pub max_fan_out: Option<Spanned<u64>>,
}

/// One part of a `compose:` answer.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComposePartFile {
    /// The upstream that answers this part.
    pub service: Spanned<String>,
    /// The path asked, a template filled from `match.path`'s parameters (and, with `for_each`,
    /// the item's value under the last key's name): `/api/orders/{id}`.
    pub path: Spanned<String>,
    /// A required part that fails fails the whole answer (502, or the monolith with fallback);
    /// another becomes null, named in `x-strangler-partial`. Default false. A 404 is null.
    pub required: Option<bool>,
    /// Ask once per value found in another part's answer, `PART.key[*].key`
    /// (`order.items[*].sku`); the part is the list of answers. It starts as soon as that part's
    /// answer is in.
    pub for_each: Option<Spanned<String>>,
}

/// `dns:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsFile {
    /// Name servers to ask instead of /etc/resolv.conf's: IP or IP:port (port 53 by default).
    pub servers: Vec<Spanned<String>>,
}

/// `tracing:`. Each key has a standard environment variable that overrides it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    /// The OTLP collector, e.g. `http://127.0.0.1:4318` (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    /// For HTTP, `/v1/traces` is added to it.
    pub endpoint: Option<Spanned<String>>,
    /// `http/protobuf` (default), `http/json` or `grpc` (`OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub protocol: Option<Spanned<String>>,
    /// The proxy's `service.name` on its spans. Default `strangler` (`OTEL_SERVICE_NAME`).
    pub service_name: Option<Spanned<String>>,
    /// `parentbased_always_on` (default), `parentbased_always_off`, `parentbased_traceidratio`,
    /// `always_on`, `always_off` or `traceidratio` (`OTEL_TRACES_SAMPLER`).
    pub sampler: Option<Spanned<String>>,
    /// The ratio for the `traceidratio` samplers, 0 to 1 (`OTEL_TRACES_SAMPLER_ARG`). Default 1.
    pub sampler_arg: Option<Spanned<f64>>,
    /// Finished spans waiting for export at most; past it spans are dropped and counted in
    /// `strangler_trace_spans_dropped_total`. Default 2048 (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub queue: Option<Spanned<u64>>,
    /// A link from a mismatch to its trace, e.g. `https://jaeger.example/trace/{trace_id}`.
    pub link: Option<Spanned<String>>,
}

/// A route's `rate_limit:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Requests per second, sustained (fractions allowed: 0.5 is one every two seconds).
    pub per_second: Spanned<f64>,
    /// Requests let through at once above the sustained rate. Default: one second's worth.
    pub burst: Option<Spanned<u64>>,
    /// Who shares a budget: `route` (the default), `ip` (the client's, through
    /// `trusted_proxies`), `header:NAME` or `cookie:NAME`.
    pub key: Option<Spanned<String>>,
}

/// `force_side:`: who may choose a request's side, and with which header.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForceSideFile {
    /// The header a tester sends: `new` or `legacy`. Default `x-strangler-side`.
    pub header: Option<Spanned<String>>,
    /// The header carrying the token. Default `x-strangler-token`.
    pub token_header: Option<Spanned<String>>,
    /// The environment variable holding the token.
    pub token_env: Option<Spanned<String>>,
    /// A file holding the token (its first line), relative to this file.
    pub token_file: Option<Spanned<String>>,
    /// Client networks trusted without a token (the client address, through `trusted_proxies`).
    pub cidrs: Option<Vec<Spanned<String>>>,
}

/// A route's `rewrite:`, one of the two.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewriteFile {
    /// Replaces the matched `match.prefix`: `/api/orders/7` becomes `/v1/orders/7` with `/v1/orders`.
    pub prefix: Option<Spanned<String>>,
    /// A template filled from `match.path`'s parameters: `/orders/{id}/lines`.
    pub path: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutopilotFile {
    /// Act on routes with a `rollout`. Default true once `autopilot:` is present.
    pub enabled: Option<bool>,
    /// `in_process` (default): each `strangler run` decides from its own figures. `external`:
    /// `strangler autopilot --prometheus URL` decides for the fleet, and replicas only serve.
    pub controller: Option<Spanned<String>>,
    /// How often routes are judged. Default 1s.
    pub interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutFile {
    /// `legacy`, `shadow`, canary percents (numbers), `migrated`, in order.
    pub steps: Spanned<Vec<Spanned<StepFile>>>,
    /// Least time at each step. Default 10m.
    pub hold: Option<Spanned<String>>,
    /// What the evidence must show before the next step.
    #[serde(default)]
    pub gates: GatesFile,
    /// `rollback` (default) or `pause`.
    pub on_failure: Option<Spanned<String>>,
    /// A person stopped the rollout (or the autopilot did, after a rollback).
    pub paused: Option<Spanned<bool>>,
}

/// A rollout step: a mode name or a canary percent.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StepFile {
    Percent(f64),
    Name(String),
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatesFile {
    /// Evidence needed at a step: compared copies in shadow, new-side requests in canary. Default 500.
    pub min_requests: Option<Spanned<u64>>,
    /// Shadow: least share of compared copies that matched, e.g. `99.5%`. Default 99%.
    pub match_rate: Option<Spanned<String>>,
    /// How much the new side's 5xx rate may exceed the monolith's, e.g. `+0.5%`. Default +1%.
    pub error_rate: Option<Spanned<String>>,
    /// The new side's p99 latency at most this times the monolith's, e.g. `1.25x`. Default 1.5x.
    pub p99: Option<Spanned<String>>,
    /// Most share of new-side requests that fell back, e.g. `1%`. Default 1%.
    pub fallback_rate: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowFile {
    /// Share of matching requests copied, 0..=1. Default 1.
    pub sample: Option<Spanned<f64>>,
    /// Methods copied. Default GET, HEAD: writes are shadowed only if listed.
    pub methods: Option<Vec<Spanned<String>>>,
    /// Request or response bodies past this are not compared. Default 1MiB.
    pub max_body: Option<Spanned<String>>,
    /// JSONPath subset (`$.a.b`, `[*]`, `[n]`) or `header:NAME`.
    pub ignore: Option<Vec<Spanned<String>>>,
    /// Headers that must match. Default [content-type].
    pub compare_headers: Option<Vec<Spanned<String>>>,
    /// `strict` (default) or `any`.
    pub array_order: Option<Spanned<String>>,
    /// Numbers this close count as equal. Default 0.
    pub numeric_tolerance: Option<Spanned<f64>>,
    /// Learn non-deterministic fields by asking the legacy upstream twice.
    pub noise: Option<Spanned<NoiseFile>>,
    /// Request headers never stored with a mismatch (besides authorization, cookie, set-cookie).
    pub redact: Option<Vec<Spanned<String>>>,
    /// Send the client's `authorization` and `cookie` with the copy. Default true: the new
    /// service usually needs them to answer as the monolith did.
    pub forward_credentials: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoiseFile {
    /// The share of copied requests also sent to the monolith a second time, 0..1.
    pub sample: Spanned<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    /// An exact path (/api/cart) or a template (/api/orders/{id}).
    pub path: Option<Spanned<String>>,
    /// A path prefix, matched on whole segments (/api/orders takes /api/orders/7, not /api/ordersX).
    pub prefix: Option<Spanned<String>>,
    /// Methods taken, e.g. [GET, HEAD]; default every method.
    pub methods: Option<Vec<Spanned<String>>>,
    /// Header name to an exact value, `true` (or the keyword `present`) for present, or
    /// `{ regex: "^ios-" }`.
    pub headers: Option<BTreeMap<String, Spanned<WantFile>>>,
    /// Cookie name to an exact value, or `true` for present.
    pub cookies: Option<BTreeMap<String, Spanned<WantFile>>>,
    /// Query parameter name to an exact value, or `true` for present.
    pub query: Option<BTreeMap<String, Spanned<WantFile>>>,
    /// The request's host: `shop.example`, or `*.shop.example` for any name under it.
    pub host: Option<Spanned<String>>,
}

/// What a header, cookie or query parameter must be.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged, expecting = "expected a value, true (for present) or { regex: PATTERN }")]
pub enum WantFile {
    /// `true`: present, with any value (`false` is refused).
    Present(bool),
    Exact(String),
    /// An unquoted number, compared as written.
    Number(serde_json::Number),
    /// A regular expression the value must match somewhere (anchor it with `^` and `$`).
    Regex(RegexFile),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegexFile {
    /// The pattern (Rust regex syntax), at most 1,024 characters.
    pub regex: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryFile {
    /// The share of users sent to the service, 0..100.
    pub percent: Spanned<f64>,
    /// `header:NAME` or `cookie:NAME`; absent means a random split per request.
    pub sticky: Option<Spanned<String>>,
}

/// `mode:` as written: one of the four stages, or `compose`, which is `migrated` with the answer
/// built by `compose:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModeFile {
    Legacy,
    Shadow,
    Canary,
    Migrated,
    Compose,
}

impl ModeFile {
    /// The stage: `compose` is `migrated`.
    pub fn mode(self) -> Mode {
        match self {
            ModeFile::Legacy => Mode::Legacy,
            ModeFile::Shadow => Mode::Shadow,
            ModeFile::Canary => Mode::Canary,
            ModeFile::Migrated | ModeFile::Compose => Mode::Migrated,
        }
    }
}

/// The four stages a route moves through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Legacy,
    Shadow,
    Canary,
    Migrated,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Legacy, Mode::Shadow, Mode::Canary, Mode::Migrated];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Legacy => "legacy",
            Mode::Shadow => "shadow",
            Mode::Canary => "canary",
            Mode::Migrated => "migrated",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_true() -> bool {
    true
}

/// A place in the rules file: `file:line:col`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: PathBuf,
    pub line: u64,
    pub col: u64,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// One mistake in the rules file, pointing at where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {}{message}", route.as_ref().map(|r| format!("route \"{r}\": ")).unwrap_or_default())]
pub struct ConfigError {
    pub place: Place,
    /// The route the mistake is in, when it is in one.
    pub route: Option<String>,
    pub message: String,
}

/// Every mistake found in one file. `check` prints all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Only the route names and where each route starts; read first so that a
/// type error deep inside a route can still name the route it is in.
#[derive(Deserialize, JsonSchema)]
struct Skeleton {
    #[serde(default)]
    routes: Vec<Spanned<RouteHead>>,
}

#[derive(Deserialize, JsonSchema)]
struct RouteHead {
    name: Option<String>,
}

/// Parse the text of a rules file. `file` is only used in error messages.
pub fn parse(file: &Path, text: &str) -> Result<RulesFile, ConfigErrors> {
    serde_saphyr::from_str::<RulesFile>(text).map_err(|err| {
        let loc = err.location();
        let (line, col) = loc.map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        let route = serde_saphyr::from_str::<Skeleton>(text).ok().and_then(|s| {
            s.routes
                .iter()
                .rev()
                .find(|r| r.referenced.line() != 0 && r.referenced.line() <= line)
                .and_then(|r| r.value.name.clone())
        });
        ConfigErrors(vec![ConfigError {
            place: Place {
                file: file.to_path_buf(),
                line: line.max(1),
                col: col.max(1),
            },
            route,
            message: clean_message(&err),
        }])
    })
}

/// serde-saphyr's message without its own location suffix or source snippet.
fn clean_message(err: &serde_saphyr::Error) -> String {
    let text = err.without_snippet().to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    let cut = first.find(" at line ").map_or(first, |i| &first[..i]);
    cut.trim_end_matches('.').to_string()
}
