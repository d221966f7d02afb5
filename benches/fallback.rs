//! What falling back costs the request that falls back: its latency against the same request
//! sent straight to the monolith, in one run, interleaved so machine noise hits all alike.
//!
//! Run: `cargo bench --bench fallback`. BENCHMARKS.md records the results.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::bench::percentile;
use common::proxy::{free_port, Proxy};
use common::shop::start_shop;
use shop_kit::faults::FaultSettings;

const ROUNDS: usize = 2_000;

#[tokio::main]
async fn main() {
    if !common::bench::measuring("fallback") {
        return;
    }
    let shop = start_shop().await;
    shop.inventory_faults.set(FaultSettings {
        error_rate: 1.0,
        ..Default::default()
    });
    let closed = free_port();
    let text = format!(
        "legacy: monolith\nupstreams:\n  monolith: {{ url: \"http://{}\" }}\n  failing: {{ url: \"http://{}\", circuit_breaker: {{ enabled: false }} }}\n  down: {{ url: \"http://127.0.0.1:{closed}\", circuit_breaker: {{ enabled: false }} }}\nroutes:\n\
         \x20 - {{ name: via-5xx, match: {{ prefix: /api/inventory, headers: {{ x-case: status }} }}, mode: migrated, service: failing }}\n\
         \x20 - {{ name: via-refused, match: {{ prefix: /api/inventory, headers: {{ x-case: refused }} }}, mode: migrated, service: down }}\n\
         \x20 - {{ name: direct, match: {{ prefix: /api/inventory }}, mode: legacy }}\n",
        shop.monolith, shop.inventory
    );
    let proxy = Proxy::start(&text).await;
    let client = reqwest::Client::new();
    let url = proxy.url("/api/inventory/SKU-0001");
    let cases = [
        ("straight to the monolith", None),
        ("fallback after a 503", Some("status")),
        ("fallback after connection refused", Some("refused")),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); cases.len()];
    for round in 0..ROUNDS + 200 {
        for (i, (_, header)) in cases.iter().enumerate() {
            let mut req = client.get(&url);
            if let Some(h) = header {
                req = req.header("x-case", *h);
            }
            let t = Instant::now();
            let r = req.send().await.unwrap();
            let _ = r.bytes().await.unwrap();
            if round >= 200 {
                samples[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let mut base = (0.0, 0.0);
    println!("fallback cost, {ROUNDS} requests each, interleaved, one client:");
    for (i, (name, _)) in cases.iter().enumerate() {
        samples[i].sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&samples[i], 0.5), percentile(&samples[i], 0.99));
        if i == 0 {
            base = (p50, p99);
            println!("  {name}: p50 {p50:.3} ms, p99 {p99:.3} ms (baseline)");
        } else {
            println!(
                "  {name}: p50 {p50:.3} ms ({:.2}x), p99 {p99:.3} ms ({:.2}x)",
                p50 / base.0,
                p99 / base.1
            );
        }
    }
    let m = proxy.metrics().await;
    for line in m
        .lines()
        .filter(|l| l.starts_with("strangler_fallbacks_total{") && !l.ends_with(" 0"))
    {
        println!("  {line}");
    }
}
