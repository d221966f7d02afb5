//! Starts the bundled shop (monolith, inventory, orders) in-process on loopback with fresh DBs.

use std::net::SocketAddr;

use serde_json::Value;
use shop_kit::faults::Faults;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The three shop servers. Dropping it stops them and deletes their databases.
pub struct Shop {
    pub monolith: SocketAddr,
    pub inventory: SocketAddr,
    pub orders: SocketAddr,
    /// Change the inventory service's faults at runtime (`set`, `reset`, `until_listening`).
    pub inventory_faults: Faults,
    pub orders_faults: Faults,
    _dir: TempDir,
    shutdown: watch::Sender<bool>,
}

impl Shop {
    /// The SQLite file of `monolith`, `inventory` or `orders`.
    pub fn db(&self, name: &str) -> std::path::PathBuf {
        self._dir.path().join(format!("{name}.db"))
    }

    /// Stops all three servers now (dropping the `Shop` does the same).
    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// Starts monolith, inventory and orders (wired to that inventory), each on its own fresh
/// SQLite file in one temp dir, and returns once all three answer `/healthz`.
pub async fn start_shop() -> Shop {
    let dir = tempfile::tempdir().expect("temp dir");
    let (shutdown, _) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let (l_mono, monolith) = loopback().await;
    let (l_inv, inventory) = loopback().await;
    let (l_ord, orders) = loopback().await;

    let inv_config = inventory_service::Config::new(dir.path().join("inventory.db"));
    let inventory_faults = inv_config.faults.clone();
    let mut ord_config = orders_service::Config::new(dir.path().join("orders.db"));
    ord_config.inventory_url = format!("http://{inventory}");
    let orders_faults = ord_config.faults.clone();

    let mono_config = legacy_monolith::Config::new(dir.path().join("monolith.db"));
    tokio::spawn(legacy_monolith::run(l_mono, mono_config, stopped(shutdown.subscribe())));
    tokio::spawn(inventory_service::run(l_inv, inv_config, stopped(shutdown.subscribe())));
    tokio::spawn(orders_service::run(l_ord, ord_config, stopped(shutdown.subscribe())));

    let client = reqwest::Client::new();
    for addr in [monolith, inventory, orders] {
        let healthy = client.get(format!("http://{addr}/healthz")).send().await;
        assert!(
            healthy.is_ok_and(|r| r.status().is_success()),
            "shop server on {addr} is not healthy"
        );
    }
    Shop {
        monolith,
        inventory,
        orders,
        inventory_faults,
        orders_faults,
        _dir: dir,
        shutdown,
    }
}

/// Top-level fields every shop server adds to each JSON object answer, different every time.
/// Listed here rather than taken from `shop_kit`, so the tests state the contract themselves.
pub const VOLATILE_FIELDS: &[&str] = &["served_at", "request_id"];

/// The JSON body without the volatile fields (`served_at`, `request_id`) and, when `created`
/// is true, without `created_at` (volatile on records created at runtime).
pub fn stable(mut value: Value, created: bool) -> Value {
    if let Some(map) = value.as_object_mut() {
        for field in VOLATILE_FIELDS {
            map.remove(*field);
        }
        if created {
            map.remove("created_at");
        }
    }
    value
}

/// The shop, with the inventory service marking its answers (`answered_by`), so a side is told
/// from the body as well as from the proxy's header.
pub async fn start_shop_marked() -> Shop {
    let shop = start_shop().await;
    shop.inventory_faults.set(shop_kit::faults::FaultSettings {
        drift: Some(shop_kit::faults::Drift {
            field: "answered_by".into(),
            value: Value::String("inventory-service".into()),
        }),
        ..Default::default()
    });
    shop
}
