//! Canary split accuracy and stickiness, through the real proxy to the real monolith and
//! inventory service. The inventory service marks its answers, so each side is counted from
//! the body, not from the proxy's own header.

mod common;

use common::proxy::{rules, Proxy};
use common::shop::start_shop;
use futures_util::{stream, StreamExt};
use serde_json::Value;
use shop_kit::faults::{Drift, FaultSettings};

const REQUESTS: usize = 5_000;

fn routes(sticky: bool) -> String {
    format!(
        "  - name: stock\n    match: {{ path: \"/api/inventory/{{sku}}\", methods: [GET] }}\n    mode: canary\n    service: inventory\n    canary: {{ percent: 10{} }}\n",
        if sticky { ", sticky: \"header:x-user-id\"" } else { "" }
    )
}

/// Send one request per user id (or per index, without sticky); return how many the new service answered.
async fn count_new(proxy: &Proxy, users: impl Iterator<Item = String>) -> (usize, usize) {
    let client = reqwest::Client::new();
    let url = proxy.url("/api/inventory/SKU-0003");
    let results: Vec<bool> = stream::iter(users)
        .map(|user| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let r = client
                    .get(&url)
                    .header("x-user-id", user)
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status(), 200);
                let header_says_new = r.headers()["x-strangler-upstream"] == "inventory";
                let v: Value = r.json().await.expect("json");
                let body_says_new = v["answered_by"] == "inventory-service";
                assert_eq!(
                    header_says_new, body_says_new,
                    "the header names the side that answered"
                );
                body_says_new
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    (results.iter().filter(|n| **n).count(), results.len())
}

async fn setup(sticky: bool) -> (common::shop::Shop, Proxy) {
    let shop = start_shop().await;
    shop.inventory_faults.set(FaultSettings {
        drift: Some(Drift {
            field: "answered_by".into(),
            value: Value::String("inventory-service".into()),
        }),
        ..FaultSettings::default()
    });
    let proxy = Proxy::start(&rules(
        &[("monolith", shop.monolith), ("inventory", shop.inventory)],
        &routes(sticky),
    ))
    .await;
    (shop, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn sticky_split_is_accurate_and_sticky() {
    let (_shop, proxy) = setup(true).await;
    let (new, total) = count_new(&proxy, (0..REQUESTS).map(|i| format!("user-{i}"))).await;
    let share = new as f64 * 100.0 / total as f64;
    assert!(
        (8.0..=12.0).contains(&share),
        "10% ± 2 expected, got {share:.2}% ({new}/{total})"
    );

    // The same key always lands on the same side.
    for i in 0..20 {
        let user = format!("user-{i}");
        let (new, total) = count_new(&proxy, std::iter::repeat_n(user.clone(), 10)).await;
        assert!(new == 0 || new == total, "{user} was split: {new}/{total}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn split_without_sticky_key_is_random_but_accurate() {
    let (_shop, proxy) = setup(false).await;
    // One user id for every request: without `sticky`, the split ignores it.
    let (new, total) = count_new(&proxy, std::iter::repeat_n("same-user".to_string(), REQUESTS)).await;
    let share = new as f64 * 100.0 / total as f64;
    assert!(
        (8.0..=12.0).contains(&share),
        "10% ± 2 expected, got {share:.2}% ({new}/{total})"
    );
}
