//! Contract test of the bundled shop: each extracted service answers exactly like the monolith
//! for the endpoints it takes over (same status, same JSON apart from volatile fields).

mod common;

use std::net::SocketAddr;

use common::shop::{stable, start_shop, Shop};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Which server the monolith is compared with.
#[derive(Clone, Copy)]
enum Service {
    Inventory,
    Orders,
}

/// One request, sent to both servers.
struct Case {
    method: Method,
    path: String,
    body: Option<Body>,
    /// The answer is a record created now, so `created_at` is volatile.
    created: bool,
}

enum Body {
    Json(Value),
    Raw(&'static str, String),
}

fn get(path: impl Into<String>) -> Case {
    Case {
        method: Method::GET,
        path: path.into(),
        body: None,
        created: false,
    }
}

fn post(path: impl Into<String>, body: Value) -> Case {
    Case {
        method: Method::POST,
        path: path.into(),
        body: Some(Body::Json(body)),
        created: true,
    }
}

fn raw(path: &str, content_type: &'static str, body: impl Into<String>) -> Case {
    Case {
        method: Method::POST,
        path: path.into(),
        body: Some(Body::Raw(content_type, body.into())),
        created: false,
    }
}

fn delete(path: impl Into<String>) -> Case {
    Case {
        method: Method::DELETE,
        path: path.into(),
        body: None,
        created: false,
    }
}

async fn send(client: &reqwest::Client, addr: SocketAddr, case: &Case) -> (StatusCode, Value) {
    let mut request = client.request(case.method.clone(), format!("http://{addr}{}", case.path));
    request = match &case.body {
        Some(Body::Json(value)) => request.json(value),
        Some(Body::Raw(kind, text)) => request.header("content-type", *kind).body(text.clone()),
        None => request,
    };
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{} {}: {e}", case.method, case.path));
    let status = response.status();
    let text = response.text().await.expect("body");
    let value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{} {}: not JSON: {text}", case.method, case.path));
    (status, stable(value, case.created))
}

/// Sends every case to the monolith and then to the service, in order, and compares.
async fn assert_same(shop: &Shop, service: Service, cases: &[Case]) {
    let client = reqwest::Client::new();
    let other = match service {
        Service::Inventory => shop.inventory,
        Service::Orders => shop.orders,
    };
    for case in cases {
        let legacy = send(&client, shop.monolith, case).await;
        let new = send(&client, other, case).await;
        assert_eq!(
            legacy, new,
            "{} {}: monolith (left) and service (right) differ",
            case.method, case.path
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inventory_matches_the_monolith() {
    let shop = start_shop().await;
    let mut cases: Vec<Case> = [1, 2, 17, 40, 137, 240]
        .iter()
        .map(|id| get(format!("/api/inventory/SKU-{id:04}")))
        .collect();
    cases.extend([
        get("/api/inventory/SKU-9999"),
        get("/api/inventory/sku-0001"),
        post("/api/inventory/SKU-0003/reservations", json!({"quantity": 4})),
        post(
            "/api/inventory/SKU-0003/reservations",
            json!({"quantity": 1, "order_id": 7}),
        ),
        get("/api/inventory/SKU-0003"),
        post("/api/inventory/SKU-0040/reservations", json!({"quantity": 1})),
        post("/api/inventory/SKU-0003/reservations", json!({"quantity": 1000})),
        post("/api/inventory/SKU-9999/reservations", json!({"quantity": 1})),
        post("/api/inventory/SKU-0003/reservations", json!({"quantity": 0})),
        post("/api/inventory/SKU-0003/reservations", json!({"quantity": -3})),
        post("/api/inventory/SKU-0003/reservations", json!({"quantity": "3"})),
        post("/api/inventory/SKU-0003/reservations", json!({})),
        raw(
            "/api/inventory/SKU-0003/reservations",
            "application/json",
            "{\"quantity\": ",
        ),
        raw(
            "/api/inventory/SKU-0003/reservations",
            "text/plain",
            "{\"quantity\": 1}",
        ),
        raw(
            "/api/inventory/SKU-0003/reservations",
            "application/json",
            format!("{{\"quantity\": 1, \"pad\": \"{}\"}}", "x".repeat(70_000)),
        ),
        delete("/api/inventory/reservations/1"),
        delete("/api/inventory/reservations/1"),
        delete("/api/inventory/reservations/999"),
        delete("/api/inventory/reservations/abc"),
        get("/api/inventory/SKU-0003"),
        delete("/api/inventory/SKU-0003"),
    ]);
    assert_same(&shop, Service::Inventory, &cases).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_reads_match_the_monolith() {
    let shop = start_shop().await;
    let mut cases: Vec<Case> = [1, 2, 17, 33, 60, 99, 120]
        .iter()
        .map(|id| get(format!("/api/orders/{id}")))
        .collect();
    cases.extend([1, 7, 30, 60].iter().map(|id| get(format!("/api/users/{id}/orders"))));
    cases.extend([
        get("/api/orders/0"),
        get("/api/orders/121"),
        get("/api/orders/-5"),
        get("/api/orders/abc"),
        get("/api/orders/99999999999999999999"),
        get("/api/users/61/orders"),
        get("/api/users/x/orders"),
        delete("/api/orders/1"),
    ]);
    assert_same(&shop, Service::Orders, &cases).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn placing_orders_matches_the_monolith() {
    let shop = start_shop().await;
    let line = |sku: &str, quantity: i64| json!({"sku": sku, "quantity": quantity});
    let cases = [
        post(
            "/api/orders",
            json!({"user_id": 5, "items": [line("SKU-0001", 2), line("SKU-0002", 1)]}),
        ),
        post("/api/orders", json!({"user_id": 6, "items": [line("SKU-0004", 1)]})),
        Case {
            created: true,
            ..get("/api/orders/121")
        },
        Case {
            created: true,
            ..get("/api/orders/122")
        },
        get("/api/users/5/orders"),
        // All or nothing: the second line can't be met, so the first is not held either.
        post(
            "/api/orders",
            json!({"user_id": 5, "items": [line("SKU-0001", 1), line("SKU-0040", 1)]}),
        ),
        post("/api/orders", json!({"user_id": 5, "items": [line("SKU-0005", 1000)]})),
        post("/api/orders", json!({"user_id": 5, "items": []})),
        post("/api/orders", json!({"user_id": 5, "items": [line("SKU-0001", -1)]})),
        post("/api/orders", json!({"user_id": 5, "items": [line("SKU-0001", 0)]})),
        post("/api/orders", json!({"user_id": 5, "items": [line("SKU-0001", 1001)]})),
        post("/api/orders", json!({"user_id": 999, "items": [line("SKU-0001", 1)]})),
        post("/api/orders", json!({"user_id": 5, "items": [line("NOPE", 1)]})),
        post("/api/orders", json!({"user_id": "5", "items": []})),
        post("/api/orders", json!({"items": []})),
        post("/api/orders", json!([5])),
        raw("/api/orders", "application/json", "not json"),
        raw("/api/orders", "text/plain", "{}"),
        raw(
            "/api/orders",
            "application/json",
            format!("{{\"pad\": \"{}\"}}", "x".repeat(70_000)),
        ),
        get("/api/orders/123"),
    ];
    assert_same(&shop, Service::Orders, &cases).await;

    // Stock ends up the same in the monolith and in the inventory service.
    let mut stock: Vec<Case> = (1..=5).map(|id| get(format!("/api/inventory/SKU-{id:04}"))).collect();
    stock.push(get("/api/inventory/SKU-0040"));
    assert_same(&shop, Service::Inventory, &stock).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_health_have_the_same_shape() {
    let shop = start_shop().await;
    let client = reqwest::Client::new();
    for addr in [shop.monolith, shop.inventory, shop.orders] {
        let (status, body) = send(&client, addr, &get("/no/such/thing")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
        let (status, body) = send(&client, addr, &get("/healthz")).await;
        assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ok")));
    }
}
