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
/// Every this many returns, the whole pool drops what has expired: upstreams that a reload removed
/// (or that no copy goes to any more) don't keep their connections open.
const SWEEP_EVERY: u32 = 256;

/// One thread's idle keep-alive connections by `peer.reuse_hash()`, oldest first, each with the
/// moment its idle timeout ends.
#[derive(Default)]
struct Idle {
    by_peer: HashMap<u64, VecDeque<(Stream, Option<Instant>)>>,
    returns: u32,
}

thread_local! {
    static IDLE: RefCell<Idle> = RefCell::new(Idle::default());
}

fn expired(until: Option<Instant>, now: Instant) -> bool {
    until.is_some_and(|t| now >= t)
}

/// The newest idle connection to `key` that is still open, dropping (closing) stale ones.
fn take_idle(key: u64) -> Option<Stream> {
    loop {
        let (mut stream, until) = IDLE.with(|p| p.borrow_mut().by_peer.get_mut(&key)?.pop_back())?;
        if expired(until, Instant::now()) {
            continue;
        }
        if still_open(&mut stream) {
            return Some(stream);
        }
    }
}

fn put_idle(key: u64, stream: Stream, idle_timeout: Option<Duration>) {
    let now = Instant::now();
    IDLE.with(|p| {
        let mut p = p.borrow_mut();
        p.returns = p.returns.wrapping_add(1);
        if p.returns % SWEEP_EVERY == 0 {
            p.by_peer.retain(|_, idle| {
                idle.retain(|(_, until)| !expired(*until, now));
                !idle.is_empty()
            });
        }
        let idle = p.by_peer.entry(key).or_default();
        while idle.front().is_some_and(|(_, until)| expired(*until, now)) {
            idle.pop_front();
        }
        if idle.len() == IDLE_PER_PEER {
            idle.pop_front();
        }
        idle.push_back((stream, idle_timeout.map(|t| now + t)));
    });
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

/// Send one request and read the whole answer (up to `max_body`), all within `limit`.
/// The answer keeps `content-type` and the `compared` headers. Returns it and whether its body
/// was cut.
///
/// A pooled connection that the server closed just as it was taken fails before any answer. Then
/// the request goes once more on a new connection, as Pingora does for proxied requests: when
/// the request never left (the write failed), or when it is idempotent.
pub(crate) async fn send(
    transport: &TransportConnector,
    peer: &HttpPeer,
    header: &RequestHeader,
    body: &[Bytes],
    max_body: usize,
    compared: &[HeaderName],
    limit: Duration,
) -> Result<(Answer, bool), String> {
    // Boxed once here: the exchange's state (the session and its read and write futures) is a few
    // KiB, and an unboxed copy task would be moved, whole, on every spawn and poll hand-off.
    let key = peer.reuse_hash();
    let work = Box::pin(async {
        let reused = take_idle(key);
        let was_reused = reused.is_some();
        match exchange(transport, (peer, key), reused, header, body, max_body, compared).await {
            Err(Failed { sent, error })
                if was_reused && (!sent || crate::fallback::idempotent_method(&header.method)) =>
            {
                tracing::debug!(%error, "a pooled connection failed before any answer; trying a new one");
                exchange(transport, (peer, key), None, header, body, max_body, compared)
                    .await
                    .map_err(|f| f.error)
            }
            r => r.map_err(|f| f.error),
        }
    });
    // One deadline for the whole exchange, on Pingora's shared timers.
    match pingora_timeout::fast_timeout::fast_timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Why an exchange failed, and whether the request had been written by then.
struct Failed {
    sent: bool,
    error: String,
}

/// One try on `stream` (a pooled connection) or on a new one. `key` is the peer's pool key.
async fn exchange(
    transport: &TransportConnector,
    (peer, key): (&HttpPeer, u64),
    stream: Option<Stream>,
    header: &RequestHeader,
    body: &[Bytes],
    max_body: usize,
    compared: &[HeaderName],
) -> Result<(Answer, bool), Failed> {
    let failed = |sent: bool| {
        move |e: pingora_error::BError| Failed {
            sent,
            error: e.to_string(),
        }
    };
    let stream = match stream {
        Some(stream) => stream,
        // Boxed: a connect's state machine (TLS included) is tens of KiB, and every reuse
        // would otherwise carry (and move) it.
        None => Box::pin(transport.new_stream(peer)).await.map_err(failed(false))?,
    };
    let mut s = HttpSession::new_with_options(stream, peer);
    s.write_request_header(Box::new(header.clone()))
        .await
        .map_err(failed(false))?;
    for chunk in body {
        s.write_body(chunk).await.map_err(failed(true))?;
    }
    s.finish_body().await.map_err(failed(true))?;
    s.read_response().await.map_err(failed(true))?;
    let resp = s.resp_header().ok_or_else(|| Failed {
        sent: true,
        error: "no response header".into(),
    })?;
    let (status, headers) = (resp.status.as_u16(), read_headers(&resp.headers, compared));
    let mut buf = BytesMut::new();
    let mut truncated = false;
    while let Some(chunk) = s.read_body_ref().await.map_err(failed(true))? {
        if !truncated && buf.len() + chunk.len() <= max_body {
            buf.extend_from_slice(chunk);
        } else {
            truncated = true;
            buf.clear();
        }
    }
    s.respect_keepalive();
    if let Some(stream) = s.reuse().await {
        put_idle(key, stream, peer.idle_timeout());
    }
    Ok((
        Answer {
            status,
            headers,
            body: buf.freeze(),
        },
        truncated,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// A server on loopback that counts the connections it accepts and answers the requests on
    /// each one with `200 ok`: all of them, or only the first, after which it reads the next
    /// request and closes without an answer (a keep-alive timeout that just ran out).
    async fn counting_server(answers_per_connection: Option<usize>) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let mut answered = 0;
                    while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {
                        if answers_per_connection.is_some_and(|n| answered == n) || conn.write_all(OK).await.is_err() {
                            return;
                        }
                        answered += 1;
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn request(method: &str) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/", None).unwrap();
        req.insert_header("host", "test").unwrap();
        req.insert_header("content-length", "0").unwrap();
        req
    }

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
                conn.write_all(OK).await.unwrap();
                conn.shutdown().await.unwrap();
            }
        });
        let transport = TransportConnector::new(None);
        let peer = HttpPeer::new(addr, false, String::new());
        let req = request("GET");
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

    /// A server that answers the first request on each connection and closes the connection
    /// without a word at the second, as a server does whose keep-alive timeout just ran out:
    /// the request is sent again on a new connection, once, and gets its answer.
    #[tokio::test]
    async fn a_pooled_connection_closed_at_the_second_request_is_retried_once() {
        let (addr, accepted) = counting_server(Some(1)).await;
        let transport = TransportConnector::new(None);
        let peer = HttpPeer::new(addr, false, String::new());
        let req = request("GET");
        for i in 1..=3 {
            let (answer, _) = send(&transport, &peer, &req, &[], 1024, &[], Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(answer.status, 200);
        }
        // 1: new; 2: pooled, closed, again on a new one; 3: pooled, closed, again on a new one.
        assert_eq!(accepted.load(SeqCst), 3);

        // A POST that reached the server is not sent twice: its copy fails instead.
        let r = send(
            &transport,
            &peer,
            &request("POST"),
            &[],
            1024,
            &[],
            Duration::from_secs(5),
        )
        .await;
        assert!(r.is_err(), "a POST was sent again: {r:?}");
        assert_eq!(accepted.load(SeqCst), 3);
    }

    /// A keep-alive server that counts its connections: one reused connection while it is fresh,
    /// a new one once it has been idle past the peer's idle timeout.
    #[tokio::test]
    async fn a_connection_idle_past_its_timeout_is_not_reused() {
        let (addr, accepted) = counting_server(None).await;
        let transport = TransportConnector::new(None);
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.idle_timeout = Some(Duration::from_secs(2));
        let req = request("GET");
        let ask = || send(&transport, &peer, &req, &[], 1024, &[], Duration::from_secs(5));
        ask().await.unwrap();
        ask().await.unwrap();
        assert_eq!(accepted.load(SeqCst), 1, "a fresh connection is reused");
        tokio::time::sleep(Duration::from_millis(2200)).await;
        ask().await.unwrap();
        assert_eq!(accepted.load(SeqCst), 2, "a stale one is not");
    }
}
