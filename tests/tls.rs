//! TLS on both sides of the proxy, end to end: the real inventory service behind `https://` with a
//! private CA, certificates that must be refused (wrong CA, wrong name) falling back to the
//! monolith, clients speaking HTTP/1.1 and h2 over TLS to `listen_tls`, a certificate replaced on
//! disk taking effect without a restart, and `check` refusing bad `tls:` settings.
//!
//! Every certificate is made at run time with rcgen: a CA, the proxy's listener certificate
//! (localhost and 127.0.0.1), the service's (localhost), and an unrelated "rogue" CA with a leaf.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::proxy::{answer, free_port, strangler, Answer, Proxy};
use common::shop::start_shop;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::Value;
use shop_kit::db::Db;
use shop_kit::faults::Faults;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{client, TlsAcceptor, TlsConnector};

// ---------------------------------------------------------------------------------------------
// Certificates

/// A certificate authority that can issue leaves.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

/// A leaf certificate and its private key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    /// PKCS#8.
    key_der: Vec<u8>,
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-signed CA");
    Ca {
        pem: cert.pem(),
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// A server certificate for `localhost` (and 127.0.0.1 when `with_ip`), with a fresh key, issued by `ca`.
fn new_leaf(ca: &Ca, with_ip: bool) -> Leaf {
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
    if with_ip {
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
    params.distinguished_name = dn("localhost");
    params.is_ca = IsCa::NoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, &ca.issuer).expect("leaf signed by the CA");
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

/// Everything one test needs: the CA, the proxy's listener certificate, the service's
/// certificate, and a rogue CA with a leaf of its own (valid for localhost, wrong issuer).
struct Pki {
    ca: Ca,
    listener: Leaf,
    service: Leaf,
    rogue_leaf: Leaf,
}

impl Pki {
    fn new() -> Pki {
        let ca = new_ca("strangler test CA");
        let rogue = new_ca("rogue CA");
        Pki {
            listener: new_leaf(&ca, true),
            service: new_leaf(&ca, false),
            rogue_leaf: new_leaf(&rogue, false),
            ca,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// rustls configs (ring, like the proxy)

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn server_config(leaf: &Leaf, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone()));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .expect("server certificate");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A client that trusts only `ca` and offers `alpn`.
fn client_config(ca: &Ca, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).expect("CA into the root store");
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// One TLS handshake with SNI `localhost`, bounded.
async fn try_handshake(addr: SocketAddr, config: &Arc<ClientConfig>) -> std::io::Result<client::TlsStream<TcpStream>> {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("server name");
        TlsConnector::from(config.clone()).connect(name, tcp).await
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

/// A TLS handshake that must succeed; retried for a while in case the listener is still coming up.
async fn handshake(addr: SocketAddr, config: &Arc<ClientConfig>) -> client::TlsStream<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_handshake(addr, config).await {
            Ok(stream) => return stream,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("TLS handshake with {addr} failed: {e}"),
        }
    }
}

/// The leaf certificate the server presented.
fn presented(stream: &client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().expect("server certificates")[0].clone()
}

fn alpn(stream: &client::TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(|p| p.to_vec())
}

// ---------------------------------------------------------------------------------------------
// HTTP over a TLS stream

type Reply = http::Response<Bytes>;

async fn collect(resp: http::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    http::Response::from_parts(parts, body)
}

/// One HTTP/1.1 GET over `stream`.
async fn get_h1(stream: client::TlsStream<TcpStream>, path: &str) -> Reply {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("HTTP/1.1 response in time")
        .expect("HTTP/1.1 response");
    collect(resp).await
}

fn header(reply: &Reply, name: &str) -> Option<String> {
    reply.headers().get(name).map(|v| v.to_str().unwrap().to_string())
}

fn json(reply: &Reply) -> Value {
    serde_json::from_slice(reply.body()).unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------------------------
// The inventory service over TLS

/// The real inventory router on its own fresh database in `dir`, and its request counter.
async fn inventory(dir: &Path, name: &str) -> (axum::Router, Faults) {
    let db = Db::open_blocking(
        dir.join(format!("{name}.db")),
        inventory_service::store::SCHEMA,
        inventory_service::store::is_empty,
        inventory_service::store::seed,
    )
    .await
    .expect("inventory database");
    let faults = Faults::default();
    (inventory_service::router(db, faults.clone()), faults)
}

/// Serve `app` over TLS (HTTP/1.1) with `leaf` on 127.0.0.1:0.
async fn serve_tls(app: axum::Router, leaf: &Leaf) -> SocketAddr {
    let acceptor = TlsAcceptor::from(server_config(leaf, &[b"http/1.1"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate (or a TCP health probe) ends here.
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// The proxy

/// A proxy temp dir: `etc/` holds rules.yaml, ca.pem and the listener's server.pem/server.key
/// (the watcher sees only `etc/`; the proxy's log and the databases live beside it).
fn layout(pki: &Pki) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).expect("etc dir");
    std::fs::write(etc.join("ca.pem"), &pki.ca.pem).unwrap();
    std::fs::write(etc.join("server.pem"), &pki.listener.cert_pem).unwrap();
    std::fs::write(etc.join("server.key"), &pki.listener.key_pem).unwrap();
    (dir, etc)
}

/// `legacy: monolith`, the extra upstreams (YAML lines under `upstreams:`) and routes;
/// with `tls_port`, a `listen_tls` on it with etc/server.pem and etc/server.key.
fn rules(monolith: SocketAddr, tls_port: Option<u16>, upstreams: &str, routes: &str) -> String {
    let mut s = String::new();
    if let Some(port) = tls_port {
        s.push_str(&format!(
            "listen_tls: {{ addr: \"127.0.0.1:{port}\", cert: server.pem, key: server.key }}\n"
        ));
    }
    s.push_str(&format!(
        "legacy: monolith\nupstreams:\n  monolith: {{ url: \"http://{monolith}\" }}\n{upstreams}routes:\n{routes}"
    ));
    s
}

async fn start(dir: TempDir, etc: &Path, rules_yaml: &str) -> Proxy {
    let file = etc.join("rules.yaml");
    std::fs::write(&file, rules_yaml).expect("write rules");
    Proxy::start_file(dir, file, &[]).await
}

/// A proxy over the shop's monolith with a TLS listener (etc/server.pem and etc/server.key) next
/// to its plain one: where the tests of clients speaking TLS to the proxy start. The shop lives
/// as long as the proxy does.
struct TlsEdge {
    proxy: Proxy,
    _shop: common::shop::Shop,
    pki: Pki,
    etc: PathBuf,
    /// The TLS listener.
    tls: SocketAddr,
}

async fn tls_edge() -> TlsEdge {
    let pki = Pki::new();
    let shop = start_shop().await;
    let (dir, etc) = layout(&pki);
    let port = free_port();
    let proxy = start(dir, &etc, &rules(shop.monolith, Some(port), "", "")).await;
    TlsEdge {
        proxy,
        _shop: shop,
        pki,
        etc,
        tls: ([127, 0, 0, 1], port).into(),
    }
}

/// Replace `path` the way cert-manager and ConfigMaps do: write a temp file, rename it over.
fn replace(path: &Path, contents: &str) {
    let name = path.file_name().expect("file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.new"));
    std::fs::write(&tmp, contents).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over");
}

async fn get(url: &str) -> Answer {
    answer(reqwest::Client::new().get(url)).await
}

const INV_ROUTE: &str = "  - { name: inv, match: { prefix: /api/inventory }, mode: migrated, service: inventory }\n";

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_with_a_private_ca() {
    let pki = Pki::new();
    let shop = start_shop().await;
    let (dir, etc) = layout(&pki);
    let (app, faults) = inventory(dir.path(), "inventory-tls").await;
    let service = serve_tls(app, &pki.service).await;
    let upstreams = format!(
        "  inventory:\n    url: \"https://{service}\"\n    tls: {{ ca: ca.pem, sni: localhost }}\n    circuit_breaker: {{ enabled: false }}\n"
    );
    let proxy = start(dir, &etc, &rules(shop.monolith, None, &upstreams, INV_ROUTE)).await;

    for sku in ["SKU-0001", "SKU-0002"] {
        let a = get(&proxy.url(&format!("/api/inventory/{sku}"))).await;
        assert_eq!(
            (a.status, a.upstream.as_str(), a.fallback.as_deref()),
            (200, "inventory", None),
            "{sku}: {}\n{}",
            a.body,
            proxy.log()
        );
        assert_eq!(a.body["sku"], sku);
    }
    assert!(
        faults.requests() >= 2,
        "the requests reached the service over TLS: {}",
        faults.requests()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_upstream_certificate_falls_back() {
    let pki = Pki::new();
    let shop = start_shop().await;
    let (dir, etc) = layout(&pki);
    // Signed by a CA the proxy does not trust.
    let (app, rogue_faults) = inventory(dir.path(), "inventory-rogue").await;
    let rogue = serve_tls(app, &pki.rogue_leaf).await;
    // A good certificate, but for localhost, not the name the proxy is told to verify.
    let (app, misnamed_faults) = inventory(dir.path(), "inventory-misnamed").await;
    let misnamed = serve_tls(app, &pki.service).await;
    let upstreams = format!(
        "  rogue:\n    url: \"https://{rogue}\"\n    tls: {{ ca: ca.pem, sni: localhost }}\n    circuit_breaker: {{ enabled: false }}\n\
         \x20 misnamed:\n    url: \"https://{misnamed}\"\n    tls: {{ ca: ca.pem, sni: wrong.example }}\n    circuit_breaker: {{ enabled: false }}\n"
    );
    let routes = "  - { name: rogue, match: { path: /api/inventory/SKU-0001 }, mode: migrated, service: rogue }\n\
                  \x20 - { name: misnamed, match: { path: /api/inventory/SKU-0002 }, mode: migrated, service: misnamed }\n";
    let proxy = start(dir, &etc, &rules(shop.monolith, None, &upstreams, routes)).await;

    for sku in ["SKU-0001", "SKU-0002"] {
        let a = get(&proxy.url(&format!("/api/inventory/{sku}"))).await;
        assert_eq!(
            (a.status, a.upstream.as_str(), a.fallback.as_deref()),
            (200, "monolith", Some("connect_error")),
            "{sku}: {}\n{}",
            a.body,
            proxy.log()
        );
        assert_eq!(a.body["sku"], sku);
    }
    assert_eq!(
        rogue_faults.requests(),
        0,
        "nothing was sent to the rogue-signed service"
    );
    assert_eq!(
        misnamed_faults.requests(),
        0,
        "nothing was sent to the misnamed service"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_speak_tls_to_the_proxy() {
    let TlsEdge {
        proxy, _shop, pki, tls, ..
    } = tls_edge().await;

    // HTTP/1.1 by ALPN.
    let stream = handshake(tls, &client_config(&pki.ca, &[b"http/1.1"])).await;
    assert_eq!(presented(&stream), pki.listener.der, "the configured certificate");
    assert_eq!(alpn(&stream).as_deref(), Some(&b"http/1.1"[..]));
    let r = get_h1(stream, "/api/inventory/SKU-0001").await;
    assert_eq!(r.status(), 200, "{:?}\n{}", r.body(), proxy.log());
    assert_eq!(header(&r, "x-strangler-upstream").as_deref(), Some("monolith"));
    assert_eq!(json(&r)["sku"], "SKU-0001");

    // h2 preferred when offered.
    let stream = handshake(tls, &client_config(&pki.ca, &[b"h2", b"http/1.1"])).await;
    assert_eq!(alpn(&stream).as_deref(), Some(&b"h2"[..]), "the proxy negotiates h2");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    // Two requests on the one h2 connection.
    for sku in ["SKU-0001", "SKU-0002"] {
        let req = http::Request::get(format!("https://localhost/api/inventory/{sku}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .expect("h2 response in time")
            .expect("h2 response");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let r = collect(resp).await;
        assert_eq!(r.status(), 200, "{sku}: {:?}\n{}", r.body(), proxy.log());
        assert_eq!(header(&r, "x-strangler-upstream").as_deref(), Some("monolith"));
        assert_eq!(json(&r)["sku"], sku);
    }

    // A client that trusts a different CA refuses the proxy's certificate.
    let rogue = new_ca("another CA");
    assert!(
        try_handshake(tls, &client_config(&rogue, &[b"http/1.1"]))
            .await
            .is_err(),
        "a certificate from an untrusted CA must be refused by the client"
    );

    // The plain listener still serves alongside.
    let a = get(&proxy.url("/api/inventory/SKU-0001")).await;
    assert_eq!((a.status, a.upstream.as_str()), (200, "monolith"));
}

/// A kept-alive TLS connection waits for its next request on the socket's readiness (the idle
/// memory patch, docs/PINGORA-PATCHES.md): requests after an idle pause are answered, and so is
/// a pipelined pair whose second request rustls has already decrypted when the first is done.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_tls_connection_serves_after_a_pause_and_pipelined() {
    use tokio::io::AsyncWriteExt;
    let TlsEdge {
        proxy: _proxy,
        _shop,
        pki,
        tls,
        ..
    } = tls_edge().await;
    let mut stream = handshake(tls, &client_config(&pki.ca, &[b"http/1.1"])).await;
    let get = |sku: &str| format!("GET /api/inventory/{sku} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut buf = Vec::new();
    for round in 0..3 {
        stream.write_all(get("SKU-0001").as_bytes()).await.unwrap();
        assert_eq!(
            common::rawhttp::read_answer(&mut stream, &mut buf).await,
            200,
            "round {round}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Two requests in one TLS write: one record holds both.
    stream
        .write_all((get("SKU-0002") + &get("SKU-0003")).as_bytes())
        .await
        .unwrap();
    assert_eq!(common::rawhttp::read_answer(&mut stream, &mut buf).await, 200);
    assert_eq!(
        common::rawhttp::read_answer(&mut stream, &mut buf).await,
        200,
        "the pipelined second request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_certificate_is_served_without_restart() {
    let TlsEdge {
        proxy,
        _shop,
        pki,
        etc,
        tls,
    } = tls_edge().await;
    let client = client_config(&pki.ca, &[b"http/1.1"]);

    let first = presented(&handshake(tls, &client).await);
    assert_eq!(first, pki.listener.der, "the certificate from the files at start");

    // A new key pair from the same CA, written over both files.
    let renewed = new_leaf(&pki.ca, true);
    replace(&etc.join("server.key"), &renewed.key_pem);
    replace(&etc.join("server.pem"), &renewed.cert_pem);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Every handshake on the way succeeds with the old or the new certificate, never a mix.
        let now = presented(&handshake(tls, &client).await);
        if now == renewed.der {
            break;
        }
        assert_eq!(now, pki.listener.der, "only the old or the new certificate is served");
        assert!(
            Instant::now() < deadline,
            "the replaced certificate was not picked up within 10 s\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = get_h1(handshake(tls, &client).await, "/api/inventory/SKU-0001").await;
    assert_eq!(r.status(), 200);

    // A broken key is refused; the certificate in force keeps serving.
    let logged = proxy.log().len();
    replace(
        &etc.join("server.key"),
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    let reload = reqwest::Client::new()
        .post(proxy.admin_url("/api/reload"))
        .send()
        .await
        .expect("reload");
    assert_eq!(reload.status(), 200, "the rules themselves are fine");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proxy
        .log()
        .get(logged..)
        .unwrap_or("")
        .contains("TLS certificate not reloaded")
    {
        assert!(
            Instant::now() < deadline,
            "the broken key is not reported:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        let stream = handshake(tls, &client).await;
        assert_eq!(presented(&stream), renewed.der, "the last good certificate");
    }
    let r = get_h1(handshake(tls, &client).await, "/api/inventory/SKU-0001").await;
    assert_eq!(r.status(), 200, "still serving on the last good certificate");
}

fn check(dir: &Path, body: &str) -> (bool, String) {
    let file = dir.join("rules.yaml");
    std::fs::write(&file, body).unwrap();
    let out: Output = strangler()
        .args(["check", file.to_str().unwrap()])
        .output()
        .expect("run strangler");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text.replace(file.to_str().unwrap(), "rules.yaml"))
}

/// Lines 1-5 of a rules file whose `inventory` upstream is `url`; line 6 is its `tls:`.
fn with_tls(url: &str, tls: &str) -> String {
    format!(
        "legacy: monolith\nupstreams:\n  monolith: {{ url: \"http://127.0.0.1:8000\" }}\n  inventory:\n    url: \"{url}\"\n    tls: {tls}\nroutes:\n"
    )
}

#[test]
fn check_refuses_a_missing_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), new_ca("check CA").pem).unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();

    // The CA file is there: accepted.
    let (ok, out) = check(
        dir.path(),
        &with_tls("https://127.0.0.1:8101", "{ ca: ca.pem, sni: localhost }"),
    );
    assert!(ok, "{out}");

    // Missing: refused, pointing at the `ca:` value (line 6, column 16).
    let (ok, out) = check(
        dir.path(),
        &with_tls("https://127.0.0.1:8101", "{ ca: missing.pem, sni: localhost }"),
    );
    assert!(!ok, "a missing CA file was accepted:\n{out}");
    assert!(
        out.contains("rules.yaml:6:16: upstream \"inventory\": tls.ca: can't read"),
        "{out}"
    );
    assert!(out.contains("missing.pem"), "{out}");

    // Not a certificate.
    let (ok, out) = check(
        dir.path(),
        &with_tls("https://127.0.0.1:8101", "{ ca: junk.pem, sni: localhost }"),
    );
    assert!(!ok, "a CA file without a certificate was accepted:\n{out}");
    assert!(
        out.contains("rules.yaml:6:16: upstream \"inventory\": tls.ca:"),
        "{out}"
    );
    assert!(out.contains("holds no certificate"), "{out}");

    // `tls:` on a plain http:// upstream.
    let (ok, out) = check(dir.path(), &with_tls("http://127.0.0.1:8101", "{ sni: localhost }"));
    assert!(!ok, "tls on an http:// url was accepted:\n{out}");
    let line = out
        .lines()
        .find(|l| l.contains("needs an https:// url"))
        .unwrap_or_else(|| panic!("no 'needs an https:// url' error:\n{out}"));
    assert!(
        line.starts_with("rules.yaml:6:") && line.contains("upstream \"inventory\": `tls` needs an https:// url"),
        "{out}"
    );
}
