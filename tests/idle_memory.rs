//! Memory held by idle keep-alive client connections (issue 22): 2,000 connections, each after
//! one request, must not grow the proxy's RSS by more than a stated bound. Before the first fix
//! each one held about 40 KiB (some 80 MiB for 2,000); nginx holds about 0.5 KiB.
//!
//! The backend writes its answer's head and body in one send, as nginx does: that is the case
//! that kept the most, since a read that brought the whole answer was what sized it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::proxy::{rules, Proxy};

/// Connections held idle.
const CONNECTIONS: usize = 2_000;
/// Allowed RSS growth for all of them: 8 KiB a connection. Measured here (a debug build, two
/// workers): 3.0 to 5.5 KiB since the idle wait moved ahead of the session; 9.5 KiB before that,
/// and 43 KiB before the first fix.
const BOUND_KIB: u64 = 8 * CONNECTIONS as u64;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Send one GET on `s` and read its answer (a `Content-Length` body); the status.
async fn get(s: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    s.write_all(b"GET /api/items/1 HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .expect("write request");
    buf.clear();
    common::rawhttp::read_answer(s, buf).await
}

async fn connect_and_get(addr: SocketAddr, buf: &mut Vec<u8>) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(get(&mut s, buf).await, 200);
    s
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_stay_small() {
    // Our side of every connection, and the echo server's side of the proxy's.
    rlimit::increase_nofile_limit(CONNECTIONS as u64 * 2 + 1_000).expect("raise the open-file limit");
    let backend = common::echo::start("legacy").await;
    let proxy = Proxy::start(&rules(&[("legacy", backend)], "")).await;

    // Warm up: what the proxy keeps after serving, before any connection waits idle.
    let mut buf = Vec::with_capacity(4096);
    for _ in 0..4 {
        let mut s = connect_and_get(proxy.addr, &mut buf).await;
        for _ in 0..50 {
            assert_eq!(get(&mut s, &mut buf).await, 200);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(proxy.pid());

    let mut held = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        held.push(connect_and_get(proxy.addr, &mut buf).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib(proxy.pid());

    // Every connection is still open and served: memory was not saved by closing them.
    for s in held.iter_mut() {
        assert_eq!(get(s, &mut buf).await, 200);
    }
    let grown = after.saturating_sub(before);
    eprintln!(
        "RSS {before} KiB -> {after} KiB with {CONNECTIONS} idle connections: {:.1} KiB each",
        grown as f64 / CONNECTIONS as f64
    );
    assert!(
        grown <= BOUND_KIB,
        "{CONNECTIONS} idle connections grew the proxy's RSS by {grown} KiB ({:.1} KiB each), over the bound of {BOUND_KIB} KiB",
        grown as f64 / CONNECTIONS as f64
    );
}
