//! `--web.config.file`: the Prometheus exporter-toolkit's YAML for TLS and basic
//! authentication on the HTTP endpoints. The subset supported here is strict:
//! a key we do not implement is refused by name rather than ignored. The
//! file holds password hashes, so its errors give a line and column, never
//! its content.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

use super::auth::Users;
use super::tls::{self, RawTls};
use crate::config::ConfigError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

/// What the HTTP server enforces.
#[derive(Default, Clone)]
pub struct WebConfig {
    pub tls: Option<TlsAcceptor>,
    /// None: no authentication.
    pub users: Option<Arc<Users>>,
}

impl WebConfig {
    pub fn load(path: &Path) -> Result<WebConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))?;
        WebConfig::parse(&text, path)
    }

    /// The file's text; `path` names it in errors and anchors nothing else
    /// (certificate paths are read as written).
    pub fn parse(text: &str, path: &Path) -> Result<WebConfig, ConfigError> {
        let raw: RawWebConfig =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::yaml(path, &e, false))?;
        let users = Users::new(path, "basic_auth_users", raw.basic_auth_users)?;
        let tls = raw
            .tls_server_config
            .map(|t| tls::acceptor(path, t))
            .transpose()?;
        Ok(WebConfig {
            tls,
            users: (!users.is_empty()).then(|| Arc::new(users)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn errors_never_quote_the_file() {
        let dir = std::env::temp_dir().join(format!("web-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hash = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";
        let broken = format!("basic_auth_users:\n  alice: {hash}\n  bob: [\n");
        let p = write(&dir, "broken.yml", &broken);
        let e = WebConfig::load(&p).err().unwrap().to_string();
        assert!(e.contains("line 3 column"), "{e}");
        assert!(!e.contains("QOauh") && !e.contains("bob"), "{e}");
        let p = write(
            &dir,
            "ok.yml",
            &format!("basic_auth_users:\n  alice: '{hash}'\n"),
        );
        assert!(WebConfig::load(&p).unwrap().users.is_some());
        let p = write(
            &dir,
            "ca.yml",
            "tls_server_config:\n  cert_file: c\n  key_file: k\n",
        );
        assert!(WebConfig::load(&p)
            .err()
            .unwrap()
            .to_string()
            .contains("cert_file"));
    }

    #[test]
    fn unsupported_or_bad_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("web-test2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            (
                "http_server_config:\n  http2: true\n",
                "unknown key `http_server_config`",
            ),
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
                "line 4 column 3: unknown key `min_version`",
            ),
        ];
        for (i, (yaml, key)) in cases.iter().enumerate() {
            let p = write(&dir, &format!("w{i}.yml"), yaml);
            let e = WebConfig::load(&p).err().expect(yaml).to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
    }
}
