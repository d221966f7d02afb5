//! Raw HTTP/1.1 on a fresh TCP connection: the exact bytes go out, every response comes back parsed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The server may stay silent this long before the exchange counts as over.
pub const IDLE: Duration = Duration::from_secs(3);
/// Hard bound on one exchange, however slowly the bytes trickle in.
const LIMIT: Duration = Duration::from_secs(30);

/// One response read off the wire (possibly cut short if the connection ended early).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Status line and headers, without the blank line.
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What came back on one connection.
#[derive(Debug)]
pub struct Exchange {
    /// Everything read, decoded lossily (for assertion messages).
    pub text: String,
    /// Every response found, in order. A body can't fake one: each response's body is skipped
    /// by its Content-Length or chunked framing before the next status line is looked for.
    pub responses: Vec<Response>,
}

impl Exchange {
    pub fn statuses(&self) -> Vec<u16> {
        self.responses.iter().map(|r| r.status).collect()
    }
}

/// Connects to `addr`, writes `payload` in one go, then reads until EOF, a reset, or `IDLE`
/// without a new byte (and never longer than 30 s in all).
pub async fn exchange(addr: SocketAddr, payload: &[u8]) -> Exchange {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // A refused write shows up as no response, which the caller asserts on with its case name.
    let _ = s.write_all(payload).await;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        match tokio::time::timeout(IDLE, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            // EOF, reset, or silence.
            _ => break,
        }
    }
    Exchange {
        text: String::from_utf8_lossy(&buf).into_owned(),
        responses: parse_responses(&buf),
    }
}

/// Splits `buf` into HTTP/1.x responses: status line, headers, then a body framed by
/// Content-Length, chunked coding, or (neither) the rest of the bytes. Stops at anything
/// that does not start with a status line.
pub fn parse_responses(mut rest: &[u8]) -> Vec<Response> {
    let mut out = Vec::new();
    while rest.starts_with(b"HTTP/1.") {
        let Some(end) = find(rest, b"\r\n\r\n") else { break };
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let Some(status) = head.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()) else {
            break;
        };
        rest = &rest[end + 4..];
        let mut resp = Response {
            status,
            head,
            body: Vec::new(),
        };
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = resp.header("content-length").and_then(|v| v.parse::<usize>().ok());
        if (100..200).contains(&status) || status == 204 || status == 304 {
            // No body.
        } else if chunked {
            let (body, used) = dechunk(rest);
            resp.body = body;
            rest = &rest[used..];
        } else if let Some(n) = length {
            let n = n.min(rest.len());
            resp.body = rest[..n].to_vec();
            rest = &rest[n..];
        } else {
            resp.body = rest.to_vec();
            rest = &[];
        }
        out.push(resp);
    }
    out
}

/// Decodes a chunked body at the start of `buf`: the data, and how many bytes of `buf` it
/// took (all of them if it is cut short or malformed).
fn dechunk(buf: &[u8]) -> (Vec<u8>, usize) {
    let mut body = Vec::new();
    let mut i = 0;
    loop {
        let Some(eol) = find(&buf[i..], b"\r\n") else {
            return (body, buf.len());
        };
        let line = String::from_utf8_lossy(&buf[i..i + eol]).into_owned();
        let Some(size) = line
            .split(';')
            .next()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
        else {
            return (body, buf.len());
        };
        i += eol + 2;
        if size == 0 {
            // Trailer lines, then the blank line.
            loop {
                let Some(eol) = find(&buf[i..], b"\r\n") else {
                    return (body, buf.len());
                };
                i += eol + 2;
                if eol == 0 {
                    return (body, i);
                }
            }
        }
        if i + size + 2 > buf.len() {
            body.extend_from_slice(&buf[i..]);
            return (body, buf.len());
        }
        body.extend_from_slice(&buf[i..i + size]);
        i += size + 2;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Read one answer (a head and a `Content-Length` body) off a kept-alive `stream`, and take it
/// out of `buf`, which keeps whatever came after it (a pipelined answer); its status.
pub async fn read_answer<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> u16 {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("a Content-Length answer");
            if buf.len() >= end + 4 + length {
                let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
                buf.drain(..end + 4 + length);
                return status;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .expect("read an answer");
        assert!(n > 0, "the proxy closed a kept-alive connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}
