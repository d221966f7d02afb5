//! The client-facing TLS certificate: loaded from `listen_tls`'s PEM files, swapped on reload.
//!
//! Pingora builds the rustls `ServerConfig` once, at start; it asks this resolver for the
//! certificate on every handshake, so a replaced file takes effect without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::tls::sign::CertifiedKey;
use pingora_core::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate and key in force, and where they came from.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    /// The file contents loaded last, to skip a reload that changes nothing.
    loaded: std::sync::Mutex<Pem>,
    cert: PathBuf,
    key: PathBuf,
}

impl CertStore {
    pub fn open(cert: &Path, key: &Path) -> Result<CertStore, String> {
        let (ck, texts) = load(cert, key)?;
        Ok(CertStore {
            current: ArcSwap::from_pointee(ck),
            loaded: std::sync::Mutex::new(texts),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    pub fn files(&self) -> [&Path; 2] {
        [&self.cert, &self.key]
    }

    /// Load the files again. `Ok(true)`: a new certificate is in force; `Ok(false)`: unchanged.
    /// On error the certificate in force stays.
    pub fn reload(&self) -> Result<bool, String> {
        let texts = (read(&self.cert)?, read(&self.key)?);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if *loaded == texts {
            return Ok(false);
        }
        let (ck, texts) = load(&self.cert, &self.key)?;
        self.current.store(Arc::new(ck));
        *loaded = texts;
        Ok(true)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The certificate and key files' bytes.
type Pem = (Vec<u8>, Vec<u8>);

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("can't read \"{}\": {e}", path.display()))
}

fn load(cert: &Path, key: &Path) -> Result<(CertifiedKey, Pem), String> {
    pingora_core::tls::install_default_crypto_provider();
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("\"{}\" is not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("\"{}\" holds no certificate", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("\"{}\" holds no PKCS#8, PKCS#1 or SEC1 private key: {e}", key.display()))?;
    let provider = CryptoProvider::get_default().ok_or("no TLS crypto provider installed")?;
    let ck = CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        format!(
            "\"{}\" and \"{}\" don't go together: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok((ck, (cert_pem, key_pem)))
}
