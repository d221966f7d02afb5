//! Abuse, bounded in time: 2,000 idle connections, 200 slowloris clients and a stream of malformed
//! requests against the proxy at once, while a fifth client sends legitimate requests. Measures that
//! client's success rate and p50/p99 against the same client alone (same run), and whether the
//! proxy's RSS and open file descriptors return to their baseline afterwards (exits non-zero if they
//! don't within 30 s).
//!
//! Run: `cargo bench --bench abuse`. BENCHMARKS.md records the results.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proxy::{metric, rules, Proxy};
use common::shop::start_shop;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};

const IDLE: usize = 2_000;
const SLOWLORIS: usize = 200;
const MALFORMED_TASKS: usize = 4;
const BASELINE: Duration = Duration::from_secs(5);
const ABUSE: Duration = Duration::from_secs(20);
const RECOVERY: Duration = Duration::from_secs(30);
/// `limits.client_header_timeout` for this run: idle and slowloris connections are cut after it.
const HEADER_TIMEOUT_S: u64 = 5;

/// What the abusers did, shared by all their tasks.
#[derive(Default)]
struct Counts {
    idle_open: AtomicU64,
    idle_peak: AtomicU64,
    idle_cut: AtomicU64,
    slow_cut: AtomicU64,
    slow_held_ms: AtomicU64,
    connect_errors: AtomicU64,
    /// (payload, what came back) -> times.
    malformed: Mutex<BTreeMap<(&'static str, String), u64>>,
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of a process.
fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The legitimate client's results; latencies (ms) of successful requests only.
#[derive(Default)]
struct Legit {
    ok: u64,
    failed: u64,
    ms: Vec<f64>,
}

impl Legit {
    fn sent(&self) -> u64 {
        self.ok + self.failed
    }
    fn rate(&self) -> f64 {
        100.0 * self.ok as f64 / self.sent().max(1) as f64
    }
    fn pct(&mut self, p: f64) -> f64 {
        self.ms.sort_by(f64::total_cmp);
        if self.ms.is_empty() {
            return f64::NAN;
        }
        self.ms[((self.ms.len() - 1) as f64 * p).round() as usize]
    }
}

/// Sequential keep-alive GETs of the 240 catalog products, 10 ms apart, until `deadline`. Each
/// request is bounded by the client's 5 s timeout.
async fn legit(client: reqwest::Client, base: String, deadline: Instant) -> Legit {
    let mut out = Legit::default();
    let mut id = 0;
    while Instant::now() < deadline {
        id = id % 240 + 1;
        let t = Instant::now();
        let ok = match client.get(format!("{base}/api/catalog/products/{id}")).send().await {
            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            out.ok += 1;
            out.ms.push(t.elapsed().as_secs_f64() * 1e3);
        } else {
            out.failed += 1;
        }
        sleep(Duration::from_millis(10)).await;
    }
    out
}

/// One connection at a time that sends nothing; reopened whenever the proxy closes it.
async fn idle(addr: SocketAddr, start: Instant, deadline: Instant, c: Arc<Counts>) {
    sleep_until(start).await;
    while Instant::now() < deadline {
        let Ok(Ok(mut s)) = timeout_at(deadline, TcpStream::connect(addr)).await else {
            c.connect_errors.fetch_add(1, Relaxed);
            sleep(Duration::from_millis(100)).await;
            continue;
        };
        let open = c.idle_open.fetch_add(1, Relaxed) + 1;
        c.idle_peak.fetch_max(open, Relaxed);
        // Anything but the deadline (EOF, reset, stray bytes) means the proxy closed it.
        let cut = timeout_at(deadline, s.read(&mut [0u8; 64])).await.is_ok();
        c.idle_open.fetch_sub(1, Relaxed);
        if cut {
            c.idle_cut.fetch_add(1, Relaxed);
        }
    }
}

/// A request head that never ends: one more header line a second; reconnects when cut off.
async fn slowloris(addr: SocketAddr, start: Instant, deadline: Instant, c: Arc<Counts>) {
    sleep_until(start).await;
    while Instant::now() < deadline {
        let Ok(Ok(mut s)) = timeout_at(deadline, TcpStream::connect(addr)).await else {
            c.connect_errors.fetch_add(1, Relaxed);
            sleep(Duration::from_millis(100)).await;
            continue;
        };
        let opened = Instant::now();
        let head = b"GET /api/catalog/products/1 HTTP/1.1\r\nHost: a\r\n";
        let mut cut = s.write_all(head).await.is_err();
        let mut buf = [0u8; 256];
        while !cut && Instant::now() < deadline {
            let next = (Instant::now() + Duration::from_secs(1)).min(deadline);
            tokio::select! {
                _ = s.read(&mut buf) => { cut = true }
                _ = sleep_until(next) => { cut = s.write_all(b"X-a: b\r\n").await.is_err() }
            }
        }
        if cut {
            c.slow_cut.fetch_add(1, Relaxed);
            c.slow_held_ms.fetch_add(opened.elapsed().as_millis() as u64, Relaxed);
        }
    }
}

/// Malformed and oversized requests, each sent on a fresh connection.
fn payloads() -> Vec<(&'static str, Vec<u8>)> {
    let get = |target: &str, extra: &str| format!("GET {target} HTTP/1.1\r\nHost: a\r\n{extra}\r\n").into_bytes();
    let many: String = (0..200).map(|i| format!("X-h{i}: v\r\n")).collect();
    let post = "POST /api/catalog/products HTTP/1.1\r\nHost: a\r\n";
    vec![
        (
            "CL.TE",
            format!("{post}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX").into_bytes(),
        ),
        (
            "duplicate Content-Length",
            format!("{post}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello").into_bytes(),
        ),
        (
            "bad chunk size",
            format!("{post}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n").into_bytes(),
        ),
        (
            "declared 20 MB body",
            format!("{post}Content-Length: 20000000\r\n\r\n").into_bytes(),
        ),
        ("bare LF", b"GET /api/catalog/products/1 HTTP/1.1\nHost: a\n\n".to_vec()),
        ("NUL in path", get("/api/catalog/products/1%00", "")),
        ("encoded slash", get("/api/catalog/..%2fadmin", "")),
        (
            "100 KiB header",
            get(
                "/api/catalog/products/1",
                &format!("X-Big: {}\r\n", "a".repeat(100 * 1024)),
            ),
        ),
        (
            "9 KiB URI",
            get(&format!("/api/catalog/products?q={}", "a".repeat(9 * 1024)), ""),
        ),
        ("200 headers", get("/api/catalog/products/1", &many)),
        ("missing Host", b"GET /api/catalog/products/1 HTTP/1.1\r\n\r\n".to_vec()),
        (
            "TLS hello on the plain port",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x5a\x00\x17\r\n\r\n".to_vec(),
        ),
        (
            "HTTP/9.9",
            b"GET /api/catalog/products/1 HTTP/9.9\r\nHost: a\r\n\r\n".to_vec(),
        ),
    ]
}

/// Sends `payload` on a fresh connection; what came back within 2 s: the status, or how it ended.
async fn answer(addr: SocketAddr, payload: &[u8]) -> String {
    let exchange = async {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            return None;
        };
        // The proxy may answer and close before it has read everything.
        let _ = s.write_all(payload).await;
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            match s.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        Some(buf)
    };
    match timeout(Duration::from_secs(2), exchange).await {
        Err(_) => "no answer in 2 s".into(),
        Ok(None) => "connect failed".into(),
        Ok(Some(buf)) if buf.is_empty() => "closed".into(),
        Ok(Some(buf)) => match buf.strip_prefix(b"HTTP/1.").and_then(|r| r.get(2..5)) {
            Some(code) => String::from_utf8_lossy(code).into_owned(),
            None => "other bytes".into(),
        },
    }
}

/// Cycles through the payloads, one every 20 ms or so, tallying what came back.
async fn malformed(addr: SocketAddr, first: usize, deadline: Instant, c: Arc<Counts>) {
    let cases = payloads();
    let mut i = first;
    while Instant::now() < deadline {
        let (name, bytes) = &cases[i % cases.len()];
        i += 1;
        let got = answer(addr, bytes).await;
        *c.malformed.lock().unwrap().entry((*name, got)).or_default() += 1;
        sleep(Duration::from_millis(20)).await;
    }
}

/// Peaks over the abuse phase, sampled every 500 ms: proxy RSS (KiB), fds, and its gauge of
/// client connections.
async fn monitor(pid: u32, metrics_url: String, deadline: Instant) -> (u64, u64, u64) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let mut peak = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        peak.0 = peak.0.max(rss_kib(pid));
        peak.1 = peak.1.max(fds(pid));
        if let Ok(r) = client.get(&metrics_url).send().await {
            if let Ok(text) = r.text().await {
                peak.2 = peak.2.max(metric(&text, "strangler_client_connections"));
            }
        }
        sleep(Duration::from_millis(500)).await;
    }
    peak
}

#[tokio::main]
async fn main() {
    if !common::bench::measuring("abuse") {
        return;
    }
    // 2,000 idle + 200 slowloris sockets and the rest: past the usual soft limit of 1,024.
    match rlimit::increase_nofile_limit(20_000) {
        Ok(n) if n < 3_000 => eprintln!("warning: open-file limit is {n}: connects past it will fail"),
        Ok(_) => {}
        Err(e) => eprintln!("warning: can't raise the open-file limit: {e}"),
    }
    let shop = start_shop().await;
    let limits = format!("limits:\n  client_header_timeout: {HEADER_TIMEOUT_S}s\n  max_connections: 4000\n");
    let routes = "  - { name: catalog, match: { prefix: /api/catalog }, mode: legacy }\n";
    let proxy = Proxy::start(&(limits + &rules(&[("monolith", shop.monolith)], routes))).await;
    let (pid, addr, base) = (proxy.pid(), proxy.addr, proxy.url(""));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");

    // Baseline: the legitimate client alone, after a 1 s warm-up.
    legit(client.clone(), base.clone(), Instant::now() + Duration::from_secs(1)).await;
    let (rss0, fds0) = (rss_kib(pid), fds(pid));
    let mut alone = legit(client.clone(), base.clone(), Instant::now() + BASELINE).await;

    // Abuse: everything at once, every task bounded by `deadline`.
    let counts = Arc::new(Counts::default());
    let t0 = Instant::now();
    let deadline = t0 + ABUSE;
    let mut abusers: Vec<JoinHandle<()>> = Vec::new();
    for i in 0..IDLE {
        // 200 connections every 100 ms.
        let start = t0 + Duration::from_millis(100 * (i / 200) as u64);
        abusers.push(tokio::spawn(idle(addr, start, deadline, counts.clone())));
    }
    for i in 0..SLOWLORIS {
        let start = t0 + Duration::from_millis(5 * i as u64);
        abusers.push(tokio::spawn(slowloris(addr, start, deadline, counts.clone())));
    }
    for k in 0..MALFORMED_TASKS {
        abusers.push(tokio::spawn(malformed(addr, k * 3, deadline, counts.clone())));
    }
    let peaks = tokio::spawn(monitor(pid, proxy.admin_url("/metrics"), deadline));
    let mut under = legit(client.clone(), base.clone(), deadline).await;
    let (peak_rss, peak_fds, peak_conns) = peaks.await.unwrap_or_default();
    for h in &abusers {
        h.abort();
    }
    for h in abusers {
        let _ = h.await;
    }
    let m = proxy.metrics().await;

    // Afterwards: back to baseline within 30 s?
    let rss_limit = (rss0 as f64 * 1.5).max(rss0 as f64 + 20.0 * 1024.0);
    let t = Instant::now();
    let (mut rss1, mut fds1, mut back) = (0, 0, false);
    while t.elapsed() < RECOVERY {
        (rss1, fds1) = (rss_kib(pid), fds(pid));
        if fds1 <= fds0 + 20 && rss1 as f64 <= rss_limit {
            back = true;
            break;
        }
        sleep(Duration::from_millis(500)).await;
    }
    let took = t.elapsed().as_secs_f64();

    let (a50, a99, u50, u99) = (alone.pct(0.5), alone.pct(0.99), under.pct(0.5), under.pct(0.99));
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    let mut per: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((name, got), n) in counts.malformed.lock().unwrap().iter() {
        *tally.entry(got.clone()).or_default() += n;
        per.entry(*name).or_default().push(format!("{got} ×{n}"));
    }
    let sent: u64 = tally.values().sum();
    let tally_text = tally
        .iter()
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (idle_peak, idle_cut) = (counts.idle_peak.load(Relaxed), counts.idle_cut.load(Relaxed));
    let slow_cut = counts.slow_cut.load(Relaxed);
    let held = counts.slow_held_ms.load(Relaxed) as f64 / slow_cut.max(1) as f64 / 1e3;
    let recovered = if back {
        format!("{took:.1} s")
    } else {
        format!("not within {} s", RECOVERY.as_secs())
    };

    println!(
        "abuse, {} s: {IDLE} idle connections, {SLOWLORIS} slowloris clients, {MALFORMED_TASKS} malformed-request streams, one legitimate client; client_header_timeout {HEADER_TIMEOUT_S}s",
        ABUSE.as_secs()
    );
    println!(
        "  legitimate client alone, {} s: {} requests, {:.2}% ok, p50 {a50:.3} ms, p99 {a99:.3} ms (baseline)",
        BASELINE.as_secs(),
        alone.sent(),
        alone.rate()
    );
    println!(
        "  legitimate client under abuse: {} requests, {:.2}% ok, p50 {u50:.3} ms ({:.2}x), p99 {u99:.3} ms ({:.2}x)",
        under.sent(),
        under.rate(),
        u50 / a50,
        u99 / a99
    );
    println!("  idle connections: {idle_peak} held at peak (proxy's client connection gauge peaked at {peak_conns}), {idle_cut} cut off by the proxy and reopened");
    println!("  slowloris: {slow_cut} cut off by the proxy, held {held:.1} s on average");
    println!("  malformed requests: {sent} sent: {tally_text}");
    for (name, got) in &per {
        println!("    {name}: {}", got.join(", "));
    }
    println!("  connect errors: {}", counts.connect_errors.load(Relaxed));
    let counted = [
        "strangler_rejected_requests_total{",
        "strangler_client_connections_refused_total",
    ];
    for line in m
        .lines()
        .filter(|l| counted.iter().any(|c| l.starts_with(c)) && !l.ends_with(" 0"))
    {
        println!("  {line}");
    }
    println!(
        "  proxy RSS: {:.1} MiB -> peak {:.1} MiB -> after {:.1} MiB; fds: {fds0} -> peak {peak_fds} -> after {fds1}; back within: {recovered}",
        mib(rss0),
        mib(peak_rss),
        mib(rss1)
    );
    println!("  run: cargo bench --bench abuse");

    println!("\nFor BENCHMARKS.md:\n");
    println!(
        "| legitimate client | alone ({} s) | under abuse ({} s) |",
        BASELINE.as_secs(),
        ABUSE.as_secs()
    );
    println!("|---|---|---|");
    println!("| requests | {} | {} |", alone.sent(), under.sent());
    println!("| success rate | {:.2}% | {:.2}% |", alone.rate(), under.rate());
    println!("| p50 | {a50:.3} ms | {u50:.3} ms ({:.2}x) |", u50 / a50);
    println!("| p99 | {a99:.3} ms | {u99:.3} ms ({:.2}x) |", u99 / a99);
    println!();
    println!("| abuse | count |");
    println!("|---|---|");
    println!("| idle connections held at peak (proxy's gauge) | {idle_peak} ({peak_conns}) |");
    println!("| idle connections cut off after {HEADER_TIMEOUT_S} s and reopened | {idle_cut} |");
    println!("| slowloris clients cut off (mean hold) | {slow_cut} ({held:.1} s) |");
    println!("| malformed requests sent | {sent}: {tally_text} |");
    println!();
    println!("| proxy | baseline | peak | after | back within |");
    println!("|---|---|---|---|---|");
    println!(
        "| RSS | {:.1} MiB | {:.1} MiB | {:.1} MiB | {recovered} |",
        mib(rss0),
        mib(peak_rss),
        mib(rss1)
    );
    println!("| open fds | {fds0} | {peak_fds} | {fds1} | {recovered} |");

    if !back {
        println!(
            "\ndid not return to baseline: after {took:.1} s, fds {fds1} (limit {}), RSS {:.1} MiB (limit {:.1} MiB)",
            fds0 + 20,
            mib(rss1),
            rss_limit / 1024.0
        );
    }
    // `exit` skips destructors: stop the proxy child and the shop first.
    drop(proxy);
    drop(shop);
    if !back {
        std::process::exit(1);
    }
}
