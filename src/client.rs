//! One HTTP/1.1 exchange with an upstream outside the proxied path (shadow copies, HTTP health
//! probes), over a keep-alive pool that belongs to the calling thread.
//!
//! Pingora's pool hands each idle connection to a watcher task on a random worker thread, so
//! taking it back costs two task wakes (often across threads), a `getpeername` and two probing
//! reads, and now and then a lost race that opens a new connection (BENCHMARKS.md, issue 5).
//! A copy starts and finishes on one thread, so its idle connections can stay there: taking one
//! is a pop and one non-blocking read that proves the server has not closed it.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::HeaderName;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_http::RequestHeader;
use tokio::io::{AsyncRead, ReadBuf};

use crate::diff::{read_headers, Answer};

/// Idle connections kept per upstream on each thread; one more closes the oldest.
const IDLE_PER_PEER: usize = 32;

thread_local! {
    /// Idle keep-alive connections by `peer.reuse_hash()`, oldest first, with when they went idle.
    static IDLE: RefCell<HashMap<u64, VecDeque<(Stream, Instant)>>> = RefCell::new(HashMap::new());
}

/// The newest idle connection to `key` that is still open, dropping (closing) stale ones.
fn take_idle(key: u64, idle_timeout: Option<Duration>) -> Option<Stream> {
    loop {
        let (mut stream, since) = IDLE.with(|p| p.borrow_mut().get_mut(&key)?.pop_back())?;
        if idle_timeout.is_some_and(|t| since.elapsed() >= t) {
            continue;
        }
        if still_open(&mut stream) {
            return Some(stream);
        }
    }
}

/// An idle connection is reusable only if a read would block: a close, an error or unexpected
/// bytes all mean it is not. (tokio's cooperative budget is lifted so it can't fake "would block".)
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    let mut read = tokio::task::unconstrained(std::future::poll_fn(|cx| {
        Pin::new(&mut *stream).poll_read(cx, &mut buf)
    }));
    matches!(Pin::new(&mut read).poll(&mut cx), Poll::Pending)
}

fn put_idle(key: u64, stream: Stream, idle_timeout: Option<Duration>) {
    IDLE.with(|p| {
        let mut p = p.borrow_mut();
        let idle = p.entry(key).or_default();
        while idle
            .front()
            .is_some_and(|(_, since)| idle_timeout.is_some_and(|t| since.elapsed() >= t))
        {
            idle.pop_front();
        }
        if idle.len() == IDLE_PER_PEER {
            idle.pop_front();
        }
        idle.push_back((stream, Instant::now()));
    });
}

/// Send one request and read the whole answer (up to `max_body`), all within `limit`.
/// The answer keeps `content-type` and the `compared` headers. Returns it and whether its body
/// was cut.
pub(crate) async fn send(
    transport: &TransportConnector,
    peer: &HttpPeer,
    header: &RequestHeader,
    body: &[Bytes],
    max_body: usize,
    compared: &[HeaderName],
    limit: Duration,
) -> Result<(Answer, bool), String> {
    let key = peer.reuse_hash();
    let idle_timeout = peer.idle_timeout();
    // Boxed once here: the exchange's state (the session and its read and write futures) is a few
    // KiB, and an unboxed copy task would be moved, whole, on every spawn and poll hand-off.
    let work = Box::pin(async {
        let stream = match take_idle(key, idle_timeout) {
            Some(stream) => stream,
            // Boxed: a connect's state machine (TLS included) is tens of KiB, and every reuse
            // would otherwise carry (and move) it.
            None => Box::pin(transport.new_stream(peer)).await.map_err(|e| e.to_string())?,
        };
        let mut s = HttpSession::new_with_options(stream, peer);
        s.write_request_header(Box::new(header.clone()))
            .await
            .map_err(|e| e.to_string())?;
        for chunk in body {
            s.write_body(chunk).await.map_err(|e| e.to_string())?;
        }
        s.finish_body().await.map_err(|e| e.to_string())?;
        s.read_response().await.map_err(|e| e.to_string())?;
        let resp = s.resp_header().ok_or("no response header")?;
        let (status, headers) = (resp.status.as_u16(), read_headers(&resp.headers, compared));
        let mut buf = BytesMut::new();
        let mut truncated = false;
        while let Some(chunk) = s.read_body_ref().await.map_err(|e| e.to_string())? {
            if !truncated && buf.len() + chunk.len() <= max_body {
                buf.extend_from_slice(chunk);
            } else {
                truncated = true;
                buf.clear();
            }
        }
        s.respect_keepalive();
        if let Some(stream) = s.reuse().await {
            put_idle(key, stream, idle_timeout);
        }
        Ok((
            Answer {
                status,
                headers,
                body: buf.freeze(),
            },
            truncated,
        ))
    });
    // One deadline for the whole exchange, on Pingora's shared timers.
    match pingora_timeout::fast_timeout::fast_timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that answers one request per connection, says keep-alive, then closes: the
    /// pooled connection is dead by the next request, which must notice and connect again.
    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await.unwrap();
                conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                conn.shutdown().await.unwrap();
            }
        });
        let transport = TransportConnector::new(None);
        let peer = HttpPeer::new(addr, false, String::new());
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("host", "test").unwrap();
        for _ in 0..2 {
            let (answer, cut) = send(&transport, &peer, &req, &[], 1024, &[], Duration::from_secs(5))
                .await
                .expect("each request gets its answer");
            assert_eq!((answer.status, &answer.body[..], cut), (200, &b"ok"[..], false));
            // Let the close arrive before the next request looks at the pooled connection.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.await.unwrap();
    }
}
