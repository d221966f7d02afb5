//! `strangler check` and `strangler explain`, run as the real binary.

mod common;

use std::path::Path;
use std::process::Output;

use common::proxy::strangler;

fn run(args: &[&str]) -> Output {
    strangler().args(args).output().expect("run strangler")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const HEAD: &str = "legacy: monolith\nupstreams:\n  monolith: { url: \"http://127.0.0.1:8000\" }\n  orders: { url: \"http://127.0.0.1:8102\" }\nroutes:\n";

fn check_file(dir: &Path, body: &str) -> (bool, String) {
    let file = dir.join("rules.yaml");
    std::fs::write(&file, body).unwrap();
    let out = run(&["check", file.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    (
        out.status.success(),
        format!("{stdout}{stderr}").replace(file.to_str().unwrap(), "rules.yaml"),
    )
}

#[test]
fn check_accepts_the_repo_rules() {
    let repo_rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules.yaml");
    let out = run(&["check", repo_rules.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "ok: 7 routes (2 legacy, 2 shadow, 2 canary, 1 migrated)\n");
}

#[test]
fn check_refuses_every_mistake_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        // unknown fields, at any depth
        ("  - { name: a, match: { prefix: /a }, mode: legacy, colour: red }\n", "rules.yaml:6:53: route \"a\": unknown field `colour`, expected one of name, match, mode, service, canary"),
        ("  - { name: a, match: { prefix: /a, size: 1 }, mode: legacy }\n", "route \"a\": unknown field `size`, expected one of path, prefix, methods, headers"),
        // unknown upstream
        ("  - { name: a, match: { prefix: /a }, mode: migrated, service: ordrs }\n", "rules.yaml:6:64: route \"a\": unknown upstream \"ordrs\" (known: monolith, orders)"),
        // duplicate names
        ("  - { name: a, match: { prefix: /a }, mode: legacy }\n  - { name: a, match: { prefix: /b }, mode: legacy }\n", "rules.yaml:7:13: route \"a\": duplicate route name (first used on line 6)"),
        // a rewrite that can't be built; a service missing on the modes that need one
        ("  - { name: a, match: { path: \"/a/{id}\" }, mode: migrated, service: orders, rewrite: { path: \"/b/{key}\" } }\n", "rules.yaml:6:94: route \"a\": rewrite.path uses {key}, which match.path doesn't capture (match.path has {id})"),
        ("  - { name: a, match: { prefix: /a }, mode: migrated }\n", "route \"a\": mode migrated needs `service:` (one of: monolith, orders)"),
        ("  - { name: a, match: { prefix: /a }, mode: shadow }\n", "route \"a\": mode shadow needs `service:`"),
        ("  - { name: a, match: { prefix: /a }, mode: canary, service: orders }\n", "route \"a\": mode canary needs `canary: { percent: N }`"),
        // percent
        ("  - { name: a, match: { prefix: /a }, mode: canary, service: orders, canary: { percent: 150 } }\n", "route \"a\": canary.percent must be within 0..=100, got 150"),
        // identical match
        ("  - { name: a, match: { path: \"/o/{id}\", methods: [GET] }, mode: legacy }\n  - { name: b, match: { path: \"/o/{x}\", methods: [GET] }, mode: legacy }\n", "rules.yaml:7:23: route \"b\": same match as route \"a\" (line 6); it would never be used"),
        // a rule an earlier rule always takes first
        ("  - { name: all, match: { prefix: /a }, mode: legacy }\n  - { name: gets, match: { prefix: /a, methods: [GET] }, mode: legacy }\n", "rules.yaml:7:26: route \"gets\": never matches: route \"all\" (line 6) has the same path and takes every request this one would; put the more specific route first"),
        // bad mode
        ("  - { name: a, match: { prefix: /a }, mode: sideways }\n", "route \"a\": unknown variant `sideways`, expected one of legacy, shadow, canary, migrated"),
    ];
    for (routes, want) in cases {
        let (ok, out) = check_file(dir.path(), &format!("{HEAD}{routes}"));
        assert!(!ok, "accepted:\n{routes}");
        assert!(out.contains(want), "for:\n{routes}\ngot:\n{out}\nwant: {want}");
    }
}

#[test]
fn check_refuses_bad_urls_and_durations() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "legacy: m\nupstreams:\n  m: { url: \"127.0.0.1:8000\" }\n",
            "rules.yaml:3:13: upstream \"m\": bad url \"127.0.0.1:8000\": scheme must be http://",
        ),
        (
            "legacy: m\nupstreams:\n  m: { url: \"http://\" }\n",
            "upstream \"m\": bad url \"http://\"",
        ),
        (
            "legacy: m\nupstreams:\n  m:\n    url: \"http://127.0.0.1:8000\"\n    timeouts: { connect: 5 parsecs }\n",
            "rules.yaml:5:26: upstream \"m\": timeouts.connect: bad duration \"5 parsecs\" (use e.g. 250ms, 2s, 1m)",
        ),
        (
            "legacy: m\nupstreams:\n  m:\n    url: \"http://127.0.0.1:8000\"\n    timeouts: { response: -2s }\n",
            "timeouts.response: bad duration \"-2s\"",
        ),
        (
            "legacy: nope\nupstreams:\n  m: { url: \"http://127.0.0.1:8000\" }\n",
            "rules.yaml:1:9: legacy: unknown upstream \"nope\" (known: m)",
        ),
    ];
    for (text, want) in cases {
        let (ok, out) = check_file(dir.path(), text);
        assert!(!ok, "accepted:\n{text}");
        assert!(out.contains(want), "for:\n{text}\ngot:\n{out}\nwant: {want}");
    }
}

#[test]
fn check_prints_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = check_file(
        dir.path(),
        &format!(
            "{HEAD}  - {{ name: a, match: {{ prefix: /a }}, mode: migrated, service: x }}\n  - {{ name: b, match: {{ prefix: /b }}, mode: canary, service: orders, canary: {{ percent: 101 }} }}\n"
        ),
    );
    assert!(!ok);
    assert!(out.contains("route \"a\": unknown upstream \"x\""), "{out}");
    assert!(out.contains("route \"b\": canary.percent"), "{out}");
    assert!(out.contains("2 errors in rules.yaml"), "{out}");
    let missing = run(&["check", "/nonexistent/rules.yaml"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing)
            .1
            .contains("/nonexistent/rules.yaml:1:1: can't read the file"),
        "{:?}",
        text(&missing)
    );
}

#[test]
fn explain_says_where_and_why() {
    let repo_rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules.yaml");
    let cfg = repo_rules.to_str().unwrap();
    let explain = |args: &[&str]| {
        let mut all = vec!["explain", "--config", cfg];
        all.extend_from_slice(args);
        let out = run(&all);
        assert!(out.status.success(), "{:?}", text(&out));
        text(&out).0
    };

    let out = explain(&["GET", "/api//inventory/./SKU-0001?verbose=1"]);
    assert!(
        out.contains("normalized:  /api/inventory/SKU-0001?verbose=1\n"),
        "{out}"
    );
    assert!(out.contains("route:       inventory-read (line"), "{out}");
    assert!(
        out.contains("matched by:  prefix /api/inventory, method in [GET, HEAD]\n"),
        "{out}"
    );
    assert!(out.contains("mode:        migrated\n"), "{out}");
    assert!(out.contains("goes to:     inventory (new)\n"), "{out}");

    let out = explain(&["GET", "/api/orders/42"]);
    assert!(out.contains("mode:        shadow\n"), "{out}");
    assert!(
        out.contains("goes to:     monolith (legacy answers); a copy goes to orders\n"),
        "{out}"
    );

    let out = explain(&["GET", "/account/7"]);
    assert!(out.contains("route:       (none): no rule matches\n"), "{out}");
    assert!(out.contains("goes to:     monolith (legacy)\n"), "{out}");

    // Skipped candidates are shown: POST without the header falls to no route.
    let out = explain(&["POST", "/api/orders"]);
    assert!(out.contains("skipped:     route \"orders-create\""), "{out}");
    assert!(out.contains("header x-api-version = 2 does not hold"), "{out}");

    // Canary: the sticky key decides, and the same key always lands on the same side.
    let mut sides = std::collections::BTreeSet::new();
    for user in 0..60 {
        let uid = format!("x-user-id: {user}");
        let a = explain(&["POST", "/api/orders", "-H", "x-api-version: 2", "-H", &uid]);
        let b = explain(&["POST", "/api/orders", "-H", "x-api-version: 2", "-H", &uid]);
        assert_eq!(a, b, "sticky");
        assert!(a.contains("canary:      10% to orders\n"), "{a}");
        assert!(
            a.contains(&format!("sticky key:  header:x-user-id = \"{user}\" -> bucket ")),
            "{a}"
        );
        sides.insert(a.lines().find(|l| l.starts_with("goes to:")).unwrap().to_string());
    }
    assert_eq!(sides.len(), 2, "60 users reach both sides of a 10% canary: {sides:?}");

    let out = explain(&["GET", "/api/%2e%2e/%2e%2e/etc"]);
    assert!(
        out.contains("result:      400 Bad Request ('..' climbs above the root)"),
        "{out}"
    );
}

#[test]
fn check_shows_tracing_as_run_would_start_it_and_names_a_bad_variable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(
        &file,
        format!("tracing: {{ endpoint: \"http://127.0.0.1:4318\", sampler_arg: 0.5 }}\n{HEAD}"),
    )
    .unwrap();
    let with = |env: &[(&str, &str)]| {
        let out = strangler()
            .args(["check", file.to_str().unwrap()])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.success(), text(&out))
    };
    let (ok, (stdout, _)) = with(&[]);
    assert!(ok);
    assert!(
        stdout.ends_with("tracing: http/protobuf to http://127.0.0.1:4318, sampler parentbased_traceidratio 0.5, service strangler\n"),
        "{stdout}"
    );
    let (ok, (stdout, _)) = with(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_SERVICE_NAME", "edge")]);
    assert!(ok);
    assert!(
        stdout.contains("tracing: grpc to http://127.0.0.1:4318, sampler parentbased_traceidratio 0.5, service edge"),
        "{stdout}"
    );
    let (ok, (_, stderr)) = with(&[("OTEL_TRACES_SAMPLER", "sometimes")]);
    assert!(!ok);
    assert!(
        stderr.starts_with("OTEL_TRACES_SAMPLER: \"sometimes\" is not one of"),
        "{stderr}"
    );
    let (ok, (stdout, _)) = with(&[("OTEL_SDK_DISABLED", "true")]);
    assert!(ok && !stdout.contains("tracing"), "{stdout}");
}

#[test]
fn check_refuses_a_bad_tracing_block_with_its_places() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = check_file(
        dir.path(),
        &format!(
            "tracing:\n  endpoint: collector:4318\n  protocol: udp\n  sampler: sometimes\n  sampler_arg: 2\n  link: \"https://jaeger.example/trace\"\n{HEAD}"
        ),
    );
    assert!(!ok, "{out}");
    for want in [
        "rules.yaml:2:13: tracing.endpoint: \"collector:4318\" is not an http:// or https:// URL",
        "rules.yaml:3:13: tracing.protocol: \"udp\" is not http/protobuf, http/json or grpc",
        "rules.yaml:4:12: tracing.sampler: \"sometimes\" is not one of",
        "rules.yaml:5:16: tracing.sampler_arg must be within 0..=1, got 2",
        "rules.yaml:6:9: tracing.link: \"https://jaeger.example/trace\" has no {trace_id} to fill in",
    ] {
        assert!(out.contains(want), "{want:?} in:\n{out}");
    }
}
