//! Request smuggling over raw sockets: CL.TE, TE.CL, TE.TE, duplicate Content-Length, chunk-size
//! tricks and bare CR/LF never reach the real monolith as extra requests.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use common::proxy::{metric, raw_get, rules, Proxy};
use common::rawhttp::{exchange, parse_responses};
use serde_json::Value;

/// A whole request hidden where a body belongs. If the proxy and the monolith disagree on
/// where the first request ends, the monolith answers this one too.
const SMUGGLED: &str = "GET /api/catalog/products/2 HTTP/1.1\r\nHost: shop.test\r\n\r\n";
const LAST_CHUNK: &str = "0\r\n\r\n";
const TE_WITH_CL: &str = "transfer_encoding_with_content_length";
const DUPLICATE_CL: &str = "duplicate_content_length";
const BAD_TE: &str = "bad_transfer_encoding";
/// The monolith's own answer to `POST /api/orders` with a body that is not JSON.
const BAD_JSON: u16 = 400;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// 400 from the proxy, and nothing reaches the monolith. `reason` when strangler (not
    /// Pingora's parser, whose 400 has an empty body) is the one refusing.
    Rejected { reason: Option<&'static str> },
    /// Reaches the monolith as `requests` requests, each answered by it with `status`.
    Accepted { requests: u64, status: u16 },
    /// A broken chunked body: the head may already be upstream, so at most one request
    /// reaches the monolith and at most one answer (a 400) reaches the client.
    AtMostOne,
}

struct Case {
    name: &'static str,
    payload: Vec<u8>,
    want: Want,
}

fn case(name: &'static str, want: Want, payload: String) -> Case {
    Case {
        name,
        payload: payload.into_bytes(),
        want,
    }
}

fn rejected(reason: &'static str) -> Want {
    Want::Rejected { reason: Some(reason) }
}

/// Refused by Pingora's own parser or framing checks: 400, reason not asserted.
const REJECTED_BY_PINGORA: Want = Want::Rejected { reason: None };

/// `POST /api/orders` (the monolith reads the whole body, then answers 400 `bad_json`)
/// with `headers` (each ending in CRLF) and a raw `body`.
fn post(headers: &str, body: &str) -> String {
    format!(
        "POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\nContent-Type: application/json\r\n{headers}\r\n{body}"
    )
}

/// One chunk holding `data`.
fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

fn cases() -> Vec<Case> {
    let s = SMUGGLED;
    let n = s.len();
    // CL.TE: Content-Length covers everything, the chunked body ends at once; the rest is a request.
    let cl_te_body = format!("{LAST_CHUNK}{s}");
    // TE.CL: the chunk holds the request; Content-Length covers only the chunk-size line.
    let te_cl_body = format!("{}{LAST_CHUNK}", chunk(s));
    let size_line = format!("{n:x}\r\n").len();
    // The hidden request as chunk data, under Transfer-Encoding `te`.
    let chunked = |te: &str| post(&format!("Transfer-Encoding: {te}\r\n"), &te_cl_body);
    // `Transfer-Encoding: chunked` over a hand-made (possibly broken) chunked body.
    let chunked_body = |body: String| post("Transfer-Encoding: chunked\r\n", &body);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n");
    // A keep-alive request, for a second request to ride on when the first is refused.
    let kept = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n");
    vec![
        // A refused request ends its connection: a pipelined request behind it never runs.
        case(
            "refused bad path, then a pipelined GET",
            // A path refusal's body says `bad_path`, not `bad_request`: the status and the count
            // are what this case is about.
            Want::Rejected { reason: None },
            format!("{}{}", kept("/../api/catalog/products/1"), kept("/api/catalog/products/2")),
        ),
        case(
            "refused CL with TE, then a pipelined GET",
            rejected("transfer_encoding_with_content_length"),
            format!(
                "POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}",
                kept("/api/catalog/products/2")
            ),
        ),
        case(
            "refused duplicate Content-Length, then a pipelined GET",
            rejected("duplicate_content_length"),
            format!(
                "POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n{}",
                kept("/api/catalog/products/2")
            ),
        ),
        // The control first: proves the count sees the request that is meant.
        case(
            "one GET",
            Want::Accepted {
                requests: 1,
                status: 200,
            },
            get("/api/catalog/products/1"),
        ),
        // The first request asks to close the connection: the bytes after it are never read
        // as a request, though pipelining is on (tests/http1_edge.rs answers pipelined pairs).
        case(
            "two pipelined GETs",
            Want::Accepted {
                requests: 1,
                status: 200,
            },
            format!("{}{}", get("/api/catalog/products/1"), get("/api/catalog/products/2")),
        ),
        // Framing the proxy must accept, with the hidden request inside a well-framed body.
        case(
            "Content-Length body",
            Want::Accepted {
                requests: 1,
                status: BAD_JSON,
            },
            post(&format!("Content-Length: {n}\r\n"), s),
        ),
        case(
            "chunked body",
            Want::Accepted {
                requests: 1,
                status: BAD_JSON,
            },
            chunked("chunked"),
        ),
        case(
            "TE CHUNKED upper case",
            Want::Accepted {
                requests: 1,
                status: BAD_JSON,
            },
            chunked("CHUNKED"),
        ),
        case(
            "TE tab before chunked",
            Want::Accepted {
                requests: 1,
                status: BAD_JSON,
            },
            post("Transfer-Encoding:\tchunked\r\n", &te_cl_body),
        ),
        case(
            "chunk extension",
            Want::Accepted {
                requests: 1,
                status: BAD_JSON,
            },
            chunked_body(format!("5;foo=bar\r\nhello\r\n{}{LAST_CHUNK}", chunk(s))),
        ),
        // CL.TE and TE.CL.
        case(
            "CL.TE",
            rejected(TE_WITH_CL),
            post(
                &format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", cl_te_body.len()),
                &cl_te_body,
            ),
        ),
        case(
            "TE.CL",
            rejected(TE_WITH_CL),
            post(
                &format!("Transfer-Encoding: chunked\r\nContent-Length: {size_line}\r\n"),
                &te_cl_body,
            ),
        ),
        case(
            "CL.TE lower-case names",
            rejected(TE_WITH_CL),
            post(
                &format!("content-length: {}\r\ntransfer-encoding: chunked\r\n", cl_te_body.len()),
                &cl_te_body,
            ),
        ),
        // TE.TE: one side is made to ignore an obfuscated Transfer-Encoding.
        case(
            "TE.TE chunked + x with CL",
            REJECTED_BY_PINGORA,
            post(
                &format!("Content-Length: {size_line}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n"),
                &te_cl_body,
            ),
        ),
        case(
            "TE.TE chunked + x",
            REJECTED_BY_PINGORA,
            post("Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", &te_cl_body),
        ),
        case("TE xchunked", REJECTED_BY_PINGORA, chunked("xchunked")),
        case(
            "TE chunked, identity",
            REJECTED_BY_PINGORA,
            chunked("chunked, identity"),
        ),
        case("TE identity", REJECTED_BY_PINGORA, chunked("identity")),
        case(
            "TE chunked twice",
            rejected(BAD_TE),
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                &te_cl_body,
            ),
        ),
        case("TE gzip, chunked", rejected(BAD_TE), chunked("gzip, chunked")),
        case(
            "TE space before colon",
            REJECTED_BY_PINGORA,
            post(
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding : chunked\r\n",
                    cl_te_body.len()
                ),
                &cl_te_body,
            ),
        ),
        case(
            "TE folded onto the previous line",
            REJECTED_BY_PINGORA,
            post(
                &format!(
                    "Content-Length: {}\r\nX-Note: a\r\n Transfer-Encoding: chunked\r\n",
                    cl_te_body.len()
                ),
                &cl_te_body,
            ),
        ),
        case(
            "bare CR before TE",
            REJECTED_BY_PINGORA,
            post(
                &format!(
                    "Content-Length: {}\r\nX-Note: a\rTransfer-Encoding: chunked\r\n",
                    cl_te_body.len()
                ),
                &cl_te_body,
            ),
        ),
        case(
            "HTTP/1.0 with TE",
            REJECTED_BY_PINGORA,
            format!(
                "POST /api/orders HTTP/1.0\r\nHost: shop.test\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{te_cl_body}"
            ),
        ),
        // Content-Length: one value, once, digits only.
        case(
            "CL twice, equal",
            rejected(DUPLICATE_CL),
            post(&format!("Content-Length: {n}\r\nContent-Length: {n}\r\n"), s),
        ),
        case(
            "CL comma list",
            rejected(DUPLICATE_CL),
            post(&format!("Content-Length: {n}, {n}\r\n"), s),
        ),
        case(
            "CL twice, differing",
            REJECTED_BY_PINGORA,
            post(&format!("Content-Length: 0\r\nContent-Length: {n}\r\n"), s),
        ),
        case(
            "CL +N",
            REJECTED_BY_PINGORA,
            post(&format!("Content-Length: +{n}\r\n"), s),
        ),
        case("CL -1", REJECTED_BY_PINGORA, post("Content-Length: -1\r\n", s)),
        case(
            "CL hex",
            REJECTED_BY_PINGORA,
            post(&format!("Content-Length: 0x{n:x}\r\n"), s),
        ),
        // Line endings and Host.
        case(
            "bare LF line endings",
            rejected("bare_lf"),
            format!("GET /api/catalog/products/1 HTTP/1.1\nHost: shop.test\nContent-Length: {n}\n\n{s}"),
        ),
        case(
            "bare LF hides CL",
            rejected("bare_lf"),
            post(&format!("X-Note: a\nContent-Length: {n}\r\n"), s),
        ),
        case(
            "no Host",
            rejected("missing_host"),
            format!("POST /api/orders HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n{s}"),
        ),
        // Chunk-size tricks: a lenient parser reads a small or zero size and takes the
        // hidden request as the next one.
        case(
            "chunk size 0x",
            Want::AtMostOne,
            chunked_body(format!("0x{n:x}\r\n{s}\r\n{LAST_CHUNK}")),
        ),
        case(
            "chunk size negative",
            Want::AtMostOne,
            chunked_body(format!("-{n:x}\r\n{s}\r\n{LAST_CHUNK}")),
        ),
        case(
            "chunk size 19 hex digits",
            Want::AtMostOne,
            chunked_body(format!("fffffffffffffffffff\r\n{s}\r\n{LAST_CHUNK}")),
        ),
        case(
            "chunk size wraps to small",
            Want::AtMostOne,
            chunked_body(format!("1{n:016x}\r\n{s}\r\n{LAST_CHUNK}")),
        ),
        case(
            "chunk size then NUL",
            Want::AtMostOne,
            chunked_body(format!("{n:x}\0\r\n{s}\r\n{LAST_CHUNK}")),
        ),
        case(
            "chunk size bare LF",
            Want::AtMostOne,
            chunked_body(format!("{n:x}\n{s}\r\n{LAST_CHUNK}")),
        ),
        case(
            "chunk data without CRLF",
            Want::AtMostOne,
            chunked_body(format!("3\r\nabc{LAST_CHUNK}{s}")),
        ),
    ]
}

/// The real monolith on loopback, with a count of the requests that reached it (not `/healthz`).
async fn counted_monolith(dir: &std::path::Path) -> (SocketAddr, Arc<AtomicU64>) {
    let db = shop_kit::db::Db::open_blocking(
        dir.join("monolith.db"),
        legacy_monolith::store::SCHEMA,
        legacy_monolith::store::is_empty,
        legacy_monolith::store::seed,
    )
    .await
    .expect("monolith db");
    let count = Arc::new(AtomicU64::new(0));
    let app = legacy_monolith::router(db).layer(middleware::from_fn_with_state(count.clone(), count_requests));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(shop_kit::serve(listener, app, std::future::pending::<()>(), None));
    (addr, count)
}

async fn count_requests(State(count): State<Arc<AtomicU64>>, req: Request, next: Next) -> Response {
    if req.uri().path() != "/healthz" {
        count.fetch_add(1, Ordering::SeqCst);
    }
    next.run(req).await
}

/// Requests the monolith got since `before`, read again for 300 ms in case one is still on its
/// way; fails as soon as the count passes `at_most`.
async fn settled(count: &AtomicU64, before: u64, at_most: u64, name: &str) -> u64 {
    let end = Instant::now() + Duration::from_millis(300);
    loop {
        let got = count.load(Ordering::SeqCst) - before;
        assert!(
            got <= at_most,
            "{name}: the monolith got {got} requests, the client meant at most {at_most}"
        );
        if Instant::now() >= end {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_payloads_never_reach_the_monolith_as_extra_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mono, count) = counted_monolith(dir.path()).await;
    let proxy = Proxy::start(&rules(
        &[("monolith", mono)],
        "  - { name: api, match: { prefix: /api }, mode: legacy }\n",
    ))
    .await;
    let cases = cases();
    for case in &cases {
        let name = case.name;
        let before = count.load(Ordering::SeqCst);
        let got = exchange(proxy.addr, &case.payload).await;
        let text = &got.text;
        match case.want {
            Want::Rejected { reason } => {
                assert_eq!(got.statuses(), [400], "{name}: one 400: {text:?}");
                let r = &got.responses[0];
                assert_eq!(
                    r.header("x-strangler-upstream"),
                    None,
                    "{name}: answered by an upstream: {text:?}"
                );
                if let Some(reason) = reason {
                    let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    assert_eq!(
                        (v["error"].as_str(), v["reason"].as_str()),
                        (Some("bad_request"), Some(reason)),
                        "{name}: {text:?}"
                    );
                }
                assert_eq!(
                    settled(&count, before, 0, name).await,
                    0,
                    "{name}: reached the monolith"
                );
            }
            Want::Accepted { requests, status } => {
                assert_eq!(
                    got.statuses(),
                    vec![status; requests as usize],
                    "{name}: one monolith answer per request: {text:?}"
                );
                for r in &got.responses {
                    assert_eq!(
                        r.header("x-strangler-upstream"),
                        Some("monolith"),
                        "{name}: not the monolith's answer: {text:?}"
                    );
                }
                assert_eq!(
                    settled(&count, before, requests, name).await,
                    requests,
                    "{name}: requests the monolith got"
                );
            }
            Want::AtMostOne => {
                assert!(got.responses.len() <= 1, "{name}: more than one answer: {text:?}");
                if let Some(r) = got.responses.first() {
                    assert_eq!(r.status, 400, "{name}: {text:?}");
                }
                settled(&count, before, 1, name).await;
            }
        }
    }

    // The proxy keeps serving, and the monolith still counts one per request.
    let before = count.load(Ordering::SeqCst);
    let (status, text) = raw_get(proxy.addr, "/api/catalog/products/1").await;
    assert_eq!(status, 200, "after the payloads: {text}");
    assert_eq!(
        settled(&count, before, 1, "after the payloads").await,
        1,
        "after the payloads: requests the monolith got"
    );

    let te_with_cl = cases.iter().filter(|c| c.want == rejected(TE_WITH_CL)).count() as u64;
    let m = proxy.metrics().await;
    let key = format!("strangler_rejected_requests_total{{reason=\"{TE_WITH_CL}\"}}");
    assert!(metric(&m, &key) >= te_with_cl.max(2), "{key}: {m}");
}

#[test]
fn a_body_cannot_fake_a_response() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\nHTTP/1.1 200 OK\r\n\r\n\
                 HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n\
                 13\r\nHTTP/1.1 200 OK\r\n\r\n\r\n0\r\n\r\n";
    let rs = parse_responses(wire);
    assert_eq!(rs.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 400]);
    assert_eq!(rs[1].body_text(), "HTTP/1.1 200 OK\r\n\r\n");
}
