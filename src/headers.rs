//! The header names strangler reads and writes, in one place both the proxy and its client reach.
//!
//! Headers the proxy adds are inserted by their `&'static str` names: Pingora keeps a second,
//! case-preserving map of names, and a `HeaderName` would be copied into it on every insert.
//! The `HeaderName` constants are for lookups. `hex` writes the ids the proxy puts in headers.

use http::HeaderName;

pub const REQUEST_ID: &str = "x-request-id";
pub const FORWARDED_FOR: &str = "x-forwarded-for";
pub const FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const FORWARDED_HOST: &str = "x-forwarded-host";
/// W3C Trace Context: the span the upstream's request hangs under.
pub const TRACE_PARENT: &str = "traceparent";
/// The route that took the request, on the response.
pub const STRANGLER_ROUTE: &str = "x-strangler-route";
/// The upstream that served the request, on the response.
pub const STRANGLER_UPSTREAM: &str = "x-strangler-upstream";
/// Why the request fell back to the monolith, on the response.
pub const STRANGLER_FALLBACK: &str = "x-strangler-fallback";
/// The rule-set generation that served the request; only when the request asks with `x-strangler-debug: 1`.
pub const STRANGLER_GENERATION: &str = "x-strangler-generation";
/// The hash of the rules file that served the request (see `rules::config_hash`); with the generation.
pub const STRANGLER_CONFIG: &str = "x-strangler-config";

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID);
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static(FORWARDED_FOR);
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static(FORWARDED_PROTO);
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static(FORWARDED_HOST);
pub const TRACEPARENT: HeaderName = HeaderName::from_static(TRACE_PARENT);
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Marks a shadow copy, so a service (and its logs) can tell copies from real requests.
pub const X_STRANGLER_SHADOW: HeaderName = HeaderName::from_static("x-strangler-shadow");
/// `x-strangler-debug: 1` asks for the generation and config hash on the response.
pub const X_STRANGLER_DEBUG: HeaderName = HeaderName::from_static("x-strangler-debug");
/// On a composed answer: the parts left null because they failed, comma-separated.
pub const X_STRANGLER_PARTIAL: HeaderName = HeaderName::from_static("x-strangler-partial");

/// Every byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    t
};

/// `bytes` as lowercase hex into `out` (two digits a byte), from a table of digit pairs: ids in
/// headers (request ids, trace context) without `format!` (1,700 instructions a request under
/// callgrind) or a digit at a time (370 for a `traceparent`).
pub fn hex(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}
