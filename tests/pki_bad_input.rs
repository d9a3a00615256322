//! Bad input to the identity and PKI APIs: every case is a typed error, never a panic, and
//! nothing is half-made.

use std::sync::Arc;
use std::time::Duration;

use fleetkit::identity::{
    DeviceId, RcgenKey, SignatureScheme, Signer, SoftwareKey, SymmetricKey, X509Credential,
};
use fleetkit::pki::{
    CaOptions, Certificate, CertificateAuthority, ChainError, ChainVerifier, Crl, CrlOptions,
    DeviceCertOptions, DeviceCsr, build_csr,
};
use fleetkit::{Error, Result};
use time::OffsetDateTime;

fn field_of(e: &Error) -> &str {
    match e {
        Error::InvalidInput { field, .. } => field,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

fn sample() -> Result<(CertificateAuthority, Certificate, Arc<dyn Signer>)> {
    let root = CertificateAuthority::new_root(&CaOptions::new("Bad Input Root"))?;
    let key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256()?);
    let cert = root.issue(
        &DeviceId::new("dev-1")?,
        key.public_key_spki(),
        &DeviceCertOptions::default(),
    )?;
    Ok((root, cert, key))
}

#[test]
fn malformed_and_truncated_certificates() -> Result<()> {
    let (_, cert, _) = sample()?;
    let der = cert.der().as_ref();
    for cut in [0, 1, 10, der.len() / 2, der.len() - 1] {
        let e = Certificate::from_der(&der[..cut]).unwrap_err();
        assert_eq!(field_of(&e), "certificate", "cut at {cut}");
    }
    let mut trailing = der.to_vec();
    trailing.push(0);
    assert!(
        Certificate::from_der(&trailing)
            .unwrap_err()
            .to_string()
            .contains("trailing")
    );
    let pem = cert.to_pem();
    let truncated = &pem[..pem.len() / 2];
    assert_eq!(
        field_of(&Certificate::from_pem(truncated).unwrap_err()),
        "certificate"
    );
    assert_eq!(
        field_of(&Certificate::from_pem("not pem at all").unwrap_err()),
        "certificate"
    );
    let garbage_b64 = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert_eq!(
        field_of(&Certificate::from_pem(garbage_b64).unwrap_err()),
        "certificate"
    );
    Ok(())
}

#[test]
fn malformed_keys() -> Result<()> {
    let key = SoftwareKey::generate_p256()?;
    let pem = key.to_pkcs8_pem()?;
    assert_eq!(
        field_of(&SoftwareKey::from_pem(&pem[..pem.len() - 40]).unwrap_err()),
        "private key"
    );
    assert_eq!(
        field_of(&SoftwareKey::from_pem("").unwrap_err()),
        "private key"
    );
    let der = key.to_pkcs8_der();
    assert_eq!(
        field_of(&SoftwareKey::from_pkcs8_der(&der[..der.len() - 3]).unwrap_err()),
        "private key"
    );
    assert_eq!(
        field_of(&SoftwareKey::from_sec1_der(&[0x30, 0x03, 0x02, 0x01, 0x01]).unwrap_err()),
        "private key"
    );
    assert_eq!(
        field_of(&SoftwareKey::from_pkcs1_der(b"junk").unwrap_err()),
        "private key"
    );
    let encrypted =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
    assert!(matches!(
        SoftwareKey::from_pem(encrypted),
        Err(Error::NotSupported(_))
    ));
    // A certificate is not a key.
    let (_, cert, _) = sample()?;
    assert_eq!(
        field_of(&SoftwareKey::from_pem(&cert.to_pem()).unwrap_err()),
        "private key"
    );
    // Unsupported scheme for the key type.
    assert!(matches!(
        key.sign(SignatureScheme::RsaPssSha256, b"x"),
        Err(Error::NotSupported(_))
    ));
    assert_eq!(
        field_of(&SymmetricKey::from_base64("%%%").unwrap_err()),
        "symmetric key"
    );
    assert_eq!(
        field_of(&SymmetricKey::from_base64("").unwrap_err()),
        "symmetric key"
    );
    Ok(())
}

#[test]
fn key_that_does_not_match_its_certificate() -> Result<()> {
    let (root, cert, _) = sample()?;
    let other: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256()?);
    let e = X509Credential::new(vec![cert.der().clone()], other.clone()).unwrap_err();
    assert_eq!(field_of(&e), "private key");
    // The same for a CA import: a CA certificate with someone else's key.
    let e =
        CertificateAuthority::from_parts(root.certificate().clone(), vec![], other).unwrap_err();
    assert_eq!(field_of(&e), "private key");
    // A device certificate is not a CA.
    let e = CertificateAuthority::from_parts(cert, vec![], root.signer().clone()).unwrap_err();
    assert_eq!(field_of(&e), "CA certificate");
    assert!(X509Credential::new(vec![], root.signer().clone()).is_err());
    Ok(())
}

#[test]
fn csr_with_a_bad_signature() -> Result<()> {
    let key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256()?);
    let csr = build_csr(key, &DeviceId::new("dev-csr")?)?;
    let mut der = csr.der().to_vec();
    // Flip a bit inside the CN value ("dev-csr" → "dev-csq"): the structure stays valid, the
    // signature no longer matches.
    let at = der.windows(7).position(|w| w == b"dev-csr").unwrap() + 6;
    der[at] ^= 0x01;
    let e = DeviceCsr::from_der(&der).unwrap_err();
    assert_eq!(field_of(&e), "csr");
    assert!(e.to_string().contains("signature"), "{e}");
    // Truncated and garbage.
    assert_eq!(
        field_of(&DeviceCsr::from_der(&csr.der()[..20]).unwrap_err()),
        "csr"
    );
    assert_eq!(
        field_of(
            &DeviceCsr::from_pem(
                "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"
            )
            .unwrap_err()
        ),
        "csr"
    );
    Ok(())
}

#[test]
fn csr_asking_for_ca_true_is_refused() -> Result<()> {
    let key = Arc::new(SoftwareKey::generate_p256()?);
    let mut params =
        rcgen::CertificateParams::new(vec![]).map_err(|e| Error::Crypto(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "dev-ca");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = params
        .serialize_request(&RcgenKey::new(key)?)
        .map_err(|e| Error::Crypto(e.to_string()))?;
    let e = DeviceCsr::from_der(csr.der().as_ref()).unwrap_err();
    assert_eq!(field_of(&e), "csr");
    assert!(e.to_string().contains("CA:TRUE"), "{e}");
    Ok(())
}

#[test]
fn expired_issuer_cannot_issue() -> Result<()> {
    // An expired CA made directly with rcgen (fleetkit never makes one).
    let key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256()?);
    let mut params =
        rcgen::CertificateParams::new(vec![]).map_err(|e| Error::Crypto(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Expired CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.not_before = OffsetDateTime::now_utc() - time::Duration::days(30);
    params.not_after = OffsetDateTime::now_utc() - time::Duration::days(1);
    let cert = params
        .self_signed(&RcgenKey::new(key.clone())?)
        .map_err(|e| Error::Crypto(e.to_string()))?;
    let ca = CertificateAuthority::from_parts(Certificate::from_der(cert.der())?, vec![], key)?;
    let device_key = SoftwareKey::generate_p256()?;
    let e = ca
        .issue(
            &DeviceId::new("dev-late")?,
            device_key.public_key_spki(),
            &DeviceCertOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Expired(_)), "{e}");
    assert!(matches!(
        ca.new_intermediate(&CaOptions::new("late")),
        Err(Error::Expired(_))
    ));
    Ok(())
}

#[test]
fn device_validity_never_exceeds_the_issuer() -> Result<()> {
    let root = CertificateAuthority::new_root(
        &CaOptions::new("Short Root").with_validity(Duration::from_secs(10 * 86_400)),
    )?;
    let key = SoftwareKey::generate_p256()?;
    let cert = root.issue(
        &DeviceId::new("dev-long")?,
        key.public_key_spki(),
        &DeviceCertOptions::default().with_validity(Duration::from_secs(5 * 365 * 86_400)),
    )?;
    assert_eq!(cert.not_after(), root.certificate().not_after());
    assert!(cert.not_before() >= root.certificate().not_before());
    Ok(())
}

#[test]
fn path_length_is_enforced_when_creating_intermediates() -> Result<()> {
    let root = CertificateAuthority::new_root(&CaOptions::new("Root pl1").with_path_len(1))?;
    let ica = root.new_intermediate(&CaOptions::new("ICA pl0"))?;
    assert_eq!(ica.certificate().path_len(), Some(0));
    let e = ica
        .new_intermediate(&CaOptions::new("too deep"))
        .unwrap_err();
    assert_eq!(field_of(&e), "path_len");
    let e = root
        .new_intermediate(&CaOptions::new("as wide as parent").with_path_len(1))
        .unwrap_err();
    assert_eq!(field_of(&e), "path_len");
    Ok(())
}

#[test]
fn chain_verification_reasons() -> Result<()> {
    let root = CertificateAuthority::new_root(&CaOptions::new("Chain Root").with_path_len(1))?;
    let ica = root.new_intermediate(&CaOptions::new("Chain ICA"))?;
    let key = SoftwareKey::generate_p256()?;
    let leaf = ica.issue(
        &DeviceId::new("dev-chain")?,
        key.public_key_spki(),
        &DeviceCertOptions::default(),
    )?;
    let verifier = ChainVerifier::new(&[root.certificate().clone()])?;
    let chain = [ica.certificate().clone()];

    verifier
        .verify(&leaf, &chain)
        .expect("a good chain verifies");
    assert_eq!(verifier.verify(&leaf, &[]), Err(ChainError::UnknownIssuer));
    let later = verifier
        .clone()
        .at(leaf.not_after() + time::Duration::days(1));
    assert!(matches!(
        later.verify(&leaf, &chain),
        Err(ChainError::Expired { .. })
    ));
    assert!(matches!(
        Error::from(later.verify(&leaf, &chain).unwrap_err()),
        Error::Expired(_)
    ));
    let earlier = verifier
        .clone()
        .at(leaf.not_before() - time::Duration::days(1));
    assert!(matches!(
        earlier.verify(&leaf, &chain),
        Err(ChainError::NotYetValid { .. })
    ));
    // A CA presented as a device.
    assert_eq!(
        verifier.verify(ica.certificate(), &[]),
        Err(ChainError::CaUsedAsLeaf)
    );
    // Another root does not vouch for it.
    let other = CertificateAuthority::new_root(&CaOptions::new("Chain Root"))?;
    let stranger = ChainVerifier::new(&[other.certificate().clone()])?;
    assert!(matches!(
        stranger.verify(&leaf, &chain),
        Err(ChainError::UnknownIssuer | ChainError::BadSignature)
    ));
    Ok(())
}

#[test]
fn crl_bad_input() -> Result<()> {
    let (root, _, _) = sample()?;
    let crl = root.issue_crl(&CrlOptions::new(1, vec![]))?;
    let der = crl.der();
    assert_eq!(
        field_of(&Crl::from_der(&der[..der.len() - 5]).unwrap_err()),
        "crl"
    );
    assert_eq!(field_of(&Crl::from_pem("nope").unwrap_err()), "crl");
    let mut backwards = CrlOptions::new(2, vec![]);
    backwards.next_update = backwards.this_update - time::Duration::hours(1);
    assert_eq!(
        field_of(&root.issue_crl(&backwards).unwrap_err()),
        "next_update"
    );
    // A CRL checked against the wrong CA is not authenticated.
    let other = CertificateAuthority::new_root(&CaOptions::new("Other"))?;
    assert!(matches!(
        crl.verify_signature(other.certificate()),
        Err(Error::Unauthenticated(_))
    ));
    Ok(())
}

#[test]
fn secrets_stay_out_of_debug_output() -> Result<()> {
    let key = SoftwareKey::generate_p256()?;
    let pkcs8 = key.to_pkcs8_pem()?;
    let secret_line = pkcs8.lines().nth(1).unwrap().to_string();
    let debug = format!("{key:?}");
    assert!(!debug.contains(&secret_line[..20]), "{debug}");
    assert!(debug.contains("public_key_sha256"), "{debug}");
    let sym = SymmetricKey::from_base64("NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=")?;
    assert!(!format!("{sym:?}").contains("NMgJ"));
    let root = CertificateAuthority::new_root(&CaOptions::new("Debug Root"))?;
    let ca_debug = format!("{root:?}");
    assert!(
        ca_debug.contains("Debug Root") && !ca_debug.contains("PRIVATE"),
        "{ca_debug}"
    );
    Ok(())
}
