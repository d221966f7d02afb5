//! Hostile-input defences: request framing and size checks, and the client connection guards
//! (a cap on open connections and a deadline for each request head).
//!
//! Pingora's parser already refuses most malformed heads with 400 (differing Content-Length
//! values, bad chunk sizes, bare CR, `Transfer-Encoding` on HTTP/1.0). `check_head` refuses the
//! rest of what could let the proxy and an upstream disagree about where a request ends.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::Session;
use tokio::sync::Semaphore;

use crate::live::Live;
use crate::metrics::Metrics;
use crate::rules::Limits;

/// Why a request is refused before it reaches any upstream: the status, the JSON body's `error`
/// and `reason` (also the `strangler_rejected_requests_total` label), and an optional `detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub error: &'static str,
    pub reason: &'static str,
    pub detail: Option<String>,
}

/// Every refusal's reason and status: the limits', the path's, and the head deadline's (which
/// closes the connection without an answer). Their counters and bodies are built once.
const LIMIT_REASONS: [(&str, u16); 9] = [
    ("too_many_headers", 431),
    ("uri_too_long", 414),
    ("headers_too_large", 431),
    ("bare_lf", 400),
    ("transfer_encoding_with_content_length", 400),
    ("missing_host", 400),
    ("duplicate_content_length", 400),
    ("bad_transfer_encoding", 400),
    ("body_too_large", 413),
];

/// The reason counted when a client does not finish its request head in time.
pub const HEAD_TIMEOUT: &str = "client_header_timeout";

/// Every reason a request can be refused for, for `Metrics::with_refusals`.
pub fn reasons() -> impl Iterator<Item = &'static str> {
    LIMIT_REASONS
        .iter()
        .map(|(r, _)| *r)
        .chain(crate::path::PathError::ALL.iter().map(|e| e.code()))
        .chain([HEAD_TIMEOUT])
}

/// The JSON bodies of every known refusal, made once: a refusal on the request path copies none.
static BODIES: std::sync::LazyLock<std::collections::HashMap<&'static str, Bytes>> = std::sync::LazyLock::new(|| {
    LIMIT_REASONS
        .iter()
        .map(|&(reason, status)| refusal(status, reason))
        .chain(crate::path::PathError::ALL.iter().map(|&e| Refusal::from(e)))
        .map(|r| (r.reason, Bytes::from(r.render())))
        .collect()
});

impl Refusal {
    /// The JSON body sent with the status: a known reason's is the one made at start.
    pub fn body(&self) -> Bytes {
        match BODIES.get(self.reason) {
            Some(b) => b.clone(),
            None => Bytes::from(self.render()),
        }
    }

    fn render(&self) -> String {
        let mut body = serde_json::json!({ "error": self.error, "reason": self.reason });
        if let Some(detail) = &self.detail {
            body["detail"] = detail.as_str().into();
        }
        body.to_string() + "\n"
    }
}

impl From<crate::path::PathError> for Refusal {
    fn from(e: crate::path::PathError) -> Refusal {
        Refusal {
            status: 400,
            error: "bad_path",
            reason: e.code(),
            detail: Some(e.to_string()),
        }
    }
}

fn refuse(status: u16, reason: &'static str) -> Result<(), Refusal> {
    Err(refusal(status, reason))
}

/// A body past `max_body`: declared (refused before the upstream) or seen while streaming.
pub fn body_too_large() -> Refusal {
    refusal(413, "body_too_large")
}

fn refusal(status: u16, reason: &'static str) -> Refusal {
    let error = match status {
        413 => "payload_too_large",
        414 => "uri_too_long",
        431 => "headers_too_large",
        _ => "bad_request",
    };
    Refusal {
        status,
        error,
        reason,
        detail: None,
    }
}

/// Checks on the request head, run first in `request_filter`.
pub fn check_head(session: &Session, limits: &Limits) -> Result<(), Refusal> {
    let req = session.req_header();
    if req.headers.len() > limits.max_headers {
        return refuse(431, "too_many_headers");
    }
    if req.raw_path().len() > limits.max_uri_bytes {
        return refuse(414, "uri_too_long");
    }
    let te = req.headers.get_all(TRANSFER_ENCODING);
    if let Some(h1) = session.as_downstream().as_http1() {
        let raw = h1.get_headers_raw_bytes();
        if raw.len() > limits.max_header_bytes {
            return refuse(431, "headers_too_large");
        }
        if has_bare_lf(&raw) {
            return refuse(400, "bare_lf");
        }
        // Pingora drops Content-Length when Transfer-Encoding is present: look at what was sent.
        if te.iter().next().is_some() && names_header(&raw, b"content-length") {
            return refuse(400, "transfer_encoding_with_content_length");
        }
        if req.version == http::Version::HTTP_11 && !req.headers.contains_key(HOST) {
            return refuse(400, "missing_host");
        }
    } else {
        let size: usize = req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        if size > limits.max_header_bytes {
            return refuse(431, "headers_too_large");
        }
    }
    let mut cl = req.headers.get_all(CONTENT_LENGTH).iter();
    if let Some(first) = cl.next() {
        if cl.next().is_some() || first.as_bytes().contains(&b',') {
            return refuse(400, "duplicate_content_length");
        }
    }
    let mut te = te.iter();
    if let Some(first) = te.next() {
        let chunked = std::str::from_utf8(first.as_bytes()).is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if te.next().is_some() || !chunked {
            return refuse(400, "bad_transfer_encoding");
        }
    }
    Ok(())
}

/// A body declared longer than `max` is refused before the upstream is contacted.
pub fn check_declared_body(session: &Session, max: u64) -> Result<(), Refusal> {
    let declared = session
        .req_header()
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > max => Err(body_too_large()),
        _ => Ok(()),
    }
}

/// A line feed not preceded by a carriage return: a line ending some parsers accept and others don't.
fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// Does any header line of the raw head start with `name:` (case-insensitive)?
fn names_header(head: &[u8], name: &[u8]) -> bool {
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name) && line[name.len()] == b':'
    })
}

tokio::task_local! {
    /// The head deadline's state, scoped per client connection.
    static HEAD: Head;
}

/// One client connection's head deadline. A request whose head comes whole in its first read
/// needs no timer; one that has to wait arms a timer, let go when the head is read.
struct Head {
    /// ConnectionCap has read past where an h2 preface would differ: HTTP/1 only, so Pingora
    /// must not wait for 24 bytes of preface.
    h1_only: bool,
    /// The current request's head has been read.
    read: Cell<bool>,
    /// When the current request started.
    started: Cell<Instant>,
    /// `client_header_timeout` when it started.
    limit: Cell<Duration>,
    timer: RefCell<Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>>,
}

impl Head {
    fn new(h1_only: bool) -> Head {
        Head {
            h1_only,
            read: Cell::new(false),
            started: Cell::new(Instant::now()),
            limit: Cell::new(Duration::ZERO),
            timer: RefCell::new(None),
        }
    }

    fn begin(&self, limit: Duration) {
        self.read.set(false);
        self.started.set(Instant::now());
        self.limit.set(limit);
    }

    /// Whether the current request's head is still unread at its deadline; until then, the
    /// task is woken by the timer.
    fn expired(&self, cx: &mut Context<'_>) -> bool {
        if self.read.get() {
            return false;
        }
        let mut timer = self.timer.borrow_mut();
        let sleep = timer.get_or_insert_with(|| {
            let due = self.started.get() + self.limit.get();
            // Pingora's shared, 10 ms-grained timers: no timer-wheel entry of its own.
            Box::pin(pingora_timeout::fast_timeout::fast_sleep(
                due.saturating_duration_since(Instant::now()),
            ))
        });
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// Called from `early_request_filter`: the head of the current request is complete. If the
/// connection is kept alive, it waits for its next request for at most the same
/// `client_header_timeout`, in whole seconds rounded up (Pingora's keep-alive timeout); the wait
/// happens before that request's session exists, where this deadline can't reach.
pub fn head_read(session: &mut Session) {
    let Ok(limit) = HEAD.try_with(|h| {
        h.read.set(true);
        h.timer.take();
        h.limit.get()
    }) else {
        return;
    };
    if session.get_keepalive().is_some() {
        let secs = limit.as_secs() + u64::from(limit.subsec_nanos() > 0);
        session.set_keepalive(Some(secs.max(1)));
    }
}

/// Closes a connection whose request head is not complete within `limits.client_header_timeout`,
/// counted from the start of each request: when the connection opened, or, on a kept-alive
/// connection, when the request's first bytes came. The timeout is read from the rules in force,
/// so a reload changes it.
pub struct HeadDeadline<A> {
    pub inner: Arc<A>,
    pub live: Arc<ArcSwap<Live>>,
    pub metrics: Arc<Metrics>,
    /// The inner app's server options with h2c off, for connections `ConnectionCap` found
    /// not to start with an h2 preface.
    pub h1_options: Option<HttpServerOptions>,
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for HeadDeadline<A> {
    // Written out instead of `async fn`: an async body would keep room for `session` (some
    // 700 bytes) in a future that lives through every idle keep-alive wait. Here the session
    // moves into the inner future at once, and the box returned holds only that and the timer's
    // poll (issue 22).
    fn process_new_http<'life0, 'life1, 'async_trait>(
        self: &'life0 Arc<Self>,
        mut session: ServerSession,
        shutdown: &'life1 ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        // Pipelined requests are answered in order (RFC 9112 §9.3.2) instead of being dropped
        // with their connection. A refused request still ends the connection: `respond_with`
        // turns keep-alive off, so the bytes after it are never read as a request. No-op on h2.
        session.set_pipelining_enabled(true);
        let limit = self.live.load().rules.settings.limits.client_header_timeout;
        let mut serve = self.inner.process_new_http(session, shutdown);
        if HEAD.try_with(|h| h.begin(limit)).is_err() {
            // An h2 stream: the head arrived with the stream.
            return serve;
        }
        Box::pin(std::future::poll_fn(move |cx| {
            if let Poll::Ready(done) = serve.as_mut().poll(cx) {
                return Poll::Ready(done);
            }
            if HEAD.try_with(|h| h.expired(cx)).unwrap_or(false) {
                // Dropping the session closes the connection.
                self.metrics.rejected(HEAD_TIMEOUT);
                return Poll::Ready(None);
            }
            Poll::Pending
        }))
    }

    fn h2_options(&self) -> Option<pingora_core::protocols::http::v2::server::H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        if HEAD.try_with(|h| h.h1_only).unwrap_or(false) {
            return self.h1_options.as_ref();
        }
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

/// The h2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum Preface {
    H2,
    Http1,
    /// Not a plain socket (never so on a TCP listener): Pingora's own check decides.
    Unknown,
    Closed,
    TimedOut,
}

/// Reads until the bytes received can no longer be an h2 preface, or the whole preface is in,
/// and puts every byte read back onto the stream it returns.
async fn sniff_preface(stream: Stream, limit: Duration) -> (Stream, Preface) {
    use pingora_core::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::AsyncReadExt;
    if !stream.as_any().is::<L4Stream>() {
        return (stream, Preface::Unknown);
    }
    let mut l4: Box<L4Stream> = stream.into_any().downcast().expect("checked just above");
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    let read = tokio::time::timeout(limit, async {
        while n < buf.len() && buf[..n] == H2_PREFACE[..n] {
            match l4.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => return false,
                Ok(m) => n += m,
            }
        }
        true
    })
    .await;
    let preface = match read {
        Err(_) => Preface::TimedOut,
        Ok(false) => Preface::Closed,
        Ok(true) if buf == *H2_PREFACE => Preface::H2,
        Ok(true) => Preface::Http1,
    };
    l4.rewind(&buf[..n]);
    (l4, preface)
}

/// Holds at most `limits.max_connections` client connections open; one more is closed at once.
pub struct ConnectionCap<A> {
    pub inner: Arc<A>,
    pub open: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    pub live: Arc<ArcSwap<Live>>,
    /// The proxy accepts h2c, so Pingora peeks for a preface before anything else.
    pub h2c: bool,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionCap<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let Ok(_permit) = self.open.clone().try_acquire_owned() else {
            self.metrics.connection_refused();
            return None;
        };
        let _open = self.metrics.connection_opened();
        let mut stream = stream;
        let mut h1_only = false;
        if self.h2c && stream.get_ssl_digest().is_none() {
            // Pingora's own check waits, without a deadline, for 24 bytes, so a shorter complete
            // HTTP/1 request was never answered. Read only as far as the bytes can still be a
            // preface, put them back, and tell Pingora (through `HeadDeadline::server_options`)
            // not to look again when they can't.
            let limit = self.live.load().rules.settings.limits.client_header_timeout;
            // Boxed: its timer and buffer are needed once, and inline they would stay part of
            // this future, which lives as long as the connection.
            let (sniffed, preface) = Box::pin(sniff_preface(stream, limit)).await;
            stream = sniffed;
            match preface {
                Preface::H2 | Preface::Unknown => {}
                Preface::Http1 => h1_only = true,
                Preface::Closed => return None,
                Preface::TimedOut => {
                    self.metrics.rejected(HEAD_TIMEOUT);
                    return None;
                }
            }
        }
        HEAD.scope(Head::new(h1_only), self.inner.process_new(stream, shutdown))
            .await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_lf() {
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\n\r\n"));
        assert!(has_bare_lf(b"\n"));
    }

    #[test]
    fn header_names_in_the_raw_head() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nCoNtEnT-LeNgTh: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(names_header(head, b"content-length"));
        assert!(!names_header(
            b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\n\r\n",
            b"content-length"
        ));
        assert!(!names_header(
            b"POST /content-length: HTTP/1.1\r\n\r\n",
            b"content-length"
        ));
    }
}
