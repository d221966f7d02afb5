//! One HTTP/1.1 exchange with an upstream outside the proxied path (shadow copies, HTTP health
//! probes): a request head serialized once, a response read with `httparse`, over a keep-alive
//! pool that belongs to the calling thread.
//!
//! Pingora's pool hands each idle connection to a watcher task on a random worker thread, so
//! taking it back costs two task wakes (often across threads), a `getpeername` and two probing
//! reads, and now and then a lost race that opens a new connection (BENCHMARKS.md, issue 5).
//! A copy starts and finishes on one thread, so its idle connections can stay there: taking one
//! is a pop and one non-blocking read that proves the server has not closed it.
//!
//! Pingora's `HttpSession` is not used for the exchange: a copy needs its status, two or three
//! headers and its body, and building a full request and response header (maps, case maps,
//! digests) cost more than the copy's own parsing (BENCHMARKS.md, issue 5). New connections still
//! come from Pingora's `TransportConnector`, so TLS to a service works as for proxied requests.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::Peer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::diff::Answer;
use crate::rules::UpstreamPeer;

/// Idle connections kept per upstream on each thread; one more closes the oldest.
const IDLE_PER_PEER: usize = 32;
/// Every this many returns, the whole pool drops what has expired: upstreams that a reload removed
/// (or that no copy goes to any more) don't keep their connections open.
const SWEEP_EVERY: u32 = 256;

/// One thread's idle keep-alive connections by pool key (`peer.reuse_hash()`), oldest first, each
/// with the moment its idle timeout ends.
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

/// An answer's head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;
/// Headers an answer may have.
const MAX_FIELDS: usize = 128;

/// A request head being built: the request line, then fields. `finish` adds the framing.
pub struct HeadBuilder {
    buf: BytesMut,
    method: Method,
}

impl HeadBuilder {
    /// `target` is the origin-form request target (path and query), as sent upstream.
    pub fn new(method: &Method, target: &[u8]) -> HeadBuilder {
        let mut buf = BytesMut::with_capacity(512);
        buf.extend_from_slice(method.as_str().as_bytes());
        buf.extend_from_slice(b" ");
        buf.extend_from_slice(target);
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        HeadBuilder {
            buf,
            method: method.clone(),
        }
    }

    pub fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.buf.extend_from_slice(name.as_str().as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// The finished request for a body of `body_len` bytes (sent with `content-length`).
    pub fn finish(mut self, body_len: usize) -> Request {
        if body_len > 0 || matches!(self.method, Method::POST | Method::PUT | Method::PATCH) {
            self.buf.extend_from_slice(b"content-length: ");
            self.buf.extend_from_slice(body_len.to_string().as_bytes());
            self.buf.extend_from_slice(b"\r\n");
        }
        self.buf.extend_from_slice(b"\r\n");
        Request {
            head: self.buf.freeze(),
            idempotent: crate::fallback::idempotent_method(&self.method),
            no_body_answer: self.method == Method::HEAD,
        }
    }
}

/// A request ready to send: its head as it goes on the wire.
#[derive(Clone, Debug)]
pub struct Request {
    head: Bytes,
    idempotent: bool,
    /// A `HEAD` request: its answer has no body, whatever its `content-length` says.
    no_body_answer: bool,
}

impl Request {
    pub fn idempotent(&self) -> bool {
        self.idempotent
    }

    /// The head as it goes on the wire.
    pub fn head(&self) -> &[u8] {
        &self.head
    }
}

/// Send one request and read the whole answer (up to `max_body`), all within `limit`.
/// The answer keeps `content-type` and the `compared` headers. Returns it and whether its body
/// was cut (then the body is empty).
///
/// A pooled connection that the server closed just as it was taken fails before any answer. Then
/// the request goes once more on a new connection, as Pingora does for proxied requests: when
/// the request never left (the write failed), or when it is idempotent. Once an answer has begun,
/// a failure is final.
pub(crate) async fn send(
    transport: &TransportConnector,
    peer: &UpstreamPeer,
    req: &Request,
    body: &[Bytes],
    max_body: usize,
    compared: &[HeaderName],
    limit: Duration,
) -> Result<(Answer, bool), SendError> {
    // Boxed once here: the exchange's state is a few hundred bytes, and an unboxed copy task
    // would be moved, whole, on every spawn.
    let work = Box::pin(async {
        let reused = take_idle(peer.pool_key());
        let was_reused = reused.is_some();
        match exchange(transport, peer, reused, req, body, max_body, compared).await {
            Err(Failed { sent, answered, error }) if was_reused && !answered && (!sent || req.idempotent) => {
                tracing::debug!(%error, "a pooled connection failed before any answer; trying a new one");
                exchange(transport, peer, None, req, body, max_body, compared)
                    .await
                    .map_err(|f| f.error)
            }
            r => r.map_err(|f| f.error),
        }
    });
    // One deadline for the whole exchange, on Pingora's shared timers.
    match pingora_timeout::fast_timeout::fast_timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(SendError::Timeout(limit)),
    }
}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("can't connect: {0}")]
    Connect(String),
    #[error("can't send the request: {0}")]
    Write(std::io::Error),
    #[error("connection closed while the request was sent")]
    ClosedWhileSending,
    #[error("can't read the answer: {0}")]
    Read(std::io::Error),
    #[error("connection closed before the answer ended")]
    ClosedEarly,
    #[error("bad answer: {0}")]
    BadHead(httparse::Error),
    #[error("bad status {0} in the answer")]
    BadStatus(u16),
    #[error("bad answer: {0}")]
    Malformed(&'static str),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Why an exchange failed, whether the request had been written by then, and whether an answer
/// had begun.
struct Failed {
    sent: bool,
    answered: bool,
    error: SendError,
}

impl Failed {
    fn unsent(error: SendError) -> Failed {
        Failed {
            sent: false,
            answered: false,
            error,
        }
    }

    fn after_send(error: SendError) -> Failed {
        Failed {
            sent: true,
            answered: false,
            error,
        }
    }
}

/// How an answer's body ends (RFC 9112, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// An answer's head, read out of the buffer.
struct Head {
    len: usize,
    status: u16,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// The answer's head at the start of `buf`, if it is all there. Keeps `content-type` and the
/// `compared` headers.
fn parse_head(buf: &[u8], compared: &[HeaderName], no_body_answer: bool) -> Result<Option<Head>, Failed> {
    // Left uninitialized: filling 128 empty fields cost more than parsing a short head.
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => {
            return Err(Failed::after_send(SendError::Malformed("answer head over 64 KiB")))
        }
        Err(e) => return Err(Failed::after_send(SendError::BadHead(e))),
    };
    let status = resp.code.unwrap_or_default();
    if status < 100 {
        return Err(Failed::after_send(SendError::BadStatus(status)));
    }
    let mut headers = HeaderMap::new();
    let (mut length, mut chunked, mut coded, mut close) = (None, false, false, resp.version != Some(1));
    for f in resp.headers.iter() {
        let name = f.name;
        if name.eq_ignore_ascii_case("content-length") {
            // Digits only (RFC 9112, section 6.3): no sign, no spaces inside, no list.
            let digits = f.value.trim_ascii();
            let n = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse::<usize>().ok())
                .flatten()
                .ok_or_else(|| Failed::after_send(SendError::Malformed("bad content-length")))?;
            if length.is_some_and(|l| l != n) {
                return Err(Failed::after_send(SendError::Malformed("two content-lengths")));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            chunked = f
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            close |= f
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
        let kept = compared
            .iter()
            .chain([&http::header::CONTENT_TYPE])
            .find(|n| n.as_str().eq_ignore_ascii_case(name));
        if let (Some(n), Ok(v)) = (kept, HeaderValue::from_bytes(f.value)) {
            headers.append(n.clone(), v);
        }
    }
    let framing = if no_body_answer || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if coded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        length.map_or(Framing::UntilClose, Framing::Length)
    };
    Ok(Some(Head {
        len,
        status,
        headers,
        framing,
        // A 101 hands the connection to another protocol, and an answer with both a
        // transfer-encoding and a content-length is suspect (RFC 9112, section 6.1): neither
        // connection goes back to the pool.
        keep_alive: !close && framing != Framing::UntilClose && status != 101 && !(coded && length.is_some()),
    }))
}

/// Read more of the answer into `buf`: the bytes read, 0 when the connection has ended.
async fn read_more(stream: &mut Stream, buf: &mut BytesMut) -> Result<usize, Failed> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    stream
        .read_buf(buf)
        .await
        .map_err(|e| Failed::after_send(SendError::Read(e)))
}

/// Read more of the answer into `buf`; an error if the connection ends first.
async fn fill(stream: &mut Stream, buf: &mut BytesMut) -> Result<(), Failed> {
    match read_more(stream, buf).await? {
        0 => Err(Failed::after_send(SendError::ClosedEarly)),
        _ => Ok(()),
    }
}

/// One try on `stream` (a pooled connection) or on a new one.
async fn exchange(
    transport: &TransportConnector,
    peer: &UpstreamPeer,
    stream: Option<Stream>,
    req: &Request,
    body: &[Bytes],
    max_body: usize,
    compared: &[HeaderName],
) -> Result<(Answer, bool), Failed> {
    let mut stream = match stream {
        Some(stream) => stream,
        // Boxed: a connect's state machine (TLS included) is tens of KiB, and every reuse
        // would otherwise carry (and move) it.
        None => Box::pin(transport.new_stream(&**peer))
            .await
            .map_err(|e| Failed::unsent(SendError::Connect(e.to_string())))?,
    };
    // Head and body in one write: a server may answer as soon as it has the head and close
    // without reading on, and a body written after that meets a reset instead of the answer.
    let out = if body.is_empty() {
        req.head.clone()
    } else {
        let mut all = BytesMut::with_capacity(req.head.len() + body.iter().map(Bytes::len).sum::<usize>());
        all.extend_from_slice(&req.head);
        body.iter().for_each(|chunk| all.extend_from_slice(chunk));
        all.freeze()
    };
    let mut written = 0;
    let mut write_failed = None;
    while written < out.len() {
        match stream.write(&out[written..]).await {
            Ok(0) => {
                write_failed = Some(SendError::ClosedWhileSending);
                break;
            }
            Ok(n) => written += n,
            Err(e) => {
                write_failed = Some(SendError::Write(e));
                break;
            }
        }
    }
    if write_failed.is_none() {
        write_failed = stream.flush().await.err().map(SendError::Write);
    }
    match write_failed {
        // Nothing left: the server saw nothing it could act on.
        Some(error) if written == 0 => return Err(Failed::unsent(error)),
        // Part of the request left: an answer may still have come (a server that refused early).
        Some(error) => {
            return match read_answer(&mut stream, req, max_body, compared).await {
                Ok((answer, _)) => Ok(answer),
                Err(_) => Err(Failed::after_send(error)),
            };
        }
        None => {}
    }
    let (answer, reusable) = read_answer(&mut stream, req, max_body, compared).await?;
    if reusable {
        put_idle(peer.pool_key(), stream, peer.idle_timeout());
    }
    Ok(answer)
}

/// The answer (its body up to `max_body`) and whether its body was cut; then whether the
/// connection can be reused: only at a clean end, the whole answer read and nothing after it.
async fn read_answer(
    stream: &mut Stream,
    req: &Request,
    max_body: usize,
    compared: &[HeaderName],
) -> Result<((Answer, bool), bool), Failed> {
    let mut buf = BytesMut::with_capacity(4096);
    let head = loop {
        match parse_head(&buf, compared, req.no_body_answer)? {
            // 1xx answers (100 Continue, 103 Early Hints) come before the real one.
            Some(head) if (100..200).contains(&head.status) && head.status != 101 => buf.advance(head.len),
            Some(head) => {
                buf.advance(head.len);
                break head;
            }
            None => fill(stream, &mut buf).await?,
        }
    };

    let (body, whole) = read_body(stream, &mut buf, head.framing, max_body)
        .await
        .map_err(|f| Failed { answered: true, ..f })?;
    let answer = Answer {
        status: head.status,
        headers: head.headers,
        body: if whole { body.freeze() } else { Bytes::new() },
    };
    Ok(((answer, !whole), whole && head.keep_alive && buf.is_empty()))
}

/// The answer's body after its head (`buf` holds what was read past the head), up to
/// `max_body`. Returns it and whether it is whole; a body that was cut is left unread.
async fn read_body(
    stream: &mut Stream,
    buf: &mut BytesMut,
    framing: Framing,
    max_body: usize,
) -> Result<(BytesMut, bool), Failed> {
    let mut body = BytesMut::new();
    let mut whole = true;
    match framing {
        Framing::Empty => {}
        Framing::Length(n) if n > max_body => whole = false,
        Framing::Length(n) => {
            if buf.len() < n {
                buf.reserve(n - buf.len());
            }
            while buf.len() < n {
                fill(stream, buf).await?;
            }
            body = buf.split_to(n);
        }
        Framing::Chunked => loop {
            if buf.is_empty() {
                fill(stream, buf).await?;
                continue;
            }
            // httparse reads a line without digits as size 0: a chunk size must start with one.
            if !buf[0].is_ascii_hexdigit() {
                return Err(Failed::after_send(SendError::Malformed("bad chunk")));
            }
            let (used, size) = match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => (used, size),
                Ok(httparse::Status::Partial) if buf.len() < 4096 => {
                    fill(stream, buf).await?;
                    continue;
                }
                _ => return Err(Failed::after_send(SendError::Malformed("bad chunk"))),
            };
            if size == 0 {
                buf.advance(used);
                // Trailer fields, if any, then the blank line.
                loop {
                    let mut fields = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((n, _))) => {
                            buf.advance(n);
                            break;
                        }
                        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => fill(stream, buf).await?,
                        _ => return Err(Failed::after_send(SendError::Malformed("bad trailers"))),
                    }
                }
                break;
            }
            // Checked before any sum: a hostile size is up to 2^64 - 1.
            let size = match usize::try_from(size) {
                Ok(size) if size <= max_body.saturating_sub(body.len()) => size,
                _ => {
                    whole = false;
                    break;
                }
            };
            let end = used + size;
            while buf.len() < end + 2 {
                fill(stream, buf).await?;
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(Failed::after_send(SendError::Malformed("bad chunk")));
            }
            body.extend_from_slice(&buf[used..end]);
            buf.advance(end + 2);
        },
        Framing::UntilClose => loop {
            if buf.len() > max_body {
                whole = false;
                break;
            }
            if read_more(stream, buf).await? == 0 {
                body = buf.split();
                break;
            }
        },
    }
    Ok((body, whole))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::upstreams::peer::HttpPeer;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// A server on loopback that counts the connections it accepts and runs `handle` on each.
    async fn serve<F, Fut>(handle: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, SeqCst);
                tokio::spawn(handle(conn));
            }
        });
        (addr, accepted)
    }

    /// A server on loopback that counts the connections it accepts and answers the requests on
    /// each one with `200 ok`: all of them, or only the first, after which it reads the next
    /// request and closes without an answer (a keep-alive timeout that just ran out).
    async fn counting_server(answers_per_connection: Option<usize>) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        serve(move |mut conn| async move {
            let mut buf = [0u8; 1024];
            let mut answered = 0;
            while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {
                if answers_per_connection.is_some_and(|n| answered == n) || conn.write_all(OK).await.is_err() {
                    return;
                }
                answered += 1;
            }
        })
        .await
    }

    fn request(method: &str) -> Request {
        let mut head = HeadBuilder::new(&Method::from_bytes(method.as_bytes()).unwrap(), b"/");
        head.field(&http::header::HOST, &HeaderValue::from_static("test"));
        head.finish(0)
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
        let req = request("GET");
        for _ in 0..2 {
            let (answer, cut) = try_ask(addr, &req, &[], 1024)
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
        let req = request("GET");
        for i in 1..=3 {
            let (answer, _) = try_ask(addr, &req, &[], 1024)
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(answer.status, 200);
        }
        // 1: new; 2: pooled, closed, again on a new one; 3: pooled, closed, again on a new one.
        assert_eq!(accepted.load(SeqCst), 3);

        // A POST that reached the server is not sent twice: its copy fails instead.
        let r = try_ask(addr, &request("POST"), &[], 1024).await;
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
        let peer = UpstreamPeer::new(peer);
        let req = request("GET");
        let ask = || send(&transport, &peer, &req, &[], 1024, &[], Duration::from_secs(5));
        ask().await.unwrap();
        ask().await.unwrap();
        assert_eq!(accepted.load(SeqCst), 1, "a fresh connection is reused");
        tokio::time::sleep(Duration::from_millis(2200)).await;
        ask().await.unwrap();
        assert_eq!(accepted.load(SeqCst), 2, "a stale one is not");
    }

    /// A server that answers every request on a connection with `answer`, written in pieces of
    /// `piece` bytes (each its own write), and counts its connections. It reads a request up to
    /// its blank line, then its `content-length` body, and keeps the request for the test. An
    /// answer without framing is followed by a close, which is what ends its body.
    async fn scripted_server(
        answer: &'static [u8],
        piece: usize,
    ) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<u8>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let (addr, accepted) = serve(move |mut conn| {
            let log = log.clone();
            async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some(end) = memchr::memmem::find(&got, b"\r\n\r\n") else {
                        match conn.read(&mut buf).await {
                            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while got.len() < end + 4 + len {
                        match conn.read(&mut buf).await {
                            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    log.lock().unwrap().extend(got.drain(..end + 4 + len));
                    for part in answer.chunks(piece) {
                        if conn.write_all(part).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    let framed = [&b"content-length"[..], b"transfer-encoding", b" 204 "]
                        .iter()
                        .any(|f| memchr::memmem::find(answer, f).is_some());
                    if !framed {
                        return;
                    }
                }
            }
        })
        .await;
        (addr, accepted, seen)
    }

    /// One exchange with a plain-HTTP server at `addr`, keeping the `x-kept` header.
    async fn try_ask(
        addr: std::net::SocketAddr,
        req: &Request,
        body: &[Bytes],
        max_body: usize,
    ) -> Result<(Answer, bool), SendError> {
        let transport = TransportConnector::new(None);
        let peer = UpstreamPeer::new(HttpPeer::new(addr, false, String::new()));
        let compared = [HeaderName::from_static("x-kept")];
        send(
            &transport,
            &peer,
            req,
            body,
            max_body,
            &compared,
            Duration::from_secs(5),
        )
        .await
    }

    async fn ask(addr: std::net::SocketAddr, req: &Request, body: &[Bytes], max_body: usize) -> (Answer, bool) {
        try_ask(addr, req, body, max_body).await.expect("an answer")
    }

    /// Each way an answer can be framed is read whole, in pieces as small as one byte; the
    /// connection is reused after a framed answer and not after one that ends at the close.
    #[tokio::test]
    async fn every_framing_is_read_whole_and_reused_only_when_it_can_be() {
        // (answer, its body, its content-type, connections for three requests)
        type Case = (&'static [u8], &'static [u8], Option<&'static str>, usize);
        let cases: [Case; 5] = [
            (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"a\": true}",
                b"{\"a\": true}",
                Some("application/json"),
                1,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-kept: yes\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: t\r\n\r\n",
                b"hello world",
                None,
                1,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
                b"ok",
                None,
                1,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", b"", None, 1),
            // No framing: the body ends when the server closes, so the connection can't be kept.
            (b"HTTP/1.1 200 OK\r\n\r\nto the end", b"to the end", None, 3),
        ];
        for (answer, body, content_type, connections) in cases {
            for piece in [1, 7, 4096] {
                let (addr, accepted, _) = scripted_server(answer, piece).await;
                let req = request("GET");
                for _ in 0..3 {
                    let (got, cut) = ask(addr, &req, &[], 1024).await;
                    assert!(!cut);
                    assert_eq!(&got.body[..], body, "{}", String::from_utf8_lossy(answer));
                    assert_eq!(
                        got.headers.get("content-type").map(|v| v.to_str().unwrap()),
                        content_type
                    );
                    if answer.windows(6).any(|w| w == b"x-kept") {
                        assert_eq!(got.headers.get("x-kept").unwrap(), "yes");
                    }
                }
                assert_eq!(
                    accepted.load(SeqCst),
                    connections,
                    "connections for {}",
                    String::from_utf8_lossy(answer)
                );
            }
        }
    }

    /// An answer over `max_body` comes back cut and empty, and its connection is not reused
    /// (the rest of the body was never read).
    #[tokio::test]
    async fn an_answer_over_max_body_is_cut_and_its_connection_dropped() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789"[..],
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\n012345\r\n4\r\n6789\r\n0\r\n\r\n"[..],
        ] {
            let (addr, accepted, _) = scripted_server(answer, 4096).await;
            let req = request("GET");
            let (got, cut) = ask(addr, &req, &[], 8).await;
            assert!(cut && got.body.is_empty());
            let (got, cut) = ask(addr, &req, &[], 10).await;
            assert_eq!((&got.body[..], cut), (&b"0123456789"[..], false));
            assert_eq!(accepted.load(SeqCst), 2);
        }
    }

    /// A HEAD answer has no body even with a `content-length`; the connection stays usable.
    #[tokio::test]
    async fn a_head_answer_has_no_body() {
        let (addr, accepted, _) = scripted_server(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", 4096).await;
        let req = request("HEAD");
        for _ in 0..2 {
            let (got, cut) = ask(addr, &req, &[], 1024).await;
            assert_eq!((got.status, got.body.len(), cut), (200, 0, false));
        }
        assert_eq!(accepted.load(SeqCst), 1);
    }

    /// What goes on the wire: the head as built, a `content-length` for the body, then the body.
    #[tokio::test]
    async fn the_request_is_sent_as_built_with_its_body() {
        let (addr, _, seen) = scripted_server(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 4096).await;
        let mut head = HeadBuilder::new(&Method::POST, b"/orders?x=1");
        head.field(&http::header::HOST, &HeaderValue::from_static("shop"));
        head.field(
            &HeaderName::from_static("x-request-id"),
            &HeaderValue::from_static("r-1"),
        );
        let req = head.finish(7);
        ask(
            addr,
            &req,
            &[Bytes::from_static(b"{\"a\""), Bytes::from_static(b":1}")],
            1024,
        )
        .await;
        assert_eq!(
            String::from_utf8(seen.lock().unwrap().clone()).unwrap(),
            "POST /orders?x=1 HTTP/1.1\r\nhost: shop\r\nx-request-id: r-1\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
        );
        let parts = crate::shadow::RequestParts::read(req.head());
        assert_eq!((parts.method.as_str(), parts.target.as_str()), ("POST", "/orders?x=1"));
        assert_eq!(parts.headers.len(), 3);
        assert_eq!(parts.request_id, "r-1");
        assert!(!req.idempotent());
    }

    /// Broken or hostile answers are errors, not answers.
    #[tokio::test]
    async fn a_broken_answer_is_an_error() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello"[..],
            &b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"[..],
            &b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok"[..],
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n"[..],
            // A chunk-size line without digits (httparse alone reads it as the last chunk).
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n\r\n\r\n"[..],
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nnot a trailer\r\n\r\n"[..],
            &b"HTTP/1.1 099 Odd\r\ncontent-length: 0\r\n\r\n"[..],
            &b"NOT HTTP\r\n\r\n"[..],
        ] {
            let (addr, _, _) = scripted_server(answer, 4096).await;
            let r = try_ask(addr, &request("GET"), &[], 1024).await;
            assert!(r.is_err(), "{}: {r:?}", String::from_utf8_lossy(answer));
        }
    }

    /// A chunk size near 2^64 from a hostile service is a cut body, not an overflow and a panic.
    #[tokio::test]
    async fn a_huge_chunk_size_is_a_cut_body() {
        let (addr, _, _) = scripted_server(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\nfffffffffffffffe\r\nab\r\n",
            4096,
        )
        .await;
        let (got, cut) = ask(addr, &request("GET"), &[], 1024).await;
        assert!(cut && got.body.is_empty());
    }

    /// An answer with both a transfer-encoding and a content-length is read by its chunks, and
    /// its connection is not kept.
    #[tokio::test]
    async fn an_answer_with_two_framings_is_read_by_chunks_and_not_kept() {
        let (addr, accepted, _) = scripted_server(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            4096,
        )
        .await;
        for _ in 0..2 {
            let (got, cut) = ask(addr, &request("GET"), &[], 1024).await;
            assert_eq!((&got.body[..], cut), (&b"ok"[..], false));
        }
        assert_eq!(accepted.load(SeqCst), 2);
    }

    /// Once an answer has begun, a failure is final: a GET whose answer is cut off on a pooled
    /// connection is not sent again.
    #[tokio::test]
    async fn an_answer_cut_off_midway_is_not_retried() {
        let (addr, accepted) = serve(|mut conn| async move {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            conn.write_all(OK).await.unwrap();
            let _ = conn.read(&mut buf).await;
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n012")
                .await;
        })
        .await;
        let req = request("GET");
        try_ask(addr, &req, &[], 1024).await.expect("the first answer");
        let r = try_ask(addr, &req, &[], 1024).await;
        assert!(r.is_err(), "{r:?}");
        assert_eq!(accepted.load(SeqCst), 1, "not sent again on a new connection");
    }
}
