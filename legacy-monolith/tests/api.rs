//! End-to-end tests of the monolith's HTTP API over real loopback sockets and a temp SQLite.

use std::net::SocketAddr;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Monolith {
    addr: SocketAddr,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

async fn start() -> Monolith {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let config = legacy_monolith::Config::new(dir.path().join("data/monolith.db"));
    tokio::spawn(legacy_monolith::run(listener, config, async {
        let _ = stopped.await;
    }));
    Monolith {
        addr,
        http: reqwest::Client::new(),
        _dir: dir,
        _stop: stop,
    }
}

impl Monolith {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("http://{}{path}", self.addr));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        (status, value)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn available(&self, sku: &str) -> i64 {
        let (status, body) = self.get(&format!("/api/inventory/{sku}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["available"].as_i64().expect("available")
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

/// A seeded sku with a small positive stock, and that stock.
fn scarce_sku(skip: usize) -> (String, i64) {
    let seed = shop_kit::seed::generate();
    let stock = seed
        .stock
        .iter()
        .filter(|s| (2..10).contains(&s.on_hand))
        .nth(skip)
        .expect("seed has scarce skus");
    (stock.sku.clone(), stock.on_hand)
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_pages_and_products() {
    let shop = start().await;
    let (status, page) = shop.get("/api/catalog/products?page=2&per_page=5").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 240);
    assert_eq!(page["page"], 2);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(5));
    assert_eq!(page["items"][0]["id"], 6);

    let (_, first) = shop.get("/api/catalog/products").await;
    assert_eq!(first["per_page"], 20);
    let (_, beyond) = shop.get("/api/catalog/products?page=100").await;
    assert_eq!(beyond["items"], json!([]));

    for bad in ["?per_page=0", "?per_page=101", "?page=0", "?page=x", "?per_page=1.5"] {
        let (status, body) = shop.get(&format!("/api/catalog/products{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(code(&body), "bad_query");
    }

    let (status, product) = shop.get("/api/catalog/products/7").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(product["sku"], "SKU-0007");
    for field in ["name", "category", "description"] {
        assert!(product[field].is_string(), "{field}");
    }
    assert!(product["price_cents"].as_i64().is_some_and(|p| p > 0));

    let (status, body) = shop.get("/api/catalog/products/999").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = shop.get("/api/catalog/products/abc").await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "bad_id"));
}

#[tokio::test(flavor = "multi_thread")]
async fn volatile_fields_and_shell() {
    let shop = start().await;
    let response = shop
        .http
        .get(format!("http://{}/api/users/1", shop.addr))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("request");
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let user: Value = response.json().await.expect("json");
    assert_eq!(user["request_id"], "abc-123");
    assert!(user["served_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert_eq!(user["id"], 1);
    assert!(user["email"].as_str().is_some_and(|e| e.contains('@')));
    assert_eq!(user["created_at"], "2023-01-02T00:00:00Z");

    let (status, body) = shop.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["status"].as_str(), body["service"].as_str()),
        (Some("ok"), Some("legacy-monolith"))
    );

    let (status, body) = shop.get("/api/users/61").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = shop.get("/no/such/route").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = shop.call(Method::DELETE, "/api/orders/1", None).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let (status, body) = shop.call(Method::PUT, "/api/payments", Some(json!({}))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");

    // Over 64 KiB: 413 JSON, whatever the endpoint.
    let big = json!({ "user_id": 1, "items": [], "pad": "x".repeat(70 * 1024) });
    let (status, body) = shop.post("/api/orders", big).await;
    assert_eq!((status, code(&body)), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));

    let response = shop
        .http
        .post(format!("http://{}/api/payments", shop.addr))
        .header("content-type", "text/plain")
        .body("{\"order_id\": 1}")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: Value = response.json().await.expect("json");
    assert_eq!(code(&body), "unsupported_media_type");
}

#[tokio::test(flavor = "multi_thread")]
async fn html_pages() {
    let shop = start().await;
    for path in ["/", "/products/3", "/account/5"] {
        let response = shop
            .http
            .get(format!("http://{}{path}", shop.addr))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .to_string();
        assert!(kind.starts_with("text/html"), "{path}: {kind}");
        let html = response.text().await.expect("body");
        assert!(html.contains("Legacy Shop"), "{path}");
    }
    let (status, _) = shop.get("/account/999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = shop.get("/products/x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn reservations_hold_and_release_stock() {
    let shop = start().await;
    let (status, stock) = shop.get("/api/inventory/SKU-0001").await;
    assert_eq!(status, StatusCode::OK);
    let on_hand = stock["on_hand"].as_i64().expect("on_hand");
    assert_eq!(stock["reserved"], 0);
    assert_eq!(stock["available"], on_hand);

    let (status, held) = shop
        .post(
            "/api/inventory/SKU-0001/reservations",
            json!({"quantity": 3, "order_id": 9}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{held}");
    assert_eq!(
        (held["quantity"].as_i64(), held["order_id"].as_i64()),
        (Some(3), Some(9))
    );
    assert_eq!(held["available"], on_hand - 3);
    assert_eq!(shop.available("SKU-0001").await, on_hand - 3);

    let id = held["id"].as_i64().expect("id");
    let path = format!("/api/inventory/reservations/{id}");
    let (status, body) = shop.call(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["released"], true);
    assert_eq!(shop.available("SKU-0001").await, on_hand);
    let (status, body) = shop.call(Method::DELETE, &path, None).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = shop.call(Method::DELETE, "/api/inventory/reservations/x", None).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "bad_id"));

    for (body, want_status, want_code) in [
        (
            json!({"quantity": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_quantity",
        ),
        (
            json!({"quantity": -4}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_quantity",
        ),
        (
            json!({"quantity": 1001}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_quantity",
        ),
        (json!({"quantity": "two"}), StatusCode::BAD_REQUEST, "bad_json"),
        (json!({"qty": 1}), StatusCode::BAD_REQUEST, "bad_json"),
        (json!([1]), StatusCode::BAD_REQUEST, "bad_json"),
    ] {
        let (status, answer) = shop.post("/api/inventory/SKU-0001/reservations", body.clone()).await;
        assert_eq!((status, code(&answer)), (want_status, want_code), "{body}");
    }
    let response = shop
        .http
        .post(format!("http://{}/api/inventory/SKU-0001/reservations", shop.addr))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let (status, body) = shop
        .post("/api/inventory/SKU-9999/reservations", json!({"quantity": 1}))
        .await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = shop.get("/api/inventory/SKU-9999").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));

    let (status, body) = shop
        .post("/api/inventory/SKU-0040/reservations", json!({"quantity": 1}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "insufficient_stock"),
        "SKU-0040 is sold out"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_reserve_stock_all_or_nothing() {
    let shop = start().await;
    let before = shop.available("SKU-0002").await;
    let (status, order) = shop
        .post(
            "/api/orders",
            json!({"user_id": 4, "items": [{"sku": "SKU-0002", "quantity": 2}, {"sku": "SKU-0003", "quantity": 1}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["id"], 121, "ids continue after the 120 seeded orders");
    assert_eq!(order["status"], "pending");
    let lines = order["items"].as_array().expect("items");
    assert_eq!(lines.len(), 2);
    let line_sum: i64 = lines.iter().filter_map(|l| l["line_total_cents"].as_i64()).sum();
    assert_eq!(order["total_cents"], line_sum);
    assert_eq!(
        lines[0]["line_total_cents"],
        lines[0]["unit_price_cents"].as_i64().map(|p| p * 2).expect("price")
    );
    assert_eq!(shop.available("SKU-0002").await, before - 2);

    let (status, fetched) = shop.get("/api/orders/121").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["items"], order["items"]);
    let (status, mine) = shop.get("/api/users/4/orders").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mine["user_id"], 4);
    let ids: Vec<i64> = mine["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|o| o["id"].as_i64())
        .collect();
    assert_eq!(ids.last(), Some(&121));
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    // The second line cannot be met: nothing is held for the first one either.
    let (status, body) = shop
        .post(
            "/api/orders",
            json!({"user_id": 4, "items": [{"sku": "SKU-0002", "quantity": 1}, {"sku": "SKU-0040", "quantity": 1}]}),
        )
        .await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "insufficient_stock"));
    assert_eq!(shop.available("SKU-0002").await, before - 2);

    for (body, want_status, want_code) in [
        (
            json!({"user_id": 4, "items": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_order",
        ),
        (
            json!({"user_id": 4, "items": [{"sku": "SKU-0002", "quantity": -1}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_quantity",
        ),
        (
            json!({"user_id": 4, "items": [{"sku": "SKU-0002", "quantity": 0}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_quantity",
        ),
        (
            json!({"user_id": 999, "items": [{"sku": "SKU-0002", "quantity": 1}]}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"user_id": 4, "items": [{"sku": "SKU-9999", "quantity": 1}]}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"user_id": "4", "items": []}),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (json!({"items": []}), StatusCode::BAD_REQUEST, "bad_json"),
    ] {
        let (status, answer) = shop.post("/api/orders", body.clone()).await;
        assert_eq!((status, code(&answer)), (want_status, want_code), "{body}: {answer}");
    }
    let (status, body) = shop.get("/api/orders/12345").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = shop.get("/api/orders/one").await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "bad_id"));
    let (status, body) = shop.get("/api/users/77/orders").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn payments_capture_once() {
    let shop = start().await;
    let (_, order) = shop
        .post(
            "/api/orders",
            json!({"user_id": 2, "items": [{"sku": "SKU-0005", "quantity": 1}]}),
        )
        .await;
    let order_id = order["id"].as_i64().expect("id");
    let (status, body) = shop.get(&format!("/api/payments/order/{order_id}")).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));

    let (status, payment) = shop.post("/api/payments", json!({"order_id": order_id})).await;
    assert_eq!(status, StatusCode::CREATED, "{payment}");
    assert_eq!(payment["amount_cents"], order["total_cents"]);
    assert_eq!(payment["status"], "captured");
    let (_, paid) = shop.get(&format!("/api/orders/{order_id}")).await;
    assert_eq!(paid["status"], "paid");

    let (status, body) = shop.post("/api/payments", json!({"order_id": order_id})).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "already_paid"));
    let (status, fetched) = shop.get(&format!("/api/payments/order/{order_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["id"], payment["id"]);

    let (status, body) = shop.post("/api/payments", json!({"order_id": 99999})).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = shop.post("/api/payments", json!({"order": 1})).await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "bad_json"));
    let (status, body) = shop.get("/api/payments/order/x").await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "bad_id"));

    // Seeded paid orders already have their payment.
    let seed = shop_kit::seed::generate();
    let seeded = &seed.payments[0];
    let (status, body) = shop.post("/api/payments", json!({"order_id": seeded.order_id})).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "already_paid"));
    let (_, fetched) = shop.get(&format!("/api/payments/order/{}", seeded.order_id)).await;
    assert_eq!(fetched["amount_cents"], seeded.amount_cents);
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_reservations_never_oversell() {
    let shop = start().await;
    let (sku, on_hand) = scarce_sku(0);
    let path = format!("/api/inventory/{sku}/reservations");
    let attempts = (0..4 * on_hand).map(|_| shop.post(&path, json!({"quantity": 1})));
    let results = futures_join_all(attempts).await;
    let won = results.iter().filter(|(s, _)| *s == StatusCode::CREATED).count() as i64;
    let lost = results
        .iter()
        .filter(|(s, b)| *s == StatusCode::CONFLICT && code(b) == "insufficient_stock")
        .count() as i64;
    assert_eq!((won, lost), (on_hand, 3 * on_hand));
    assert!(results.iter().all(|(_, b)| b["available"].as_i64().unwrap_or(0) >= 0));
    assert_eq!(shop.available(&sku).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_orders_never_oversell() {
    let shop = start().await;
    let (sku, on_hand) = scarce_sku(1);
    let body = json!({"user_id": 3, "items": [{"sku": "SKU-0001", "quantity": 1}, {"sku": sku, "quantity": 1}]});
    let before = shop.available("SKU-0001").await;
    let attempts = (0..4 * on_hand).map(|_| shop.post("/api/orders", body.clone()));
    let results = futures_join_all(attempts).await;
    let won = results.iter().filter(|(s, _)| *s == StatusCode::CREATED).count() as i64;
    let lost = results.iter().filter(|(s, _)| *s == StatusCode::CONFLICT).count() as i64;
    assert_eq!((won, lost), (on_hand, 3 * on_hand));
    assert_eq!(shop.available(&sku).await, 0);
    assert_eq!(
        shop.available("SKU-0001").await,
        before - on_hand,
        "losers held nothing"
    );
}

/// Runs the futures concurrently on the runtime and collects their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future,
{
    let mut set = Vec::new();
    for f in futures {
        set.push(f);
    }
    let mut out = Vec::with_capacity(set.len());
    let mut pinned: Vec<_> = set.into_iter().map(Box::pin).collect();
    // Poll all of them together; join! for a dynamic count without an extra crate.
    let mut done: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, fut) in done.iter_mut().zip(pinned.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}
