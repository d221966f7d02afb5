//! strangler: a strangler-fig migration proxy on Pingora.
//!
//! Layout:
//! - `config`  the rules.yaml file format (serde types with source locations)
//! - `rules`   the compiled, immutable `RuleSet`: validation and route lookup
//! - `path`    request path normalization, shared by matching and forwarding
//! - `proxy`   `impl ProxyHttp`: the request path
//! - `fallback` may a failed request be retried or sent to the monolith? (pure)
//! - `resilience` circuit breaker, bulkhead, backoff, health state (atomics, injected clock)
//! - `health`  active health checks of every upstream
//! - `metrics` every Prometheus metric; per-route handles built at load
//! - `reload`  hot reload: file watch, SIGHUP, POST /api/reload; keep the last good rules
//! - `admin`   the admin listener: health, metrics, JSON API, dashboard page
//! - `stats`   route counters sampled every 5 s: last-minute figures and charts
//! - `server`  load, bind and run the Pingora server
//! - `explain` `strangler explain`: why a request goes where it goes
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

pub mod admin;
pub mod client;
pub mod config;
pub mod diff;
pub mod explain;
pub mod fallback;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod reload;
pub mod resilience;
pub mod rules;
pub mod server;
pub mod shadow;
pub mod stats;
pub mod tls;
