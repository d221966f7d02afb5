//! Canary split accuracy and stickiness, through the real proxy to the real monolith and
//! inventory service. The inventory service marks its answers, so each side is counted from
//! the body, not from the proxy's own header.

mod common;

use common::proxy::{rules, Proxy};
use common::shop::start_shop_marked;
use futures_util::{stream, StreamExt};
use serde_json::Value;

const REQUESTS: usize = 5_000;

/// Distinct sticky keys for the 30% split. The split is a fixed function of the key, so the
/// share is the same on every run; the count only decides how tight a band a fair hash could
/// be held to: one standard deviation is sqrt(0.3 * 0.7 / 6000) = 0.59 points, so ± 3 points
/// is 5 of them, and a hash that favoured one side would not pass by luck.
const STICKY_USERS: usize = 6_000;

/// Users asked of both replicas.
const REPLICA_USERS: usize = 2_000;

fn routes(percent: u32, sticky: bool) -> String {
    format!(
        "  - name: stock\n    match: {{ path: \"/api/inventory/{{sku}}\", methods: [GET] }}\n    mode: canary\n    service: inventory\n    canary: {{ percent: {percent}{} }}\n",
        if sticky { ", sticky: \"header:x-user-id\"" } else { "" }
    )
}

/// Send one request per user id, 16 at a time over the client's kept-alive connections; return
/// for each user, in order, whether the new service answered.
async fn sides(proxy: &Proxy, users: impl Iterator<Item = String>) -> Vec<bool> {
    let client = reqwest::Client::new();
    let url = proxy.url("/api/inventory/SKU-0003");
    stream::iter(users)
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
        .buffered(16)
        .collect()
        .await
}

/// How many of the requests the new service answered, and how many were sent.
async fn count_new(proxy: &Proxy, users: impl Iterator<Item = String>) -> (usize, usize) {
    let results = sides(proxy, users).await;
    (results.iter().filter(|n| **n).count(), results.len())
}

fn shop_rules(shop: &common::shop::Shop, percent: u32, sticky: bool) -> String {
    rules(
        &[("monolith", shop.monolith), ("inventory", shop.inventory)],
        &routes(percent, sticky),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sticky_split_is_accurate_and_sticky() {
    let shop = start_shop_marked().await;
    let proxy = Proxy::start(&shop_rules(&shop, 30, true)).await;
    let (new, total) = count_new(&proxy, (0..STICKY_USERS).map(|i| format!("user-{i}"))).await;
    let share = new as f64 * 100.0 / total as f64;
    assert!(
        (27.0..=33.0).contains(&share),
        "30% ± 3 expected over {total} users, got {share:.2}% ({new}/{total})"
    );

    // The same key always lands on the same side.
    for i in 0..20 {
        let user = format!("user-{i}");
        let (new, total) = count_new(&proxy, std::iter::repeat_n(user.clone(), 10)).await;
        assert!(new == 0 || new == total, "{user} was split: {new}/{total}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_on_one_rules_file_put_each_user_on_the_same_side() {
    let shop = start_shop_marked().await;
    // Two proxy processes reading the very same file, as replicas behind a balancer do.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, shop_rules(&shop, 30, true)).unwrap();
    let a = Proxy::start_file(dir, path.clone(), &[]).await;
    let b = Proxy::start_file(tempfile::tempdir().unwrap(), path, &[]).await;

    let users: Vec<String> = (0..REPLICA_USERS).map(|i| format!("replica-user-{i}")).collect();
    let on_a = sides(&a, users.iter().cloned()).await;
    let on_b = sides(&b, users.iter().cloned()).await;
    let differ: Vec<&str> = users
        .iter()
        .zip(on_a.iter().zip(&on_b))
        .filter(|(_, (x, y))| x != y)
        .map(|(u, _)| u.as_str())
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {REPLICA_USERS} users land on different sides of the two replicas, e.g. {:?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
    // Agreement means something only if both sides were in play.
    let new = on_a.iter().filter(|n| **n).count();
    assert!(
        (400..=800).contains(&new),
        "about 30% of {REPLICA_USERS} users on the new service, got {new}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn split_without_sticky_key_is_random_but_accurate() {
    let shop = start_shop_marked().await;
    let proxy = Proxy::start(&shop_rules(&shop, 10, false)).await;
    // One user id for every request: without `sticky`, the split ignores it.
    let (new, total) = count_new(&proxy, std::iter::repeat_n("same-user".to_string(), REQUESTS)).await;
    let share = new as f64 * 100.0 / total as f64;
    assert!(
        (8.0..=12.0).contains(&share),
        "10% ± 2 expected, got {share:.2}% ({new}/{total})"
    );
}
