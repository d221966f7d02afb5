//! Steady background traffic through the proxy, for tests that watch figures move.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::proxy::Proxy;

/// GETs of `pick(i)` for i = 1, 2, …, each from user `user-{i}`, `pause` apart, until stopped.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    pub fn start(proxy: Arc<Proxy>, pause: Duration, pick: impl Fn(u64) -> String + Send + 'static) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0u64;
            while !flag.load(Ordering::Relaxed) {
                i += 1;
                let _ = client
                    .get(proxy.url(&pick(i)))
                    .header("x-user-id", format!("user-{i}"))
                    .send()
                    .await;
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        });
        Traffic { stop, task }
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("traffic task");
    }
}
