//! What the benchmarks in `benches/` share.

/// `cargo test --all-targets` runs bench binaries too: measure only under `cargo bench`.
/// Prints why not otherwise.
pub fn measuring(name: &str) -> bool {
    let yes = std::env::args().any(|a| a == "--bench");
    if !yes {
        println!("benchmark skipped: run it with `cargo bench --bench {name}`");
    }
    yes
}

/// The `p` quantile (0..=1) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
