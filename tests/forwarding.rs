//! What the upstream receives: forwarding headers, Host, request ids, hop-by-hop headers,
//! WebSocket upgrades, and h2c from the client.

mod common;

use std::net::SocketAddr;

use common::{echo, proxy::raw, proxy::rules, proxy::Proxy};
use serde_json::Value;

async fn proxy_with_echo() -> (Proxy, SocketAddr) {
    let mono = echo::start("monolith").await;
    let svc = echo::start("svc").await;
    let text = rules(
        &[("monolith", mono), ("svc", svc)],
        "  - { name: svc, match: { prefix: /svc }, mode: migrated, service: svc }\n",
    )
    .replace(
        &format!("  svc: {{ url: \"http://{svc}\""),
        &format!("  svc: {{ host: internal.svc, url: \"http://{svc}\""),
    );
    (Proxy::start(&text).await, mono)
}

/// Send raw HTTP and parse the echo server's JSON body.
async fn echoed(proxy: &Proxy, request: &str) -> (String, Value) {
    let (status, text) = raw(proxy.addr, request).await;
    assert_eq!(status, 200, "{text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let json = body.find('{').map(|i| &body[i..]).expect("json body");
    let json = &json[..json.rfind('}').expect("json end") + 1];
    (head.to_string(), serde_json::from_str(json).expect("echo json"))
}

fn header<'a>(v: &'a Value, name: &str) -> Vec<&'a str> {
    v["headers"][name]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_host_and_request_id() {
    let (proxy, _) = proxy_with_echo().await;
    let (head, v) = echoed(
        &proxy,
        "GET /a/b?x=1&y=%2F HTTP/1.1\r\nHost: shop.example:8080\r\nX-Forwarded-For: 203.0.113.9\r\n\
         traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(v["path"], "/a/b?x=1&y=%2F", "query string passes through untouched");
    assert_eq!(
        header(&v, "host"),
        ["shop.example:8080"],
        "Host kept as the client sent it"
    );
    assert_eq!(
        header(&v, "x-forwarded-for"),
        ["127.0.0.1"],
        "a client's own x-forwarded-for is not believed"
    );
    assert_eq!(header(&v, "x-forwarded-proto"), ["http"]);
    assert_eq!(header(&v, "x-forwarded-host"), ["shop.example:8080"]);
    assert_eq!(
        header(&v, "traceparent"),
        ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
    );
    let id = header(&v, "x-request-id");
    assert_eq!(id.len(), 1);
    assert_eq!(id[0].len(), 32, "a generated id is 32 hex digits: {id:?}");
    assert!(id[0].chars().all(|c| c.is_ascii_hexdigit()));
    assert!(
        head.to_ascii_lowercase().contains(&format!("x-request-id: {}", id[0])),
        "the client sees the same id: {head}"
    );

    let (_, v) = echoed(
        &proxy,
        "GET /a HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc-123\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(header(&v, "x-request-id"), ["abc-123"], "the client's id is kept");
    let (_, v2) = echoed(&proxy, "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    let (_, v3) = echoed(&proxy, "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert_ne!(
        header(&v2, "x-request-id"),
        header(&v3, "x-request-id"),
        "ids are unique"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_from_a_trusted_proxy_are_kept() {
    let mono = echo::start("monolith").await;
    let text = rules(&[("monolith", mono)], "").replace("routes:\n", "trusted_proxies: [127.0.0.0/8]\nroutes:\n");
    let proxy = Proxy::start(&text).await;
    let (_, v) = echoed(
        &proxy,
        "GET /a HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: www.shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(header(&v, "x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(header(&v, "x-forwarded-proto"), ["https"]);
    assert_eq!(header(&v, "x-forwarded-host"), ["www.shop.example"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_from_anyone_else_are_replaced() {
    let (proxy, _) = proxy_with_echo().await;
    let (_, v) = echoed(
        &proxy,
        "GET /a HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(header(&v, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header(&v, "x-forwarded-proto"), ["http"]);
    assert_eq!(header(&v, "x-forwarded-host"), ["shop.example"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_host_override() {
    let (proxy, _) = proxy_with_echo().await;
    let (_, v) = echoed(
        &proxy,
        "GET /svc/x HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(v["server"], "svc");
    assert_eq!(header(&v, "host"), ["internal.svc"]);
    assert_eq!(header(&v, "x-forwarded-host"), ["shop.example"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_are_dropped() {
    let (proxy, _) = proxy_with_echo().await;
    let (_, v) = echoed(
        &proxy,
        "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close, x-secret-hop\r\nx-secret-hop: 1\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: h2c\r\nx-kept: yes\r\n\r\n",
    )
    .await;
    for h in ["x-secret-hop", "keep-alive", "proxy-connection", "te", "upgrade"] {
        assert!(header(&v, h).is_empty(), "{h} must not reach the upstream: {v}");
    }
    assert_eq!(header(&v, "x-kept"), ["yes"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_cannot_forge_strangler_headers() {
    let (proxy, _) = proxy_with_echo().await;
    let (_, v) = echoed(
        &proxy,
        "GET /a HTTP/1.1\r\nHost: h\r\nX-Strangler-Shadow: 1\r\nx-strangler-route: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(header(&v, "x-strangler-shadow").is_empty(), "{v}");
    assert!(header(&v, "x-strangler-route").is_empty(), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_passes_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ws = echo::start_upgrade_echo().await;
    let mono = echo::start("monolith").await;
    let proxy = Proxy::start(&rules(
        &[("monolith", mono), ("ws", ws)],
        "  - { name: live, match: { prefix: /live }, mode: migrated, service: ws }\n",
    ))
    .await;
    // One handshake, no second chance: the close right after the 101 (cloudflare/pingora#946)
    // is patched (docs/PINGORA-PATCHES.md); tests/http1_edge.rs runs 840 more.
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /live/feed HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping-through-the-tunnel").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 23 {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the tunnel closed after the 101; proxy log:\n{}", proxy.log());
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(&got, b"ping-through-the-tunnel");
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_clients_are_served() {
    let (proxy, _) = proxy_with_echo().await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp = client.get(proxy.url("/svc/h2")).send().await.expect("h2c request");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.headers()["x-strangler-route"], "svc");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["server"], "svc");
    assert_eq!(v["path"], "/svc/h2");
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_connections_are_reused() {
    let (proxy, _) = proxy_with_echo().await;
    let client = reqwest::Client::new();
    for i in 0..20 {
        let resp = client.get(proxy.url(&format!("/svc/{i}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["path"], format!("/svc/{i}"));
    }
}

/// A server that records each request head as it came off the wire and answers with mixed-case
/// header names and a reason phrase of its own.
async fn raw_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (heads, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = heads.send(String::from_utf8_lossy(&buf).into_owned());
                let answer = "HTTP/1.1 200 Fine By Me\r\nX-Legacy-Thing: yes\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, rx)
}

/// Sends `request` through a proxy with the given `preserve_header_case` to `raw_upstream`;
/// returns the head the upstream read and the answer the client read.
async fn header_case_round_trip(preserve: bool, request: &str) -> (String, String) {
    let (up, mut heads) = raw_upstream().await;
    let text = rules(&[("monolith", up)], "").replace(
        "response_headers: true\n",
        &format!("response_headers: true\npreserve_header_case: {preserve}\n"),
    );
    let proxy = Proxy::start(&text).await;
    let (status, answer) = raw(proxy.addr, request).await;
    assert_eq!(status, 200, "{answer}");
    let head = heads.recv().await.expect("the upstream saw the request");
    (head, answer)
}

const CUSTOM_CASE: &str = "GET /a HTTP/1.1\r\nHost: shop.test\r\nX-Custom-Case: v\r\nConnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn header_names_go_out_in_lowercase_by_default() {
    let (head, answer) = header_case_round_trip(false, CUSTOM_CASE).await;
    assert!(head.contains("\r\nx-custom-case: v\r\n"), "{head}");
    assert!(!head.contains("X-Custom-Case"), "{head}");
    assert!(
        head.contains("\r\nx-request-id: "),
        "our own headers are added too: {head}"
    );
    assert!(
        answer.starts_with("HTTP/1.1 200 Fine By Me\r\n"),
        "the reason phrase is kept: {answer}"
    );
    assert!(answer.contains("\r\nx-legacy-thing: yes\r\n"), "{answer}");
    assert!(answer.contains("\r\nx-strangler-route: (none)\r\n"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn header_names_keep_their_case_when_asked() {
    let (head, answer) = header_case_round_trip(true, CUSTOM_CASE).await;
    assert!(head.contains("\r\nX-Custom-Case: v\r\n"), "{head}");
    assert!(head.contains("\r\nx-request-id: "), "{head}");
    assert!(answer.starts_with("HTTP/1.1 200 Fine By Me\r\n"), "{answer}");
    assert!(answer.contains("\r\nX-Legacy-Thing: yes\r\n"), "{answer}");
    assert!(answer.contains("\r\nx-strangler-route: (none)\r\n"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absolute_form_target_goes_upstream_in_origin_form_in_either_case_mode() {
    for preserve in [false, true] {
        let (head, _) = header_case_round_trip(
            preserve,
            "GET http://shop.test/abs?q=1 HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        // Sent on in origin form, the path as routed.
        assert_eq!(
            head.lines().next(),
            Some("GET /abs?q=1 HTTP/1.1"),
            "preserve_header_case: {preserve}"
        );
    }
}
