//! Rate limits on the new side, end to end against echo servers: past the budget a route that can
//! fall back sends the monolith (`x-strangler-fallback: rate_limited`), one that can't answers
//! 429 with `Retry-After`; keyed budgets are apart; shadow copies count against the budget; and a
//! reload that leaves `rate_limit:` alone keeps the budget spent.
//!
//! The budgets refill at one request per 100 s, so nothing here depends on timing.

mod common;

use common::echo;
use common::proxy::{answer, metric, rules, Proxy};

const ROUTES: &str = "  - { name: soft, match: { prefix: /api/soft }, mode: migrated, service: orders, rate_limit: { per_second: 0.01, burst: 3 } }\n\
     \x20 - { name: hard, match: { prefix: /api/hard }, mode: migrated, service: orders, fallback: false, rate_limit: { per_second: 0.01, burst: 2 } }\n\
     \x20 - { name: per-user, match: { prefix: /api/user }, mode: migrated, service: orders, rate_limit: { per_second: 0.01, burst: 2, key: \"header:x-user\" } }\n\
     \x20 - { name: copied, match: { prefix: /api/copied }, mode: shadow, service: orders, rate_limit: { per_second: 0.01, burst: 2 } }\n";

async fn start() -> (Proxy, String) {
    let mono = echo::start("monolith").await;
    let orders = echo::start("orders").await;
    let text = rules(&[("monolith", mono), ("orders", orders)], ROUTES);
    (Proxy::start(&text).await, text)
}

fn get(proxy: &Proxy, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new().get(proxy.url(path))
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_budget_the_monolith_answers_or_429() {
    let (proxy, _) = start().await;
    for _ in 0..3 {
        let a = answer(get(&proxy, "/api/soft/1")).await;
        assert_eq!((a.status, a.upstream.as_str(), a.fallback), (200, "orders", None));
    }
    for _ in 0..2 {
        let a = answer(get(&proxy, "/api/soft/1")).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body["server"], "monolith");
        assert_eq!(a.fallback.as_deref(), Some("rate_limited"));
    }

    // No fallback: 429, with how long to wait.
    for _ in 0..2 {
        assert_eq!(answer(get(&proxy, "/api/hard/1")).await.status, 200);
    }
    let r = get(&proxy, "/api/hard/1").send().await.unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=100).contains(&wait), "retry-after {wait}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");

    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "strangler_fallbacks_total{reason=\"rate_limited\",route=\"soft\"}"),
        2,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_key_has_its_own_budget_and_a_missing_key_shares_one() {
    let (proxy, _) = start().await;
    let as_user = |u: &'static str| get(&proxy, "/api/user/1").header("x-user", u);
    for _ in 0..2 {
        assert_eq!(answer(as_user("ann")).await.upstream, "orders");
    }
    assert_eq!(answer(as_user("ann")).await.fallback.as_deref(), Some("rate_limited"));
    assert_eq!(answer(as_user("bob")).await.upstream, "orders", "another user's budget");
    for _ in 0..2 {
        assert_eq!(answer(get(&proxy, "/api/user/1")).await.upstream, "orders");
    }
    let a = answer(get(&proxy, "/api/user/1")).await;
    assert_eq!(
        a.fallback.as_deref(),
        Some("rate_limited"),
        "leaving the header out is no way around it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_copies_count_against_the_budget() {
    let (proxy, _) = start().await;
    for _ in 0..5 {
        assert_eq!(answer(get(&proxy, "/api/copied/1")).await.body["server"], "monolith");
    }
    // The copies are compared after the answers: wait for both to be counted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (skipped, compared, m) = loop {
        let m = proxy.metrics().await;
        let skipped = metric(
            &m,
            "strangler_shadow_skipped_total{reason=\"rate_limited\",route=\"copied\"}",
        );
        let compared: u64 = ["match", "mismatch"]
            .iter()
            .map(|r| {
                metric(
                    &m,
                    &format!("strangler_shadow_total{{result=\"{r}\",route=\"copied\"}}"),
                )
            })
            .sum();
        if (skipped, compared) == (3, 2) || std::time::Instant::now() > deadline {
            break (skipped, compared, m);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!((skipped, compared), (3, 2), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_spent_budget_unless_the_limit_changes() {
    let (proxy, text) = start().await;
    for _ in 0..3 {
        assert_eq!(answer(get(&proxy, "/api/soft/1")).await.upstream, "orders");
    }
    let reload = |text: String| {
        let proxy = &proxy;
        async move {
            std::fs::write(&proxy.rules, text).unwrap();
            let r = reqwest::Client::new()
                .post(proxy.admin_url("/api/reload"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
    };
    // Another route changes; this one's budget stays spent.
    reload(text.replace("burst: 2, key", "burst: 4, key")).await;
    assert_eq!(
        answer(get(&proxy, "/api/soft/1")).await.fallback.as_deref(),
        Some("rate_limited")
    );
    // Its own limit changes: a fresh budget.
    reload(text.replace("per_second: 0.01, burst: 3", "per_second: 0.01, burst: 4")).await;
    assert_eq!(answer(get(&proxy, "/api/soft/1")).await.upstream, "orders");
}
