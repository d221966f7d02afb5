//! A small load generator for `bench/compare.sh`: what wrk can't do.
//!
//!   loadgen rate ADDR PATH RATE SECONDS CONNS   fixed request rate (open loop, wrk2-style):
//!                                              latency is counted from when each request was
//!                                              due, so a stall is not hidden by waiting for it
//!   loadgen idle ADDR PATH N SECONDS            N keep-alive connections, one request each,
//!                                              then held idle for SECONDS
//!
//! HTTP/1.1 over loopback, with a minimal reader for the small fixed answers of the benchmark's
//! backends. Prints one line of results.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: loadgen rate ADDR PATH RATE SECONDS CONNS | loadgen idle ADDR PATH N SECONDS";
    let arg = |i: usize| args.get(i).unwrap_or_else(|| panic!("{usage}")).clone();
    let addr: SocketAddr = arg(2).parse().expect("ADDR like 127.0.0.1:8080");
    let request = format!("GET {} HTTP/1.1\r\nHost: bench\r\n\r\n", arg(3)).into_bytes();
    let _ = rlimit::increase_nofile_limit(65_536);
    match arg(1).as_str() {
        "rate" => {
            let rate: f64 = arg(4).parse().expect("RATE");
            let secs: f64 = arg(5).parse().expect("SECONDS");
            let conns: usize = arg(6).parse().expect("CONNS");
            rate_run(addr, request, rate, Duration::from_secs_f64(secs), conns).await
        }
        "idle" => {
            let n: usize = arg(4).parse().expect("N");
            let secs: u64 = arg(5).parse().expect("SECONDS");
            idle_run(addr, request, n, Duration::from_secs(secs)).await
        }
        _ => panic!("{usage}"),
    }
}

/// Read one response with a `Content-Length` body from `s`, reusing `buf`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
            let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn rate_run(addr: SocketAddr, request: Vec<u8>, rate: f64, length: Duration, conns: usize) {
    // Each connection sends every conns-th request of one global schedule.
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).ok();
            let mut buf = Vec::with_capacity(4096);
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            let mut due = start + interval.mul_f64(c as f64 / conns as f64);
            let mut free_at = Instant::now();
            while due < start + length {
                tokio::time::sleep_until(due.into()).await;
                // A request held back because the previous answer came late counts from when it
                // was due (no coordinated omission); one merely woken late by the timer (1 ms
                // resolution) counts from when it was sent.
                let from = if free_at > due { due } else { Instant::now() };
                let ok =
                    s.write_all(&request).await.is_ok() && matches!(read_response(&mut s, &mut buf).await, Ok(200));
                free_at = Instant::now();
                if ok {
                    lat.push(from.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                    match TcpStream::connect(addr).await {
                        Ok(n) => s = n,
                        Err(_) => break,
                    }
                }
                due += interval;
            }
            (lat, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    all.sort_unstable();
    let q = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    // sent ok errors p50_us p99_us max_us
    println!(
        "{} {} {} {} {} {}",
        all.len() as u64 + errors,
        all.len(),
        errors,
        q(0.50),
        q(0.99),
        q(1.0)
    );
}

async fn idle_run(addr: SocketAddr, request: Vec<u8>, n: usize, hold: Duration) {
    let mut held = Vec::with_capacity(n);
    let mut buf = Vec::with_capacity(4096);
    for _ in 0..n {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            break;
        };
        if s.write_all(&request).await.is_ok() && matches!(read_response(&mut s, &mut buf).await, Ok(200)) {
            held.push(s);
        }
    }
    // The caller reads the proxy's memory now.
    println!("ready {}", held.len());
    tokio::time::sleep(hold).await;
}
