//! Routing bypass: every known trick either routes as the normalized path, or gets a 400.
//! Encoded variants of cookies, query parameters and hosts are in tests/matching.rs.

mod common;

use common::{echo, proxy::raw_get, proxy::rules, proxy::Proxy};
use serde_json::Value;
use strangler::path::normalize;

/// What a variant must lead to.
enum Expect {
    /// 200 from the route's upstream, which received exactly `path` (with the query, if any).
    Routed { route: &'static str, path: &'static str },
    /// 400 from our normalizer with this reason code; no upstream reached.
    Rejected(&'static str),
    /// 400 from Pingora's own parser (or from us; the reason is not checked); no upstream reached.
    Refused,
    /// Raw bytes Pingora may refuse or escape first: a 400 reaching no upstream, or routed as
    /// `normalize` of what was sent.
    Safe,
}

use Expect::{Refused, Rejected, Routed, Safe};

/// `(request-target sent raw in the request line, expectation)`. An attacker wants `/admin`
/// content from the api route or the legacy monolith, or a forwarded path unlike the matched one.
const CASES: &[(&str, Expect)] = &[
    // Encoded dots, any case, alone and mixed with plain dots.
    (
        "/api/%2e%2e/admin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    (
        "/api/%2E%2E/admin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    (
        "/api/.%2e/admin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    (
        "/api/%2e./admin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    (
        "/api/%2E./admin/users",
        Routed {
            route: "admin",
            path: "/admin/users",
        },
    ),
    (
        "/api/%2e/orders",
        Routed {
            route: "api",
            path: "/api/orders",
        },
    ),
    (
        "/%2e/admin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    (
        "/admin/%2e%2e/api/x",
        Routed {
            route: "api",
            path: "/api/x",
        },
    ),
    (
        "/api/%2e%2e",
        Routed {
            route: "(none)",
            path: "/",
        },
    ),
    (
        "/api%2e%2e/admin",
        Routed {
            route: "(none)",
            path: "/api../admin",
        },
    ),
    ("/%2e%2e/admin", Rejected("above_root")),
    ("/%2E%2E", Rejected("above_root")),
    ("/api/%2e%2e/%2e%2e/admin", Rejected("above_root")),
    // Dot segments.
    (
        "/api/../admin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    (
        "/api/./../admin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    (
        "/./admin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    (
        "/api/orders/../../admin/x",
        Routed {
            route: "admin",
            path: "/admin/x",
        },
    ),
    (
        "/api/./admin",
        Routed {
            route: "api",
            path: "/api/admin",
        },
    ),
    (
        "/admin/.",
        Routed {
            route: "admin",
            path: "/admin/",
        },
    ),
    (
        "/api/admin/..",
        Routed {
            route: "api",
            path: "/api/",
        },
    ),
    (
        "/admin/../api/../admin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    (
        "/api/.../admin",
        Routed {
            route: "api",
            path: "/api/.../admin",
        },
    ),
    (
        "/api/..admin",
        Routed {
            route: "api",
            path: "/api/..admin",
        },
    ),
    ("/api/../../admin", Rejected("above_root")),
    ("/../admin", Rejected("above_root")),
    // Repeated slashes.
    (
        "//admin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    (
        "/api//..//admin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    (
        "///admin///users//",
        Routed {
            route: "admin",
            path: "/admin/users/",
        },
    ),
    (
        "//api//orders",
        Routed {
            route: "api",
            path: "/api/orders",
        },
    ),
    (
        "/api////",
        Routed {
            route: "api",
            path: "/api/",
        },
    ),
    ("/api//..//..//admin", Rejected("above_root")),
    // Encoded slash, any case.
    ("/api/..%2fadmin", Rejected("encoded_slash")),
    ("/api/..%2Fadmin", Rejected("encoded_slash")),
    ("/api%2f..%2fadmin", Rejected("encoded_slash")),
    ("/admin%2Fx", Rejected("encoded_slash")),
    ("/%2fadmin", Rejected("encoded_slash")),
    ("/api/%2F%2E%2E%2Fadmin", Rejected("encoded_slash")),
    ("/api/%2e%2e%2fadmin", Rejected("encoded_slash")),
    // Double encoding: decoded once, never twice.
    (
        "/api/%252e%252e%252fadmin",
        Routed {
            route: "api",
            path: "/api/%252e%252e%252fadmin",
        },
    ),
    (
        "/api/%252E%252E/admin",
        Routed {
            route: "api",
            path: "/api/%252E%252E/admin",
        },
    ),
    (
        "/api/%255c..%255cadmin",
        Routed {
            route: "api",
            path: "/api/%255c..%255cadmin",
        },
    ),
    (
        "/api/%25%32%65%25%32%65/admin",
        Routed {
            route: "api",
            path: "/api/%252e%252e/admin",
        },
    ),
    (
        "/api/x/..%252fadmin",
        Routed {
            route: "api",
            path: "/api/x/..%252fadmin",
        },
    ),
    (
        "/%2561dmin",
        Routed {
            route: "(none)",
            path: "/%2561dmin",
        },
    ),
    // `;` path parameters (Tomcat `/..;/`, jsessionid): refused by default.
    ("/api/..;/admin", Rejected("semicolon")),
    ("/api/..;x=1/admin", Rejected("semicolon")),
    ("/api/..;/..;/admin", Rejected("semicolon")),
    ("/api;/../admin", Rejected("semicolon")),
    ("/;/admin", Rejected("semicolon")),
    ("/admin;jsessionid=abc", Rejected("semicolon")),
    ("/api/x;jsessionid=1/../../admin", Rejected("semicolon")),
    ("/api/%2e%2e;/admin", Rejected("semicolon")),
    // An encoded `;` is data, not a parameter.
    (
        "/api/..%3b/admin",
        Routed {
            route: "api",
            path: "/api/..%3B/admin",
        },
    ),
    (
        "/api/%3b/../admin",
        Routed {
            route: "api",
            path: "/api/admin",
        },
    ),
    // Backslash, raw and encoded.
    ("/api\\..\\admin", Rejected("backslash")),
    ("/api/..\\admin", Rejected("backslash")),
    ("/api/..%5cadmin", Rejected("backslash")),
    ("/api/..%5Cadmin", Rejected("backslash")),
    ("/%5cadmin", Rejected("backslash")),
    ("/admin/%5c..%5c..%5capi", Rejected("backslash")),
    ("/api/%2e%2e%5cadmin", Rejected("backslash")),
    // NUL.
    ("/api/%00/../admin", Rejected("nul")),
    ("/admin%00", Rejected("nul")),
    ("/api/..%00/admin", Rejected("nul")),
    ("/api/%2e%2e%00/admin", Rejected("nul")),
    // Overlong, truncated and otherwise invalid UTF-8.
    ("/api/%c0%ae%c0%ae/admin", Rejected("bad_utf8")),
    ("/api/..%c0%afadmin", Rejected("bad_utf8")),
    ("/api/%e0%80%ae%e0%80%ae/admin", Rejected("bad_utf8")),
    ("/api/%e0%80%af../admin", Rejected("bad_utf8")),
    ("/api/..%c1%9cadmin", Rejected("bad_utf8")),
    ("/api/%f0%80%80%ae", Rejected("bad_utf8")),
    ("/api/%c0%2e%c0%2e/admin", Rejected("bad_utf8")),
    ("/api/caf%c3", Rejected("bad_utf8")),
    ("/api/caf%c3/../admin", Rejected("bad_utf8")),
    ("/api/%c3%28", Rejected("bad_utf8")),
    ("/api/%ed%a0%80", Rejected("bad_utf8")),
    ("/api/%80", Rejected("bad_utf8")),
    // Unicode look-alikes of '/', '\', '.' and '%', escaped and raw.
    ("/api/..%ef%bc%8fadmin", Rejected("look_alike")),
    ("/api%e2%88%95..%e2%88%95admin", Rejected("look_alike")),
    ("/api/..%e2%81%84admin", Rejected("look_alike")),
    ("/api/..%e2%a7%b8admin", Rejected("look_alike")),
    ("/api/%ef%bc%8e%ef%bc%8e/admin", Rejected("look_alike")),
    ("/api/%e2%80%a4%e2%80%a4/admin", Rejected("look_alike")),
    ("/api/%e2%80%a5/admin", Rejected("look_alike")),
    ("/api/%e2%80%a6/admin", Rejected("look_alike")),
    ("/api/%ef%b9%92%ef%b9%92/admin", Rejected("look_alike")),
    ("/api/..%ef%bc%bcadmin", Rejected("look_alike")),
    ("/api/..%ef%b9%a8admin", Rejected("look_alike")),
    ("/api/..%e2%88%96admin", Rejected("look_alike")),
    ("/api/%ef%bc%85%32%65", Rejected("look_alike")),
    ("/api/%ef%b9%aa2e", Rejected("look_alike")),
    ("/api/..\u{ff0f}admin", Rejected("look_alike")),
    ("/api/\u{ff0e}\u{ff0e}/admin", Rejected("look_alike")),
    // Legitimate non-ASCII: kept, escaped upper-case.
    (
        "/api/caf%c3%a9",
        Routed {
            route: "api",
            path: "/api/caf%C3%A9",
        },
    ),
    (
        "/api/caf%C3%a9",
        Routed {
            route: "api",
            path: "/api/caf%C3%A9",
        },
    ),
    (
        "/api/caf\u{e9}",
        Routed {
            route: "api",
            path: "/api/caf%C3%A9",
        },
    ),
    (
        "/admin/%e6%97%a5%e6%9c%ac",
        Routed {
            route: "admin",
            path: "/admin/%E6%97%A5%E6%9C%AC",
        },
    ),
    (
        "/api/%e2%82%ac",
        Routed {
            route: "api",
            path: "/api/%E2%82%AC",
        },
    ),
    // Encoded unreserved characters decode; case is significant.
    (
        "/%61dmin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    (
        "/%61%64%6d%69%6e/x",
        Routed {
            route: "admin",
            path: "/admin/x",
        },
    ),
    (
        "/a%70i/../%61dmin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    (
        "/%41DMIN",
        Routed {
            route: "(none)",
            path: "/ADMIN",
        },
    ),
    (
        "/ADMIN",
        Routed {
            route: "(none)",
            path: "/ADMIN",
        },
    ),
    (
        "/Admin/x",
        Routed {
            route: "(none)",
            path: "/Admin/x",
        },
    ),
    (
        "/api/%41",
        Routed {
            route: "api",
            path: "/api/A",
        },
    ),
    (
        "/api/%7euser",
        Routed {
            route: "api",
            path: "/api/~user",
        },
    ),
    (
        "/api/%2D%5F%2E%7E",
        Routed {
            route: "api",
            path: "/api/-_.~",
        },
    ),
    // Reserved characters stay escaped, upper-cased.
    (
        "/api/a%3fb",
        Routed {
            route: "api",
            path: "/api/a%3Fb",
        },
    ),
    (
        "/api/%23frag",
        Routed {
            route: "api",
            path: "/api/%23frag",
        },
    ),
    (
        "/api/%3f/../../admin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    // Tab, space, CR LF: escaped.
    (
        "/api/a%09b",
        Routed {
            route: "api",
            path: "/api/a%09b",
        },
    ),
    (
        "/api/a%20b",
        Routed {
            route: "api",
            path: "/api/a%20b",
        },
    ),
    (
        "/api/%09/../admin",
        Routed {
            route: "api",
            path: "/api/admin",
        },
    ),
    (
        "/api/x%0d%0aX-Injected:%20y",
        Routed {
            route: "api",
            path: "/api/x%0D%0AX-Injected:%20y",
        },
    ),
    (
        "/api/x%7f",
        Routed {
            route: "api",
            path: "/api/x%7F",
        },
    ),
    // Broken percent-encoding (IIS %u, lone %, non-hex).
    ("/api/%u002e%u002e/admin", Rejected("bad_percent_encoding")),
    ("/api/%", Rejected("bad_percent_encoding")),
    ("/api/%zz", Rejected("bad_percent_encoding")),
    ("/api/%2", Rejected("bad_percent_encoding")),
    ("/api/%%32%65", Rejected("bad_percent_encoding")),
    ("/api/%g0", Rejected("bad_percent_encoding")),
    // The query is forwarded verbatim and plays no part in routing.
    (
        "/api/x?next=/../admin",
        Routed {
            route: "api",
            path: "/api/x?next=/../admin",
        },
    ),
    (
        "/api/x?p=%2f..%2fadmin",
        Routed {
            route: "api",
            path: "/api/x?p=%2f..%2fadmin",
        },
    ),
    (
        "/api//x?p=%2F&q=/../admin",
        Routed {
            route: "api",
            path: "/api/x?p=%2F&q=/../admin",
        },
    ),
    (
        "/api/x?a=1;b=2",
        Routed {
            route: "api",
            path: "/api/x?a=1;b=2",
        },
    ),
    (
        "/admin/../api/x?/../admin",
        Routed {
            route: "api",
            path: "/api/x?/../admin",
        },
    ),
    (
        "/api?..%2f..%2fadmin",
        Routed {
            route: "api",
            path: "/api?..%2f..%2fadmin",
        },
    ),
    (
        "/api/x?%c0%ae",
        Routed {
            route: "api",
            path: "/api/x?%c0%ae",
        },
    ),
    // Fragments are never forwarded nor matched.
    (
        "/api/x#/../../admin",
        Routed {
            route: "api",
            path: "/api/x",
        },
    ),
    (
        "/api#/../admin",
        Routed {
            route: "api",
            path: "/api",
        },
    ),
    (
        "/admin/x#",
        Routed {
            route: "admin",
            path: "/admin/x",
        },
    ),
    (
        "/api/%2e%2e/admin#x",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    (
        "/api/x?q=1#/../admin",
        Routed {
            route: "api",
            path: "/api/x?q=1",
        },
    ),
    // Absolute-form: matched and forwarded by its path, in origin form.
    (
        "http://shop.test/admin/x",
        Routed {
            route: "admin",
            path: "/admin/x",
        },
    ),
    (
        "http://shop.test/api/../admin/x",
        Routed {
            route: "admin",
            path: "/admin/x",
        },
    ),
    (
        "http://shop.test/api/%2e%2e/admin?q=1",
        Routed {
            route: "admin",
            path: "/admin?q=1",
        },
    ),
    (
        "http://shop.test//admin",
        Routed {
            route: "admin",
            path: "/admin",
        },
    ),
    ("http://shop.test/api/..%2fadmin", Rejected("encoded_slash")),
    ("http://evil.test/admin", Refused),
    ("http:/admin", Refused),
    // Targets that are not a path.
    ("*", Rejected("not_absolute")),
    ("admin", Refused),
    ("\\admin", Refused),
    // Bytes the http crate won't hold in a path.
    ("/api/<x>", Refused),
    ("/api/`x`", Refused),
    // Raw control bytes and spaces in the request line.
    ("/api/a\tb", Safe),
    ("/api/x /admin", Safe),
    ("/api/\0/../admin", Safe),
    ("/api/\x7f/../admin", Safe),
];

async fn setup() -> Proxy {
    let mono = echo::start("monolith").await;
    let svc = echo::start("admin-svc").await;
    Proxy::start(&rules(
        &[("monolith", mono), ("admin-svc", svc)],
        "  - { name: admin, match: { prefix: /admin }, mode: migrated, service: admin-svc }\n\
         \x20 - { name: api, match: { prefix: /api }, mode: legacy }\n",
    ))
    .await
}

/// The path and query the proxy works on: no fragment, origin form.
fn target_parts(sent: &str) -> (&str, Option<&str>) {
    let t = sent.split('#').next().unwrap_or_default();
    let t = t.strip_prefix("http://shop.test").unwrap_or(t);
    match t.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (t, None),
    }
}

/// The route a normalized path matches (whole-segment prefixes).
fn route_of(path: &str) -> &'static str {
    let under = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    if under("/admin") {
        "admin"
    } else if under("/api") {
        "api"
    } else {
        "(none)"
    }
}

fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let head = &text[..text.find("\r\n\r\n").unwrap_or(text.len())];
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn echoed(text: &str) -> Option<Value> {
    let body = &text[text.find("\r\n\r\n")? + 4..];
    serde_json::from_str(&body[body.find('{')?..=body.rfind('}')?]).ok()
}

fn refused(sent: &str, status: u16, text: &str) -> Result<(), String> {
    if status != 400 {
        return Err(format!("{sent:?}: status {status}, want 400: {text}"));
    }
    if header(text, "x-strangler-upstream").is_some() || text.contains("\"server\":") {
        return Err(format!("{sent:?}: reached an upstream: {text}"));
    }
    Ok(())
}

fn routed(sent: &str, status: u16, text: &str, route: &str, path: &str) -> Result<(), String> {
    if status != 200 {
        return Err(format!("{sent:?}: status {status}, want 200 via {route}: {text}"));
    }
    if header(text, "x-strangler-route") != Some(route) {
        return Err(format!(
            "{sent:?}: route {:?}, want {route}",
            header(text, "x-strangler-route")
        ));
    }
    let server = if route == "admin" { "admin-svc" } else { "monolith" };
    let v = echoed(text).ok_or_else(|| format!("{sent:?}: no echo body: {text}"))?;
    if v["server"] != server {
        return Err(format!("{sent:?}: served by {}, want {server}", v["server"]));
    }
    if v["path"] != path {
        return Err(format!("{sent:?}: upstream got {}, want {path:?}", v["path"]));
    }
    Ok(())
}

async fn check(proxy: &Proxy, sent: &str, expect: &Expect) -> Result<(), String> {
    let (status, text) = raw_get(proxy.addr, sent).await;
    let (path, query) = target_parts(sent);
    let with_query = |p: &str| match query {
        Some(q) => format!("{p}?{q}"),
        None => p.to_string(),
    };
    match expect {
        Routed { route, path: want } => {
            // The table agrees with the normalizer: forwarded == matched.
            let normal = normalize(path).map(|p| with_query(&p));
            if normal.as_deref() != Ok(*want) {
                return Err(format!("{sent:?}: normalize gives {normal:?}, table says {want:?}"));
            }
            if route_of(path_only(want)) != *route {
                return Err(format!(
                    "{sent:?}: {want:?} matches {}, table says {route}",
                    route_of(path_only(want))
                ));
            }
            routed(sent, status, &text, route, want)
        }
        Rejected(reason) => {
            let code = normalize(path).err().map(|e| e.code());
            if code != Some(*reason) {
                return Err(format!("{sent:?}: normalize gives {code:?}, table says {reason}"));
            }
            refused(sent, status, &text)?;
            if !text.contains(&format!("\"reason\":\"{reason}\"")) {
                return Err(format!("{sent:?}: want reason {reason}: {text}"));
            }
            Ok(())
        }
        Refused => refused(sent, status, &text),
        Safe => match normalize(path) {
            Ok(p) if status != 400 => routed(sent, status, &text, route_of(&p), &with_query(&p)),
            _ => refused(sent, status, &text),
        },
    }
}

fn path_only(pq: &str) -> &str {
    pq.split('?').next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_variant_bypasses_routing() {
    assert!(CASES.len() >= 70, "only {} variants", CASES.len());
    let proxy = setup().await;
    let mut failures = Vec::new();
    for (sent, expect) in CASES {
        if let Err(e) = check(&proxy, sent, expect).await {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} variants:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );

    // The proxy keeps serving everyone else.
    let (status, text) = raw_get(proxy.addr, "/api/fine").await;
    routed("/api/fine", status, &text, "api", "/api/fine").unwrap();
    let (status, text) = raw_get(proxy.addr, "/admin/users").await;
    routed("/admin/users", status, &text, "admin", "/admin/users").unwrap();

    let look_alikes = CASES
        .iter()
        .filter(|(_, e)| matches!(e, Rejected("look_alike")))
        .count();
    let m = proxy.metrics().await;
    let series = r#"strangler_rejected_requests_total{reason="look_alike"} "#;
    let counted: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no look_alike series:\n{m}"));
    assert!(
        counted >= look_alikes as f64,
        "look_alike {counted}, want >= {look_alikes}"
    );
}
