//! Running one async task to completion from sync code at load time (resolving a host name,
//! fetching a document), on a thread and runtime of its own, so that it may be called from
//! anywhere, inside another runtime's worker too.

use std::future::Future;

/// `work`'s result, or why it couldn't run.
pub fn run<F, T>(work: impl FnOnce() -> F + Send) -> Result<T, String>
where
    F: Future<Output = Result<T, String>>,
    T: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(work())
        })
        .join()
        .unwrap_or_else(|_| Err("it panicked".into()))
    })
}
