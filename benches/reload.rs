//! Reload benchmark: compile + swap of a 10,000-route file, write-to-serve time, and request
//! latency during a burst of reloads against none, all in one run. Also route lookup at 10,000
//! rules against 10 rules (lookup is by hash map and radix tree, so it should barely change).
//!
//! Run: `cargo bench --bench reload`. Results go to stdout; BENCHMARKS.md records them.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use common::bench::percentile;
use common::proxy::{rules, Proxy};
use common::shop::start_shop;
use http::{HeaderMap, Method};
use strangler::config;
use strangler::live::Live;
use strangler::metrics::Metrics;
use strangler::rules::Request;

fn many_routes(n: usize) -> String {
    let mut s = String::from("legacy: monolith\nupstreams:\n  monolith: { url: \"http://127.0.0.1:8000\" }\n  svc: { url: \"http://127.0.0.1:8101\" }\nroutes:\n");
    for i in 0..n {
        let m = match i % 3 {
            0 => format!("path: /svc{i}/items"),
            1 => format!("path: \"/svc{i}/items/{{id}}\", methods: [GET]"),
            _ => format!("prefix: /pre{i}"),
        };
        let mode = match i % 4 {
            0 => "mode: legacy".to_string(),
            1 => "mode: shadow, service: svc".to_string(),
            2 => "mode: canary, service: svc, canary: { percent: 10, sticky: \"header:x-user-id\" }".to_string(),
            _ => "mode: migrated, service: svc".to_string(),
        };
        s.push_str(&format!("  - {{ name: r{i}, match: {{ {m} }}, {mode} }}\n"));
    }
    s
}

fn median_of(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    percentile(&xs, 0.5)
}

fn compile_and_swap() {
    let file = Path::new("rules.yaml");
    let text = many_routes(10_000);
    let metrics = Metrics::new();
    let first = strangler::rules::compile(file, &config::parse(file, &text).unwrap()).unwrap();
    let live = ArcSwap::from_pointee(Live::first(first, 0, &metrics));
    let (mut generic, mut parse, mut compile, mut swap) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for _ in 1..=7 {
        let t = Instant::now();
        let _value: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        generic.push(ms(t));

        let t = Instant::now();
        let raw = config::parse(file, &text).unwrap();
        parse.push(ms(t));
        let t = Instant::now();
        let rules = strangler::rules::compile(file, &raw).unwrap();
        compile.push(ms(t));
        let t = Instant::now();
        let old = live.load_full();
        let next = Live::replace(&old, rules, 0, &metrics);
        live.store(Arc::new(next));
        swap.push(ms(t));
    }
    let (g, p, c, w) = (
        median_of(generic),
        median_of(parse),
        median_of(compile),
        median_of(swap),
    );
    println!("10,000 routes ({} KiB of YAML), medians of 7:", text.len() / 1024);
    println!("  parse (serde-saphyr, with locations): {p:.1} ms");
    println!("  compile (validate, build lookup tables): {c:.1} ms");
    println!("  swap (metric handles, state carry-over, ArcSwap store): {w:.1} ms");
    println!(
        "  compile + swap: {:.1} ms (target < 100 ms); parse + compile + swap: {:.1} ms",
        c + w,
        p + c + w
    );
    println!("  baseline, YAML parse of the same file into a generic value: {g:.1} ms; parse+compile+swap / baseline = {:.2}x", (p + c + w) / g);
}

fn lookup_scaling() {
    let file = Path::new("rules.yaml");
    let time = |n: usize, path: &str| {
        let text = many_routes(n);
        let rules = strangler::rules::compile(file, &config::parse(file, &text).unwrap()).unwrap();
        let headers = HeaderMap::new();
        let iters = 2_000_000;
        let t = Instant::now();
        let mut hits = 0usize;
        for _ in 0..iters {
            hits += rules
                .lookup(&Request::new(&Method::GET, std::hint::black_box(path), &headers))
                .is_some() as usize;
        }
        assert_eq!(hits, iters);
        t.elapsed().as_secs_f64() * 1e9 / iters as f64
    };
    for path in ["/svc1/items/42", "/pre5/a/b/c"] {
        let small = time(10, path);
        let large = time(10_000, path);
        println!(
            "lookup {path}: {small:.0} ns at 10 routes, {large:.0} ns at 10,000 routes; ratio {:.2}x",
            large / small
        );
    }
}

async fn write_to_serve() {
    let shop = start_shop().await;
    let flip = |migrated: bool| {
        let route = if migrated {
            "  - { name: stock, match: { prefix: /api/inventory }, mode: migrated, service: inventory }\n"
        } else {
            "  - { name: stock, match: { prefix: /api/inventory }, mode: legacy }\n"
        };
        rules(&[("monolith", shop.monolith), ("inventory", shop.inventory)], route)
    };
    let proxy = Proxy::start(&flip(false)).await;
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    let mut request = Vec::new();
    for i in 1..=20 {
        let want = if i % 2 == 1 { "inventory" } else { "monolith" };
        let t = Instant::now();
        std::fs::write(&proxy.rules, flip(i % 2 == 1)).unwrap();
        loop {
            let r0 = Instant::now();
            let r = client.get(proxy.url("/api/inventory/SKU-0001")).send().await.unwrap();
            request.push(r0.elapsed().as_secs_f64() * 1e3);
            if r.headers()["x-strangler-upstream"] == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(t.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "write to serving (file watch, {} ms coalescing): median {:.0} ms, max {:.0} ms over 20 edits (target < 1000 ms)",
        strangler::reload::COALESCE.as_millis(),
        percentile(&samples, 0.5),
        samples[samples.len() - 1]
    );
    println!(
        "  baseline, one request through the proxy while polling: median {:.2} ms",
        median_of(request)
    );
}

/// p99 of GETs from 4 tasks for `secs`, with or without a reload every 50 ms.
async fn p99_under(proxy: &Arc<Proxy>, secs: u64, reloads: bool) -> (f64, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (proxy, stop) = (proxy.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = client.get(proxy.url("/api/catalog/products/3")).send().await.unwrap();
                let _ = r.bytes().await.unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            lat
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let client = reqwest::Client::new();
    let mut applied = 0;
    while Instant::now() < deadline {
        if reloads {
            let r = client.post(proxy.admin_url("/api/reload")).send().await.unwrap();
            assert_eq!(r.status(), 200);
            applied += 1;
        } else {
            // The same admin round trip without the reload, so only the reload itself differs.
            let r = client.get(proxy.admin_url("/api/config")).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    (percentile(&all, 0.99), applied)
}

async fn latency_during_reloads() {
    let shop = start_shop().await;
    let routes = "  - { name: catalog, match: { prefix: /api/catalog }, mode: legacy }\n  - { name: stock, match: { prefix: /api/inventory }, mode: migrated, service: inventory }\n";
    let proxy = Arc::new(
        Proxy::start(&rules(
            &[("monolith", shop.monolith), ("inventory", shop.inventory)],
            routes,
        ))
        .await,
    );
    let _ = p99_under(&proxy, 1, false).await; // warm up
                                               // Alternate, so drift on the shared machine hits both sides alike.
    let (mut base, mut burst, mut n) = (Vec::new(), Vec::new(), 0);
    for _ in 0..5 {
        base.push(p99_under(&proxy, 2, false).await.0);
        let (p, applied) = p99_under(&proxy, 2, true).await;
        burst.push(p);
        n += applied;
    }
    let (b, r) = (median_of(base), median_of(burst));
    println!(
        "p99 latency, 4 clients: no reloads (an admin GET every 50 ms instead) {b:.2} ms; during {n} reloads (one per 50 ms) {r:.2} ms; ratio {:.2}x (target <= 1.10x)",
        r / b
    );
}

fn main() {
    if !common::bench::measuring("reload") {
        return;
    }
    compile_and_swap();
    lookup_scaling();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(write_to_serve());
    rt.block_on(latency_during_reloads());
}
