//! A shadow mismatch as stored for `GET /api/mismatches`: the request, both answers, the
//! differences and a JSON Patch, with credentials redacted and scrubbed wherever they appear.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::diff::{Answer, Difference};
use crate::headers::{TRACEPARENT, X_REQUEST_ID};

/// Mismatches kept per route for `GET /api/mismatches`.
pub const RING: usize = 100;
/// Bodies stored with a mismatch are cut to this.
pub const STORED_BODY: usize = 4096;

/// Headers never stored with a mismatch, whatever `redact:` says.
const ALWAYS_REDACTED: [HeaderName; 4] = [
    http::header::AUTHORIZATION,
    http::header::COOKIE,
    http::header::SET_COOKIE,
    http::header::PROXY_AUTHORIZATION,
];

/// One stored mismatch (as `GET /api/mismatches` shows it, and as `state_dir` keeps it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mismatch {
    pub at_unix: f64,
    pub route: String,
    pub method: String,
    pub path: String,
    pub request_id: String,
    /// The trace the copy belongs to (from its `traceparent`), or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    pub request_headers: serde_json::Map<String, Value>,
    pub status: Value,
    pub differences: Vec<Difference>,
    /// JSON Patch (RFC 6902) from the legacy body to the new one.
    pub patch: Vec<Value>,
    pub legacy_body: String,
    pub new_body: String,
}

/// What a mismatch record shows of a request.
pub struct RequestParts {
    pub method: String,
    pub target: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Its `x-request-id`, or empty.
    pub request_id: String,
    /// The trace id of its `traceparent`, or empty.
    pub trace_id: String,
}

impl RequestParts {
    /// The method, target and fields, read back from a request head written by `client::HeadBuilder`
    /// (only a mismatch needs them, so the copy never keeps them apart).
    pub fn read(head: &[u8]) -> RequestParts {
        let lines = memchr::memchr_iter(b'\n', head).count();
        let mut fields = vec![httparse::EMPTY_HEADER; lines];
        let mut req = httparse::Request::new(&mut fields);
        // The head was written by `HeadBuilder` from a parsed request: it parses.
        let _ = req.parse(head);
        let headers: Vec<(HeaderName, HeaderValue)> = req
            .headers
            .iter()
            .filter(|h| !h.name.is_empty())
            .filter_map(|h| {
                Some((
                    HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                    HeaderValue::from_bytes(h.value).ok()?,
                ))
            })
            .collect();
        let request_id = headers
            .iter()
            .find(|(n, _)| *n == X_REQUEST_ID)
            .map(|(_, v)| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let trace_id = headers
            .iter()
            .find(|(n, _)| *n == TRACEPARENT)
            .and_then(|(_, v)| crate::telemetry::trace_id(v.as_bytes()))
            .unwrap_or_default()
            .to_string();
        RequestParts {
            trace_id,
            method: req.method.unwrap_or_default().to_string(),
            target: req.path.unwrap_or_default().to_string(),
            headers,
            request_id,
        }
    }
}

/// Build the stored record of one mismatch: credentials (`redact` and the always-redacted
/// headers) are replaced in headers and scrubbed out of bodies and differences.
pub fn build(
    route: &str,
    redact: &[HeaderName],
    request: RequestParts,
    legacy: &Answer,
    new: &Answer,
    mut diffs: Vec<Difference>,
) -> Mismatch {
    let redacted = |name: &HeaderName| ALWAYS_REDACTED.contains(name) || redact.contains(name);
    for d in &mut diffs {
        if let Some(h) = d.path.strip_prefix("header:") {
            if HeaderName::from_bytes(h.as_bytes()).is_ok_and(|n| redacted(&n)) {
                d.legacy = d.legacy.as_ref().map(|_| Value::String("[redacted]".into()));
                d.new = d.new.as_ref().map(|_| Value::String("[redacted]".into()));
            }
        }
    }
    let mut request_headers = serde_json::Map::new();
    for (name, value) in request.headers.iter().filter(|(n, _)| !redacted(n)) {
        request_headers.insert(
            name.as_str().to_string(),
            Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
    }
    let patch: Vec<Value> = diffs
        .iter()
        .filter_map(|d| {
            let path = d.pointer.as_ref()?;
            Some(match (&d.legacy, &d.new) {
                (None, Some(v)) => json!({"op": "add", "path": path, "value": v}),
                (Some(_), None) => json!({"op": "remove", "path": path}),
                (_, v) => json!({"op": "replace", "path": path, "value": v}),
            })
        })
        .collect();
    // A service that echoes a credential must not get it stored either: scrub the values of the
    // redacted request headers (and their parts: a cookie's value, a bearer token) everywhere.
    let secrets = secret_values(request.headers.iter().filter(|(n, _)| redacted(n)).map(|(_, v)| v));
    let mut patch = patch;
    if !secrets.is_empty() {
        for d in &mut diffs {
            d.legacy
                .iter_mut()
                .chain(d.new.iter_mut())
                .for_each(|v| scrub_value(v, &secrets));
        }
        patch.iter_mut().for_each(|v| scrub_value(v, &secrets));
    }
    let cut = |b: &Bytes| scrub(&String::from_utf8_lossy(&b[..b.len().min(STORED_BODY)]), &secrets);
    Mismatch {
        at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        route: route.to_string(),
        method: request.method,
        path: request.target,
        request_id: request.request_id,
        trace_id: request.trace_id,
        request_headers,
        status: json!({"legacy": legacy.status, "new": new.status}),
        differences: diffs,
        patch,
        legacy_body: cut(&legacy.body),
        new_body: cut(&new.body),
    }
}

/// The strings a stored sample must not contain: each redacted header's value, and its parts
/// (`Bearer TOKEN` → TOKEN, `a=1; b=2` → 1 and 2). Parts shorter than 4 bytes are left alone.
fn secret_values<'a>(values: impl Iterator<Item = &'a http::HeaderValue>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        let parts = v
            .split([';', ',', ' '])
            .map(|p| p.split_once('=').map_or(p, |(_, val)| val).trim())
            .map(str::to_string)
            .collect::<Vec<_>>();
        out.push(v);
        out.extend(parts);
    }
    out.retain(|s| s.len() >= 4);
    // Longest first, so a whole value is replaced before its parts.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_string();
    for s in secrets {
        if text.contains(s.as_str()) {
            text = text.replace(s.as_str(), "[redacted]");
        }
    }
    text
}

fn scrub_value(v: &mut Value, secrets: &[String]) {
    match v {
        Value::String(s) => *s = scrub(s, secrets),
        Value::Array(a) => a.iter_mut().for_each(|v| scrub_value(v, secrets)),
        Value::Object(o) => o.values_mut().for_each(|v| scrub_value(v, secrets)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(list: &[&'static str]) -> Vec<HeaderValue> {
        list.iter().map(|v| HeaderValue::from_static(v)).collect()
    }

    #[test]
    fn secret_values_are_whole_values_and_their_parts_longest_first() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["Bearer abc123xyz"], &["Bearer abc123xyz", "abc123xyz", "Bearer"]),
            (
                &["session=s3cr3t; theme=dark"],
                &["session=s3cr3t; theme=dark", "s3cr3t", "dark"],
            ),
            // Parts under four bytes would scrub ordinary text: left alone.
            (&["a=1; b=22"], &["a=1; b=22"]),
            (&[], &[]),
        ];
        for (headers, want) in cases {
            let got = secret_values(values(headers).iter());
            assert_eq!(
                got,
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn scrub_replaces_every_occurrence() {
        let secrets = vec!["Bearer abc123xyz".to_string(), "abc123xyz".to_string()];
        let cases = [
            ("token Bearer abc123xyz here", "token [redacted] here"),
            ("abc123xyz and abc123xyz", "[redacted] and [redacted]"),
            ("nothing secret", "nothing secret"),
        ];
        for (text, want) in cases {
            assert_eq!(scrub(text, &secrets), want, "{text}");
        }
    }

    #[test]
    fn scrub_value_reaches_into_arrays_and_objects() {
        let secrets = vec!["abc123xyz".to_string()];
        let mut v = json!({"a": ["x abc123xyz", 7, {"b": "abc123xyz"}], "c": true});
        scrub_value(&mut v, &secrets);
        assert_eq!(v, json!({"a": ["x [redacted]", 7, {"b": "[redacted]"}], "c": true}));
    }

    #[test]
    fn a_stored_mismatch_holds_no_credential() {
        let head =
            b"GET /me HTTP/1.1\r\nauthorization: Bearer abc123xyz\r\nx-api-key: k3y-value\r\nx-request-id: r-9\r\n\r\n";
        let answer = |body: &'static str| Answer {
            status: 200,
            headers: http::HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        };
        let legacy = answer(r#"{"token":"abc123xyz","key":"k3y-value"}"#);
        let new = answer(r#"{"token":"other"}"#);
        let redact = [HeaderName::from_static("x-api-key")];
        let m = build("me", &redact, RequestParts::read(head), &legacy, &new, Vec::new());
        let stored = serde_json::to_string(&m).unwrap();
        assert!(!stored.contains("abc123xyz"), "{stored}");
        assert!(!stored.contains("k3y-value"), "{stored}");
        assert_eq!(m.request_id, "r-9");
        assert!(m.request_headers.contains_key("x-request-id"));
        assert!(!m.request_headers.contains_key("authorization"));
    }
}
