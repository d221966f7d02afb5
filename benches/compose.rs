//! Composite answers: are the parts asked at the same time? Two parts of a 200 ms service against
//! one part of it, and a `for_each` over 8 values against one value, through the real proxy; the
//! medians of 15 requests each, as ratios (1.00x: concurrent; 2.00x or 8.00x: one after another).
//!
//! Run: `cargo bench --bench compose`. BENCHMARKS.md records the result.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::bench::percentile;
use common::proxy::Proxy;

const DELAY: Duration = Duration::from_millis(200);
const ROUNDS: usize = 15;

async fn median_ms(client: &reqwest::Client, url: &str) -> f64 {
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let r = client.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let _ = r.bytes().await;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    percentile(&times, 0.5)
}

#[tokio::main]
async fn main() {
    let (slow, _) = common::echo::start_slow(DELAY).await;
    let mono = common::echo::start("monolith").await;
    let text = format!(
        "legacy: monolith\n\
         upstreams:\n\
         \x20 monolith: {{ url: \"http://{mono}\" }}\n\
         \x20 slow: {{ url: \"http://{slow}\" }}\n\
         routes:\n\
         \x20 - {{ name: one, match: {{ path: /one, methods: [GET] }}, mode: compose, compose: {{ a: {{ service: slow, path: /a }} }} }}\n\
         \x20 - {{ name: two, match: {{ path: /two, methods: [GET] }}, mode: compose, compose: {{ a: {{ service: slow, path: /a }}, b: {{ service: slow, path: /b }} }} }}\n\
         \x20 - {{ name: fan, match: {{ path: /fan, methods: [GET] }}, mode: compose, compose: {{ list: {{ service: slow, path: /list, required: true }}, each: {{ service: slow, path: \"/each/{{v}}\", for_each: \"list.items[*].v\" }} }} }}\n"
    );
    let proxy = Proxy::start(&text).await;
    let client = reqwest::Client::new();
    // Warm the pool.
    median_ms(&client, &proxy.url("/two")).await;
    let one = median_ms(&client, &proxy.url("/one")).await;
    let two = median_ms(&client, &proxy.url("/two")).await;
    let fan = median_ms(&client, &proxy.url("/fan")).await;
    println!("composite answers, a service that takes {DELAY:?}, medians of {ROUNDS} requests:");
    println!("one part:                      {one:7.1} ms");
    println!(
        "two parts:                     {two:7.1} ms   two / one: {:.2}x",
        two / one
    );
    println!(
        "a part, then 8 for_each asks:  {fan:7.1} ms   / two steps of one: {:.2}x",
        fan / (2.0 * one)
    );
}
