//! The access log: one line per request (tracing target `access`), built without allocating.
//!
//! Every field is a cheap clone of something the request already holds (the URI and header
//! values are reference-counted bytes, route and upstream names are the `HeaderValue`s built at
//! load). A copied request's line waits for the comparison, so it can carry `shadow_result`.

use http::{HeaderValue, Method, Uri};

/// One access log line, held until it can be written.
#[derive(Debug)]
pub struct AccessLine {
    pub method: Method,
    pub uri: Uri,
    pub route: HeaderValue,
    pub side: &'static str,
    pub upstream: HeaderValue,
    pub status: u16,
    pub duration_ms: f64,
    pub fallback: &'static str,
    /// `copied`, `not_copied` or `-`.
    pub shadow: &'static str,
    pub request_id: Option<HeaderValue>,
    pub traceparent: Option<HeaderValue>,
    /// A trusted tester chose the side (`force_side`).
    pub forced: bool,
}

fn text(v: Option<&HeaderValue>) -> &str {
    v.and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The trace id of a W3C `traceparent` (`00-TRACEID-SPANID-FLAGS`), or `-`.
fn trace_id(traceparent: Option<&HeaderValue>) -> &str {
    text(traceparent).split('-').nth(1).unwrap_or("-")
}

impl AccessLine {
    /// Write the line; `shadow_result` is `match`, `mismatch`, `error`, `skipped` or `-`.
    pub fn emit(&self, shadow_result: &str) {
        tracing::info!(
            target: "access",
            method = %self.method.as_str(),
            path = %self.uri.path(),
            route = %text(Some(&self.route)),
            side = self.side,
            upstream = %text(Some(&self.upstream)),
            status = self.status,
            duration_ms = self.duration_ms,
            fallback = self.fallback,
            shadow = self.shadow,
            shadow_result,
            request_id = %text(self.request_id.as_ref()),
            trace_id = %trace_id(self.traceparent.as_ref()),
            forced = self.forced,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        let cases = [
            (
                Some(v("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")),
                "4bf92f3577b34da6a3ce929d0e0e4736",
            ),
            (Some(v("garbage")), "-"),
            (None, "-"),
        ];
        for (header, want) in cases {
            assert_eq!(trace_id(header.as_ref()), want, "{header:?}");
        }
    }
}
