//! The four modes, end to end, in front of the real monolith and the real extracted services.
//! Each service marks its answers (a fault-injection "drift" field), so the test sees who answered.

mod common;

use common::proxy::{rules, Proxy};
use common::shop::{stable, start_shop, Shop};
use serde_json::Value;
use shop_kit::faults::{Drift, FaultSettings};

const ROUTES: &str = r#"
  - name: catalog
    match: { prefix: /api/catalog }
    mode: legacy
  - name: inventory-read
    match: { prefix: /api/inventory, methods: [GET] }
    mode: migrated
    service: inventory
  - name: orders-read
    match: { path: "/api/orders/{id}", methods: [GET] }
    mode: shadow
    service: orders
  - name: reserve-all
    match: { path: "/api/inventory/{sku}/reservations", methods: [POST], headers: { x-canary: all } }
    mode: canary
    service: inventory
    canary: { percent: 100 }
  - name: reserve-none
    match: { path: "/api/inventory/{sku}/reservations", methods: [POST] }
    mode: canary
    service: inventory
    canary: { percent: 0 }
"#;

fn mark(name: &str) -> FaultSettings {
    FaultSettings {
        drift: Some(Drift {
            field: "answered_by".into(),
            value: Value::String(name.into()),
        }),
        ..FaultSettings::default()
    }
}

async fn setup() -> (Shop, Proxy) {
    let shop = start_shop().await;
    shop.inventory_faults.set(mark("inventory-service"));
    shop.orders_faults.set(mark("orders-service"));
    let proxy = Proxy::start(&rules(
        &[
            ("monolith", shop.monolith),
            ("inventory", shop.inventory),
            ("orders", shop.orders),
        ],
        ROUTES,
    ))
    .await;
    (shop, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_mode_is_served_by_the_right_side() {
    let (shop, proxy) = setup().await;
    let client = reqwest::Client::new();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.expect("request");
            let up = r.headers()["x-strangler-upstream"].to_str().unwrap().to_string();
            (r.status().as_u16(), up, r.json::<Value>().await.expect("json"))
        }
    };

    // legacy: the monolith answers, exactly as it does directly.
    let (status, up, via) = get(proxy.url("/api/catalog/products/7")).await;
    let (_, _, direct) = {
        let r = client
            .get(format!("http://{}/api/catalog/products/7", shop.monolith))
            .send()
            .await
            .unwrap();
        (0, String::new(), r.json::<Value>().await.unwrap())
    };
    assert_eq!((status, up.as_str()), (200, "monolith"));
    assert_eq!(stable(via, false), stable(direct, false));

    // migrated: the inventory service answers.
    let (status, up, v) = get(proxy.url("/api/inventory/SKU-0001")).await;
    assert_eq!((status, up.as_str()), (200, "inventory"));
    assert_eq!(v["answered_by"], "inventory-service");
    assert_eq!(v["sku"], "SKU-0001");

    // shadow: the monolith answers (the copy arrives with the shadow feature).
    let (status, up, v) = get(proxy.url("/api/orders/5")).await;
    assert_eq!((status, up.as_str()), (200, "monolith"));
    assert!(v.get("answered_by").is_none(), "{v}");
    assert_eq!(v["id"], 5);

    // canary at 100% and at 0%.
    let post = |headers: &'static [(&'static str, &'static str)]| {
        let mut req = client
            .post(proxy.url("/api/inventory/SKU-0002/reservations"))
            .json(&serde_json::json!({"quantity": 1}));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        async move {
            let r = req.send().await.expect("request");
            let up = r.headers()["x-strangler-upstream"].to_str().unwrap().to_string();
            (r.status().as_u16(), up, r.json::<Value>().await.expect("json"))
        }
    };
    let (status, up, v) = post(&[("x-canary", "all")]).await;
    assert_eq!((status, up.as_str()), (201, "inventory"), "{v}");
    assert_eq!(v["answered_by"], "inventory-service");
    let (status, up, v) = post(&[]).await;
    assert_eq!((status, up.as_str()), (201, "monolith"), "{v}");
    assert!(v.get("answered_by").is_none());

    // A page no rule covers goes to the monolith under route (none).
    let r = client.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-strangler-route"], "(none)");
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_path_never_reaches_the_shop() {
    let (_shop, proxy) = setup().await;
    let (status, text) = common::proxy::raw_get(proxy.addr, "/api/catalog/..%2F..%2Fadmin").await;
    assert_eq!(status, 400, "{text}");
    let r = reqwest::get(proxy.url("/api/catalog/products/1")).await.unwrap();
    assert_eq!(r.status(), 200, "the proxy keeps serving everyone else");
}
