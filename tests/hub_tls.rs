//! The local hub's trust store through its public API: CA registration and status, CRL
//! acceptance and replacement, revocation answers, change counting, and sharing across threads.
//!
//! The TLS handshakes that read the store (hot swap, CRLs, status hook, expiry, openssl
//! interop) run over loopback sockets in the unit tests of `src/local/tls.rs`, where the
//! crate-private server configuration is reachable.
#![cfg(feature = "local")]

use std::sync::Arc;
use std::thread;

use fleetkit::Error;
use fleetkit::identity::{DeviceId, RcgenKey, Signer, SoftwareKey};
use fleetkit::local::{CaStatus, CertificateStatus, TrustStore};
use fleetkit::pki::{
    CaOptions, Certificate, CertificateAuthority, Crl, CrlOptions, DeviceCertOptions, Revocation,
    RevocationReason,
};

fn root(name: &str) -> CertificateAuthority {
    CertificateAuthority::new_root(&CaOptions::new(name).with_path_len(1)).unwrap()
}

fn device_cert(ca: &CertificateAuthority, id: &str) -> Certificate {
    let key = SoftwareKey::generate_p256().unwrap();
    ca.issue(
        &DeviceId::new(id).unwrap(),
        key.public_key_spki(),
        &DeviceCertOptions::default(),
    )
    .unwrap()
}

fn revoking(number: u64, certs: &[&Certificate]) -> CrlOptions {
    CrlOptions::new(
        number,
        certs
            .iter()
            .map(|c| Revocation::of(c, RevocationReason::KeyCompromise))
            .collect(),
    )
}

#[test]
fn registers_cas_by_fingerprint_and_refuses_non_cas_and_duplicates() {
    let trust = TrustStore::new();
    assert!(trust.cas().is_empty());
    assert_eq!(trust.generation(), 0);

    let a = root("Fleet A");
    let b = root("Fleet B");
    let issuing = a
        .new_intermediate(&CaOptions::new("Fleet A Devices"))
        .unwrap();
    trust.register_ca(a.certificate().clone()).unwrap();
    trust
        .register_ca_with_status(b.certificate().clone(), CaStatus::Inactive)
        .unwrap();
    trust.register_ca(issuing.certificate().clone()).unwrap();
    assert_eq!(trust.generation(), 3);

    let listed = trust.cas();
    assert_eq!(
        listed,
        vec![
            (a.certificate().clone(), CaStatus::Active),
            (b.certificate().clone(), CaStatus::Inactive),
            (issuing.certificate().clone(), CaStatus::Active),
        ]
    );
    let id = b.certificate().fingerprint_sha256();
    assert_eq!(
        trust.ca(&id),
        Some((b.certificate().clone(), CaStatus::Inactive))
    );
    assert_eq!(trust.ca("00"), None);

    // A device certificate is not a CA.
    let leaf = device_cert(&a, "sensor-1");
    match trust.register_ca(leaf) {
        Err(Error::InvalidInput { field, reason }) => {
            assert_eq!(field, "CA certificate");
            assert!(reason.contains("not a CA"), "{reason}");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    // Registering again, whatever the status asked for, is refused by id.
    match trust.register_ca_with_status(a.certificate().clone(), CaStatus::Revoked) {
        Err(Error::AlreadyExists { what, id }) => {
            assert_eq!(what, "CA certificate");
            assert_eq!(id, a.certificate().fingerprint_sha256());
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // Failures changed nothing.
    assert_eq!(trust.cas(), listed);
    assert_eq!(trust.generation(), 3);
}

#[test]
fn a_ca_without_key_cert_sign_is_refused() {
    // Made with rcgen directly: fleetkit's own CAs always carry keyCertSign.
    let key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256().unwrap());
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Odd CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&RcgenKey::new(key).unwrap()).unwrap();
    let trust = TrustStore::new();
    assert!(matches!(
        trust.register_ca(Certificate::from_der(cert.der()).unwrap()),
        Err(Error::InvalidInput { .. })
    ));
    assert!(trust.cas().is_empty());
}

#[test]
fn set_ca_status_changes_only_registered_cas() {
    let trust = TrustStore::new();
    let ca = root("Fleet");
    let id = ca.certificate().fingerprint_sha256();
    trust.register_ca(ca.certificate().clone()).unwrap();

    match trust.set_ca_status("feedface", CaStatus::Revoked) {
        Err(Error::NotFound { what, id }) => {
            assert_eq!(what, "CA certificate");
            assert_eq!(id, "feedface");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(trust.generation(), 1);

    // Setting the status it has is no change.
    trust.set_ca_status(&id, CaStatus::Active).unwrap();
    assert_eq!(trust.generation(), 1);

    for (status, generation) in [
        (CaStatus::Inactive, 2),
        (CaStatus::Active, 3),
        (CaStatus::Revoked, 4),
    ] {
        trust.set_ca_status(&id, status).unwrap();
        assert_eq!(trust.cas()[0].1, status);
        assert_eq!(trust.generation(), generation);
    }
    // A REVOKED CA reads as revoked.
    assert!(trust.is_revoked(ca.certificate()));
}

#[test]
fn a_crl_is_accepted_only_from_a_registered_ca() {
    let trust = TrustStore::new();
    let ca = root("Fleet Root");
    let dev = device_cert(&ca, "sensor-1");
    let crl = ca.issue_crl(&revoking(1, &[&dev])).unwrap();

    // Nobody registered vouches for it.
    assert!(matches!(
        trust.add_crl(crl.clone()),
        Err(Error::Unauthenticated(_))
    ));
    // An impostor CA with the same name (another key) registered: still refused.
    let impostor = root("Fleet Root");
    trust.register_ca(impostor.certificate().clone()).unwrap();
    match trust.add_crl(crl.clone()) {
        Err(Error::Unauthenticated(reason)) => {
            assert!(reason.contains("Fleet Root"), "{reason}")
        }
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
    assert!(trust.crls().is_empty());
    assert!(!trust.is_revoked(&dev));
    let generation = trust.generation();

    // The real issuer registered, even INACTIVE, vouches for it.
    trust
        .register_ca_with_status(ca.certificate().clone(), CaStatus::Inactive)
        .unwrap();
    trust.add_crl(crl).unwrap();
    assert_eq!(trust.generation(), generation + 2);
    assert!(trust.is_revoked(&dev));
    assert!(!trust.is_revoked(&device_cert(&ca, "sensor-2")));
    // The impostor's devices are not on the real CA's list (same issuer name, other serials).
    assert!(!trust.is_revoked(&device_cert(&impostor, "sensor-3")));
}

#[test]
fn a_newer_crl_replaces_the_held_one_and_an_older_one_is_refused() {
    let trust = TrustStore::new();
    let ca = root("Fleet Root");
    trust.register_ca(ca.certificate().clone()).unwrap();
    let first = device_cert(&ca, "sensor-1");
    let second = device_cert(&ca, "sensor-2");

    let crl5 = ca.issue_crl(&revoking(5, &[&first])).unwrap();
    trust.add_crl(crl5.clone()).unwrap();
    let generation = trust.generation();

    // The same CRL again: accepted, nothing changes.
    trust.add_crl(crl5.clone()).unwrap();
    assert_eq!(trust.generation(), generation);

    // Lower or equal numbers are stale, even if they list more.
    for stale in [4, 5] {
        match trust.add_crl(ca.issue_crl(&revoking(stale, &[&first, &second])).unwrap()) {
            Err(Error::Precondition(reason)) => {
                assert!(reason.contains("not newer"), "{reason}")
            }
            other => panic!("CRL number {stale}: expected Precondition, got {other:?}"),
        }
    }
    assert_eq!(trust.generation(), generation);
    assert!(!trust.is_revoked(&second));
    assert_eq!(trust.crls().len(), 1);
    assert_eq!(trust.crls()[0].der(), crl5.der());

    // A higher number replaces it: the newest list is the whole truth (sensor-1's hold lifted).
    trust
        .add_crl(ca.issue_crl(&revoking(300, &[&second])).unwrap())
        .unwrap();
    assert_eq!(trust.generation(), generation + 1);
    assert_eq!(trust.crls().len(), 1);
    assert!(!trust.is_revoked(&first));
    assert!(trust.is_revoked(&second));

    // Another issuer's CRL is held beside it.
    let other = root("Other Root");
    trust.register_ca(other.certificate().clone()).unwrap();
    trust
        .add_crl(other.issue_crl(&revoking(1, &[])).unwrap())
        .unwrap();
    assert_eq!(trust.crls().len(), 2);
}

#[test]
fn a_ca_listed_on_its_parents_crl_is_revoked() {
    let trust = TrustStore::new();
    let root = root("Fleet Root");
    let issuing = root
        .new_intermediate(&CaOptions::new("Fleet Devices"))
        .unwrap();
    trust.register_ca(root.certificate().clone()).unwrap();
    trust.register_ca(issuing.certificate().clone()).unwrap();
    assert!(!trust.is_revoked(issuing.certificate()));
    trust
        .add_crl(
            root.issue_crl(&CrlOptions::new(
                1,
                vec![Revocation::of(
                    issuing.certificate(),
                    RevocationReason::CaCompromise,
                )],
            ))
            .unwrap(),
        )
        .unwrap();
    assert!(trust.is_revoked(issuing.certificate()));
    assert!(!trust.is_revoked(root.certificate()));
}

#[test]
fn a_crl_from_a_ca_without_crl_sign_is_refused() {
    // A CA with keyUsage keyCertSign but not cRLSign: rustls would reject its CRLs at every
    // handshake, so the store refuses them up front. fleetkit's CAs always carry cRLSign, and
    // rcgen checks the issuer's key usage, so the CRL is signed through an issuer whose
    // parameters omit the extension (same name, same key).
    let key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256().unwrap());
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "No CRL CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let cert = params
        .self_signed(&RcgenKey::new(key.clone()).unwrap())
        .unwrap();
    params.key_usages = Vec::new();
    let issuer = rcgen::Issuer::new(params, RcgenKey::new(key).unwrap());
    let now = time::OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    let crl = Crl::from_der(crl.der()).unwrap();

    let trust = TrustStore::new();
    let ca = Certificate::from_der(cert.der()).unwrap();
    crl.verify_signature(&ca).unwrap();
    trust.register_ca(ca).unwrap();
    let generation = trust.generation();
    match trust.add_crl(crl) {
        Err(Error::InvalidInput { field, reason }) => {
            assert_eq!(field, "crl");
            assert!(reason.contains("cRLSign"), "{reason}");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert!(trust.crls().is_empty());
    assert_eq!(trust.generation(), generation);
}

#[derive(Debug)]
struct AllowAll;

impl CertificateStatus for AllowAll {
    fn check(&self, _leaf: &Certificate) -> Result<(), rustls::CertificateError> {
        Ok(())
    }
}

#[test]
fn the_status_hook_is_a_change_too() {
    let trust = TrustStore::new();
    trust.set_status_hook(Arc::new(AllowAll));
    assert_eq!(trust.generation(), 1);
    assert!(format!("{trust:?}").contains("AllowAll"));
    trust.clear_status_hook();
    assert_eq!(trust.generation(), 2);
    assert!(!format!("{trust:?}").contains("AllowAll"));
}

#[test]
fn statuses_read_as_aws_writes_them() {
    assert_eq!(CaStatus::Active.to_string(), "ACTIVE");
    assert_eq!(CaStatus::Inactive.as_str(), "INACTIVE");
    assert_eq!(CaStatus::Revoked.to_string(), "REVOKED");
}

#[test]
fn the_store_is_shared_across_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Arc<TrustStore>>();

    let trust = Arc::new(TrustStore::new());
    let cas: Vec<CertificateAuthority> = (0..8).map(|i| root(&format!("CA {i}"))).collect();
    let certs: Vec<Certificate> = cas.iter().map(|c| c.certificate().clone()).collect();
    let writers: Vec<_> = certs
        .iter()
        .cloned()
        .map(|cert| {
            let trust = trust.clone();
            thread::spawn(move || {
                let id = cert.fingerprint_sha256();
                trust.register_ca(cert).unwrap();
                for status in [CaStatus::Inactive, CaStatus::Active, CaStatus::Revoked] {
                    trust.set_ca_status(&id, status).unwrap();
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let trust = trust.clone();
            let certs = certs.clone();
            thread::spawn(move || {
                let mut last = 0;
                for _ in 0..200 {
                    let generation = trust.generation();
                    assert!(generation >= last, "the generation never goes back");
                    last = generation;
                    assert!(trust.cas().len() <= certs.len());
                    let _ = trust.is_revoked(&certs[0]);
                }
            })
        })
        .collect();
    for t in writers.into_iter().chain(readers) {
        t.join().unwrap();
    }
    // 8 registrations and 3 changes each.
    assert_eq!(trust.generation(), 32);
    let listed = trust.cas();
    assert_eq!(listed.len(), 8);
    assert!(listed.iter().all(|(_, s)| *s == CaStatus::Revoked));
    assert!(certs.iter().all(|c| trust.is_revoked(c)));
}
