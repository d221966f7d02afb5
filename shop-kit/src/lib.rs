//! Shared plumbing for the bundled shop: the legacy monolith and the extracted services.
//!
//! It sits beside both sides, not inside either, so the old code never depends on the new.
//! It holds no wire types: each server owns its own (`src/api.rs` in each crate), as separate
//! teams would, so the contract test in `tests/shop_contract.rs` can see one side drift.
//!
//! Layout:
//! - [`seed`]    deterministic seed data, identical for every database
//! - [`error`]   `ApiError`, the `{"error": {code, message}}` response
//! - [`extract`] `Json` / `Path` / `Query` extractors with JSON 4xx rejections
//! - [`http`]    `finish`: healthz, JSON 404/405, 64 KiB body limit, volatile fields
//! - [`faults`]  fault injection (services only): error rate, latency, refuse, drift
//! - [`serve`]   run a router until shutdown; drop and re-bind the socket for `refuse`
//! - [`db`]      one SQLite connection behind a mutex, used from `spawn_blocking`
//! - [`cli`]     fault flags, logging and Ctrl-C for the binaries
//! - [`time`]    RFC 3339 timestamps
//! - [`otel`]    OpenTelemetry: a span per request, the trace context handed on to calls

pub mod cli;
pub mod db;
pub mod error;
pub mod extract;
pub mod faults;
pub mod http;
pub mod otel;
pub mod seed;
pub mod serve;
pub mod time;

pub use error::{ApiError, ApiResult};
pub use faults::{Drift, FaultSettings, Faults};
pub use serve::serve;
