//! Serving the API: a TCP listener, TLS when configured (rustls, ALPN h2 and
//! http/1.1), and HTTP/1.1 or HTTP/2 on each connection.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::{router, AppState};
use crate::service::Service;

/// Where the API listens, and its certificate if it speaks HTTPS.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub listen: SocketAddr,
    pub tls: Option<HttpTls>,
}

/// A certificate chain and its key, in PEM.
#[derive(Debug, Clone)]
pub struct HttpTls {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct HttpServer;

/// A running API front door. Dropping it does not stop it; call [`HttpHandle::shutdown`].
pub struct HttpHandle {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpHandle {
    /// The address it listens on (the port chosen, when `listen` asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections; the ones open end with their requests.
    pub fn shutdown(&self) {
        self.task.abort();
    }
}

impl HttpServer {
    /// Binds `options.listen` and serves the API of `service` on it.
    pub async fn start(service: Service, options: HttpOptions) -> Result<HttpHandle> {
        let acceptor = options.tls.as_ref().map(tls_acceptor).transpose()?;
        let listener =
            TcpListener::bind(options.listen).await.with_context(|| format!("cannot listen on {}", options.listen))?;
        let local_addr = listener.local_addr()?;
        let app = router(AppState { service });
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accepting an HTTP connection failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = TowerToHyperService::new(app);
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let served = match acceptor {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => builder.serve_connection_with_upgrades(TokioIo::new(tls), service).await,
                            Err(error) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed");
                                return;
                            }
                        },
                        None => builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await,
                    };
                    if let Err(error) = served {
                        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
                    }
                });
            }
        });
        tracing::info!(%local_addr, tls = options.tls.is_some(), "HTTP API listening");
        Ok(HttpHandle { local_addr, task })
    }
}

fn tls_acceptor(tls: &HttpTls) -> Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("cannot read the HTTP certificate (PEM)")?;
    anyhow::ensure!(!chain.is_empty(), "the HTTP certificate file holds no certificate");
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).context("cannot read the HTTP key (PEM)")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the HTTP certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
