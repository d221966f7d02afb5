//! A loopback HTTP server that answers with what it received, to see exactly what the proxy forwarded.

use std::net::SocketAddr;

use axum::extract::Request;
use axum::Json;
use serde_json::{json, Map, Value};

/// Start an echo server named `name` on 127.0.0.1:0. It answers every request with
/// `{"server": name, "method", "path" (with query, as received), "headers": {name: [values]}, "peer_port"}`.
pub async fn start(name: &'static str) -> SocketAddr {
    start_at(name, "127.0.0.1:0".parse().unwrap()).await
}

/// `start`, on a given address (another loopback address, a chosen port).
pub async fn start_at(name: &'static str, at: SocketAddr) -> SocketAddr {
    let app = axum::Router::new().fallback(move |req: Request| async move {
        let mut headers = Map::new();
        for (k, v) in req.headers() {
            let entry = headers.entry(k.as_str()).or_insert_with(|| Value::Array(vec![]));
            if let Value::Array(a) = entry {
                a.push(Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()));
            }
        }
        let path = req.uri().path_and_query().map_or("", |p| p.as_str()).to_string();
        // The proxy's side of the connection: the same port twice means a pooled connection was reused.
        let peer_port = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0.port());
        Json(json!({"server": name, "method": req.method().as_str(), "path": path, "headers": headers, "peer_port": peer_port}))
    });
    let listener = tokio::net::TcpListener::bind(at).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await;
    });
    addr
}

/// A server that accepts a WebSocket-style upgrade, answers 101, then echoes raw bytes back.
pub async fn start_upgrade_echo() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !head.contains("upgrade: websocket") {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
                    .await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A server whose every answer takes `delay`: `{"ok": true}`, and for `/list` also
/// `"items": [{"v": 0}, ..., {"v": 7}]`. It records the most requests it held at once (the
/// returned counter), so a test can see requests overlap without timing them.
pub async fn start_slow(delay: std::time::Duration) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let app = axum::Router::new().fallback(move |req: Request| {
        let (n, p) = (n.clone(), p.clone());
        async move {
            let held = n.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(held, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            n.fetch_sub(1, Ordering::SeqCst);
            let mut body = json!({"ok": true});
            if req.uri().path() == "/list" {
                body["items"] = (0..8).map(|i| json!({"v": i})).collect();
            }
            Json(body)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, peak)
}
