//! TLS: an appliance with a certificate from a private CA is reached when
//! the integration carries that CA, refused otherwise, and reached without
//! verification only when the integration opts out.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use shared::domain::Provider;
use txdx_worker::providers::Providers;

use crate::{
    credentials,
    fakes::{MERAKI_KEY, MerakiFake},
    permanent, settings,
};

/// A private CA and a server certificate it signed for 127.0.0.1.
struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "TxDx test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![
            server_cert.der().clone(),
            CertificateDer::from(ca.der().to_vec()),
        ],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
    )
    .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server: Arc::new(config),
    }
}

#[tokio::test]
async fn https_with_the_integrations_ca_succeeds() {
    let pki = pki();
    let meraki = MerakiFake::start_tls(pki.server.clone()).await;
    assert!(meraki.url.starts_with("https://127.0.0.1:"));
    let mut settings = settings(&meraki.base_url());
    settings.ca_cert_pem = Some(pki.ca_pem.clone());
    let providers = Providers::new().unwrap();
    let result = providers
        .test_connection(
            Provider::Meraki,
            &settings,
            &credentials(json!({"api_key": MERAKI_KEY})),
        )
        .await
        .unwrap();
    assert_eq!(result["organizations"][0]["id"], "549236");
    assert_eq!(meraki.seen_at("/api/v1/organizations").len(), 1);
}

#[tokio::test]
async fn verified_tls_refuses_an_unknown_ca_as_a_permanent_error() {
    let pki = pki();
    let meraki = MerakiFake::start_tls(pki.server.clone()).await;
    let settings = settings(&meraki.base_url()); // verify_tls defaults to true
    let message = permanent(
        Providers::new()
            .unwrap()
            .test_connection(
                Provider::Meraki,
                &settings,
                &credentials(json!({"api_key": MERAKI_KEY})),
            )
            .await,
    );
    assert!(
        message.starts_with("Meraki: the TLS certificate of 127.0.0.1 is not trusted"),
        "{message}"
    );
    assert!(message.contains("ca_cert_pem"), "{message}");
    assert!(
        meraki.seen().is_empty(),
        "no request (and no API key) crossed the refused connection"
    );
}

#[tokio::test]
async fn verify_tls_false_accepts_the_unknown_ca() {
    let pki = pki();
    let meraki = MerakiFake::start_tls(pki.server.clone()).await;
    let mut settings = settings(&meraki.base_url());
    settings.verify_tls = Some(false);
    Providers::new()
        .unwrap()
        .test_connection(
            Provider::Meraki,
            &settings,
            &credentials(json!({"api_key": MERAKI_KEY})),
        )
        .await
        .unwrap();
    assert_eq!(meraki.seen_at("/api/v1/organizations").len(), 1);
}
