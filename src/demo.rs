//! `strangler demo`: the bundled shop plus the proxy, on the ports the rules file names.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use rand::Rng;
use strangler::server::{self, Options};
use tokio::sync::watch;

/// Stops the proxy on Ctrl-C or SIGTERM; the shop is stopped right after.
struct StopOnSignal;

#[async_trait]
impl ShutdownSignalWatch for StopOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        ShutdownSignal::FastShutdown
    }
}

pub fn run(config: &Path, data_dir: &Path, traffic: bool) -> anyhow::Result<()> {
    // The autopilot edits the rules it runs on: the demo works on a fresh copy in the data
    // directory, so the repository's rules.yaml stays as it is.
    std::fs::create_dir_all(data_dir).with_context(|| format!("can't create {}", data_dir.display()))?;
    let copy = data_dir.join("rules.yaml");
    std::fs::copy(config, &copy).with_context(|| format!("can't copy {} to {}", config.display(), copy.display()))?;
    let source = config;
    let config = copy.as_path();
    let rules = strangler::rules::load(config)?.rules;
    let addr = |name: &str| {
        rules
            .upstreams
            .iter()
            .find(|u| u.name == name)
            .and_then(|u| match u.address {
                strangler::rules::Address::Fixed(a) => Some(a),
                strangler::rules::Address::Name { .. } => None,
            })
            .with_context(|| {
                format!(
                    "{}: the demo needs an upstream named \"{name}\" (monolith, inventory, orders) with an IP address in its url",
                    config.display()
                )
            })
    };
    let (mono, inv, ord) = (addr("monolith")?, addr("inventory")?, addr("orders")?);
    std::fs::create_dir_all(data_dir).with_context(|| format!("can't create {}", data_dir.display()))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let shop = rt.block_on(async {
        let bind = |a: SocketAddr, what: &'static str| async move {
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("can't start the {what} on {a}: is another demo running?"))
        };
        let (l_mono, l_inv, l_ord) = (
            bind(mono, "monolith").await?,
            bind(inv, "inventory service").await?,
            bind(ord, "orders service").await?,
        );
        let mut orders = orders_service::Config::new(data_dir.join("orders.db"));
        orders.inventory_url = format!("http://{inv}");
        let tasks = vec![
            tokio::spawn(legacy_monolith::run(
                l_mono,
                legacy_monolith::Config::new(data_dir.join("monolith.db")),
                stopped(stop_rx.clone()),
            )),
            tokio::spawn(inventory_service::run(
                l_inv,
                inventory_service::Config::new(data_dir.join("inventory.db")),
                stopped(stop_rx.clone()),
            )),
            tokio::spawn(orders_service::run(l_ord, orders, stopped(stop_rx.clone()))),
        ];
        anyhow::Ok(tasks)
    })?;

    // The banner below must stay readable: no per-request lines in the demo's terminal.
    let opts = Options {
        access_log: false,
        ..Options::new(config)
    };
    let prepared = server::prepare(&opts)?;
    let proxy = loopback(&prepared.listen);
    let admin = loopback(&prepared.admin);
    println!(
        "\nstrangler demo is running\n\
         \x20 the shop, through the proxy:  http://{proxy}/\n\
         \x20 try:                         curl -i http://{proxy}/api/inventory/SKU-0001\n\
         \x20 dashboard:                   http://{admin}/\n\
         \x20 metrics:                     http://{admin}/metrics\n\
         \x20 routes in force:             http://{admin}/api/routes\n\
         \x20 behind it:                   monolith http://{mono}  inventory http://{inv}  orders http://{ord}\n\
         \x20 rules:                       {} (a copy of {}; the autopilot edits it: GET /api/autopilot)\n\
         \x20 traffic:                     {}\n\
         Ctrl-C stops everything.\n",
        config.display(),
        source.display(),
        if traffic {
            "a steady mix of shop requests is flowing"
        } else {
            "none (add --traffic for a steady mix)"
        },
    );
    if traffic {
        rt.spawn(send_traffic(format!("http://{proxy}"), stop_rx.clone()));
    }

    prepared.run(Some(Box::new(StopOnSignal)));

    let _ = stop_tx.send(true);
    rt.block_on(async {
        for t in shop {
            match tokio::time::timeout(Duration::from_secs(5), t).await {
                Ok(Ok(Err(e))) => eprintln!("shop server stopped with an error: {e:#}"),
                Err(_) => eprintln!("a shop server did not stop within 5 s"),
                _ => {}
            }
        }
    });
    println!("demo stopped");
    Ok(())
}

/// `0.0.0.0:8080` is where it listens; `127.0.0.1:8080` is what to open.
fn loopback(addr: &str) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        _ => addr.to_string(),
    }
}

/// About 20 requests a second, in the proportions a small shop sees, until stopped.
async fn send_traffic(base: String, mut stop: watch::Receiver<bool>) {
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(5)).build() {
        Ok(c) => c,
        Err(e) => return eprintln!("traffic: can't build a client: {e}"),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let (method, path, body, headers) = next_request();
        let mut req = client.request(method, format!("{base}{path}"));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        // Errors are what the metrics are for; the generator keeps going.
        let _ = req.send().await;
    }
}

type Planned = (
    reqwest::Method,
    String,
    Option<serde_json::Value>,
    Vec<(&'static str, String)>,
);

fn next_request() -> Planned {
    use reqwest::Method;
    let mut rng = rand::rng();
    let sku = format!("SKU-{:04}", rng.random_range(1..=240));
    let user = rng.random_range(1..=60).to_string();
    let roll = rng.random_range(0..100);
    match roll {
        0..=29 => (
            Method::GET,
            format!("/api/catalog/products?page={}&per_page=20", rng.random_range(1..=12)),
            None,
            vec![],
        ),
        30..=44 => (
            Method::GET,
            format!("/api/catalog/products/{}", rng.random_range(1..=240)),
            None,
            vec![],
        ),
        45..=64 => (Method::GET, format!("/api/inventory/{sku}"), None, vec![]),
        65..=76 => (
            Method::GET,
            format!("/api/orders/{}", rng.random_range(1..=120)),
            None,
            vec![],
        ),
        77..=84 => (Method::GET, format!("/api/users/{user}/orders"), None, vec![]),
        85..=88 => {
            let body = serde_json::json!({"user_id": user.parse::<u32>().unwrap_or(1), "items": [{"sku": sku, "quantity": 1}]});
            (
                Method::POST,
                "/api/orders".into(),
                Some(body),
                vec![("x-api-version", "2".into()), ("x-user-id", user)],
            )
        }
        89..=91 => {
            let body = serde_json::json!({"quantity": 1});
            (
                Method::POST,
                format!("/api/inventory/{sku}/reservations"),
                Some(body),
                vec![("x-user-id", user)],
            )
        }
        92..=93 => (Method::GET, format!("/api/users/{user}"), None, vec![]),
        94..=95 => {
            let body = serde_json::json!({"order_id": rng.random_range(1..=140)});
            (Method::POST, "/api/payments".into(), Some(body), vec![])
        }
        96..=97 => (Method::GET, format!("/account/{user}"), None, vec![]),
        _ => (Method::GET, "/".into(), None, vec![]),
    }
}
