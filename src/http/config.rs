//! `--web.config.file`: the Prometheus exporter-toolkit's YAML for TLS and basic
//! authentication on the HTTP endpoints. The subset supported here is strict:
//! a key we do not implement is refused by name rather than ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::ConfigError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_auth_type: Option<String>,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
}

/// What the HTTP server enforces.
#[derive(Default, Clone)]
pub struct WebConfig {
    pub tls: Option<TlsAcceptor>,
    /// User name → bcrypt hash. Empty: no authentication.
    users: BTreeMap<String, String>,
}

fn err(path: &Path, key: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(format!("{}: {key}: {msg}", path.display()))
}

impl WebConfig {
    pub fn load(path: &Path) -> Result<WebConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| err(path, "file", e))?;
        WebConfig::parse(&text, path)
    }

    /// The file's text; `path` names it in errors and anchors nothing else
    /// (certificate paths are read as written).
    pub fn parse(text: &str, path: &Path) -> Result<WebConfig, ConfigError> {
        let raw: RawWebConfig = serde_saphyr::from_str(text)
            .map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))?;
        for (user, hash) in &raw.basic_auth_users {
            if !hash.starts_with("$2") {
                return Err(err(
                    path,
                    &format!("basic_auth_users.{user}"),
                    "must be a bcrypt hash ($2a$, $2b$ or $2y$)",
                ));
            }
        }
        let tls = raw
            .tls_server_config
            .map(|t| tls_acceptor(path, t))
            .transpose()?;
        Ok(WebConfig {
            tls,
            users: raw.basic_auth_users,
        })
    }

    /// Whether an `Authorization` header value lets the request through.
    /// bcrypt is slow on purpose (tens of milliseconds): call it off the async
    /// workers.
    pub fn authorized(&self, header: Option<&str>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, password)) = text.split_once(':') else {
            return false;
        };
        match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => false,
        }
    }

    pub fn requires_auth(&self) -> bool {
        !self.users.is_empty()
    }
}

fn pem_file(path: &Path, key: &str, file: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(file).map_err(|e| err(path, key, format!("{}: {e}", file.display())))
}

fn certificates(
    path: &Path,
    key: &str,
    file: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = pem_file(path, key, file)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(path, key, format!("{}: {e}", file.display())))?;
    if certs.is_empty() {
        return Err(err(
            path,
            key,
            format!("{}: no certificate found", file.display()),
        ));
    }
    Ok(certs)
}

fn tls_acceptor(path: &Path, t: RawTls) -> Result<TlsAcceptor, ConfigError> {
    let certs = certificates(path, "tls_server_config.cert_file", &t.cert_file)?;
    let key_pem = pem_file(path, "tls_server_config.key_file", &t.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        err(
            path,
            "tls_server_config.key_file",
            format!("{}: {e}", t.key_file.display()),
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(path, "tls_server_config", e))?;
    let builder = match (t.client_auth_type.as_deref(), &t.client_ca_file) {
        (None | Some("NoClientCert"), _) => builder.with_no_client_auth(),
        (Some("RequireAndVerifyClientCert"), Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(path, "tls_server_config.client_ca_file", ca)? {
                roots
                    .add(c)
                    .map_err(|e| err(path, "tls_server_config.client_ca_file", e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| err(path, "tls_server_config.client_ca_file", e))?;
            builder.with_client_cert_verifier(verifier)
        }
        (Some("RequireAndVerifyClientCert"), None) => {
            return Err(err(
                path,
                "tls_server_config.client_ca_file",
                "is required with RequireAndVerifyClientCert",
            ))
        }
        (Some(other), _) => {
            return Err(err(
                path,
                "tls_server_config.client_auth_type",
                format!("`{other}` is not supported (NoClientCert or RequireAndVerifyClientCert)"),
            ))
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| err(path, "tls_server_config", e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn basic_auth_checks_bcrypt() {
        let dir = std::env::temp_dir().join(format!("web-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let p = write(
            &dir,
            "web.yml",
            &format!("basic_auth_users:\n  alice: '{hash}'\n"),
        );
        let w = WebConfig::load(&p).unwrap();
        let header = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        assert!(w.authorized(Some(&header("alice", "s3cret"))));
        assert!(!w.authorized(Some(&header("alice", "wrong"))));
        assert!(!w.authorized(Some(&header("bob", "s3cret"))));
        assert!(!w.authorized(Some("Basic !!!")));
        assert!(!w.authorized(None));
        assert!(WebConfig::default().authorized(None));
    }

    #[test]
    fn unsupported_or_bad_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("web-test2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("http_server_config:\n  http2: true\n", "http_server_config"),
            (
                "basic_auth_users:\n  alice: plain\n",
                "basic_auth_users.alice",
            ),
            (
                "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
                "tls_server_config.cert_file",
            ),
            (
                "tls_server_config:\n  cert_file: x\n  key_file: y\n  min_version: TLS13\n",
                "min_version",
            ),
        ];
        for (i, (yaml, key)) in cases.iter().enumerate() {
            let p = write(&dir, &format!("w{i}.yml"), yaml);
            let e = WebConfig::load(&p).err().expect(yaml).to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
    }
}
