//! Mutual TLS over real loopback sockets: any `Signer` authenticates a device through the
//! `ClientIdentity` adapter, and a rustls server verifies it against the PKI's root (and CRL).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

use fleetkit::identity::{ClientIdentity, DeviceId, Signer, SoftwareKey, X509Credential};
use fleetkit::pki::{
    CaOptions, CertificateAuthority, Crl, CrlOptions, DeviceCertOptions, Revocation,
    RevocationReason,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Pki {
    root: CertificateAuthority,
    issuing: CertificateAuthority,
    server_cert: Vec<CertificateDer<'static>>,
    server_key: SoftwareKey,
}

fn pki() -> Pki {
    let root =
        CertificateAuthority::new_root(&CaOptions::new("TLS Root").with_path_len(1)).unwrap();
    let issuing = root
        .new_intermediate(&CaOptions::new("TLS Devices"))
        .unwrap();
    // The server's certificate is made with rcgen directly: fleetkit's CA issues client certs.
    let server_key = SoftwareKey::generate_p256().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let server_root_key = fleetkit::identity::RcgenKey::new(root.signer().clone()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_der(root.certificate().der(), server_root_key).unwrap();
    let cert = params
        .signed_by(
            &fleetkit::identity::RcgenKey::new(Arc::new(
                SoftwareKey::from_pkcs8_der(&server_key.to_pkcs8_der()).unwrap(),
            ))
            .unwrap(),
            &issuer,
        )
        .unwrap();
    Pki {
        root,
        issuing,
        server_cert: vec![cert.der().clone()],
        server_key,
    }
}

/// Runs one TLS server accept on a loopback port; returns the client's leaf CN, or the error.
fn serve_once(pki: &Pki, crls: Vec<Crl>) -> (u16, thread::JoinHandle<Result<String, String>>) {
    let mut roots = RootCertStore::empty();
    roots.add(pki.root.certificate().der().clone()).unwrap();
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if !crls.is_empty() {
        verifier = verifier
            .with_crls(crls.iter().map(|c| c.der().to_vec().into()))
            .allow_unknown_revocation_status();
    }
    let verifier = verifier.build().unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(pki.server_key.to_pkcs8_der().to_vec()).unwrap();
    let config = Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(pki.server_cert.clone(), key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (mut tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        let mut conn = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
        }
        let peer = conn.peer_certificates().ok_or("no client certificate")?[0].clone();
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        tls.write_all(b"hello device").map_err(|e| e.to_string())?;
        tls.flush().map_err(|e| e.to_string())?;
        let cert =
            fleetkit::pki::Certificate::from_der(peer.as_ref()).map_err(|e| e.to_string())?;
        Ok(cert.subject_common_name().unwrap_or_default().to_string())
    });
    (port, handle)
}

fn connect(
    pki: &Pki,
    port: u16,
    credential: &X509Credential,
    tls13: bool,
) -> Result<String, String> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.root.certificate().der().clone()).unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12]
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(ClientIdentity::new(credential).unwrap()));
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let mut buf = [0u8; 12];
    tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn credential(pki: &Pki, id: &str, signer: Arc<dyn Signer>) -> X509Credential {
    let cert = pki
        .issuing
        .issue(
            &DeviceId::new(id).unwrap(),
            signer.public_key_spki(),
            &DeviceCertOptions::default(),
        )
        .unwrap();
    let chain = vec![cert.der().clone(), pki.issuing.certificate().der().clone()];
    X509Credential::new(chain, signer).unwrap()
}

fn rsa_key() -> Arc<dyn Signer> {
    // A 2048-bit PKCS#1 key as AWS hands them out; generated once by openssl for this test.
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out", "k.pem", "2048"])
        .current_dir(dir.path())
        .status()
        .expect("openssl CLI (installed by .ci/run)");
    assert!(status.success());
    Arc::new(
        SoftwareKey::from_pem(&std::fs::read_to_string(dir.path().join("k.pem")).unwrap()).unwrap(),
    )
}

#[test]
fn p256_and_rsa_devices_authenticate_over_tls12_and_tls13() {
    let pki = pki();
    let p256 = credential(
        &pki,
        "dev-p256",
        Arc::new(SoftwareKey::generate_p256().unwrap()),
    );
    let rsa = credential(&pki, "dev-rsa", rsa_key());
    for (cred, cn) in [(&p256, "dev-p256"), (&rsa, "dev-rsa")] {
        for tls13 in [true, false] {
            let (port, server) = serve_once(&pki, vec![]);
            let got = connect(&pki, port, cred, tls13);
            assert_eq!(got.as_deref(), Ok("hello device"), "{cn} tls13={tls13}");
            assert_eq!(server.join().unwrap().as_deref(), Ok(cn));
        }
    }
}

#[test]
fn revoked_device_is_refused_by_a_crl_aware_server() {
    let pki = pki();
    let cred = credential(
        &pki,
        "dev-revoked",
        Arc::new(SoftwareKey::generate_p256().unwrap()),
    );
    let crl = pki
        .issuing
        .issue_crl(&CrlOptions::new(
            2,
            vec![Revocation::of(cred.leaf(), RevocationReason::KeyCompromise)],
        ))
        .unwrap();
    let (port, server) = serve_once(&pki, vec![crl]);
    let _ = connect(&pki, port, &cred, true);
    let err = server.join().unwrap().unwrap_err();
    assert!(err.contains("Revoked"), "{err}");

    // Another device from the same CA still gets in with the same CRL.
    let other = credential(
        &pki,
        "dev-fine",
        Arc::new(SoftwareKey::generate_p256().unwrap()),
    );
    let crl = pki
        .issuing
        .issue_crl(&CrlOptions::new(
            3,
            vec![Revocation::of(cred.leaf(), RevocationReason::KeyCompromise)],
        ))
        .unwrap();
    let (port, server) = serve_once(&pki, vec![crl]);
    assert_eq!(
        connect(&pki, port, &other, true).as_deref(),
        Ok("hello device")
    );
    assert_eq!(server.join().unwrap().as_deref(), Ok("dev-fine"));
}

#[test]
fn a_device_from_another_ca_is_refused() {
    let pki = pki();
    let stranger = CertificateAuthority::new_root(&CaOptions::new("Stranger Root")).unwrap();
    let key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256().unwrap());
    let cert = stranger
        .issue(
            &DeviceId::new("intruder").unwrap(),
            key.public_key_spki(),
            &DeviceCertOptions::default(),
        )
        .unwrap();
    let cred = X509Credential::new(vec![cert.der().clone()], key).unwrap();
    let (port, server) = serve_once(&pki, vec![]);
    let _ = connect(&pki, port, &cred, true);
    let err = server.join().unwrap().unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused_before_any_handshake() {
    let pki = pki();
    let cred = credential(
        &pki,
        "dev-a",
        Arc::new(SoftwareKey::generate_p256().unwrap()),
    );
    let wrong: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256().unwrap());
    let err = ClientIdentity::from_parts(cred.chain().to_vec(), wrong.clone()).unwrap_err();
    assert!(
        matches!(err, fleetkit::Error::InvalidInput { ref field, .. } if field == "private key"),
        "{err}"
    );
    let err = X509Credential::new(cred.chain().to_vec(), wrong).unwrap_err();
    assert!(
        matches!(err, fleetkit::Error::InvalidInput { ref field, .. } if field == "private key"),
        "{err}"
    );
}
