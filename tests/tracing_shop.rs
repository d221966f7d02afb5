//! One trace across the whole bundled shop: the client's span, the proxy's, the orders service's
//! (and its call to inventory, and inventory's), and the shadow copy's with the service's span
//! under it. The shop runs in this process and reads `OTEL_EXPORTER_OTLP_ENDPOINT` at start, so
//! this test has a file (a process) of its own.

mod common;

use common::otlp::{traced_proxy, Receiver, Span};
use common::shop::start_shop;

const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn named<'a>(spans: &'a [Span], service: &str, name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} of {service} in {spans:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_shows_the_client_the_proxy_the_services_and_the_shadow_copy() {
    let otlp = Receiver::start().await;
    // Set before any thread of the test reads the environment: the shop's servers read it at start.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint());
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "50");
    let shop = start_shop().await;
    let text = format!(
        "legacy: monolith\n\
         upstreams:\n\
         \x20 monolith: {{ url: \"http://{}\" }}\n\
         \x20 orders: {{ url: \"http://{}\" }}\n\
         routes:\n\
         \x20 - name: order-reads\n\
         \x20   match: {{ path: \"/api/orders/{{id}}\", methods: [GET] }}\n\
         \x20   mode: shadow\n\
         \x20   service: orders\n\
         \x20 - name: order-writes\n\
         \x20   match: {{ path: /api/orders, methods: [POST] }}\n\
         \x20   mode: migrated\n\
         \x20   service: orders\n",
        shop.monolith, shop.orders
    );
    let proxy = traced_proxy(&otlp.endpoint(), &text, &[]).await;
    let client = reqwest::Client::new();

    // A write: client -> proxy -> orders -> inventory.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let r = client
        .post(proxy.url("/api/orders"))
        .header("traceparent", format!("00-{trace}-{CLIENT_SPAN}-01"))
        .json(&serde_json::json!({"user_id": 1, "items": [{"sku": "SKU-0001", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // The proxy's request and attempt, orders' request and call, inventory's request.
    let spans = otlp.trace(trace, |s| s.len() >= 5).await;
    let proxy_span = named(&spans, "strangler", "POST /api/orders");
    assert_eq!(proxy_span.parent, CLIENT_SPAN);
    let attempt = named(&spans, "strangler", "attempt");
    assert_eq!(attempt.parent, proxy_span.span_id);
    let orders = named(&spans, "orders-service", "POST /api/orders");
    assert_eq!(
        orders.parent, attempt.span_id,
        "the service hangs under the proxy's attempt"
    );
    let call = named(&spans, "orders-service", "POST /api/inventory/{sku}/reservations");
    assert_eq!(call.parent, orders.span_id);
    let inventory = named(&spans, "inventory-service", "POST /api/inventory/{sku}/reservations");
    assert_eq!(inventory.parent, call.span_id);
    assert_eq!(inventory.attr("http.response.status_code"), Some("201"));

    // A read in shadow: the monolith answers under the attempt, the orders service under the copy.
    let trace = "1bf92f3577b34da6a3ce929d0e0e4737";
    let r = client
        .get(proxy.url("/api/orders/1"))
        .header("traceparent", format!("00-{trace}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The proxy's request, attempt and copy; the monolith's request and orders'.
    let spans = otlp.trace(trace, |s| s.len() >= 5).await;
    let proxy_span = named(&spans, "strangler", "GET /api/orders/{id}");
    let attempt = named(&spans, "strangler", "attempt");
    let copy = named(&spans, "strangler", "shadow copy");
    assert_eq!(
        (attempt.parent.as_str(), copy.parent.as_str()),
        (proxy_span.span_id.as_str(), proxy_span.span_id.as_str())
    );
    let monolith = named(&spans, "legacy-monolith", "GET /api/orders/{id}");
    assert_eq!(monolith.parent, attempt.span_id);
    let service = named(&spans, "orders-service", "GET /api/orders/{id}");
    assert_eq!(
        service.parent, copy.span_id,
        "the copy's request carries the copy's span"
    );
    assert!(copy.attr("strangler.shadow.result").is_some(), "{copy:#?}");
}
