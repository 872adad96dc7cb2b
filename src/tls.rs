//! TLS termination (`tls: mode: terminate`): the certificate ftpgate presents to FTP
//! clients, read and checked when a gateway starts or reloads (and by `ftpgate check`),
//! and the configuration of each session. Every session gets a TLS session cache and a
//! ticket key of its own, shared by its control connection and its data connections only:
//! a data connection that resumed a session belongs to that control connection (rule
//! `tls_reuse`, the defence against data-connection theft that vsftpd calls
//! `require_ssl_reuse`). The control connection issues the TLS 1.3 tickets; data
//! connections issue none (GnuTLS clients such as lftp break off an upload when a ticket
//! arrives mid-send), and as the tickets are the session's own stateless ones, a client
//! may resume with the same ticket on every data connection. TLS 1.2 and 1.3 with rustls's default suites (no CBC, no SHA-1,
//! nothing anonymous); rustls knows no renegotiation.

use std::path::Path;
use std::sync::Arc;

use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::ServerSessionMemoryCache;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{Config, TlsSettings, UpstreamTls};

/// TLS 1.2 sessions a session's cache keeps: its control connection's, which its data
/// connections resume (TLS 1.3 tickets are stateless, under the session's own key).
const SESSION_CACHE: usize = 8;

/// Why a gateway's TLS material is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM item of the kind needed.
    #[error("{key}: {path}: {why}")]
    File {
        /// The configuration key naming the file.
        key: String,
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The key does not belong to the certificate, or rustls refuses them.
    #[error("{key}: {why}")]
    Pair {
        /// The configuration key (`tls.key`).
        key: String,
        /// What is wrong.
        why: String,
    },
}

/// What a terminating gateway presents to its clients, and how it speaks TLS to its
/// servers.
#[derive(Debug)]
pub struct Termination {
    base: Arc<ServerConfig>,
    /// Protected data connections must resume their control connection's session.
    pub require_reuse: bool,
    /// TLS toward the server, if any.
    upstream: Option<Upstream>,
}

/// TLS toward the server (`tls.upstream: explicit|implicit`).
#[derive(Debug)]
struct Upstream {
    base: Arc<ClientConfig>,
    /// `tls.upstream_name`: the name checked in the server's certificate.
    name: Option<String>,
}

/// Why the server's name cannot be checked.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a name a certificate can be checked against; set tls.upstream_name")]
pub struct BadServerName(String);

impl Termination {
    /// Reads and checks the certificate and key of `settings` (gateway entry `index`,
    /// for the error's key); `None` when the gateway does not terminate TLS.
    pub fn load(settings: &TlsSettings, index: usize) -> Result<Option<Self>, TlsError> {
        if !settings.terminates() {
            return Ok(None);
        }
        let key_of = |name: &str| format!("gateways[{index}].tls.{name}");
        let (Some(cert_path), Some(key_path)) = (&settings.certificate, &settings.key) else {
            return Err(TlsError::Pair {
                key: key_of("certificate"),
                why: "certificate and key are required with mode: terminate".into(),
            });
        };
        let chain = read_chain(cert_path, &key_of("certificate"))?;
        let key = read_key(key_path, &key_of("key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pair {
                key: key_of("mode"),
                why: e.to_string(),
            })?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Pair {
                key: key_of("key"),
                why: format!(
                    "{} does not go with {}: {e}",
                    key_path.display(),
                    cert_path.display()
                ),
            })?;
        let upstream = match settings.upstream {
            UpstreamTls::Plain => None,
            UpstreamTls::Explicit | UpstreamTls::Implicit => {
                let roots = roots(settings.upstream_ca.as_deref(), &key_of("upstream_ca"))?;
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| TlsError::Pair {
                        key: key_of("upstream"),
                        why: e.to_string(),
                    })?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(Upstream {
                    base: Arc::new(config),
                    name: settings.upstream_name.clone(),
                })
            }
        };
        Ok(Some(Self {
            base: Arc::new(config),
            require_reuse: settings.require_reuse,
            upstream,
        }))
    }

    /// The TLS configuration toward the server for one session, with a resumption store
    /// of its own (data connections resume the control connection's session, newest
    /// ticket first), and the name to check for a server reached as `host`; `None` with
    /// plain FTP to the server.
    pub fn upstream(&self, host: &str) -> Option<Result<UpstreamSession, BadServerName>> {
        let up = self.upstream.as_ref()?;
        let name = up.name.clone().unwrap_or_else(|| host.to_owned());
        let name = match ServerName::try_from(name.clone()) {
            Ok(n) => n,
            Err(_) => return Some(Err(BadServerName(name))),
        };
        let mut config = (*up.base).clone();
        config.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(8)));
        Some(Ok(UpstreamSession {
            config: Arc::new(config),
            name,
        }))
    }

    /// The configurations of one session, for its control connection and its data
    /// connections: the gateway's certificate, a session cache (TLS 1.2 session ids) and a
    /// ticket key of the session's own.
    pub fn session(&self) -> Result<SessionTls, rustls::Error> {
        let mut control = (*self.base).clone();
        control.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        control.ticketer = rustls::crypto::ring::Ticketer::new()?;
        let mut data = control.clone();
        data.send_tls13_tickets = 0;
        Ok(SessionTls {
            control: Arc::new(control),
            data: Arc::new(data),
        })
    }
}

/// TLS toward the server for one session.
#[derive(Debug, Clone)]
pub struct UpstreamSession {
    /// Its configuration (with the session's resumption store).
    pub config: Arc<ClientConfig>,
    /// The name the server's certificate must carry.
    pub name: ServerName<'static>,
}

/// The TLS configurations of one session.
#[derive(Debug, Clone)]
pub struct SessionTls {
    /// For the control connection (issues the session's tickets).
    pub control: Arc<ServerConfig>,
    /// For data connections (resume only).
    pub data: Arc<ServerConfig>,
}

/// Checks the TLS files of every gateway of `config` (for `ftpgate check`).
pub fn check(config: &Config) -> Result<(), TlsError> {
    for (i, g) in config.gateways.iter().enumerate() {
        Termination::load(&g.tls, i)?;
    }
    Ok(())
}

/// The CAs a server's certificate is checked against: `upstream_ca`, or the system's.
fn roots(file: Option<&Path>, key: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let certs = match file {
        Some(path) => read_chain(path, key)?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(TlsError::File {
                    key: key.to_owned(),
                    path: "(the system trust store)".into(),
                    why: format!("no CA certificate found ({:?}); set it", found.errors),
                });
            }
            found.certs
        }
    };
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::File {
            key: key.to_owned(),
            path: file.map_or("(the system trust store)".into(), |p| {
                p.display().to_string()
            }),
            why: "no usable CA certificate in it".into(),
        });
    }
    Ok(roots)
}

fn read_chain(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |why: String| TlsError::File {
        key: key.to_owned(),
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(format!("not a PEM certificate chain ({e})")))?;
    if chain.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(chain)
}

fn read_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = std::fs::read(path).map_err(|e| TlsError::File {
        key: key.to_owned(),
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| TlsError::File {
        key: key.to_owned(),
        path: path.display().to_string(),
        why: format!("not a PEM private key ({e})"),
    })
}
