//! A small load generator for `bench/compare.sh`: what wrk can't do.
//!
//!   loadgen rate ADDR PATH RATE SECONDS CONNS   fixed request rate (open loop, wrk2-style):
//!                                              latency is counted from when each request was
//!                                              due, so a stall is not hidden by waiting for it
//!   loadgen idle ADDR PATH N SECONDS            N keep-alive connections, one request each,
//!                                              then held idle for SECONDS
//!   loadgen idle-tls ADDR PATH N SECONDS        the same over TLS (the certificate is not checked)
//!
//! Connections to a loopback address come from 127.0.0.1, 127.0.0.2, ... in turn, 20,000 from
//! each, so more of them can be held than one source address has ephemeral ports.
//!
//! HTTP/1.1 over loopback, with a minimal reader for the small fixed answers of the benchmark's
//! backends. Prints one line of results.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: loadgen rate ADDR PATH RATE SECONDS CONNS | loadgen idle|idle-tls ADDR PATH N SECONDS";
    let arg = |i: usize| args.get(i).unwrap_or_else(|| panic!("{usage}")).clone();
    let addr: SocketAddr = arg(2).parse().expect("ADDR like 127.0.0.1:8080");
    let request = format!("GET {} HTTP/1.1\r\nHost: bench\r\n\r\n", arg(3)).into_bytes();
    let _ = rlimit::increase_nofile_limit(200_000);
    match arg(1).as_str() {
        "rate" => {
            let rate: f64 = arg(4).parse().expect("RATE");
            let secs: f64 = arg(5).parse().expect("SECONDS");
            let conns: usize = arg(6).parse().expect("CONNS");
            rate_run(addr, request, rate, Duration::from_secs_f64(secs), conns).await
        }
        mode @ ("idle" | "idle-tls") => {
            let n: usize = arg(4).parse().expect("N");
            let secs: u64 = arg(5).parse().expect("SECONDS");
            let tls = (mode == "idle-tls").then(tls::connector);
            idle_run(addr, request, n, Duration::from_secs(secs), tls).await
        }
        _ => panic!("{usage}"),
    }
}

/// Read one response with a `Content-Length` body from `s`, reusing `buf`.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<u16> {
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

/// Source addresses take turns after this many connections each (below the 28,232 ephemeral
/// ports Linux has for one source and destination by default).
const PER_SOURCE: usize = 20_000;

/// Connection `i` to `addr`: from 127.0.0.(1 + i / PER_SOURCE) when `addr` is IPv4 loopback.
async fn connect(addr: SocketAddr, i: usize) -> std::io::Result<TcpStream> {
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_loopback() => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(([127, 0, 0, 1 + (i / PER_SOURCE) as u8], 0).into())?;
            socket.connect(addr).await
        }
        _ => TcpStream::connect(addr).await,
    }
}

async fn idle_run(
    addr: SocketAddr,
    request: Vec<u8>,
    n: usize,
    hold: Duration,
    tls: Option<tokio_rustls::TlsConnector>,
) {
    let mut plain = Vec::new();
    let mut secure = Vec::new();
    let mut buf = Vec::with_capacity(4096);
    for i in 0..n {
        let Ok(s) = connect(addr, i).await else {
            break;
        };
        match &tls {
            None => {
                if let Some(s) = one_request(s, &request, &mut buf).await {
                    plain.push(s);
                }
            }
            Some(connector) => {
                let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
                let Ok(s) = connector.connect(name, s).await else {
                    continue;
                };
                if let Some(s) = one_request(s, &request, &mut buf).await {
                    secure.push(s);
                }
            }
        }
    }
    // The caller reads the proxy's memory now.
    println!("ready {}", plain.len() + secure.len());
    tokio::time::sleep(hold).await;
}

/// Send `request` on `s` and keep `s` if the answer is a 200.
async fn one_request<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &[u8], buf: &mut Vec<u8>) -> Option<S> {
    let ok = s.write_all(request).await.is_ok() && matches!(read_response(&mut s, buf).await, Ok(200));
    ok.then_some(s)
}

/// A TLS client that accepts any certificate: the benchmark measures the server, not the trust.
mod tls {
    use std::sync::Arc;

    use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use tokio_rustls::rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, Error, SignatureScheme};

    #[derive(Debug)]
    struct AnyCertificate(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    pub fn connector() -> tokio_rustls::TlsConnector {
        let provider = Arc::new(ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}
