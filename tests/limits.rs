//! Request limits and client connection guards over raw sockets: oversized heads, URIs and
//! bodies are refused before any upstream, slow or idle clients are cut off, and connections
//! past `limits.max_connections` are closed at once.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::Json;
use common::echo;
use common::proxy::{metric, raw_get, rules, Proxy};
use common::rawhttp::{exchange, parse_responses, Exchange, Response};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `/api` takes `limits.max_body`; `/upload` takes up to 100 KiB.
const ROUTES: &str = "  - { name: api, match: { prefix: /api }, mode: legacy }\n  \
                      - { name: uploads, match: { prefix: /upload }, mode: legacy, max_body: 100KiB }\n";

const KIB: usize = 1024;
const MIB: u64 = 1024 * 1024;

/// Rules with `monolith` as the only upstream, ROUTES, and a `limits:` block (lines indented two spaces).
fn rules_with(limits: &str, mono: SocketAddr) -> String {
    format!("limits:\n{limits}{}", rules(&[("monolith", mono)], ROUTES))
}

/// What a body-reading monolith got.
#[derive(Default)]
struct Seen {
    /// Request heads.
    heads: AtomicU64,
    /// Request bodies read to their end.
    bodies: AtomicU64,
    /// Body bytes, whole bodies or not.
    bytes: AtomicU64,
}

/// A monolith that reads each request body to its end before it answers
/// `{"server":"monolith","bytes":N}`: a 200 proves the whole body reached it.
async fn body_reader() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let seen = counts.clone();
        async move {
            seen.heads.fetch_add(1, SeqCst);
            let mut body = req.into_body().into_data_stream();
            let mut n = 0u64;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(c) => {
                        n += c.len() as u64;
                        seen.bytes.fetch_add(c.len() as u64, SeqCst);
                    }
                    Err(_) => return (StatusCode::BAD_REQUEST, Json(json!({"error": "body cut off"}))),
                }
            }
            seen.bodies.fetch_add(1, SeqCst);
            (StatusCode::OK, Json(json!({"server": "monolith", "bytes": n})))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

/// Fails if `counter` moves off `before` within 300 ms.
async fn stays(counter: &AtomicU64, before: u64, what: &str) {
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        assert_eq!(counter.load(SeqCst), before, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rejected(reason: &str) -> String {
    format!("strangler_rejected_requests_total{{reason=\"{reason}\"}}")
}

const OPEN: &str = "strangler_client_connections";
const REFUSED: &str = "strangler_client_connections_refused_total";

/// Polls the metrics until `key` satisfies `ok`, for at most 10 s; returns the last value read.
async fn wait_metric(proxy: &Proxy, key: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(&proxy.metrics().await, key);
        if ok(v) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads until the peer closes (EOF or reset) or `limit` passes: what was read, and whether it closed.
async fn read_until_closed<R: AsyncRead + Unpin>(r: &mut R, limit: Duration) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * KIB];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Err(_) => return (buf, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (buf, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Is `buf` one whole response, framed by Content-Length or chunked coding?
fn whole(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let Some(r) = parse_responses(buf).into_iter().next() else {
        return false;
    };
    match r.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(n) => buf.len() >= end + 4 + n,
        None => buf.ends_with(b"0\r\n\r\n"),
    }
}

/// Reads one whole response off a kept-alive connection, for at most 10 s.
async fn read_response<R: AsyncRead + Unpin>(r: &mut R) -> Response {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * KIB];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !whole(&buf) {
        match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!("no whole response ({other:?}): {:?}", String::from_utf8_lossy(&buf)),
        }
    }
    parse_responses(&buf).into_iter().next().expect("one response")
}

/// `GET path` with `extra` header lines (each ending in CRLF), `Connection: close`.
fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{extra}\r\n").into_bytes()
}

/// `POST path` with `headers` (each ending in CRLF) and a raw `body`, `Connection: close`.
fn post(path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("POST {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{headers}\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

/// `n` header lines `X-Filler-i: i`.
fn fillers(n: usize) -> String {
    (0..n).map(|i| format!("X-Filler-{i}: {i}\r\n")).collect()
}

/// One response from the monolith.
fn assert_served(got: &Exchange, name: &str) {
    let text = &got.text;
    assert_eq!(got.statuses(), [200], "{name}: {text:?}");
    assert_eq!(
        got.responses[0].header("x-strangler-upstream"),
        Some("monolith"),
        "{name}: not the monolith's answer: {text:?}"
    );
}

/// One refusal from the proxy itself, with its JSON `reason`, and no upstream behind it.
fn assert_refused(got: &Exchange, status: u16, reason: &str, name: &str) {
    let text = &got.text;
    assert_eq!(got.statuses(), [status], "{name}: {text:?}");
    let r = &got.responses[0];
    assert_eq!(
        r.header("x-strangler-upstream"),
        None,
        "{name}: reached the upstream: {text:?}"
    );
    let error = match status {
        413 => "payload_too_large",
        414 => "uri_too_long",
        _ => "headers_too_large",
    };
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
    assert_eq!(
        (v["error"].as_str(), v["reason"].as_str()),
        (Some(error), Some(reason)),
        "{name}: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_heads_get_431_and_414() {
    let mono = echo::start("monolith").await;
    let proxy = Proxy::start(&rules_with(
        "  max_header_bytes: 4KiB\n  max_headers: 20\n  max_uri_bytes: 1KiB\n",
        mono,
    ))
    .await;
    // Host and Connection, plus the fillers.
    let got = exchange(proxy.addr, &get("/api/x", &fillers(20))).await;
    assert_refused(&got, 431, "too_many_headers", "22 headers");
    let big = |n: usize| format!("X-Big: {}\r\n", "a".repeat(n));
    let got = exchange(proxy.addr, &get("/api/x", &big(5 * KIB))).await;
    assert_refused(&got, 431, "headers_too_large", "a 5 KiB header");
    let path = |n: usize| format!("/api/{}", "a".repeat(n - "/api/".len()));
    let got = exchange(proxy.addr, &get(&path(2 * KIB), "")).await;
    assert_refused(&got, 414, "uri_too_long", "a 2 KiB path");

    // Just under each limit.
    let got = exchange(proxy.addr, &get("/api/x", &fillers(13))).await;
    assert_served(&got, "15 headers");
    let got = exchange(proxy.addr, &get("/api/x", &big(3 * KIB))).await;
    assert_served(&got, "a 3 KiB header");
    let got = exchange(proxy.addr, &get(&path(900), "")).await;
    assert_served(&got, "a 900-byte path");

    let m = proxy.metrics().await;
    for reason in ["too_many_headers", "headers_too_large", "uri_too_long"] {
        let key = rejected(reason);
        assert!(metric(&m, &key) >= 1, "{key}: {m}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_past_max_body_get_413() {
    let (mono, seen) = body_reader().await;
    let proxy = Proxy::start(&rules_with("  max_body: 1KiB\n", mono)).await;

    // Declared too long: refused before any upstream.
    let heads = seen.heads.load(SeqCst);
    let got = exchange(
        proxy.addr,
        &post("/api/x", "Content-Length: 2000\r\n", "x".repeat(2000).as_bytes()),
    )
    .await;
    assert_refused(&got, 413, "body_too_large", "Content-Length 2000");
    stays(&seen.heads, heads, "Content-Length 2000: reached the monolith").await;

    // Chunked past the limit: the head may reach the monolith, the whole body never does.
    let bodies = seen.bodies.load(SeqCst);
    let mut chunked = format!("{:x}\r\n", 3 * KIB).into_bytes();
    chunked.resize(chunked.len() + 3 * KIB, b'x');
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let got = exchange(proxy.addr, &post("/api/x", "Transfer-Encoding: chunked\r\n", &chunked)).await;
    let text = &got.text;
    assert_eq!(got.statuses(), [413], "chunked 3 KiB: {text:?}");
    let v: Value = serde_json::from_slice(&got.responses[0].body).unwrap_or_default();
    assert_eq!(
        (v["error"].as_str(), v["reason"].as_str()),
        (Some("payload_too_large"), Some("body_too_large")),
        "chunked 3 KiB: {text:?}"
    );
    stays(&seen.bodies, bodies, "chunked 3 KiB: the monolith got the whole body").await;

    // The route's own limit.
    let got = exchange(
        proxy.addr,
        &post(
            "/upload/file",
            &format!("Content-Length: {}\r\n", 50 * KIB),
            "x".repeat(50 * KIB).as_bytes(),
        ),
    )
    .await;
    assert_served(&got, "50 KiB upload");
    let v: Value = serde_json::from_slice(&got.responses[0].body).unwrap_or_default();
    assert_eq!(v["bytes"], json!(50 * KIB), "50 KiB upload: {:?}", got.text);

    let heads = seen.heads.load(SeqCst);
    let got = exchange(
        proxy.addr,
        &post(
            "/upload/file",
            &format!("Content-Length: {}\r\n", 200 * KIB),
            "x".repeat(KIB).as_bytes(),
        ),
    )
    .await;
    assert_refused(&got, 413, "body_too_large", "200 KiB upload declared");
    stays(&seen.heads, heads, "200 KiB upload declared: reached the monolith").await;

    let m = proxy.metrics().await;
    let key = rejected("body_too_large");
    assert!(metric(&m, &key) >= 3, "{key}: {m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_streamed_body_is_cut_off_early() {
    const CHUNK: usize = 64 * KIB;
    const TOTAL: u64 = 50 * MIB;
    let (mono, seen) = body_reader().await;
    let proxy = Proxy::start(&rules_with("  max_body: 1KiB\n", mono)).await;

    let (mut rd, mut wr) = TcpStream::connect(proxy.addr).await.expect("connect").into_split();
    let written = Arc::new(AtomicU64::new(0));
    let count = written.clone();
    let mut writer = tokio::spawn(async move {
        let head = b"POST /api/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        if wr.write_all(head).await.is_err() {
            return;
        }
        let mut chunk = format!("{CHUNK:x}\r\n").into_bytes();
        chunk.resize(chunk.len() + CHUNK, b'x');
        chunk.extend_from_slice(b"\r\n");
        for _ in 0..TOTAL / CHUNK as u64 {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            count.fetch_add(chunk.len() as u64, SeqCst);
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
    });

    let (bytes, _closed) = read_until_closed(&mut rd, Duration::from_secs(30)).await;
    let got = parse_responses(&bytes);
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(got.iter().map(|r| r.status).collect::<Vec<_>>(), [413], "{text:?}");
    let v: Value = serde_json::from_slice(&got[0].body).unwrap_or_default();
    assert_eq!(v["reason"], "body_too_large", "{text:?}");

    // The writer stops on a write error, or blocks once the proxy stops reading.
    if tokio::time::timeout(Duration::from_secs(10), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    let sent = written.load(SeqCst);
    assert!(
        sent < 16 * MIB,
        "the client sent {sent} of {TOTAL} bytes before the proxy stopped it"
    );
    stays(&seen.bodies, 0, "the monolith got the whole body").await;
    let forwarded = seen.bytes.load(SeqCst);
    assert!(forwarded < 16 * MIB, "the monolith got {forwarded} body bytes");

    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid())).expect("proc status");
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    assert!(rss_kib < 200 * 1024, "proxy RSS {rss_kib} KiB after the upload");

    let (status, text) = raw_get(proxy.addr, "/api/x").await;
    assert_eq!(status, 200, "after the upload: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_is_cut_off_after_client_header_timeout() {
    let mono = echo::start("monolith").await;
    let proxy = Proxy::start(&rules_with("  client_header_timeout: 2s\n", mono)).await;

    let (mut rd, mut wr) = TcpStream::connect(proxy.addr).await.expect("connect").into_split();
    wr.write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("write the head's start");
    // One more header byte every 200 ms, for 20 s at most; never the blank line.
    let trickle = tokio::spawn(async move {
        let line = b"X-Slow: ";
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let byte = line.get(i).copied().unwrap_or(b'a');
            if wr.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    });
    let request = get("/api/x", "");
    let (normal, (bytes, closed)) = tokio::join!(
        exchange(proxy.addr, &request),
        read_until_closed(&mut rd, Duration::from_secs(10)),
    );
    trickle.abort();
    assert!(closed, "the slow connection is still open after 10 s");
    assert!(
        bytes.is_empty(),
        "the slow connection got an answer: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert_served(&normal, "a normal request meanwhile");

    let key = rejected("client_header_timeout");
    let n = wait_metric(&proxy, &key, |v| v >= 1).await;
    assert!(n >= 1, "{key}: {n}");

    // A head that arrives in pieces but completes well within the deadline.
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    for (i, piece) in [
        "GET /api/x HTTP/1.1\r\n",
        "Host: a\r\n",
        "Connection: close\r\n",
        "\r\n",
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s.write_all(piece.as_bytes()).await.expect("write a piece");
    }
    let (bytes, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let got = parse_responses(&bytes);
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200],
        "a head in pieces: {:?}",
        String::from_utf8_lossy(&bytes)
    );
}

/// A connection that never sends the 24 bytes of a possible h2c preface is still a client that
/// has not finished its head.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_connection_is_cut_off_after_client_header_timeout() {
    let mono = echo::start("monolith").await;
    let proxy = Proxy::start(&rules_with("  client_header_timeout: 2s\n", mono)).await;

    let mut silent = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut short = TcpStream::connect(proxy.addr).await.expect("connect");
    short
        .write_all(b"GET /api/x HTTP/1.1\r\n")
        .await
        .expect("write a request line");
    let ((silent_bytes, silent_closed), (short_bytes, short_closed)) = tokio::join!(
        read_until_closed(&mut silent, Duration::from_secs(10)),
        read_until_closed(&mut short, Duration::from_secs(10)),
    );
    assert!(silent_closed, "a connection that sent nothing is still open after 10 s");
    assert!(silent_bytes.is_empty(), "the silent connection got an answer");
    assert!(
        short_closed,
        "a connection that sent only a request line is still open after 10 s"
    );
    assert!(short_bytes.is_empty(), "the request line got an answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed() {
    let mono = echo::start("monolith").await;
    let proxy = Proxy::start(&rules_with("  client_header_timeout: 2s\n", mono)).await;

    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    // Two requests on the connection: it is kept alive.
    for i in 0..2 {
        s.write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.head);
        assert_eq!(
            r.header("x-strangler-upstream"),
            Some("monolith"),
            "request {i}: {}",
            r.head
        );
    }
    let (bytes, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "the idle connection is still open after 10 s");
    assert!(
        bytes.is_empty(),
        "the idle connection got bytes: {:?}",
        String::from_utf8_lossy(&bytes)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_request_on_a_kept_alive_connection_gets_its_own_head_deadline() {
    let mono = echo::start("monolith").await;
    let proxy = Proxy::start(&rules_with("  client_header_timeout: 3s\n", mono)).await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    // Each request's 3 s count from the end of the answer before it. The connection's timer,
    // armed while waiting for the second request, fires while the third is awaited (at 3 s);
    // the third request, sent 3.5 s in but 2 s after its own start, must still be served.
    for (i, idle) in [0u64, 1_500, 2_000].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(idle)).await;
        s.write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 200, "request {i} after {idle} ms idle: {}", r.head);
    }
    // And the deadline still holds after that.
    let (bytes, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "the idle connection is still open after 10 s");
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_requests_head_deadline_counts_from_its_first_bytes() {
    let mono = echo::start("monolith").await;
    let proxy = Proxy::start(&rules_with("  client_header_timeout: 3s\n", mono)).await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_response(&mut s).await.status, 200);
    // Idle for half the limit, then a head that takes two thirds of it: 3.5 s after the answer,
    // but 2 s after its own first bytes. Counted from the answer, it would be cut off at 3 s.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    s.write_all(b"GET /api/x HTTP/1.1\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    s.write_all(b"Host: a\r\n\r\n").await.expect("write");
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{}", r.head);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_max_connections_are_closed() {
    let mono = echo::start("monolith").await;
    let proxy = Proxy::start(&rules_with(
        "  max_connections: 20\n  client_header_timeout: 30s\n",
        mono,
    ))
    .await;
    // The start-up probe's connection is gone.
    let open = wait_metric(&proxy, OPEN, |v| v == 0).await;
    assert_eq!(open, 0, "{OPEN} before the test");

    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(proxy.addr).await.expect("connect"));
    }
    let open = wait_metric(&proxy, OPEN, |v| v == 20).await;
    assert_eq!(open, 20, "{OPEN} with 20 held");

    let mut extra = TcpStream::connect(proxy.addr).await.expect("connect the 21st");
    // The proxy may have closed it already: a failed write is fine.
    let _ = extra.write_all(&get("/api/x", "")).await;
    let (bytes, closed) = read_until_closed(&mut extra, Duration::from_secs(5)).await;
    assert!(closed, "the 21st connection is still open after 5 s");
    assert!(
        bytes.is_empty(),
        "the 21st connection got an answer: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    let m = proxy.metrics().await;
    assert!(metric(&m, REFUSED) >= 1, "{REFUSED}: {m}");
    assert_eq!(metric(&m, OPEN), 20, "{OPEN} after the 21st");

    held.truncate(15);
    let open = wait_metric(&proxy, OPEN, |v| v <= 15).await;
    assert!(open <= 15, "{OPEN} after closing 5: {open}");
    let (status, text) = raw_get(proxy.addr, "/api/x").await;
    assert_eq!(status, 200, "after closing 5: {text}");
    drop(held);
}
