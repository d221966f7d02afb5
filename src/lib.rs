//! strangler: a strangler-fig migration proxy on Pingora.
//!
//! Layout (a star: config -> rules -> live -> proxy, with the features as leaves):
//! - `config`  the rules.yaml file format (serde types with source locations)
//! - `rules`   the compiled, immutable `RuleSet` and route lookup; `rules::compile` validates
//!   (every mistake with `file:line:col`), `rules::load` is the one loader
//! - `live`    the rule set in force and the state carried across reloads (`ArcSwap`)
//! - `path`    request path normalization, shared by matching and forwarding
//! - `headers` the header names the proxy and its client read and write
//! - `proxy`   `impl ProxyHttp`: the request path (only `server` imports it)
//! - `limits`  hostile input: framing and size checks, connection cap, request-head deadline
//! - `fallback` may a failed request be retried or sent to the monolith? (pure)
//! - `resilience` circuit breaker, bulkhead, backoff, health state (atomics, injected clock)
//! - `health`  active health checks of every upstream
//! - `client`  one HTTP/1.1 exchange off the proxied path (copies, health probes)
//! - `shadow`  the shadow copy's life: capture, send, judge; `shadow::mismatch` the stored record;
//!   `shadow::saved` learned noise and mismatches in `state_dir`
//! - `diff`    compare two answers (pure); `diff::fast` its byte-level fast path
//! - `autopilot` moves routes through their rollout steps on evidence, by editing rules.yaml
//! - `discovery` the migration map: endpoints learned from traffic, progress, kept in `state_dir`
//! - `state`   the state directory: opened once, atomic writes, corrupt files set aside
//! - `access`  the access log line
//! - `telemetry` OpenTelemetry spans of a request, its attempts and its shadow copy; OTLP export
//! - `metrics` every Prometheus metric; per-route handles built at load
//! - `reload`  hot reload: file watch, SIGHUP, POST /api/reload; keep the last good rules
//! - `admin`   the admin listener: health, metrics, JSON API, dashboard page
//! - `stats`   route counters sampled every 5 s: last-minute figures and charts
//! - `tls`     the client-facing certificate, swapped on reload
//! - `server`  load, bind and run the Pingora server
//! - `explain` `strangler explain`: why a request goes where it goes
//! - `suggest` `strangler suggest`: the routes that put a capability in shadow
//!
//! A request's path:
//! ```text
//! client ──► request_filter ──► upstream_peer ──► upstream_request_filter ──► upstream
//!            │ normalize path     │ prebuilt peer    │ x-forwarded-*, Host
//!            │ RuleSet::lookup    │                  │ normalized path
//!            │ Route::side        ▼                  ▼
//!            │ (legacy|new)     response_filter ◄── response       logging ──► metrics
//!            ▼ 400 on bad path    x-strangler-route/-upstream
//! ```

pub mod access;
pub mod addresses;
pub mod admin;
pub mod autopilot;
pub mod blocking;
pub mod client;
pub mod compose;
pub mod config;
pub mod diff;
pub mod discovery;
pub mod dns;
pub mod explain;
pub mod fallback;
pub mod headers;
pub mod health;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod resilience;
pub mod rules;
pub mod server;
pub mod shadow;
pub mod state;
pub mod stats;
pub mod suggest;
pub mod telemetry;
pub mod tls;
pub mod upstream;
