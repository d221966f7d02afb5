//! Fuzz the shadow comparison: two arbitrary bodies (split at the first NUL) as JSON answers,
//! with every comparison option, never panic; an answer always equals itself.
#![no_main]

use bytes::Bytes;
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use strangler::diff::{compare, parse_path, Answer, ArrayOrder, Compare};

fuzz_target!(|data: &[u8]| {
    let (a, b) = match data.iter().position(|&c| c == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    let answer = |body: &[u8]| Answer {
        status: 200,
        headers: headers.clone(),
        body: Bytes::copy_from_slice(body),
    };
    let (legacy, new) = (answer(a), answer(b));
    for order in [ArrayOrder::Strict, ArrayOrder::Any] {
        let cfg = Compare {
            ignore: vec![parse_path("$.served_at").unwrap(), parse_path("$.items[*].id").unwrap()],
            array_order: order,
            numeric_tolerance: (data.len() % 3) as f64 * 0.001,
            ..Compare::default()
        };
        let _ = compare(&cfg, &[], &legacy, &new);
        assert!(compare(&cfg, &[], &legacy, &legacy).is_empty(), "an answer differs from itself");
    }
});
