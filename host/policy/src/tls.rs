//! The roots Hoist trusts as a TLS client, one configuration for every connection it
//! makes (a plugin's `wasi:http` requests, the Prefect events websocket): the Mozilla
//! roots (webpki-roots) plus the PEM certificates in `SSL_CERT_FILE` and in the files
//! of `SSL_CERT_DIR`, read once per process, so an internal server behind a private CA
//! works as it does for curl and git.

use std::sync::{Arc, OnceLock};

pub use tokio_rustls::rustls;

/// The client configuration (ring; TLS 1.2 and 1.3; no client certificate).
pub fn client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            for pem in extra_roots() {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject;
                if let Ok(certs) = CertificateDer::pem_file_iter(&pem) {
                    for cert in certs.flatten() {
                        let _ = roots.add(cert);
                    }
                }
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            Arc::new(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

/// The PEM files named by `SSL_CERT_FILE` and found in `SSL_CERT_DIR` (as OpenSSL reads
/// them: a file, and `:`-separated directories).
fn extra_roots() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    if let Some(f) = std::env::var_os("SSL_CERT_FILE") {
        files.push(f.into());
    }
    if let Some(dirs) = std::env::var_os("SSL_CERT_DIR") {
        for dir in std::env::split_paths(&dirs) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                files.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_file()));
            }
        }
    }
    files
}
