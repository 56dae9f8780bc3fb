//! A TLS client that proves no key is refused, and the endpoint keeps serving.

mod common;

use std::sync::Arc;

use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Trusts any server: this client only wants to see whether the server lets it in.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

async fn keyless_attempt(server: std::net::SocketAddr, server_name: &str) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    tls.alpn_protocols = vec![kith_transport::KITH_ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().map_err(|_| "addr")?)
        .map_err(|e| e.to_string())?;
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = match ep
        .connect(server, server_name)
        .map_err(|e| e.to_string())?
        .await
    {
        Ok(c) => c,
        // Refused during the handshake: what we expect.
        Err(e) => {
            assert!(
                e.to_string().contains("handshake failed"),
                "unexpected failure: {e}"
            );
            return Ok(());
        }
    };
    // Even if the client thinks the handshake finished, the server must not keep it:
    // any stream we open must fail.
    let r = async {
        let (mut s, mut r) = conn.open_bi().await?;
        s.write_all(&common::ECHO.header()).await?;
        s.write_all(b"sneak").await?;
        s.finish()?;
        let v = r.read_to_end(1024).await?;
        Ok::<_, anyhow::Error>(v)
    }
    .await;
    match r {
        Ok(v) => Err(format!("keyless client got an answer: {v:?}")),
        Err(_) => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_a_key_is_refused_and_others_served() {
    let server = bind(1).await;
    let addr = server.local_addrs()[0];
    let name = format!("{}.kith.invalid", server.node_id());
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        keyless_attempt(addr, &name),
    )
    .await
    .expect("keyless attempt must end");
    assert_eq!(outcome, Ok(()));
    assert!(
        server.connections().is_empty(),
        "no connection registered for a keyless client"
    );
    let client = bind(2).await;
    let conn = client.connect(server.node_addr()).await.unwrap();
    assert_eq!(
        echo(&*conn, b"still serving").await.unwrap(),
        b"still serving"
    );
}
