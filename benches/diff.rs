//! JSON diff speed: comparing two 10 KiB answers (target: under 50 µs).
//!
//! Run: `cargo bench --bench diff`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use serde_json::{json, Value};
use strangler::diff::{compare, parse_path, Answer, Compare};

/// An order-list document of about 10 KiB, like the shop's `GET /api/users/{id}/orders`.
/// `drift`: one order's status differs, and so does `served_at` (ignored).
fn document(drift: bool) -> Value {
    document_at(
        drift,
        if drift {
            "2026-11-26T03:19:10.000001Z"
        } else {
            "2026-11-26T03:19:10.000002Z"
        },
    )
}

fn document_at(drift: bool, served_at: &str) -> Value {
    let orders: Vec<Value> = (0..31)
        .map(|i| {
            json!({
                "id": i, "user_id": 7, "status": if drift && i == 13 { "lost" } else { "paid" },
                "created_at": "2023-04-16T18:00:00Z", "total_cents": 21980 + i,
                "items": [
                    {"sku": format!("SKU-{:04}", i), "name": "Rustic Bamboo Lamp", "quantity": 3, "unit_price_cents": 35999, "line_total_cents": 107997},
                    {"sku": format!("SKU-{:04}", i + 1), "name": "Everyday Cotton Lamp", "quantity": 2, "unit_price_cents": 13399, "line_total_cents": 26798}
                ]
            })
        })
        .collect();
    json!({"user_id": 7, "items": orders, "served_at": served_at, "request_id": "4f58661563367d0ff2dad46448a2d738"})
}

fn answer(v: &Value) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, "application/json".parse().unwrap());
    Answer {
        status: 200,
        headers,
        body: Bytes::from(v.to_string()),
    }
}

/// Both bodies parsed into simd-json's borrowed values (what parsing alone costs).
fn parse_both(a: &Answer, b: &Answer) -> (bool, bool) {
    let (mut x, mut y) = (a.body.to_vec(), b.body.to_vec());
    let p = simd_json::to_borrowed_value(&mut x).is_ok();
    let q = simd_json::to_borrowed_value(&mut y).is_ok();
    (p, q)
}

fn bench(c: &mut Criterion) {
    let (a, b) = (answer(&document(false)), answer(&document(true)));
    assert!(
        (9_000..12_000).contains(&a.body.len()),
        "document is {} bytes",
        a.body.len()
    );
    let cfg = Compare {
        ignore: vec![parse_path("$.served_at").unwrap()],
        compare_headers: vec![http::header::CONTENT_TYPE],
        ..Compare::default()
    };
    assert_eq!(compare(&cfg, &[], &a, &b).len(), 1);
    c.bench_function("diff 10 KiB JSON, one difference", |bench| {
        bench.iter(|| compare(&cfg, &[], &a, &b))
    });
    c.bench_function("diff 10 KiB JSON, equal", |bench| {
        bench.iter(|| compare(&cfg, &[], &a, &a))
    });
    // The common case: answers that agree but for an ignored field.
    let later = answer(&document_at(false, "2026-11-26T03:19:11.000000Z"));
    assert!(compare(&cfg, &[], &a, &later).is_empty());
    c.bench_function("diff 10 KiB JSON, equal but the ignored field", |bench| {
        bench.iter(|| compare(&cfg, &[], &a, &later))
    });
    // The answers of bench/compare.sh's backends (150 bytes), as every shadowed request there.
    let small = |at: &str| {
        answer(
            &json!({"id":1,"status":"paid","total":{"amount":1299,"currency":"EUR"},"items":[{"sku":"SKU-0001","qty":2}],"served_at":at}),
        )
    };
    let (s1, s2) = (small("b1"), small("b2"));
    assert!(compare(&cfg, &[], &s1, &s2).is_empty());
    c.bench_function("diff 150-byte JSON, equal but the ignored field", |bench| {
        bench.iter(|| compare(&cfg, &[], &s1, &s2))
    });
    c.bench_function("parse only: simd-json, both 150-byte bodies", |bench| {
        bench.iter(|| parse_both(&s1, &s2))
    });
    // What parsing alone costs with the parser the diff uses (simd-json, borrowed values).
    c.bench_function("parse only: simd-json, both bodies", |bench| {
        bench.iter(|| parse_both(&a, &b))
    });
    // Baseline in the same run: parsing both bodies, which any JSON-aware comparison must do.
    c.bench_function("baseline: parse both 10 KiB bodies", |bench| {
        bench.iter(|| {
            let x: Value = serde_json::from_slice(&a.body).unwrap();
            let y: Value = serde_json::from_slice(&b.body).unwrap();
            (x, y)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
