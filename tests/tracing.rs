//! Distributed tracing, end to end: the real proxy exports its spans by OTLP to a receiver in
//! this test, which decodes them (`opentelemetry-proto`). One trace per request with its server
//! and attempt spans; a failing service's attempt, retry and fallback under the request; the
//! shadow copy's own span and result; the `traceparent` each upstream got; a trace started when
//! the client sent none; and a collector that is down costs no request, only counted spans.

mod common;

use std::net::SocketAddr;

use common::otlp::{traced_proxy, Receiver, Span};
use common::proxy::{metric, Proxy};
use serde_json::Value;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// The proxy on `text`, exporting to `endpoint`.
async fn traced(endpoint: &str, text: &str) -> Proxy {
    traced_proxy(endpoint, text, &[]).await
}

/// A receiver, and the proxy on a monolith and a service (echo servers) with `routes`, the
/// rules file starting with `head`.
async fn with_service(head: &str, routes: &str) -> (Receiver, Proxy, SocketAddr) {
    let otlp = Receiver::start().await;
    let mono = common::echo::start("monolith").await;
    let svc = common::echo::start("svc").await;
    let text = head.to_string() + &rules(mono, &format!("{{ url: \"http://{svc}\" }}"), routes);
    let proxy = traced(&otlp.endpoint(), &text).await;
    (otlp, proxy, svc)
}

fn rules(mono: SocketAddr, svc: &str, routes: &str) -> String {
    format!(
        "legacy: monolith\n\
         response_headers: true\n\
         upstreams:\n\
         \x20 monolith: {{ url: \"http://{mono}\" }}\n\
         \x20 svc: {svc}\n\
         routes:\n{routes}"
    )
}

/// GET `path` with the client's own trace context; the echo's answer.
async fn get_traced(proxy: &Proxy, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(proxy.url(path))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one span named {name:?} in {spans:#?}");
    found[0]
}

/// The `traceparent` an echo upstream says it received: (trace id, parent span id).
fn received(echo: &Value) -> (String, String) {
    let tp = echo["headers"]["traceparent"][0]
        .as_str()
        .expect("a traceparent upstream");
    let parts: Vec<&str> = tp.split('-').collect();
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_is_one_trace_with_its_server_and_attempt_spans() {
    let (otlp, proxy, svc) = with_service(
        "",
        "  - name: orders\n    match: { path: \"/api/orders/{id}\" }\n    mode: migrated\n    service: svc\n",
    )
    .await;

    // The client's trace goes on: the proxy's span is its child, the tracestate is kept.
    let (status, echo) = get_traced(&proxy, "/api/orders/7?x=1").await;
    assert_eq!(status, 200);
    assert_eq!(echo["server"], "svc");
    assert_eq!(echo["headers"]["tracestate"][0], "vendor=abc");
    let spans = otlp.trace(CLIENT_TRACE, |s| s.len() >= 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = one(&spans, "GET /api/orders/{id}");
    assert_eq!((server.kind, server.parent.as_str()), (2, CLIENT_SPAN));
    assert_eq!(server.service, "strangler");
    for (key, want) in [
        ("http.request.method", "GET"),
        ("url.path", "/api/orders/7"),
        ("http.route", "/api/orders/{id}"),
        ("http.response.status_code", "200"),
        ("strangler.route", "orders"),
        ("strangler.mode", "migrated"),
        ("strangler.side", "new"),
    ] {
        assert_eq!(server.attr(key), Some(want), "{key} in {server:#?}");
    }
    let attempt = one(&spans, "attempt");
    assert_eq!((attempt.kind, &attempt.parent), (3, &server.span_id));
    assert_eq!(attempt.attr("strangler.upstream"), Some("svc"));
    assert_eq!(attempt.attr("server.port"), Some(svc.port().to_string().as_str()));
    assert_eq!(attempt.attr("strangler.outcome"), Some("ok"));
    // The upstream's parent is its attempt's span.
    assert_eq!(received(&echo), (CLIENT_TRACE.to_string(), attempt.span_id.clone()));

    // No traceparent: the proxy starts a trace, and the access log names it.
    let r = reqwest::get(proxy.url("/elsewhere")).await.unwrap();
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["server"], "monolith");
    let (trace, parent) = received(&echo);
    assert_ne!(trace, CLIENT_TRACE);
    let spans = otlp.trace(&trace, |s| s.len() >= 2).await;
    let server = one(&spans, "GET");
    assert_eq!(server.parent, "", "a root span: {server:#?}");
    assert_eq!(server.attr("strangler.route"), Some("(none)"));
    assert_eq!(one(&spans, "attempt").span_id, parent);
    // The access log carries both traces' ids: the client's, and the one the proxy started.
    let want = [format!("trace_id={CLIENT_TRACE}"), format!("trace_id={trace}")];
    let log = proxy.log_with(&[&want[0], &want[1]]).await;
    assert!(want.iter().all(|w| log.contains(w.as_str())), "{want:?} in {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_service_shows_its_attempt_its_retry_and_the_fallback() {
    let otlp = Receiver::start().await;
    let mono = common::echo::start("monolith").await;
    // Nothing listens on port 1: every try of the service is refused.
    let svc = "{ url: \"http://127.0.0.1:1\", timeouts: { connect: 300ms }, circuit_breaker: { enabled: false }, retries: { attempts: 2, backoff: { base: 5ms, max: 10ms } } }";
    let text = rules(
        mono,
        svc,
        "  - name: stock\n    match: { prefix: /api/inventory }\n    mode: migrated\n    service: svc\n",
    );
    let proxy = traced(&otlp.endpoint(), &text).await;
    let (status, echo) = get_traced(&proxy, "/api/inventory/SKU-1").await;
    assert_eq!((status, echo["server"].as_str()), (200, Some("monolith")));
    let spans = otlp.trace(CLIENT_TRACE, |s| s.len() >= 4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let server = one(&spans, "GET /api/inventory/*");
    assert_eq!(server.attr("strangler.fallback_reason"), Some("connect_error"));
    assert_eq!(server.attr("strangler.side"), Some("legacy"));
    let (first, retry, fallback) = (one(&spans, "attempt"), one(&spans, "retry"), one(&spans, "fallback"));
    for s in [first, retry, fallback] {
        assert_eq!(s.parent, server.span_id, "every try hangs under the request: {s:#?}");
    }
    for failed in [first, retry] {
        assert_eq!(failed.attr("strangler.upstream"), Some("svc"));
        assert_eq!(failed.attr("strangler.outcome"), Some("failed"));
        assert!(failed.attr("error.type").is_some(), "{failed:#?}");
        assert_eq!(failed.status, 2, "an error status: {failed:#?}");
    }
    assert_eq!(fallback.attr("strangler.upstream"), Some("monolith"));
    assert_eq!(fallback.attr("http.response.status_code"), Some("200"));
    // The monolith's answer came to the fallback's span.
    assert_eq!(received(&echo).1, fallback.span_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shadow_copy_is_its_own_span_with_its_result() {
    let (otlp, proxy, _) = with_service(
        "tracing: { link: \"https://jaeger.example/trace/{trace_id}\" }\n",
        "  - name: orders\n    match: { prefix: /api/orders }\n    mode: shadow\n    service: svc\n",
    )
    .await;
    let (status, echo) = get_traced(&proxy, "/api/orders/1").await;
    assert_eq!((status, echo["server"].as_str()), (200, Some("monolith")));
    let spans = otlp.trace(CLIENT_TRACE, |s| s.len() >= 3).await;
    let server = one(&spans, "GET /api/orders/*");
    let attempt = one(&spans, "attempt");
    let copy = one(&spans, "shadow copy");
    assert_eq!(copy.parent, server.span_id);
    assert_ne!(copy.span_id, attempt.span_id);
    assert_eq!(copy.attr("strangler.shadow"), Some("true"));
    assert_eq!(copy.attr("strangler.upstream"), Some("svc"));
    // The echoes name themselves differently: the comparison finds the difference.
    assert_eq!(copy.attr("strangler.shadow.result"), Some("mismatch"));
    assert!(
        copy.attr("strangler.shadow.differences")
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 1
    );

    // The service's request hung under the copy, not under the real request: the stored
    // mismatch shows what the service received, with the trace id and the link to the trace.
    let m = proxy.admin_json("/api/mismatches?route=orders").await;
    let m = &m["mismatches"][0];
    assert_eq!(m["trace_id"], CLIENT_TRACE);
    assert_eq!(m["trace_url"], format!("https://jaeger.example/trace/{CLIENT_TRACE}"));
    let new: Value = serde_json::from_str(m["new_body"].as_str().unwrap()).unwrap();
    assert_eq!(received(&new), (CLIENT_TRACE.to_string(), copy.span_id.clone()));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_collector_down_no_request_fails_and_drops_are_counted() {
    let mono = common::echo::start("monolith").await;
    let text = rules(mono, "{ url: \"http://127.0.0.1:1\" }", "");
    // Nothing listens there.
    let proxy = traced("http://127.0.0.1:1", &text).await;
    let client = reqwest::Client::new();
    for i in 0..50 {
        let r = client.get(proxy.url(&format!("/p/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let m = proxy.metrics_with(&["strangler_trace_spans_dropped_total"]).await;
    let dropped = |m: &str| metric(m, "strangler_trace_spans_dropped_total");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut m = m;
    while dropped(&m) < 100 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        m = proxy.metrics().await;
    }
    // 50 server spans and 50 attempt spans, none taken.
    assert_eq!(dropped(&m), 100, "{m}");
    assert_eq!(metric(&m, "strangler_trace_spans_exported_total"), 0, "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sampler_of_zero_sends_nothing_and_still_propagates() {
    let otlp = Receiver::start().await;
    let mono = common::echo::start("monolith").await;
    let text = format!(
        "tracing: {{ endpoint: \"{}\", sampler: traceidratio, sampler_arg: 0 }}\n{}",
        otlp.endpoint(),
        rules(mono, "{ url: \"http://127.0.0.1:1\" }", "")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, text).unwrap();
    let proxy = Proxy::start_with(
        dir,
        path,
        &[],
        &[("RUST_LOG", "warn"), ("OTEL_BSP_SCHEDULE_DELAY", "50")],
    )
    .await;
    let echo: Value = reqwest::get(proxy.url("/x")).await.unwrap().json().await.unwrap();
    let tp = echo["headers"]["traceparent"][0].as_str().unwrap();
    assert!(
        tp.starts_with("00-") && tp.ends_with("-00"),
        "not sampled, still a context: {tp}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(otlp.all().is_empty(), "{:#?}", otlp.all());
}

#[tokio::test(flavor = "multi_thread")]
async fn each_part_of_a_composition_is_a_span_and_its_request_carries_it() {
    let (otlp, proxy, _) = with_service(
        "",
        "  - name: both\n    match: { path: /both, methods: [GET] }\n    mode: compose\n    compose:\n      a: { service: svc, path: /a, required: true }\n      b: { service: monolith, path: /b }\n",
    )
    .await;
    let (status, body) = get_traced(&proxy, "/both").await;
    assert_eq!(status, 200, "{body}");
    let spans = otlp.trace(CLIENT_TRACE, |s| s.len() >= 3).await;
    assert_eq!(spans.len(), 3, "the request and two parts, no attempt: {spans:#?}");
    let server = one(&spans, "GET /both");
    // `mode: compose` is a migrated route whose new side is a composition.
    assert_eq!(server.attr("strangler.mode"), Some("migrated"));
    for (name, upstream) in [("a", "svc"), ("b", "monolith")] {
        let part = spans
            .iter()
            .find(|s| s.attr("strangler.part") == Some(name))
            .unwrap_or_else(|| panic!("part {name} in {spans:#?}"));
        assert_eq!((part.name.as_str(), &part.parent), ("compose part", &server.span_id));
        assert_eq!(part.attr("strangler.upstream"), Some(upstream));
        assert_eq!(part.attr("strangler.outcome"), Some("ok"));
        assert_eq!(received(&body[name]), (CLIENT_TRACE.to_string(), part.span_id.clone()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_and_grpc_reach_the_collector_too() {
    let mono = common::echo::start("monolith").await;
    let text = rules(mono, "{ url: \"http://127.0.0.1:1\" }", "");
    for (protocol, otlp) in [
        ("http/json", Receiver::start().await),
        ("grpc", Receiver::start_grpc().await),
    ] {
        let proxy = traced_proxy(&otlp.endpoint(), &text, &[("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)]).await;
        let (status, _) = get_traced(&proxy, "/x").await;
        assert_eq!(status, 200);
        let spans = otlp.trace(CLIENT_TRACE, |s| s.len() >= 2).await;
        assert_eq!(one(&spans, "GET").parent, CLIENT_SPAN, "{protocol}");
        assert_eq!(one(&spans, "attempt").parent, one(&spans, "GET").span_id, "{protocol}");
        let protocols = otlp.protocols();
        assert!(
            !protocols.is_empty() && protocols.iter().all(|p| *p == protocol),
            "{protocols:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_collector_fills_the_queue_and_only_costs_spans() {
    // Each export waits 3 s for its answer; the queue holds 4 spans.
    let otlp = Receiver::start_slow(std::time::Duration::from_secs(3)).await;
    let mono = common::echo::start("monolith").await;
    let text = format!(
        "tracing: {{ queue: 4 }}\n{}",
        rules(mono, "{ url: \"http://127.0.0.1:1\" }", "")
    );
    let proxy = traced(&otlp.endpoint(), &text).await;
    let client = reqwest::Client::new();
    for i in 0..40 {
        let r = client.get(proxy.url(&format!("/p/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let m = proxy.metrics_with(&["strangler_trace_spans_dropped_total"]).await;
    // 80 spans made: the thread holds a few in its stuck export and the queue 4 more; every
    // request was answered meanwhile, and the rest of the spans were dropped and counted.
    let dropped = metric(&m, "strangler_trace_spans_dropped_total");
    assert!(dropped >= 40, "{dropped} dropped: {m}");
}
