//! Table tests of the compiler and the lookup.

use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::*;

const UPSTREAMS: &str = "legacy: mono\nupstreams:\n  mono: { url: \"http://127.0.0.1:1\" }\n  svc: { url: \"http://127.0.0.1:2\" }\nroutes:\n";

fn compile(routes: &str) -> Result<RuleSet, ConfigErrors> {
    let text = format!("{UPSTREAMS}{routes}");
    let file = Path::new("rules.yaml");
    super::compile(file, &config::parse(file, &text)?)
}

fn strangler_request<'a>(m: &'a Method, path: &'a str, query: Option<&'a str>, map: &'a HeaderMap) -> Request<'a> {
    Request {
        query,
        ..Request::new(m, path, map)
    }
}

fn name_of(rules: &RuleSet, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let m = Method::from_bytes(method.as_bytes()).unwrap();
    let (path, query) = path.split_once('?').map_or((path, None), |(p, q)| (p, Some(q)));
    rules
        .lookup(&strangler_request(&m, path, query, &map))
        .map_or(NO_ROUTE.to_string(), |id| rules.routes[id].name.clone())
}

#[test]
fn precedence_and_boundaries() {
    let rules = compile(
        "  - { name: root, match: { prefix: / }, mode: legacy }\n\
         \x20 - { name: api, match: { prefix: /api }, mode: legacy }\n\
         \x20 - { name: orders, match: { prefix: /api/orders }, mode: legacy }\n\
         \x20 - { name: order, match: { path: \"/api/orders/{id}\" }, mode: legacy }\n\
         \x20 - { name: order-new, match: { path: /api/orders/new }, mode: legacy }\n\
         \x20 - { name: order-post, match: { path: /api/orders, methods: [POST] }, mode: legacy }\n\
         \x20 - { name: items, match: { path: \"/api/orders/{id}/items\" }, mode: legacy }\n\
         \x20 - { name: v2, match: { prefix: /api/v2, headers: { x-api-version: \"2\" } }, mode: legacy }\n\
         \x20 - { name: v2-any, match: { prefix: /api/v2, headers: { x-beta: present } }, mode: legacy }\n",
    )
    .unwrap();
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("GET", "/", &[], "root"),
        ("GET", "/apix", &[], "root"),
        ("GET", "/api", &[], "api"),
        ("GET", "/api/", &[], "api"),
        ("GET", "/api/ordersx", &[], "api"),
        ("GET", "/api/orders", &[], "orders"),
        ("POST", "/api/orders", &[], "order-post"),
        ("GET", "/api/orders/7", &[], "order"),
        ("GET", "/api/orders/new", &[], "order-new"),
        ("GET", "/api/orders/7/items", &[], "items"),
        ("GET", "/api/orders/7/other", &[], "orders"),
        ("GET", "/api/v2/x", &[("x-api-version", "2")], "v2"),
        ("GET", "/api/v2/x", &[("x-api-version", "3")], "api"),
        ("GET", "/api/v2/x", &[("x-beta", "")], "v2-any"),
        ("GET", "/api/v2/x", &[("x-api-version", "2"), ("x-beta", "1")], "v2"),
    ];
    for (m, p, h, want) in cases {
        assert_eq!(name_of(&rules, m, p, h), *want, "{m} {p} {h:?}");
    }
}

#[test]
fn no_rule_means_none() {
    let rules = compile("  - { name: a, match: { prefix: /a }, mode: legacy }\n").unwrap();
    assert_eq!(name_of(&rules, "GET", "/b", &[]), NO_ROUTE);
    assert_eq!(name_of(&rules, "GET", "/", &[]), NO_ROUTE);
}

#[test]
fn ties_go_to_the_first_rule() {
    let rules = compile(
        "  - { name: first, match: { prefix: /a, methods: [GET, POST] }, mode: legacy }\n\
         \x20 - { name: second, match: { prefix: /a, methods: [GET, PUT] }, mode: legacy }\n",
    )
    .unwrap();
    assert_eq!(name_of(&rules, "GET", "/a", &[]), "first");
    assert_eq!(name_of(&rules, "PUT", "/a", &[]), "second");
}

#[test]
fn a_rule_an_earlier_one_always_beats_is_refused() {
    let never = [
        "  - { name: a, match: { prefix: /a }, mode: legacy }\n  - { name: b, match: { prefix: /a, methods: [GET] }, mode: legacy }\n",
        "  - { name: a, match: { prefix: /a, methods: [GET, POST] }, mode: legacy }\n  - { name: b, match: { prefix: /a, methods: [GET] }, mode: legacy }\n",
        "  - { name: a, match: { path: \"/o/{id}\" }, mode: legacy }\n  - { name: b, match: { path: \"/o/{x}\", headers: { x-v: \"2\" } }, mode: legacy }\n",
        "  - { name: a, match: { path: /o, headers: { x-v: present } }, mode: legacy }\n  - { name: b, match: { path: /o, headers: { x-v: present, x-w: \"1\" } }, mode: legacy }\n",
        "  - { name: a, match: { prefix: /o, cookies: { beta: \"1\" } }, mode: legacy }\n  - { name: b, match: { prefix: /o, cookies: { beta: 1 }, query: { v: true } }, mode: legacy }\n",
        "  - { name: a, match: { prefix: /o, host: \"*.shop.example\" }, mode: legacy }\n  - { name: b, match: { prefix: /o, host: \"*.Shop.Example.\", methods: [GET] }, mode: legacy }\n",
    ];
    for routes in never {
        let err = compile(routes).expect_err("refused").to_string();
        assert!(
            err.contains("route \"b\": never matches: route \"a\" (line 6)"),
            "{routes}\n{err}"
        );
    }
    let fine = [
        "  - { name: b, match: { prefix: /a, methods: [GET] }, mode: legacy }\n  - { name: a, match: { prefix: /a }, mode: legacy }\n",
        "  - { name: a, match: { path: /o, headers: { x-v: \"1\" } }, mode: legacy }\n  - { name: b, match: { path: /o, headers: { x-v: \"2\" } }, mode: legacy }\n",
        "  - { name: a, match: { prefix: /a }, mode: legacy }\n  - { name: b, match: { path: /a, methods: [GET] }, mode: legacy }\n",
        "  - { name: a, match: { prefix: /o, host: \"*.shop.example\" }, mode: legacy }\n  - { name: b, match: { prefix: /o, host: shop.example }, mode: legacy }\n",
        "  - { name: a, match: { prefix: /o, cookies: { beta: \"1\" } }, mode: legacy }\n  - { name: b, match: { prefix: /o, query: { beta: \"1\" } }, mode: legacy }\n",
    ];
    for routes in fine {
        compile(routes).unwrap_or_else(|e| panic!("{routes}\n{e}"));
    }
}

#[test]
fn refusals_name_the_route_and_place() {
    let cases = [
        ("  - { name: a, match: { prefix: /a }, mode: migrated, service: nope }\n", "rules.yaml:6:64: route \"a\": unknown upstream \"nope\" (known: mono, svc)"),
        ("  - { name: a, match: { prefix: /a }, mode: canary, service: svc }\n", "route \"a\": mode canary needs `canary: { percent: N }`"),
        ("  - { name: a, match: { prefix: /a }, mode: shadow }\n", "route \"a\": mode shadow needs `service:`"),
        ("  - { name: a, match: { prefix: /a }, mode: canary, service: svc, canary: { percent: 101 } }\n", "canary.percent must be within 0..=100, got 101"),
        ("  - { name: a, match: { prefix: /a }, mode: canary, service: svc, canary: { percent: -1 } }\n", "canary.percent must be within 0..=100, got -1"),
        ("  - { name: a, match: { prefix: /a }, mode: canary, service: svc, canary: { percent: 5, sticky: ip } }\n", "canary.sticky \"ip\" must be header:NAME or cookie:NAME"),
        ("  - { name: a, match: { prefix: /a }, mode: legacy }\n  - { name: a, match: { prefix: /b }, mode: legacy }\n", "rules.yaml:7:13: route \"a\": duplicate route name (first used on line 6)"),
        ("  - { name: a, match: { prefix: /a }, mode: legacy }\n  - { name: b, match: { prefix: /a/ }, mode: legacy }\n", "route \"b\": same match as route \"a\" (line 6)"),
        ("  - { name: a, match: { path: /a, prefix: /a }, mode: legacy }\n", "match: set exactly one of path or prefix"),
        ("  - { name: a, match: { path: a }, mode: legacy }\n", "match.path must start with '/'"),
        ("  - { name: a, match: { path: /a/../b }, mode: legacy }\n", "is not a normalized path"),
        ("  - { name: a, match: { path: \"/a/{*rest}\" }, mode: legacy }\n", "catch-all"),
        ("  - { name: a, match: { prefix: /a, methods: [FETCH] }, mode: legacy }\n", "unknown method \"FETCH\""),
        ("  - { name: a, match: { prefix: /a, colour: red }, mode: legacy }\n", "route \"a\": unknown field `colour`"),
        ("  - { name: a, match: { prefix: /a }, mode: sideways }\n", "route \"a\": unknown variant `sideways`"),
        (
            "  - { name: a, match: { path: \"/a/{id}\" }, mode: migrated, service: svc, rewrite: { path: \"/b/{key}\" } }\n",
            "rules.yaml:6:91: route \"a\": rewrite.path uses {key}, which match.path doesn't capture (match.path has {id})",
        ),
        (
            "  - { name: a, match: { path: /a }, mode: migrated, service: svc, rewrite: { path: \"/b/{id}\" } }\n",
            "rewrite.path uses {id}, which match.path doesn't capture (match.path has none)",
        ),
        (
            "  - { name: a, match: { path: /a }, mode: migrated, service: svc, rewrite: { prefix: /b } }\n",
            "route \"a\": rewrite.prefix needs match.prefix",
        ),
        (
            "  - { name: a, match: { prefix: /a }, mode: migrated, service: svc, rewrite: { path: /b } }\n",
            "rewrite.path needs match.path; with match.prefix use rewrite.prefix",
        ),
        (
            "  - { name: a, match: { prefix: /a }, mode: migrated, service: svc, rewrite: { prefix: /b, path: /c } }\n",
            "rewrite: set exactly one of prefix or path",
        ),
        (
            "  - { name: a, match: { prefix: /a }, mode: migrated, service: svc, rewrite: { prefix: b } }\n",
            "rewrite.prefix must be a plain path starting with '/': \"b\"",
        ),
        (
            "  - { name: a, match: { path: \"/a/{id}\" }, mode: migrated, service: svc, rewrite: { path: \"/b/{id\" } }\n",
            "rewrite.path \"/b/{id\": an unclosed '{'",
        ),
        (
            "  - { name: a, match: { prefix: /a }, mode: legacy, rewrite: { prefix: /b } }\n",
            "rewrite changes the new side's path; give the route a service",
        ),
        (
            "  - { name: a, match: { prefix: /a }, mode: migrated, service: svc, rewrite: { to: /b } }\n",
            "unknown field `to`",
        ),
        (
            "  - { name: a, match: { prefix: /a, headers: { x-client: { regex: \"^ios-(\" } } }, mode: legacy }\n",
            "rules.yaml:6:58: route \"a\": match.headers.x-client: bad regex: unclosed group",
        ),
        (
            "  - { name: a, match: { prefix: /a, headers: { x-client: { regex: \"\\\\w{1000}{1000}\" } } }, mode: legacy }\n",
            "match.headers.x-client: bad regex: Compiled regex exceeds size limit",
        ),
        (
            "  - { name: a, match: { prefix: /a, cookies: { beta: false } }, mode: legacy }\n",
            "match.cookies.beta: false matches nothing; use true for \"present\", or remove the key",
        ),
        (
            "  - { name: a, match: { prefix: /a, cookies: { \"be ta\": \"1\" } }, mode: legacy }\n",
            "bad cookie name \"be ta\"",
        ),
        (
            "  - { name: a, match: { prefix: /a, query: { \"\": \"1\" } }, mode: legacy }\n",
            "match.query: a parameter needs a name",
        ),
        (
            "  - { name: a, match: { prefix: /a, host: \"shop.*.example\" }, mode: legacy }\n",
            "rules.yaml:6:43: route \"a\": match.host \"shop.*.example\" must be a host name (shop.example) or a wildcard of one (*.shop.example), without port",
        ),
        (
            "  - { name: a, match: { prefix: /a, host: \"shop.example:8080\" }, mode: legacy }\n",
            "match.host \"shop.example:8080\" must be a host name",
        ),
        (
            "  - { name: a, match: { prefix: /a, headers: { x-v: { regex: \"^1\", flags: i } } }, mode: legacy }\n",
            "rules.yaml:6:53: route \"a\": expected a value, true (for present) or { regex: PATTERN }",
        ),
        (
            "  - { name: a, match: { prefix: /a }, mode: legacy, rate_limit: { per_second: 5 } }\n",
            "rules.yaml:6:65: route \"a\": rate_limit caps the new side; give the route a service",
        ),
        (
            "  - { name: a, match: { prefix: /a }, mode: migrated, service: svc, rate_limit: { per_second: 0 } }\n",
            "rate_limit.per_second must be above 0 and at most 1000000, got 0",
        ),
        (
            "  - { name: a, match: { prefix: /a }, mode: migrated, service: svc, rate_limit: { per_second: 5, burst: 0 } }\n",
            "rate_limit.burst must be within 1..=1000000, got 0",
        ),
        (
            "  - { name: a, match: { prefix: /a }, mode: migrated, service: svc, rate_limit: { per_second: 5, key: user } }\n",
            "rate_limit.key \"user\" must be route, ip, header:NAME or cookie:NAME",
        ),
        (
            "  - { name: a, match: { prefix: /a }, mode: migrated, service: svc, rate_limit: { per_second: 5, per_minute: 9 } }\n",
            "unknown field `per_minute`",
        ),
        (
            "  - { name: a, match: { path: /a }, mode: compose, compose: { p: { service: nope, path: /p } } }\n",
            "route \"a\": compose.p: unknown upstream \"nope\" (known: mono, svc)",
        ),
        (
            "  - { name: a, match: { prefix: /a }, mode: compose, compose: { p: { service: svc, path: /p } } }\n",
            "compose needs match.path (its parameters fill the parts' paths)",
        ),
        (
            "  - { name: a, match: { path: \"/a/{id}\" }, mode: compose, compose: { p: { service: svc, path: \"/p/{id}\" }, q: { service: svc, path: \"/q/{sku}\", for_each: p.items.sku } } }\n",
            "compose.q.for_each \"p.items.sku\" needs exactly one [*]",
        ),
        (
            "  - { name: a, match: { path: \"/a/{id}\" }, mode: compose, compose: { q: { service: svc, path: \"/q/{sku}\", for_each: \"zz.items[*].sku\" } } }\n",
            "compose.q.for_each \"zz.items[*].sku\": no part \"zz\" (parts: q)",
        ),
        (
            "  - { name: a, match: { path: \"/a/{id}\" }, mode: compose, compose: { p: { service: svc, path: \"/p/{x}\" } } }\n",
            "compose.p.path uses {x}, which nothing fills (there are: {id})",
        ),
        (
            "  - { name: a, match: { path: /a }, mode: migrated, service: svc, compose: { p: { service: svc, path: /p } } }\n",
            "set service or compose, not both: compose is the new side",
        ),
        (
            "  - { name: a, match: { path: /a }, mode: migrated, service: svc, max_fan_out: 5 }\n",
            "max_fan_out is for routes with compose",
        ),
        (
            "  - { name: a, match: { path: /a }, mode: compose }\n",
            "mode compose needs `compose:` (its parts)",
        ),
        (
            "  - { name: a, match: { path: /a }, mode: compose, compose: { p: { service: svc, path: \"/p/{v}\", for_each: \"q.x[*].v\" }, q: { service: svc, path: \"/q/{v}\", for_each: \"p.x[*].v\" } } }\n",
            "compose: parts p, q wait for each other",
        ),
        (
            "  - { name: a, match: { path: /a }, mode: compose, compose: { p: { service: svc, path: /p } }, max_fan_out: 0 }\n",
            "max_fan_out must be within 1..=1000, got 0",
        ),
    ];
    for (routes, want) in cases {
        let err = compile(routes)
            .err()
            .unwrap_or_else(|| panic!("accepted: {routes}"))
            .to_string();
        assert!(err.contains(want), "for {routes}\n got: {err}\nwant: {want}");
    }
}

#[test]
fn bad_upstreams_and_durations() {
    let file = Path::new("rules.yaml");
    let cases = [
        (
            "legacy: m\nupstreams:\n  m: { url: \"ftp://x:1\" }\n",
            "rules.yaml:3:13: upstream \"m\": bad url \"ftp://x:1\": scheme must be http://",
        ),
        (
            "legacy: m\nupstreams:\n  m: { url: \"http://127.0.0.1:1/base\" }\n",
            "a path is not allowed",
        ),
        (
            "legacy: m\nupstreams:\n  m: { url: \"http://127.0.0.1:1\", timeouts: { connect: soon } }\n",
            "timeouts.connect: bad duration \"soon\"",
        ),
        (
            "legacy: x\nupstreams:\n  m: { url: \"http://127.0.0.1:1\" }\n",
            "rules.yaml:1:9: legacy: unknown upstream \"x\" (known: m)",
        ),
    ];
    for (text, want) in cases {
        let err = config::parse(file, text)
            .and_then(|f| super::compile(file, &f))
            .expect_err("refused")
            .to_string();
        assert!(err.contains(want), "got: {err}\nwant: {want}");
    }
}

#[test]
fn canary_buckets_are_fixed() {
    // The documented hash must never change: replicas, restarts and releases put a user in the
    // same bucket. These literal values are the contract (XXH3-64, seed 0, modulo 10,000; the
    // README's `explain` example shows 42 -> 5473), so a change of hash or crate fails here.
    for (key, bucket) in [
        (&b"42"[..], 5473),
        (b"alice", 8080),
        (b"user-1", 6057),
        (b"", 3138),
        (b"7f3c", 3572),
    ] {
        assert_eq!(canary_bucket(key), bucket, "{}", String::from_utf8_lossy(key));
    }
    let c = Canary {
        percent: 10.0,
        threshold: 1000,
        sticky: None,
    };
    assert_eq!(c.side_of_bucket(999), Side::New);
    assert_eq!(c.side_of_bucket(1000), Side::Legacy);
}

#[test]
fn cookies_query_regex_and_host_route() {
    let rules = compile(
        "  - { name: beta, match: { prefix: /o, cookies: { beta: \"1\" } }, mode: legacy }\n\
         \x20 - { name: v2, match: { prefix: /o, query: { v: 2 } }, mode: legacy }\n\
         \x20 - { name: ios, match: { prefix: /o, headers: { x-client: { regex: \"^ios-\" } } }, mode: legacy }\n\
         \x20 - { name: tenant, match: { prefix: /o, host: \"*.shop.example\" }, mode: legacy }\n\
         \x20 - { name: apex, match: { prefix: /o, host: shop.example }, mode: legacy }\n\
         \x20 - { name: rest, match: { prefix: /o }, mode: legacy }\n",
    )
    .unwrap();
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 12] = [
        ("/o", &[("cookie", "a=1; beta=1")], "beta"),
        ("/o", &[("cookie", "beta=\"%31\"")], "beta"),
        ("/o", &[("cookie", "beta=2")], "rest"),
        ("/o/x?v=2", &[], "v2"),
        ("/o?%76=%32", &[], "v2"),
        ("/o?v=22", &[], "rest"),
        ("/o", &[("x-client", "ios-17")], "ios"),
        ("/o", &[("x-client", "web-ios-17")], "rest"),
        ("/o", &[("host", "eu.Shop.Example:8443")], "tenant"),
        ("/o", &[("host", "SHOP.example.")], "apex"),
        ("/o", &[("host", "evilshop.example")], "rest"),
        ("/o?v=2", &[("cookie", "beta=1")], "beta"),
    ];
    for (path, headers, want) in cases {
        assert_eq!(name_of(&rules, "GET", path, headers), want, "{path} {headers:?}");
    }
}

#[test]
fn cookie_values() {
    assert_eq!(cookie_value(b"a=1; uid=42; b=2", b"uid"), Some(&b"42"[..]));
    assert_eq!(cookie_value(b"uid=7", b"uid"), Some(&b"7"[..]));
    assert_eq!(cookie_value(b"xuid=7", b"uid"), None);
}
