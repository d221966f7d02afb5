//! The proxy's CPU per request with 100% shadowing against 0%, on the same route, in one run
//! (target: at most 1.5x). Two proxy processes serve the same route, one copying every request
//! and comparing the answers, one copying none; blocks of requests alternate between them, and
//! each process's CPU time is read from /proc.
//!
//! Run: `cargo bench --bench shadow`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::proxy::{rules, Proxy};
use common::shop::start_shop;
use std::collections::BTreeMap;

const BLOCKS: usize = 10;
const PER_BLOCK: usize = 500;

/// utime + stime from a /proc stat line, in seconds.
fn stat_seconds(stat: &str) -> f64 {
    // Fields after the ")" that closes the command name; utime and stime are 14th and 15th overall.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    stat_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat"))
}

/// utime + stime of each thread of a process, summed by thread name, in seconds.
fn thread_seconds(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read /proc task")
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let name = stat[stat.find('(').unwrap() + 1..stat.rfind(')').unwrap()].to_string();
        *out.entry(name).or_insert(0.0) += stat_seconds(&stat);
    }
    out
}

/// CPU per request of the shadow-off and shadow-on proxies, `clients` concurrent clients each
/// sending requests one after another; blocks alternate between the two proxies.
async fn cpu_phase(client: &reqwest::Client, off: &Proxy, on: &Proxy, clients: usize) {
    let mut cpu = [0.0f64; 2];
    let mut threads: [BTreeMap<String, f64>; 2] = Default::default();
    for block in 0..BLOCKS + 1 {
        for (i, proxy) in [off, on].into_iter().enumerate() {
            let url = proxy.url("/api/inventory/SKU-0001");
            let before = cpu_seconds(proxy.pid());
            let threads_before = thread_seconds(proxy.pid());
            let tasks = (0..clients).map(|_| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    for _ in 0..PER_BLOCK / clients {
                        let r = client.get(&url).send().await.unwrap();
                        assert!(r.status().is_success(), "{}", r.status());
                        let _ = r.bytes().await.unwrap();
                    }
                })
            });
            for t in futures_util::future::join_all(tasks).await {
                t.unwrap();
            }
            // Let the last copies finish before reading the CPU time.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if block > 0 {
                cpu[i] += cpu_seconds(proxy.pid()) - before;
                for (name, after) in thread_seconds(proxy.pid()) {
                    let spent = after - threads_before.get(&name).copied().unwrap_or(0.0);
                    *threads[i].entry(name).or_insert(0.0) += spent;
                }
            }
        }
    }
    let n = (BLOCKS * (PER_BLOCK / clients * clients)) as f64;
    let (off_us, on_us) = (cpu[0] / n * 1e6, cpu[1] / n * 1e6);
    println!("proxy CPU per request, {n} requests each, {clients} client(s), same route:");
    println!("  shadow off (sample 0): {off_us:.1} µs (baseline)");
    println!(
        "  shadow on (sample 1, copy + compare): {on_us:.1} µs; ratio {:.2}x (target <= 1.5x)",
        on_us / off_us
    );
    for (label, i) in [("off", 0), ("on", 1)] {
        let per_thread: Vec<String> = threads[i]
            .iter()
            .filter(|(_, s)| **s > 0.0)
            .map(|(name, s)| format!("{name} {:.1}", s / n * 1e6))
            .collect();
        println!(
            "    shadow {label}, µs per request by thread: {}",
            per_thread.join(", ")
        );
    }
}

#[tokio::main]
async fn main() {
    if !common::bench::measuring("shadow") {
        return;
    }
    let shop = start_shop().await;
    let route = |sample: &str| {
        format!("  - {{ name: stock, match: {{ prefix: /api/inventory }}, mode: shadow, service: inventory, shadow: {{ sample: {sample}, ignore: [\"$.served_at\"] }} }}\n")
    };
    let ups = [("monolith", shop.monolith), ("inventory", shop.inventory)];
    let on = Proxy::start(&rules(&ups, &route("1.0"))).await;
    let off = Proxy::start(&rules(&ups, &route("0.0"))).await;
    let client = reqwest::Client::new();
    // One client alone is the worst case: every event wakes the proxy from idle, and the copy's
    // answer is one more wake per request. Sixteen clients are a proxy under steady load.
    for clients in [1, 16] {
        cpu_phase(&client, &off, &on, clients).await;
    }
    let m = on.metrics().await;
    for line in m
        .lines()
        .filter(|l| l.starts_with("strangler_shadow_total{") && !l.ends_with(" 0"))
    {
        println!("  {line}");
    }

    // A shadow service that takes 5 s to answer: the client's latency must not notice.
    shop.inventory_faults.set(shop_kit::faults::FaultSettings {
        latency: std::time::Duration::from_secs(5),
        ..Default::default()
    });
    let mut lat: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..BLOCKS {
        for (i, proxy) in [&off, &on].into_iter().enumerate() {
            let url = proxy.url("/api/inventory/SKU-0001");
            for _ in 0..PER_BLOCK / 5 {
                let t = std::time::Instant::now();
                let r = client.get(&url).send().await.unwrap();
                let _ = r.bytes().await.unwrap();
                lat[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let p99 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        common::bench::percentile(v, 0.99)
    };
    let (off_p99, on_p99) = (p99(&mut lat[0]), p99(&mut lat[1]));
    println!(
        "client p99 with the shadow service 5 s slow, {} requests each, interleaved:",
        lat[0].len()
    );
    println!(
        "  shadow off: {off_p99:.3} ms (baseline); shadow on: {on_p99:.3} ms; ratio {:.2}x",
        on_p99 / off_p99
    );
    let m = on.metrics().await;
    for line in m
        .lines()
        .filter(|l| l.starts_with("strangler_shadow_skipped_total{") && !l.ends_with(" 0"))
    {
        println!("  {line}");
    }
}
