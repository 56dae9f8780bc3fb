//! TLS 1.3 with raw public keys (RFC 7250), bound to [`NodeId`]s.
//!
//! Both sides present their Ed25519 key as a raw `SubjectPublicKeyInfo`; there are no
//! X.509 certificates, so there is no certificate parser to attack. The client names
//! the node it wants in the TLS server name (`<node id>.kith.invalid`) and the
//! verifier accepts the server only if it proves exactly that key. The server
//! accepts any client that proves *some* Ed25519 key; that key is the client's
//! [`NodeId`].
//!
//! Session resumption uses rustls' stateful, single-use session cache, which is also
//! what makes 0-RTT replay-safe within one endpoint (rustls refuses early data with
//! stateless tickets).

use std::sync::Arc;

use kith_core::{NodeId, SecretKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The TLS ALPN of this version of the kith transport.
pub const KITH_ALPN: &[u8] = b"kith/1";

/// DNS suffix of the TLS server name that carries the expected node id.
const SERVER_NAME_SUFFIX: &str = ".kith.invalid";

/// The TLS server name a client uses to ask for `id`.
pub(crate) fn server_name(id: &NodeId) -> String {
    format!("{id}{SERVER_NAME_SUFFIX}")
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(
    key: &SecretKey,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_pkcs8_der()));
    let signing = provider.key_provider.load_private_key(der)?;
    let spki = CertificateDer::from(key.node_id().to_spki_der());
    Ok(Arc::new(CertifiedKey::new(vec![spki], signing)))
}

/// Builds the rustls server configuration for `key` (TLS 1.3, RPK, mandatory client auth).
pub(crate) fn server_config(
    key: &SecretKey,
    alpns: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = provider();
    let ck = certified_key(key, &provider)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(NodeIdVerifier::new(&provider)))
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(ck),
        ));
    cfg.alpn_protocols = alpns;
    // QUIC requires exactly u32::MAX when 0-RTT is enabled (RFC 9001 §4.6.1).
    cfg.max_early_data_size = u32::MAX;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
    Ok(cfg)
}

/// Builds the rustls client configuration for `key` (TLS 1.3, RPK, 0-RTT enabled).
pub(crate) fn client_config(
    key: &SecretKey,
    alpns: Vec<Vec<u8>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let ck = certified_key(key, &provider)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeIdVerifier::new(&provider)))
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(ck),
        ));
    cfg.alpn_protocols = alpns;
    cfg.enable_early_data = true;
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(1024);
    Ok(cfg)
}

/// Reads the node id a peer proved during the handshake.
pub(crate) fn peer_node_id(identity: Option<Box<dyn std::any::Any>>) -> Option<NodeId> {
    let certs = identity?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let first = certs.first()?;
    NodeId::from_spki_der(first.as_ref()).ok()
}

fn verify_sig(
    algs: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::NoSignatureSchemesInCommon,
        ));
    }
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        algs,
    )
}

fn bad_cert() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
}

/// Verifies raw Ed25519 public keys in both roles: as a client it accepts a server only
/// if it proves the key named in the server name; as a server it accepts any client
/// that proves an Ed25519 key (that key is the client's node id).
#[derive(Debug)]
struct NodeIdVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl NodeIdVerifier {
    fn new(provider: &CryptoProvider) -> Self {
        Self {
            algs: provider.signature_verification_algorithms,
        }
    }
}

/// TLS 1.2 is never offered (QUIC requires 1.3); a 1.2 signature is refused.
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

impl ServerCertVerifier for NodeIdVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(bad_cert());
        }
        let ServerName::DnsName(name) = server_name else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        };
        let expected: NodeId = name
            .as_ref()
            .strip_suffix(SERVER_NAME_SUFFIX)
            .and_then(|s| s.parse().ok())
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))?;
        let got = NodeId::from_spki_der(end_entity.as_ref()).map_err(|_| bad_cert())?;
        if got != expected {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_sig(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for NodeIdVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(bad_cert());
        }
        NodeId::from_spki_der(end_entity.as_ref()).map_err(|_| bad_cert())?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_sig(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}
