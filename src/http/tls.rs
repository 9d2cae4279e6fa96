//! TLS for the HTTP endpoints: TLS 1.2 and 1.3 only, an optional client
//! certificate check, and a server certificate that follows its files. A
//! rotated certificate (cert-manager, certbot) is served from the next
//! handshake on, without a restart: each handshake looks at the files'
//! modification times and reads them again when they changed. A pair that
//! does not load (half written, key and certificate not matching) is logged
//! once and the last good one is kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::ConfigError;

/// `tls_server_config` as the exporter-toolkit spells it (the subset we
/// implement).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_auth_type: Option<String>,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
}

/// A problem with the file `web` (the web config) at its `key`.
fn err(web: &Path, key: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(format!("{}: tls_server_config.{key}: {msg}", web.display()))
}

pub fn acceptor(web: &Path, t: RawTls) -> Result<TlsAcceptor, ConfigError> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let pair = Pair {
        cert_file: t.cert_file,
        key_file: t.key_file,
    };
    let loaded = pair
        .load(&provider)
        .map_err(|(key, msg)| err(web, key, msg))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(web, "", e))?;
    let verifier = |ca: &Path| -> Result<_, ConfigError> {
        let mut roots = RootCertStore::empty();
        for c in certificates(ca).map_err(|e| err(web, "client_ca_file", e))? {
            roots.add(c).map_err(|e| err(web, "client_ca_file", e))?;
        }
        Ok(WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        ))
    };
    let builder = match (t.client_auth_type.as_deref(), &t.client_ca_file) {
        (None | Some("NoClientCert"), None) => builder.with_no_client_auth(),
        (None | Some("NoClientCert"), Some(_)) => {
            // As the exporter-toolkit: a CA without a policy would check nothing.
            return Err(err(
                web,
                "client_ca_file",
                "is given without client_auth_type (RequireAndVerifyClientCert or VerifyClientCertIfGiven): it would check nothing",
            ));
        }
        (Some(policy @ ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven")), Some(ca)) => {
            let mut v = verifier(ca)?;
            if policy == "VerifyClientCertIfGiven" {
                v = v.allow_unauthenticated();
            }
            let v = v.build().map_err(|e| err(web, "client_ca_file", e))?;
            builder.with_client_cert_verifier(v)
        }
        (Some(policy @ ("RequireAndVerifyClientCert" | "VerifyClientCertIfGiven")), None) => {
            return Err(err(web, "client_ca_file", format!("is required with {policy}")))
        }
        (Some(other), _) => {
            return Err(err(
                web,
                "client_auth_type",
                format!("`{other}` is not supported (NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)"),
            ))
        }
    };
    let resolver = Rotating {
        pair,
        provider,
        current: Mutex::new(loaded),
    };
    let config = builder.with_cert_resolver(Arc::new(resolver));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The server's certificate and key files.
#[derive(Debug)]
struct Pair {
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// What tells a file changed: its modification time, size and inode (a
/// file written twice within the clock's tick, or renamed over the old,
/// still differs).
type Stamp = Option<(SystemTime, u64, u64)>;

/// A loaded pair and the stamps of its files when read.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Stamp, Stamp),
}

impl Pair {
    fn stamps(&self) -> (Stamp, Stamp) {
        use std::os::unix::fs::MetadataExt;
        let stamp = |p: &Path| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        };
        (stamp(&self.cert_file), stamp(&self.key_file))
    }

    /// Read both files; an error names the key of the file at fault.
    fn load(&self, provider: &CryptoProvider) -> Result<Loaded, (&'static str, String)> {
        let stamps = self.stamps();
        let certs = certificates(&self.cert_file).map_err(|e| ("cert_file", e))?;
        let pem = std::fs::read(&self.key_file)
            .map_err(|e| ("key_file", format!("{}: {e}", self.key_file.display())))?;
        // The key's own parser error may quote it: name the file only.
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
            let file = self.key_file.display();
            ("key_file", format!("{file}: no PEM private key found"))
        })?;
        let key = CertifiedKey::from_der(certs, key, provider)
            .map_err(|e| ("key_file", e.to_string()))?;
        Ok(Loaded {
            key: Arc::new(key),
            stamps,
        })
    }
}

/// Serves the pair's current certificate, reading the files again when they
/// change.
#[derive(Debug)]
struct Rotating {
    pair: Pair,
    provider: Arc<CryptoProvider>,
    current: Mutex<Loaded>,
}

impl ResolvesServerCert for Rotating {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let stamps = self.pair.stamps();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if stamps != current.stamps {
            match self.pair.load(&self.provider) {
                Ok(loaded) => {
                    tracing::info!(cert_file = %self.pair.cert_file.display(), "TLS certificate reloaded");
                    *current = loaded;
                }
                Err((key, e)) => {
                    tracing::warn!(error = %e, key, "TLS certificate changed but does not load; serving the previous one");
                    // Not again until the files change once more.
                    current.stamps = stamps;
                }
            }
        }
        Some(current.key.clone())
    }
}

fn certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", file.display()));
    }
    Ok(certs)
}
