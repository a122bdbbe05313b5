//! TLS files (`--tls-cert`, `--tls-key`, `--tls-client-ca`, and the admin
//! pair): reads the PEM files and builds the rustls server configurations
//! the listeners hand their handshakes to.
//!
//! It lives in adapters because it reads files; it runs on the main thread at
//! startup and on every reload, never on a shard. A configuration is built
//! whole or not at all: any problem is an error naming the file and the
//! reason, and the caller (startup or reload) keeps what it had.
//!
//! Protocol choices: TLS 1.3 and 1.2 only, rustls' default cipher suites on
//! the ring provider, no session tickets beyond rustls' defaults, ALPN
//! `http/1.1` on the HTTP listener (a client offering only `h2` is refused
//! in the handshake) and none on TCP. With `--tls-client-ca` every client
//! must present a certificate that chains to one of its CAs (mTLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Certificates one chain file may hold (leaf and intermediates); more is
/// refused as a mistake (a CA bundle given as the chain).
pub const CHAIN_CERTS_MAX: usize = 16;
/// CA certificates one `--tls-client-ca` file may hold.
pub const CLIENT_CAS_MAX: usize = 1024;

/// A TLS file that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct TlsFileError {
    pub file: PathBuf,
    pub reason: String,
}

/// Where one listener's certificate chain and key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// PEM: the leaf certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: the CAs client certificates must chain to (mTLS); None: no
    /// client certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// The server configurations built from one [`TlsPaths`].
#[derive(Debug, Clone)]
pub struct ServerConfigs {
    /// For HTTP: ALPN `http/1.1`.
    pub http: Arc<ServerConfig>,
    /// For newline-delimited JSON-RPC over TCP (and the admin endpoint): no
    /// ALPN.
    pub plain: Arc<ServerConfig>,
}

fn error(file: &Path, reason: impl ToString) -> TlsFileError {
    TlsFileError {
        file: file.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let mut chain = Vec::new();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| error(path, e))? {
        chain.push(cert.map_err(|e| error(path, e))?);
        if chain.len() > CHAIN_CERTS_MAX {
            return Err(error(
                path,
                format!("more than {CHAIN_CERTS_MAX} certificates in one chain"),
            ));
        }
    }
    if chain.is_empty() {
        return Err(error(path, "no PEM certificate in the file"));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            error(path, "no PEM private key in the file")
        }
        e => error(path, e),
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| error(path, e))? {
        let cert = cert.map_err(|e| error(path, e))?;
        roots.add(cert).map_err(|e| error(path, e))?;
        n += 1;
        if n > CLIENT_CAS_MAX {
            return Err(error(
                path,
                format!("more than {CLIENT_CAS_MAX} CA certificates"),
            ));
        }
    }
    if roots.is_empty() {
        return Err(error(path, "no PEM CA certificate in the file"));
    }
    Ok(roots)
}

/// Reads `paths` and builds both configurations; the key must match the
/// chain's leaf.
pub fn load(paths: &TlsPaths) -> Result<ServerConfigs, TlsFileError> {
    let chain = read_chain(&paths.cert)?;
    let key = read_key(&paths.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| error(&paths.cert, e))?;
    let builder = match &paths.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider)
                    .build()
                    .map_err(|e| error(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let plain = builder.with_single_cert(chain, key).map_err(|e| {
        // The chain parsed, so what failed is the key or its match.
        error(
            &paths.key,
            format!("{e} (does the key belong to {}?)", paths.cert.display()),
        )
    })?;
    let mut http = plain.clone();
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerConfigs {
        http: Arc::new(http),
        plain: Arc::new(plain),
    })
}
