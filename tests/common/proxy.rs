//! Starts the real `strangler` binary on loopback ports, with a rules file written for the test.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A running proxy process. Killed on drop.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub rules: PathBuf,
    dir: TempDir,
}

/// A port no other test in this process has been given, and free a moment ago.
///
/// Pingora binds from an address string, so a test can't hand it a bound socket. Ports
/// come from a counter below the kernel's ephemeral range: the kernel's own `bind(:0)` picks
/// (echo servers, outgoing connections) never land there, and two tests running side by
/// side never get the same port, which once let one proxy's listener be another's admin.
/// `Proxy::start` still retries if an outside process took the port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = port_range();
    let span = high - low;
    // Each test binary starts at its own place, so back-to-back binaries don't reuse ports
    // a killed proxy may still hold in TIME_WAIT.
    let start = std::process::id() * 211 % span;
    for _ in 0..span {
        let port = (low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high}")
}

/// The ports below the kernel's ephemeral range (`ip_local_port_range`), up to 12,000 of them.
fn port_range() -> (u32, u32) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 11_024 {
        (ephemeral_low.saturating_sub(12_000).max(10_024), ephemeral_low)
    } else {
        (61_000, 65_535)
    }
}

/// The binary under test: this build's, or `STRANGLER_BIN` to run a test against another one
/// (an earlier build, to see a test fail without a fix).
pub fn strangler() -> Command {
    match std::env::var_os("STRANGLER_BIN") {
        Some(bin) => Command::new(bin),
        None => Command::new(env!("CARGO_BIN_EXE_strangler")),
    }
}

/// A rules file with the given upstreams (the first is `legacy`) and the routes block.
pub fn rules(upstreams: &[(&str, SocketAddr)], routes: &str) -> String {
    let mut s = format!("legacy: {}\nresponse_headers: true\nupstreams:\n", upstreams[0].0);
    for (name, addr) in upstreams {
        s.push_str(&format!(
            "  {name}: {{ url: \"http://{addr}\", timeouts: {{ connect: 500ms, response: 5s }} }}\n"
        ));
    }
    s.push_str("routes:\n");
    s.push_str(routes);
    s
}

impl Proxy {
    pub async fn start(rules_yaml: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = dir.path().join("rules.yaml");
        std::fs::write(&rules, rules_yaml).expect("write rules");
        Proxy::start_file(dir, rules, &[]).await
    }

    /// Start on a rules file the test laid out itself (e.g. a ConfigMap-style symlink tree in `dir`).
    pub async fn start_file(dir: TempDir, rules: PathBuf, extra_args: &[&str]) -> Proxy {
        Proxy::start_with(dir, rules, extra_args, &[("RUST_LOG", "warn")]).await
    }

    /// `start_file` with extra environment variables (e.g. RUST_LOG, STRANGLER_ADMIN_TOKEN).
    pub async fn start_with(dir: TempDir, rules: PathBuf, extra_args: &[&str], env: &[(&str, &str)]) -> Proxy {
        let log_path = dir.path().join("proxy.log");
        for _attempt in 0..5 {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let log = std::fs::File::create(&log_path).expect("log file");
            let mut child = strangler()
                .args(["run", "--threads", "2", "--config"])
                .arg(&rules)
                .args(["--listen", &addr.to_string(), "--admin", &admin.to_string()])
                .args(extra_args)
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn strangler");
            if wait_ready(&mut child, addr, admin).await {
                return Proxy {
                    child,
                    addr,
                    admin,
                    rules,
                    dir,
                };
            }
            // Lost a port race, or failed to start: say why and try again with new ports.
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "proxy did not start:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        panic!("strangler did not start after 5 tries");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (e.g. "TERM", "HUP") to the proxy process.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -s {name} failed");
    }

    /// Wait for the process to exit, up to `limit`; `None` if it is still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// SIGTERM, and wait for a clean exit (status 0) within 20 s.
    pub async fn stop_gracefully(&mut self) {
        self.signal("TERM");
        let status = self
            .wait_exit(Duration::from_secs(20))
            .await
            .expect("the proxy exits on SIGTERM");
        assert!(status.success(), "exit status {status:?}; log:\n{}", self.log());
    }

    pub async fn config(&self) -> serde_json::Value {
        self.admin_json("/api/config").await
    }

    /// GET an admin API path and read its JSON answer.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        reqwest::get(self.admin_url(path))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// The log once every string in `want` is in it, or after 5 s whatever it is: lines are
    /// written by the proxy's log thread, a moment after the event.
    pub async fn log_with(&self, want: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if want.iter().all(|w| log.contains(w)) || Instant::now() >= deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The metrics once every line in `want` is there, or after 5 s whatever they are: a request
    /// is counted in `logging`, just after its answer went out.
    pub async fn metrics_with(&self, want: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = self.metrics().await;
            if want.iter().all(|w| m.contains(w)) || Instant::now() >= deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn wait_ready(child: &mut Child, addr: SocketAddr, admin: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = reqwest::Client::new();
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let admin_ok = client
            .get(format!("http://{admin}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if admin_ok && tokio::net::TcpStream::connect(addr).await.is_ok() {
            // Both ports answer; make sure it is this child answering, not one that lost
            // a bind and is on its way out while something else holds the port.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return matches!(child.try_wait(), Ok(None));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send raw bytes and read the whole answer (the request should say `Connection: close`).
/// Used where an HTTP client would clean the path up before sending it.
pub async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// `GET path` over a raw connection.
pub async fn raw_get(addr: SocketAddr, path: &str) -> (u16, String) {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// The value of the series named exactly `key` (labels included, as the exposition writes them),
/// 0 if absent.
pub fn metric(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == key)
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// What the proxy answered, with the headers that say who answered.
pub struct Answer {
    pub status: u16,
    pub upstream: String,
    pub fallback: Option<String>,
    pub body: serde_json::Value,
}

/// Send `req` and read the answer (the body as JSON, `Null` if it isn't).
pub async fn answer(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.expect("request");
    let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let (status, upstream, fallback) = (
        r.status().as_u16(),
        h("x-strangler-upstream").unwrap_or_default(),
        h("x-strangler-fallback"),
    );
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        upstream,
        fallback,
        body,
    }
}
