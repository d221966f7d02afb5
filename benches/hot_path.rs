//! The per-request pieces, in isolation: route lookup at 10, 1,000 and 10,000 routes, path
//! normalization, canary hashing, the migration map's fold of one round of samples (one path
//! repeated, every path distinct, a mix); and compiling a 10,000-route file.
//!
//! Run: `cargo bench --bench hot_path`.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use strangler::config;
use strangler::path::normalize;
use strangler::rules::{canary_bucket, Request, RuleSet};

fn rules_text(n: usize) -> String {
    let mut s = String::from(
        "legacy: m\nupstreams:\n  m: { url: \"http://127.0.0.1:1\" }\n  s: { url: \"http://127.0.0.1:2\" }\nroutes:\n",
    );
    for i in 0..n {
        let m = match i % 3 {
            0 => format!("path: /svc{i}/items"),
            1 => format!("path: \"/svc{i}/items/{{id}}\", methods: [GET]"),
            _ => format!("prefix: /pre{i}"),
        };
        s.push_str(&format!(
            "  - {{ name: r{i}, match: {{ {m} }}, mode: migrated, service: s }}\n"
        ));
    }
    s
}

fn compile(n: usize) -> RuleSet {
    let file = Path::new("rules.yaml");
    strangler::rules::compile(file, &config::parse(file, &rules_text(n)).unwrap()).unwrap()
}

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    for n in [10, 1_000, 10_000] {
        let rules = compile(n);
        let mut g = c.benchmark_group(format!("lookup, {n} routes"));
        g.bench_function("template /svc1/items/42", |b| {
            b.iter(|| {
                rules.lookup(&Request::new(
                    &Method::GET,
                    std::hint::black_box("/svc1/items/42"),
                    &headers,
                ))
            })
        });
        g.bench_function("prefix /pre5/a/b/c", |b| {
            b.iter(|| {
                rules.lookup(&Request::new(
                    &Method::GET,
                    std::hint::black_box("/pre5/a/b/c"),
                    &headers,
                ))
            })
        });
        g.bench_function("no match /nowhere/at/all", |b| {
            b.iter(|| {
                rules.lookup(&Request::new(
                    &Method::GET,
                    std::hint::black_box("/nowhere/at/all"),
                    &headers,
                ))
            })
        });
        g.finish();
    }
    let mut g = c.benchmark_group("normalize");
    g.bench_function("already normal (borrowed)", |b| {
        b.iter(|| normalize(std::hint::black_box("/api/orders/42/items")))
    });
    g.bench_function("dots, slashes, escapes", |b| {
        b.iter(|| normalize(std::hint::black_box("/api//orders/./x/../42/%69tems")))
    });
    g.finish();
    c.bench_function("canary bucket (XXH3 of a 12-byte key)", |b| {
        b.iter(|| canary_bucket(std::hint::black_box(b"user-1234567")))
    });
    fold(c);
    let text = rules_text(10_000);
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("10,000 routes: parse + compile", |b| {
        b.iter(|| {
            let file = Path::new("rules.yaml");
            strangler::rules::compile(file, &config::parse(file, &text).unwrap()).unwrap()
        })
    });
    g.finish();
}

/// The migration map folds a second's samples off the request path. Its cost per sample depends
/// on how many distinct paths the round holds: each distinct path is folded into its template
/// once, every sample is tallied.
fn fold(c: &mut Criterion) {
    use strangler::discovery::{Map, Round, Seen, Settings};
    const N: u64 = 10_000;
    let rules = compile(10);
    type Mix = (&'static str, fn(u64) -> String);
    let mixes: [Mix; 3] = [
        ("one path", |_| "/api/orders/1".to_string()),
        ("ten paths", |i| {
            ["/", "/api/catalog", "/api/cart", "/account", "/static/app.js"][(i % 5) as usize].to_string()
                + if i % 2 == 0 { "" } else { "/x" }
        }),
        ("every path distinct", |i| format!("/api/users/{i}/orders")),
    ];
    let round = |path: fn(u64) -> String| {
        let mut r = Round::default();
        for i in 0..N {
            r.push(Seen {
                method: &Method::GET,
                path: &path(i),
                route: None,
                generation: 0,
                side: strangler::rules::Side::Legacy,
                status: 200,
                seconds: 0.002,
            });
        }
        r
    };
    let mut g = c.benchmark_group("migration map fold, 10,000 samples a round");
    g.throughput(criterion::Throughput::Elements(N));
    for (name, path) in mixes {
        let map = Map::open(
            &strangler::state::StateDir::memory(),
            Settings {
                max_endpoints: 2_000,
                fold_after: 25,
            },
        );
        g.bench_function(name, |b| {
            b.iter_batched(
                || round(path),
                |r| map.fold(&rules, &[(&rules, 0)], r),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
