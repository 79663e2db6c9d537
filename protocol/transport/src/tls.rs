//! TLS identities for QUIC: the cluster CA, node certificates, and the quinn
//! server and client configurations built from them.
//!
//! Every node runs one QUIC endpoint. Its certificate is issued by the cluster
//! CA and names [`SERVER_NAME`], so clients and peers dial every node with the
//! same server name and verify it against the CA. Node-to-node connections are
//! mutual TLS; the peer's node id is read from its certificate with
//! [`peer_node_id`].
//!
//! **Invariant:** this module never installs a process-wide rustls
//! `CryptoProvider`. Every config is built with an explicit *ring* provider,
//! so the crate can live next to code that picked another provider.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentd_protocol::limits::HANDS_STREAMS_PER_CONNECTION_MAX;
use agentd_protocol::{CLIENT_ALPN, CLUSTER_ALPN, HANDS_ALPN, JOIN_ALPN};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::Error;

/// Every node certificate carries this DNS name; clients and nodes dial with it as the server name.
pub const SERVER_NAME: &str = "agentd.cluster";

/// The common name of every cluster CA certificate.
const CA_COMMON_NAME: &str = "agentd cluster CA";
/// Node DNS names are `node-{id}` followed by this suffix.
const NODE_NAME_SUFFIX: &str = ".agentd.cluster";
const NODE_NAME_PREFIX: &str = "node-";
/// Sandbox agents' certificates name `{sandbox}` followed by this suffix.
const HANDS_NAME_SUFFIX: &str = ".hands.agentd.cluster";

/// Keep-alives keep idle cluster connections open and detect dead peers well
/// within the idle timeout.
const KEEP_ALIVE_INTERVAL_MS: u64 = 1_000;
/// A connection that has heard nothing from its peer for this long is closed,
/// which is how a crashed peer is noticed.
const IDLE_TIMEOUT_MS: u32 = 5_000;
/// Most bidirectional streams the peer may have open at once on a connection.
const BIDI_STREAMS_PER_CONNECTION_MAX: u32 = 1_024;
/// Certificates are valid from this long before issue, to tolerate clock skew
/// between the issuing node and the nodes that verify the certificate.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60 * 60);
/// Certificates are valid for ten years, because there is no rotation yet.
/// A node certificate issued late in its CA's life is still bounded by the
/// CA's expiry, since verifiers check every certificate in the chain.
const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// The cluster certificate authority: a self-signed certificate and its key.
pub struct ClusterCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    /// Shows the fingerprint only; the key is secret.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("ClusterCa").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new self-signed CA with an ECDSA P-256 key.
    pub fn generate() -> Result<ClusterCa, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(certificate_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
        // A path length of zero: the CA signs node certificates directly and
        // never intermediates, so a stolen node key cannot mint new nodes.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params)?;
        let cert = params.self_signed(&key).map_err(certificate_error)?;
        Ok(ClusterCa { cert_der: cert.der().clone(), cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// Loads a CA saved with [`ClusterCa::cert_pem`] and [`ClusterCa::key_pem`].
    ///
    /// The certificate PEM must hold exactly one PEM section: a CA certificate
    /// whose public key belongs to the given private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, Error> {
        let cert_pem = single_certificate_pem(cert_pem)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|error| Error::Certificate(format!("bad CA certificate PEM: {error}")))?;
        let key = KeyPair::from_pem(key_pem).map_err(certificate_error)?;

        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|error| Error::Certificate(format!("unreadable CA certificate: {error}")))?;
        if !parsed.is_ca() {
            return Err(Error::Certificate("the certificate is not a CA certificate".to_owned()));
        }
        // A key that does not match the certificate would sign node
        // certificates that no verifier accepts; refuse it at load time.
        if parsed.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(Error::Certificate("the CA key does not match the CA certificate".to_owned()));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(certificate_error)?;
        Ok(ClusterCa { cert_der, cert_pem, issuer })
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA private key in PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// SHA-256 of the CA certificate DER, as 64 lowercase hex digits.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.cert_der)
    }

    /// A node certificate: SANs = SERVER_NAME, "node-{node_id}.agentd.cluster", and `host` (as IP SAN if it parses as an IP, else DNS); client+server auth EKUs.
    pub fn issue_node(&self, node_id: u64, host: &str) -> Result<NodeIdentity, Error> {
        let host = host.trim();
        if host.is_empty() {
            return Err(Error::Certificate("node host is empty".to_owned()));
        }
        let node_name = node_dns_name(node_id);
        let mut subject_alt_names = vec![dns_san(SERVER_NAME)?, dns_san(&node_name)?];
        let host_san = match host.parse::<IpAddr>() {
            Ok(address) => SanType::IpAddress(address),
            Err(_) => {
                // A malformed name would make the certificate unusable for
                // that name only when someone dials it; refuse it up front.
                DnsName::try_from(host)
                    .map_err(|_| Error::Certificate(format!("node host {host:?} is neither an IP nor a DNS name")))?;
                dns_san(host)?
            }
        };
        if !subject_alt_names.contains(&host_san) {
            subject_alt_names.push(host_san);
        }

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(certificate_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("agentd node {node_id}"));
        params.subject_alt_names = subject_alt_names;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Nodes both accept connections and dial their peers with the same
        // certificate, so it must be good for both ends of a handshake.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(certificate_error)?;
        Ok(NodeIdentity { ca_cert_pem: self.cert_pem.clone(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

impl ClusterCa {
    /// A certificate pair for one sandbox, named `sandbox` (a DNS label: lowercase
    /// letters, digits and `-`). The agent's certificate is good for server auth
    /// only and names [`hands_server_name`]`(sandbox)`; the node's certificate is
    /// good for client auth only. So an agent's key, which lives inside the
    /// sandbox, cannot be used to call another sandbox's agent, nor to pose as a
    /// node to the cluster.
    pub fn issue_hands(&self, sandbox: &str) -> Result<HandsIdentities, Error> {
        let label_ok = !sandbox.is_empty()
            && sandbox.len() <= 63
            && sandbox.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
            && !sandbox.starts_with('-')
            && !sandbox.ends_with('-');
        if !label_ok {
            return Err(Error::Certificate(format!("sandbox name {sandbox:?} is not a DNS label")));
        }
        let server_name = hands_server_name(sandbox);
        let agent = self.issue_leaf(
            &format!("agentd sandbox {sandbox}"),
            vec![dns_san(&server_name)?],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let node = self.issue_leaf(
            &format!("agentd node for sandbox {sandbox}"),
            vec![dns_san(&format!("node.{server_name}"))?],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(HandsIdentities { server_name, agent, node })
    }

    fn issue_leaf(
        &self,
        common_name: &str,
        subject_alt_names: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<HandsIdentity, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(certificate_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.subject_alt_names = subject_alt_names;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(certificate_error)?;
        Ok(HandsIdentity { ca_cert_pem: self.cert_pem.clone(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// The DNS name a sandbox agent's certificate carries and a node dials it with.
pub fn hands_server_name(sandbox: &str) -> String {
    format!("{sandbox}{HANDS_NAME_SUFFIX}")
}

/// One sandbox's certificates: the agent's (inside the sandbox) and the node's (to call it).
#[derive(Clone, Debug)]
pub struct HandsIdentities {
    /// The name the node dials the agent with.
    pub server_name: String,
    pub agent: HandsIdentity,
    pub node: HandsIdentity,
}

/// A certificate and key of one end of ALPN `agentd-hands/1`, with the CA that issued them.
#[derive(Clone, Debug)]
pub struct HandsIdentity {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl HandsIdentity {
    /// The agent's server config: ALPN `agentd-hands/1`, and a client certificate
    /// issued by the CA for client auth is **required** (the handshake fails without one).
    pub fn agent_server_config(&self) -> Result<quinn::ServerConfig, Error> {
        quic_server_config(
            ServerSide {
                ca_cert_pem: &self.ca_cert_pem,
                client_certificate_required: true,
                chain: parse_certificates(&self.cert_pem)?,
                key: private_key(&self.key_pem)?,
                alpn_protocols: vec![HANDS_ALPN.to_vec()],
            },
            HANDS_STREAMS_PER_CONNECTION_MAX,
        )
    }

    /// The node's client config for one sandbox's agent: ALPN `agentd-hands/1`,
    /// presents this certificate, verifies the agent against the CA (dial it with
    /// [`HandsIdentities::server_name`]).
    pub fn node_client_config(&self) -> Result<quinn::ClientConfig, Error> {
        let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_root_certificates(root_store(&self.ca_cert_pem)?)
            .with_client_auth_cert(parse_certificates(&self.cert_pem)?, private_key(&self.key_pem)?)
            .map_err(tls_error)?;
        tls.alpn_protocols = vec![HANDS_ALPN.to_vec()];
        quic_client_config(tls)
    }
}

/// A node's certificate and key, with the CA certificate that issued them.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl NodeIdentity {
    /// One server config for the node's single QUIC endpoint, accepting ALPNs CLIENT_ALPN, CLUSTER_ALPN and JOIN_ALPN.
    /// The server presents the chain [node cert, CA cert]. Client certificates are OPTIONAL at the TLS level
    /// (rustls WebPkiClientVerifier with the CA as root + allow_unauthenticated()), because clients and joining
    /// nodes have none; the application enforces them for CLUSTER_ALPN using `peer_node_id`.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, Error> {
        // A client that does present a certificate must present one issued by
        // the cluster CA; the handshake fails otherwise.
        quic_server_config(
            ServerSide {
                ca_cert_pem: &self.ca_cert_pem,
                client_certificate_required: false,
                chain: self.cert_chain()?,
                key: self.private_key()?,
                alpn_protocols: vec![CLIENT_ALPN.to_vec(), CLUSTER_ALPN.to_vec(), JOIN_ALPN.to_vec()],
            },
            BIDI_STREAMS_PER_CONNECTION_MAX,
        )
    }

    /// Node-to-node client config: ALPN CLUSTER_ALPN, presents this node's cert chain, verifies the server against the CA.
    pub fn cluster_client_config(&self) -> Result<quinn::ClientConfig, Error> {
        let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_root_certificates(root_store(&self.ca_cert_pem)?)
            .with_client_auth_cert(self.cert_chain()?, self.private_key()?)
            .map_err(tls_error)?;
        tls.alpn_protocols = vec![CLUSTER_ALPN.to_vec()];
        quic_client_config(tls)
    }

    /// The node id, parsed from the certificate's "node-{id}.agentd.cluster" SAN.
    pub fn node_id(&self) -> Result<u64, Error> {
        let certificate = parse_certificates(&self.cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Certificate("no node certificate".to_owned()))?;
        node_id_of(&certificate)
            .ok_or_else(|| Error::Certificate("the node certificate names no single node id".to_owned()))
    }

    /// The chain a node presents: its own certificate, then the CA, so that a
    /// joining node that only knows the CA fingerprint can find the CA.
    fn cert_chain(&self) -> Result<Vec<CertificateDer<'static>>, Error> {
        let mut chain = parse_certificates(&self.cert_pem)?;
        chain.extend(parse_certificates(&self.ca_cert_pem)?);
        Ok(chain)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, Error> {
        private_key(&self.key_pem)
    }
}

fn private_key(key_pem: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|error| Error::Certificate(format!("bad private key PEM: {error}")))
}

/// The node id of a connection's verified peer certificate (client side of a CLUSTER_ALPN connection as seen by the server,
/// or the server as seen by a client): None if the peer presented no certificate or it has no node SAN.
///
/// The certificate is only as trustworthy as the verifier that accepted it:
/// on a connection made with [`ServerTrust::InsecureLoopback`] it was not
/// verified at all.
pub fn peer_node_id(connection: &quinn::Connection) -> Option<u64> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_of(chain.first()?)
}

/// How a client (CLI, SDK, joining node) decides to trust a server.
#[derive(Clone, Debug)]
pub enum ServerTrust {
    /// Verify against this CA certificate (PEM).
    Ca(String),
    /// Verify that the server's chain contains a CA certificate with this SHA-256 fingerprint (hex) and that the
    /// leaf is validly signed by it for SERVER_NAME. Used by joining nodes, whose join token carries the fingerprint.
    Fingerprint(String),
    /// Accept any certificate. Only for loopback development; the caller checks the address is loopback.
    InsecureLoopback,
}

/// A client config with no client certificate, for the given ALPN.
pub fn client_config(trust: ServerTrust, alpn: &[u8]) -> Result<quinn::ClientConfig, Error> {
    let provider = crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?;
    let mut tls = match trust {
        ServerTrust::Ca(ca_cert_pem) => builder.with_root_certificates(root_store(&ca_cert_pem)?).with_no_client_auth(),
        ServerTrust::Fingerprint(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CustomVerifier::fingerprint(&fingerprint, provider)?))
            .with_no_client_auth(),
        ServerTrust::InsecureLoopback => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CustomVerifier::insecure(provider)))
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    quic_client_config(tls)
}

/// Verifies servers for the two trusts that have no CA certificate at hand.
///
/// With a fingerprint (a joining node has only the one in its join token):
/// the server sends the CA along with its own certificate; once a
/// certificate in the chain matches the fingerprint, it is used as the only
/// root and the leaf is verified against it exactly as with a known CA.
///
/// Without one (development against a loopback node) any certificate is
/// accepted; the handshake signature is still checked, so the server at
/// least holds the key of the certificate it presented.
#[derive(Debug)]
struct CustomVerifier {
    fingerprint: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl CustomVerifier {
    fn fingerprint(fingerprint: &str, provider: Arc<CryptoProvider>) -> Result<Self, Error> {
        let fingerprint = fingerprint.trim().to_ascii_lowercase();
        let is_sha256_hex = fingerprint.len() == 64 && fingerprint.bytes().all(|byte| byte.is_ascii_hexdigit());
        if !is_sha256_hex {
            return Err(Error::Certificate("a CA fingerprint is 64 hex digits (SHA-256)".to_owned()));
        }
        Ok(CustomVerifier { fingerprint: Some(fingerprint), provider })
    }

    fn insecure(provider: Arc<CryptoProvider>) -> Self {
        CustomVerifier { fingerprint: None, provider }
    }
}

impl ServerCertVerifier for CustomVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(fingerprint) = &self.fingerprint else {
            return Ok(ServerCertVerified::assertion());
        };
        let ca = intermediates
            .iter()
            .find(|certificate| &fingerprint_of(certificate) == fingerprint)
            .ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|error| rustls::Error::General(error.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The crypto provider for every config, passed explicitly so that nothing
/// depends on (or installs) a process-wide default.
fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Transport settings shared by every endpoint and connection, so that both
/// ends of a connection agree on how quickly a silent peer is given up on;
/// `bidi_streams_max` bounds the streams a peer may open at once.
fn transport_config(bidi_streams_max: u32) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_INTERVAL_MS)));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS))));
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(bidi_streams_max));
    Arc::new(transport)
}

fn quic_client_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, Error> {
    let quic = QuicClientConfig::try_from(tls).map_err(tls_error)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config(BIDI_STREAMS_PER_CONNECTION_MAX));
    Ok(config)
}

/// What tells one QUIC server config from another: who may connect, what it presents, which ALPNs.
struct ServerSide<'a> {
    /// Client certificates, when presented, must be issued by this CA.
    ca_cert_pem: &'a str,
    /// Whether a client without a certificate is refused in the handshake.
    client_certificate_required: bool,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn_protocols: Vec<Vec<u8>>,
}

/// A TLS 1.3 QUIC server config. 0-RTT stays disabled (rustls' default): early
/// data can be replayed by an attacker, and requests may change state.
fn quic_server_config(side: ServerSide<'_>, bidi_streams_max: u32) -> Result<quinn::ServerConfig, Error> {
    let provider = crypto_provider();
    let roots = Arc::new(root_store(side.ca_cert_pem)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    let verifier = if side.client_certificate_required { verifier } else { verifier.allow_unauthenticated() };
    let client_verifier = verifier.build().map_err(|error| Error::Tls(error.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(side.chain, side.key)
        .map_err(tls_error)?;
    tls.alpn_protocols = side.alpn_protocols;
    let quic = QuicServerConfig::try_from(tls).map_err(tls_error)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config(bidi_streams_max));
    Ok(config)
}

/// Sets the validity window from the wall clock. Certificates are issued at
/// the edge (CLI, join handler), never inside a deterministic core.
fn set_validity(params: &mut CertificateParams) -> Result<(), Error> {
    #[allow(
        clippy::disallowed_methods,
        reason = "peers check certificates against their wall clocks, so validity must come from one; \
                  certificate bytes never reach a simulator's trace"
    )]
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::Certificate("the system clock is before 1970".to_owned()))?;
    // rcgen takes `time::OffsetDateTime`; starting from its epoch value and
    // adding std durations avoids a direct dependency on the `time` crate.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = epoch + since_epoch;
    params.not_before = now - CLOCK_SKEW_ALLOWANCE;
    params.not_after = now + CERTIFICATE_LIFETIME;
    Ok(())
}

/// The text of the one PEM section in `pem`, which must be a certificate.
///
/// The CA certificate PEM is handed to every node and client, so it must not
/// carry anything else from the file it was loaded from (a private key, say).
fn single_certificate_pem(pem: &str) -> Result<String, Error> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let single_section = pem.matches("-----BEGIN").count() == 1;
    let section = pem
        .find(BEGIN)
        .zip(pem.find(END))
        .filter(|(begin, end)| single_section && begin < end)
        .map(|(begin, end)| &pem[begin..end + END.len()])
        .ok_or_else(|| Error::Certificate("expected PEM with exactly one certificate".to_owned()))?;
    Ok(format!("{section}\n"))
}

/// All certificates in a PEM string; an error if there are none or any is malformed.
fn parse_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| Error::Certificate(format!("bad certificate PEM: {error}")))?;
    if certificates.is_empty() {
        return Err(Error::Certificate("no certificate found in PEM".to_owned()));
    }
    Ok(certificates)
}

fn root_store(ca_cert_pem: &str) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for certificate in parse_certificates(ca_cert_pem)? {
        roots.add(certificate).map_err(|error| Error::Certificate(format!("bad CA certificate: {error}")))?;
    }
    Ok(roots)
}

fn fingerprint_of(certificate_der: &[u8]) -> String {
    Sha256::digest(certificate_der).iter().map(|byte| format!("{byte:02x}")).collect()
}

fn node_dns_name(node_id: u64) -> String {
    format!("{NODE_NAME_PREFIX}{node_id}{NODE_NAME_SUFFIX}")
}

/// The node id named by a certificate's `node-{id}.agentd.cluster` DNS SAN.
///
/// Returns None for unparsable certificates and for certificates that name no
/// node or more than one, so that an odd certificate never maps to a node.
fn node_id_of(certificate_der: &[u8]) -> Option<u64> {
    let (_, certificate) = x509_parser::parse_x509_certificate(certificate_der).ok()?;
    let names = certificate.subject_alternative_name().ok()??;
    let mut node_ids = names.value.general_names.iter().filter_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns_name) => node_id_from_dns_name(dns_name),
        _ => None,
    });
    let node_id = node_ids.next()?;
    node_ids.all(|other| other == node_id).then_some(node_id)
}

/// Parses `node-{id}.agentd.cluster`, accepting only the canonical decimal
/// form that [`ClusterCa::issue_node`] writes (no sign, no leading zeros).
fn node_id_from_dns_name(dns_name: &str) -> Option<u64> {
    let digits = dns_name.strip_prefix(NODE_NAME_PREFIX)?.strip_suffix(NODE_NAME_SUFFIX)?;
    let node_id = digits.parse::<u64>().ok()?;
    (node_id.to_string() == digits).then_some(node_id)
}

fn dns_san(name: &str) -> Result<SanType, Error> {
    let name = name.try_into().map_err(certificate_error)?;
    Ok(SanType::DnsName(name))
}

fn certificate_error(error: rcgen::Error) -> Error {
    Error::Certificate(error.to_string())
}

fn tls_error(error: impl std::fmt::Display) -> Error {
    Error::Tls(error.to_string())
}
