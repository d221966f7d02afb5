//! A real Prometheus on loopback, scraping given targets every second; killed on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::proxy::free_port;
use super::tools::Killed;

pub struct Prometheus {
    /// `http://127.0.0.1:PORT`, its HTTP API.
    pub api: String,
    _server: Killed,
}

/// Start `prometheus` with its data and log in `dir`, scraping `targets` every second and, with
/// `rules`, evaluating those alert rules every second too. Waits until it is ready.
pub async fn start(prometheus: &Path, dir: &Path, targets: &[SocketAddr], rules: Option<&Path>) -> Prometheus {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let rule_files = rules.map_or(String::new(), |r| format!("rule_files: [\"{}\"]\n", r.display()));
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n{rule_files}scrape_configs:\n  - job_name: strangler\n    static_configs: [{{ targets: [{}] }}]\n",
            list.join(", ")
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.join("prometheus.log");
    let server = Killed(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let api = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{api}/-/ready"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "prometheus did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Prometheus { api, _server: server }
}
