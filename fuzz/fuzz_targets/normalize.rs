//! Fuzz the path normalizer: no panic, idempotent, and its output is a safe path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strangler::path::normalize_with;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    for semicolons in [false, true] {
        if let Ok(once) = normalize_with(raw, semicolons) {
            let twice = normalize_with(&once, semicolons).expect("a normalized path normalizes again");
            assert_eq!(twice, once, "not idempotent on {raw:?}");
            assert!(once.starts_with('/') && once.is_ascii() && !once.contains("//"));
            assert!(once.split('/').all(|s| s != "." && s != ".."));
        }
    }
});
