//! Tests of the certificate audit, on real certificates and CRLs from the crate's PKI and, for
//! the key types it cannot make, from the openssl CLI.

use std::path::Path;
use std::process::{Command, Stdio};

use super::*;
use crate::identity::{DeviceId, Signer, SoftwareKey};
use crate::pki::{CaOptions, CertificateAuthority, CrlOptions, DeviceCertOptions};

fn days(n: u64) -> Duration {
    Duration::from_secs(n * DAY)
}

fn later(n: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::days(n)
}

/// Root → A → A1, and root → B.
struct Pki {
    root: CertificateAuthority,
    a: CertificateAuthority,
    a1: CertificateAuthority,
    b: CertificateAuthority,
}

fn pki() -> Pki {
    let root =
        CertificateAuthority::new_root(&CaOptions::new("Acme Root").with_path_len(2)).unwrap();
    let a = root
        .new_intermediate(&CaOptions::new("Acme Devices A").with_path_len(1))
        .unwrap();
    let a1 = a
        .new_intermediate(&CaOptions::new("Acme Devices A1"))
        .unwrap();
    let b = root
        .new_intermediate(&CaOptions::new("Acme Devices B"))
        .unwrap();
    Pki { root, a, a1, b }
}

fn issue_for(ca: &CertificateAuthority, device: &str, validity: Duration) -> Certificate {
    let key = SoftwareKey::generate_p256().unwrap();
    ca.issue(
        &DeviceId::new(device).unwrap(),
        key.public_key_spki(),
        &DeviceCertOptions::default().with_validity(validity),
    )
    .unwrap()
}

fn issue(ca: &CertificateAuthority, device: &str) -> Certificate {
    issue_for(ca, device, days(365))
}

fn ca(ca: &CertificateAuthority, status: CaStatus) -> CaEntry {
    CaEntry::new(ca.certificate().clone(), status)
}

fn dev(id: &str, cert: &Certificate, state: CertificateState, device: &str) -> DeviceCertEntry {
    DeviceCertEntry::new(id, cert.clone(), state, device)
}

fn crl(ca: &CertificateAuthority, revoked: &[(&Certificate, RevocationReason)]) -> Crl {
    let revoked = revoked.iter().map(|(c, r)| Revocation::of(c, *r)).collect();
    ca.issue_crl(&CrlOptions::new(1, revoked)).unwrap()
}

/// (check, resource id) of each finding, in order.
fn summary(findings: &[CertificateFinding]) -> Vec<(CertificateCheck, String)> {
    findings
        .iter()
        .map(|f| (f.check, f.resource.id().to_string()))
        .collect()
}

fn only(findings: &[CertificateFinding]) -> &CertificateFinding {
    assert_eq!(findings.len(), 1, "{findings:#?}");
    &findings[0]
}

fn audit(inventory: &FleetInventory) -> Vec<CertificateFinding> {
    audit_fleet(
        inventory,
        &AuditConfig::default(),
        OffsetDateTime::now_utc(),
    )
}

/// A healthy fleet: three devices under A, A1 and B, one revoked certificate (on A's CRL too),
/// one connection each plus one without a certificate, and client-id "conflicts" that are not.
struct Fleet {
    pki: Pki,
    d1: Certificate,
    d2: Certificate,
    d3: Certificate,
    d4: Certificate,
}

fn fleet() -> Fleet {
    let pki = pki();
    Fleet {
        d1: issue(&pki.a, "dev-1"),
        d2: issue(&pki.a1, "dev-2"),
        d3: issue(&pki.b, "dev-3"),
        d4: issue(&pki.a, "dev-4"),
        pki,
    }
}

fn inventory(f: &Fleet) -> FleetInventory {
    let Pki { root, a, a1, b } = &f.pki;
    FleetInventory::new()
        .with_ca(ca(root, CaStatus::Active))
        .with_ca(ca(a, CaStatus::Active))
        .with_ca(ca(a1, CaStatus::Active))
        .with_ca(ca(b, CaStatus::Active))
        .with_device_certificate(dev("c1", &f.d1, CertificateState::Active, "dev-1"))
        .with_device_certificate(dev("c2", &f.d2, CertificateState::Active, "dev-2"))
        .with_device_certificate(dev("c3", &f.d3, CertificateState::Active, "dev-3"))
        .with_device_certificate(dev("c4", &f.d4, CertificateState::Revoked, "dev-4"))
        .with_crl(crl(a, &[(&f.d4, RevocationReason::KeyCompromise)]))
        .with_crl(crl(root, &[]))
        .with_connection(ConnectionEntry::new("dev-1", "dev-1").with_certificate("c1"))
        .with_connection(ConnectionEntry::new("dev-2", "dev-2").with_certificate("c2"))
        .with_connection(ConnectionEntry::new("dev-3", "dev-3").with_certificate("c3"))
        .with_connection(ConnectionEntry::new("app", "dashboard"))
        .with_connection(ConnectionEntry::new("app-2", "dashboard"))
        .with_client_id_conflict(ClientIdConflict::new("dev-1", ["dev-1", "dev-1"], 3))
        .with_client_id_conflict(ClientIdConflict::new("dev-2", ["dev-2", "dev-3"], 0))
}

#[test]
fn a_clean_fleet_has_no_findings() {
    let f = fleet();
    let inv = inventory(&f);
    assert!(audit(&inv).is_empty(), "{:#?}", audit(&inv));
    // Even with the age check on: everything was issued just now.
    let config = AuditConfig::default().with_device_cert_max_age(days(365));
    assert!(audit_fleet(&inv, &config, OffsetDateTime::now_utc()).is_empty());
}

#[test]
fn device_certificates_expiring_and_expired_are_told_apart() {
    let pki = pki();
    let soon = issue_for(&pki.a, "soon", days(10));
    let later_cert = issue_for(&pki.a, "later", days(60));
    let inv = FleetInventory::new()
        .with_ca(ca(&pki.a, CaStatus::Active))
        .with_device_certificate(dev("soon", &soon, CertificateState::Active, "dev-soon"))
        .with_device_certificate(dev(
            "later",
            &later_cert,
            CertificateState::Active,
            "dev-later",
        ))
        .with_device_certificate(dev("off", &soon, CertificateState::Inactive, "dev-off"))
        .with_device_certificate(dev("gone", &soon, CertificateState::Revoked, "dev-gone"));

    let findings = audit(&inv);
    let f = only(&findings);
    assert_eq!(f.check, CertificateCheck::DeviceCertificateExpiring);
    assert_eq!(f.severity, Severity::Medium);
    assert_eq!(f.resource, AuditResource::DeviceCertificate("soon".into()));
    assert_eq!(f.devices, ["dev-soon"]);
    assert_eq!(
        f.reason,
        format!("expires in 10 days ({})", soon.not_after().date())
    );
    assert_eq!(f.reason_code, Some("CERTIFICATE_APPROACHING_EXPIRATION"));
    assert!(f.affected.is_empty());

    // 35 days on, it has expired, and the 60-day one is now within 30 days.
    let findings = audit_fleet(&inv, &AuditConfig::default(), later(35));
    assert_eq!(
        summary(&findings),
        [
            (CertificateCheck::DeviceCertificateExpiring, "later".into()),
            (CertificateCheck::DeviceCertificateExpiring, "soon".into()),
        ]
    );
    assert_eq!(
        findings[0].reason_code,
        Some("CERTIFICATE_APPROACHING_EXPIRATION")
    );
    assert!(findings[0].reason.starts_with("expires in 25 days ("));
    assert_eq!(findings[1].reason_code, Some("CERTIFICATE_PAST_EXPIRATION"));
    assert_eq!(
        findings[1].reason,
        format!("expired 25 days ago ({})", soon.not_after().date())
    );

    // A wider threshold takes the 60-day certificate in today.
    let config = AuditConfig::default().with_device_expiry_threshold(days(90));
    let findings = audit_fleet(&inv, &config, OffsetDateTime::now_utc());
    assert_eq!(findings.len(), 2);
    assert!(findings.iter().all(|f| f.reason.starts_with("expires in")));
}

#[test]
fn ca_certificates_expiring_and_expired() {
    let pki = pki();
    let short = pki
        .root
        .new_intermediate(&CaOptions::new("Short Lived").with_validity(days(20)))
        .unwrap();
    let inv = FleetInventory::new()
        .with_ca(ca(&pki.root, CaStatus::Active))
        .with_ca(ca(&short, CaStatus::Active))
        .with_ca(ca(&short, CaStatus::Inactive).with_id("inactive-copy"));
    let findings = audit(&inv);
    let f = only(&findings);
    assert_eq!(f.check, CertificateCheck::CaCertificateExpiring);
    assert_eq!(f.check.api_name(), "CA_CERTIFICATE_EXPIRING_CHECK");
    assert_eq!(f.severity, Severity::Medium);
    assert_eq!(
        f.resource,
        AuditResource::CaCertificate(short.certificate().fingerprint_sha256())
    );
    assert!(f.devices.is_empty());
    assert_eq!(
        f.reason,
        format!(
            "CN=Short Lived expires in 20 days ({})",
            short.certificate().not_after().date()
        )
    );

    let findings = audit_fleet(&inv, &AuditConfig::default(), later(25));
    let f = only(&findings);
    assert_eq!(f.reason_code, Some("CERTIFICATE_PAST_EXPIRATION"));
    assert!(
        f.reason.starts_with("CN=Short Lived expired 5 days ago ("),
        "{}",
        f.reason
    );

    // The threshold is the CA's own.
    let config = AuditConfig::default().with_ca_expiry_threshold(days(10));
    assert!(audit_fleet(&inv, &config, OffsetDateTime::now_utc()).is_empty());
}

#[test]
fn age_check_runs_only_when_configured() {
    let pki = pki();
    let old = issue_for(&pki.a, "old", days(5 * 365));
    let inv = FleetInventory::new()
        .with_device_certificate(dev("old", &old, CertificateState::Active, "dev-old"))
        .with_device_certificate(dev("old-off", &old, CertificateState::Inactive, "dev-off"));
    let now = later(400);
    assert!(audit_fleet(&inv, &AuditConfig::default(), now).is_empty());

    let config = AuditConfig::default().with_device_cert_max_age(days(365));
    let findings = audit_fleet(&inv, &config, now);
    let f = only(&findings);
    assert_eq!(f.check, CertificateCheck::DeviceCertificateAge);
    assert_eq!(f.severity, Severity::Low);
    assert_eq!(f.devices, ["dev-old"]);
    assert_eq!(f.reason_code, Some("CERTIFICATE_PAST_AGE_THRESHOLD"));
    assert_eq!(
        f.reason,
        format!(
            "issued 400 days ago ({}); the limit is 365 days",
            old.not_before().date()
        )
    );
    // Not yet old enough.
    assert!(audit_fleet(&inv, &config, later(300)).is_empty());
}

#[test]
fn a_certificate_in_concurrent_connections_is_shared() {
    let f = fleet();
    let mut inv = inventory(&f);
    inv.connections
        .push(ConnectionEntry::new("clone", "dev-9").with_certificate("c1"));
    inv.connections
        .push(ConnectionEntry::new("ghost-a", "").with_certificate("ghost"));
    inv.connections
        .push(ConnectionEntry::new("ghost-b", "dev-7").with_certificate("ghost"));
    let findings = audit(&inv);
    assert_eq!(
        summary(&findings),
        [
            (CertificateCheck::DeviceCertificateShared, "c1".into()),
            (CertificateCheck::DeviceCertificateShared, "ghost".into()),
        ]
    );
    let c1 = &findings[0];
    assert_eq!(c1.severity, Severity::Critical);
    assert_eq!(c1.resource, AuditResource::DeviceCertificate("c1".into()));
    assert_eq!(c1.devices, ["dev-1", "dev-9"]);
    assert_eq!(
        c1.reason,
        "2 concurrent connections authenticate with it (client ids clone, dev-1)"
    );
    assert_eq!(
        c1.reason_code,
        Some("CERTIFICATE_SHARED_BY_MULTIPLE_DEVICES")
    );
    // An unregistered certificate is reported too, with the devices the connections named.
    assert_eq!(findings[1].devices, ["dev-7"]);
}

#[test]
fn a_client_id_taken_over_between_devices_conflicts() {
    let f = fleet();
    let mut inv = inventory(&f);
    inv.client_id_conflicts.push(ClientIdConflict::new(
        "sensor",
        ["dev-2", "dev-1", "dev-2"],
        4,
    ));
    inv.client_id_conflicts
        .push(ClientIdConflict::new("once", ["dev-1", "dev-3"], 1));
    let findings = audit(&inv);
    assert_eq!(
        summary(&findings),
        [
            (CertificateCheck::ConflictingClientIds, "once".into()),
            (CertificateCheck::ConflictingClientIds, "sensor".into()),
        ]
    );
    let f = &findings[1];
    assert_eq!(f.severity, Severity::High);
    assert_eq!(f.resource, AuditResource::ClientId("sensor".into()));
    assert_eq!(f.devices, ["dev-1", "dev-2"]);
    assert_eq!(
        f.reason,
        "used by 2 devices (dev-1, dev-2) that took it over from each other 4 times"
    );
    assert_eq!(
        f.reason_code,
        Some("DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS")
    );
    assert!(
        findings[0].reason.ends_with(" 1 time"),
        "{}",
        findings[0].reason
    );
}

#[test]
fn a_revoked_device_certificate_still_active_is_reported() {
    let f = fleet();
    let mut inv = inventory(&f);
    // A revokes dev-1's certificate; the registry still has it ACTIVE. c4 is on the same CRL
    // but REVOKED in the registry: fine.
    inv.crls.push(crl(
        &f.pki.a,
        &[
            (&f.d1, RevocationReason::KeyCompromise),
            (&f.d4, RevocationReason::KeyCompromise),
        ],
    ));
    let findings = audit(&inv);
    let found = only(&findings);
    assert_eq!(
        found.check,
        CertificateCheck::RevokedDeviceCertificateStillActive
    );
    assert_eq!(found.severity, Severity::Medium);
    assert_eq!(
        found.resource,
        AuditResource::DeviceCertificate("c1".into())
    );
    assert_eq!(found.devices, ["dev-1"]);
    assert_eq!(found.reason_code, Some("CERTIFICATE_REVOKED_BY_ISSUER"));
    let today = OffsetDateTime::now_utc().date();
    assert_eq!(
        found.reason,
        format!("on the CRL of CN=Acme Devices A (revoked {today}, keyCompromise) but ACTIVE")
    );

    // A CRL in A's name that A did not sign does not count.
    let forger = CertificateAuthority::new_root(&CaOptions::new("Acme Devices A")).unwrap();
    let mut inv = inventory(&f);
    inv.crls
        .push(crl(&forger, &[(&f.d1, RevocationReason::KeyCompromise)]));
    assert!(audit(&inv).is_empty(), "{:#?}", audit(&inv));

    // A CRL whose issuer is not registered is taken as given.
    let mut inv = inventory(&f);
    inv.cas.retain(|c| c.certificate != *f.pki.a.certificate());
    inv.crls
        .push(crl(&f.pki.a, &[(&f.d1, RevocationReason::Superseded)]));
    let findings = audit(&inv);
    assert_eq!(
        summary(&findings),
        [(
            CertificateCheck::RevokedDeviceCertificateStillActive,
            "c1".into()
        )]
    );
    assert!(findings[0].reason.contains(", superseded)"));
}

#[test]
fn a_revoked_intermediate_lists_exactly_its_active_devices() {
    let f = fleet();
    let a_id = f.pki.a.certificate().fingerprint_sha256();
    let mut inv = inventory(&f);
    let d5 = issue(&f.pki.a1, "dev-5");
    inv.device_certificates
        .push(dev("c5", &d5, CertificateState::Inactive, "dev-5"));
    inv.crls.push(crl(
        &f.pki.root,
        &[(f.pki.a.certificate(), RevocationReason::CaCompromise)],
    ));

    let findings = audit(&inv);
    assert_eq!(
        summary(&findings),
        [
            (
                CertificateCheck::IntermediateCaRevokedForActiveDeviceCertificates,
                a_id.clone()
            ),
            (
                CertificateCheck::RevokedCaCertificateStillActive,
                a_id.clone()
            ),
        ]
    );
    let today = OffsetDateTime::now_utc().date();
    let revoked = &findings[0];
    assert_eq!(revoked.severity, Severity::Critical);
    assert_eq!(
        revoked.reason_code,
        Some("INTERMEDIATE_CA_REVOKED_BY_ISSUER")
    );
    // dev-1 directly under A, dev-2 under A1 below it; not dev-3 (under the sibling B), not
    // c4 (REVOKED) nor c5 (INACTIVE).
    assert_eq!(
        revoked.affected,
        [
            ("c1".to_string(), "dev-1".to_string()),
            ("c2".to_string(), "dev-2".to_string()),
        ]
    );
    assert_eq!(revoked.devices, ["dev-1", "dev-2"]);
    assert_eq!(
        revoked.reason,
        format!(
            "CN=Acme Devices A is on the CRL of CN=Acme Root (revoked {today}, cACompromise), \
             yet 2 ACTIVE device certificates of 2 devices chain to it"
        )
    );
    let still_active = &findings[1];
    assert_eq!(still_active.severity, Severity::Critical);
    assert_eq!(
        still_active.reason_code,
        Some("CERTIFICATE_REVOKED_BY_ISSUER")
    );
    assert_eq!(
        still_active.reason,
        format!(
            "CN=Acme Devices A is on the CRL of CN=Acme Root (revoked {today}, cACompromise) \
             but is ACTIVE"
        )
    );

    // Once A is REVOKED in the registry too, only the device certificates remain to fix.
    for c in &mut inv.cas {
        if c.id == a_id {
            c.status = CaStatus::Revoked;
        }
    }
    let findings = audit(&inv);
    let f2 = only(&findings);
    assert_eq!(
        f2.check,
        CertificateCheck::IntermediateCaRevokedForActiveDeviceCertificates
    );
    assert!(
        f2.reason
            .starts_with("CN=Acme Devices A is REVOKED in the registry and on the CRL of"),
        "{}",
        f2.reason
    );
    assert_eq!(f2.affected, revoked.affected);

    // And once those are revoked, nothing.
    for d in &mut inv.device_certificates {
        if d.id == "c1" || d.id == "c2" {
            d.state = CertificateState::Revoked;
        }
    }
    assert!(audit(&inv).is_empty(), "{:#?}", audit(&inv));
}

#[test]
fn a_ca_revoked_in_the_registry_is_kept_apart_from_a_same_named_sibling() {
    let f = fleet();
    // A second "Acme Devices B" under the root, with its own key and device.
    let b2 = f
        .pki
        .root
        .new_intermediate(&CaOptions::new("Acme Devices B"))
        .unwrap();
    assert_eq!(
        b2.certificate().subject_der(),
        f.pki.b.certificate().subject_der()
    );
    let d6 = issue(&b2, "dev-6");
    let mut inv = inventory(&f)
        .with_ca(ca(&b2, CaStatus::Active))
        .with_device_certificate(dev("c6", &d6, CertificateState::Active, "dev-6"));
    let b_id = f.pki.b.certificate().fingerprint_sha256();
    for c in &mut inv.cas {
        if c.id == b_id {
            c.status = CaStatus::Revoked;
        }
    }
    let findings = audit(&inv);
    let found = only(&findings);
    assert_eq!(
        found.check,
        CertificateCheck::IntermediateCaRevokedForActiveDeviceCertificates
    );
    assert_eq!(found.resource, AuditResource::CaCertificate(b_id));
    assert_eq!(found.affected, [("c3".to_string(), "dev-3".to_string())]);
    assert_eq!(
        found.reason,
        "CN=Acme Devices B is REVOKED in the registry, yet 1 ACTIVE device certificate of 1 \
         device chain to it"
    );
    assert_eq!(
        devices_under_ca(&inv, b2.certificate()),
        [("c6".to_string(), "dev-6".to_string())]
    );
}

#[test]
fn devices_under_ca_follows_registered_cas_down() {
    let f = fleet();
    let inv = inventory(&f);
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(c, d)| (c.to_string(), d.to_string()))
            .collect()
    };
    assert_eq!(
        devices_under_ca(&inv, f.pki.root.certificate()),
        pairs(&[
            ("c1", "dev-1"),
            ("c2", "dev-2"),
            ("c3", "dev-3"),
            ("c4", "dev-4")
        ])
    );
    assert_eq!(
        devices_under_ca(&inv, f.pki.a.certificate()),
        pairs(&[("c1", "dev-1"), ("c2", "dev-2"), ("c4", "dev-4")])
    );
    assert_eq!(
        devices_under_ca(&inv, f.pki.a1.certificate()),
        pairs(&[("c2", "dev-2")])
    );
    assert_eq!(
        devices_under_ca(&inv, f.pki.b.certificate()),
        pairs(&[("c3", "dev-3")])
    );
    // A CA that is not registered is still looked under; a chain through an unregistered CA
    // is not known.
    let mut without_a1 = inventory(&f);
    without_a1
        .cas
        .retain(|c| c.certificate != *f.pki.a1.certificate());
    assert_eq!(
        devices_under_ca(&without_a1, f.pki.a.certificate()),
        pairs(&[("c1", "dev-1"), ("c4", "dev-4")])
    );
    assert_eq!(
        devices_under_ca(&without_a1, f.pki.a1.certificate()),
        pairs(&[("c2", "dev-2")])
    );
    let stranger = CertificateAuthority::new_root(&CaOptions::new("Other Root")).unwrap();
    assert!(devices_under_ca(&inv, stranger.certificate()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Keys

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("the openssl CLI must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA certificate made by openssl with `newkey` (the `-newkey` and `-pkeyopt`
/// arguments of `openssl req`).
fn openssl_ca(dir: &Path, name: &str, newkey: &[&str]) -> Certificate {
    let (key, pem, subject) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={name}"),
    );
    let mut args = vec![
        "req",
        "-x509",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        subject.as_str(),
        "-keyout",
        key.as_str(),
        "-out",
        pem.as_str(),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    args.extend_from_slice(newkey);
    openssl(dir, &args);
    Certificate::from_pem(&std::fs::read_to_string(dir.join(pem)).unwrap()).unwrap()
}

/// The DER SubjectPublicKeyInfo of a new openssl key (`genpkey` arguments).
fn openssl_spki(dir: &Path, name: &str, genpkey: &[&str]) -> Vec<u8> {
    let (key, der) = (format!("{name}.key"), format!("{name}.der"));
    let mut args = vec!["genpkey", "-out", key.as_str()];
    args.extend_from_slice(genpkey);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "pkey", "-in", &key, "-pubout", "-outform", "DER", "-out", &der,
        ],
    );
    std::fs::read(dir.join(der)).unwrap()
}

fn issue_spki(ca: &CertificateAuthority, device: &str, spki: &[u8]) -> Certificate {
    ca.issue(
        &DeviceId::new(device).unwrap(),
        spki,
        &DeviceCertOptions::default(),
    )
    .unwrap()
}

#[test]
fn weak_device_keys_are_critical() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let rsa1024 = openssl_spki(
        dir.path(),
        "r1024",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
    );
    let rsa2048 = openssl_spki(
        dir.path(),
        "r2048",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let p384 = openssl_spki(
        dir.path(),
        "p384",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    );
    let weak = issue_spki(&pki.a, "weak", &rsa1024);
    let inv = FleetInventory::new()
        .with_device_certificate(dev("weak", &weak, CertificateState::Active, "dev-weak"))
        .with_device_certificate(dev(
            "weak-off",
            &weak,
            CertificateState::Inactive,
            "dev-off",
        ))
        .with_device_certificate(dev(
            "rsa",
            &issue_spki(&pki.a, "rsa", &rsa2048),
            CertificateState::Active,
            "dev-rsa",
        ))
        .with_device_certificate(dev(
            "p384",
            &issue_spki(&pki.a, "p384", &p384),
            CertificateState::Active,
            "dev-p384",
        ))
        .with_device_certificate(dev(
            "p256",
            &issue(&pki.a, "p256"),
            CertificateState::Active,
            "dev-p256",
        ));

    let findings = audit(&inv);
    let f = only(&findings);
    assert_eq!(f.check, CertificateCheck::DeviceCertificateKeyQuality);
    assert_eq!(f.check.api_name(), "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK");
    assert_eq!(f.severity, Severity::Critical);
    assert_eq!(f.resource, AuditResource::DeviceCertificate("weak".into()));
    assert_eq!(f.devices, ["dev-weak"]);
    assert_eq!(f.reason, "RSA 1024-bit key (minimum 2048)");

    // Stricter minimums.
    let config = AuditConfig::default()
        .with_min_rsa_bits(3072)
        .with_min_ec_bits(384);
    let findings = audit_fleet(&inv, &config, OffsetDateTime::now_utc());
    let reasons: Vec<(&str, &str)> = findings
        .iter()
        .map(|f| (f.resource.id(), f.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("p256", "ECDSA P-256 key (256-bit curve, minimum 384)"),
            ("rsa", "RSA 2048-bit key (minimum 3072)"),
            ("weak", "RSA 1024-bit key (minimum 3072)"),
        ]
    );
}

#[test]
fn weak_ca_keys_are_critical() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "genpkey",
            "-genparam",
            "-algorithm",
            "DSA",
            "-pkeyopt",
            "dsa_paramgen_bits:1024",
            "-out",
            "dsa.param",
        ],
    );
    let weak = [
        (
            openssl_ca(d, "rsa-1024", &["-newkey", "rsa:1024"]),
            "RSA 1024-bit key (minimum 2048)",
        ),
        (
            openssl_ca(
                d,
                "p-224",
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-224"],
            ),
            "ECDSA P-224 key (224-bit curve, minimum 256)",
        ),
        (
            openssl_ca(
                d,
                "k-256",
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
            ),
            "ECDSA key on secp256k1, a curve AWS IoT does not accept",
        ),
        (
            openssl_ca(d, "dsa", &["-newkey", "dsa:dsa.param"]),
            "DSA key: AWS IoT accepts RSA (2048 bits or more) and ECDSA on P-256, P-384 or P-521",
        ),
        (
            openssl_ca(d, "ed25519", &["-newkey", "ed25519"]),
            "Ed25519 key: AWS IoT accepts RSA (2048 bits or more) and ECDSA on P-256, P-384 or \
             P-521",
        ),
    ];
    let strong = [
        openssl_ca(
            d,
            "p-384",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
        openssl_ca(
            d,
            "p-521",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
        ),
        openssl_ca(d, "rsa-3072", &["-newkey", "rsa:3072"]),
    ];
    let mut inv = FleetInventory::new();
    for (cert, _) in &weak {
        inv.cas.push(CaEntry::new(cert.clone(), CaStatus::Active));
        inv.cas
            .push(CaEntry::new(cert.clone(), CaStatus::Inactive).with_id("inactive"));
    }
    for cert in &strong {
        inv.cas.push(CaEntry::new(cert.clone(), CaStatus::Active));
    }
    let findings = audit(&inv);
    assert_eq!(findings.len(), weak.len(), "{findings:#?}");
    for (cert, reason) in &weak {
        let f = findings
            .iter()
            .find(|f| f.resource == AuditResource::CaCertificate(cert.fingerprint_sha256()))
            .unwrap_or_else(|| panic!("no finding for {}", cert.subject()));
        assert_eq!(f.check, CertificateCheck::CaCertificateKeyQuality);
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(f.reason, format!("{}: {reason}", cert.subject()));
    }
}

/// 65537^k, big-endian.
fn power_of_65537(k: u32) -> Vec<u8> {
    let mut n = vec![1u8];
    for _ in 0..k {
        let mut carry = 0u64;
        for b in n.iter_mut().rev() {
            let v = u64::from(*b) * 65_537 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            n.insert(0, carry as u8);
            carry >>= 8;
        }
    }
    n
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if content.len() < 128 {
        out.push(content.len() as u8);
    } else {
        let len = strip_zeros(&(content.len() as u32).to_be_bytes()).to_vec();
        out.push(0x80 | len.len() as u8);
        out.extend(len);
    }
    out.extend_from_slice(content);
    out
}

/// An RSA SubjectPublicKeyInfo for modulus `n` and exponent `e`.
fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    let int = |v: &[u8]| {
        let mut c = if v[0] & 0x80 != 0 { vec![0] } else { vec![] };
        c.extend_from_slice(v);
        der(0x02, &c)
    };
    let rsa_encryption = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let algorithm = der(0x30, &[der(0x06, &rsa_encryption), der(0x05, &[])].concat());
    let mut bits = vec![0];
    bits.extend(der(0x30, &[int(n), int(e)].concat()));
    der(0x30, &[algorithm, der(0x03, &bits)].concat())
}

#[test]
fn roca_fingerprint_and_bad_exponents_are_weak_rsa_keys() {
    let roca = power_of_65537(128);
    assert!(roca_fingerprint(&roca));
    let mut plus_two = roca.clone();
    *plus_two.last_mut().unwrap() += 2; // 65537^k ends in ...01: no carry
    assert!(!roca_fingerprint(&plus_two));
    assert!(!roca_fingerprint(&[]));

    let pki = pki();
    let e = [0x01, 0x00, 0x01];
    let inv = FleetInventory::new()
        .with_device_certificate(dev(
            "roca",
            &issue_spki(&pki.a, "roca", &rsa_spki(&roca, &e)),
            CertificateState::Active,
            "dev-roca",
        ))
        .with_device_certificate(dev(
            "exp-1",
            &issue_spki(&pki.a, "exp-1", &rsa_spki(&plus_two, &[1])),
            CertificateState::Active,
            "dev-e1",
        ))
        .with_device_certificate(dev(
            "plain",
            &issue_spki(&pki.a, "plain", &rsa_spki(&plus_two, &e)),
            CertificateState::Active,
            "dev-plain",
        ));
    let findings = audit(&inv);
    assert_eq!(
        summary(&findings),
        [
            (
                CertificateCheck::DeviceCertificateKeyQuality,
                "exp-1".into()
            ),
            (CertificateCheck::DeviceCertificateKeyQuality, "roca".into()),
        ]
    );
    assert_eq!(
        findings[0].reason,
        "RSA public exponent 1 (it must be odd and at least 3)"
    );
    assert!(
        findings[1]
            .reason
            .starts_with("RSA key with the ROCA fingerprint (CVE-2017-15361)"),
        "{}",
        findings[1].reason
    );
}

// ---------------------------------------------------------------------------------------------
// Order, text, metadata

#[test]
fn findings_are_sorted_and_deterministic() {
    let f = fleet();
    let soon = issue_for(&f.pki.b, "dev-soon", days(5));
    let mut inv = inventory(&f)
        .with_device_certificate(dev("c-soon", &soon, CertificateState::Active, "dev-soon"))
        .with_connection(ConnectionEntry::new("twin", "dev-3").with_certificate("c3"))
        .with_client_id_conflict(ClientIdConflict::new("x", ["dev-1", "dev-2"], 2))
        .with_crl(crl(&f.pki.b, &[(&f.d3, RevocationReason::KeyCompromise)]));
    let findings = audit(&inv);
    assert_eq!(
        summary(&findings),
        [
            (CertificateCheck::DeviceCertificateShared, "c3".into()),
            (CertificateCheck::ConflictingClientIds, "x".into()),
            (CertificateCheck::DeviceCertificateExpiring, "c-soon".into()),
            (
                CertificateCheck::RevokedDeviceCertificateStillActive,
                "c3".into()
            ),
        ]
    );
    let severities: Vec<Severity> = findings.iter().map(|f| f.severity).collect();
    assert_eq!(
        severities,
        [
            Severity::Critical,
            Severity::High,
            Severity::Medium,
            Severity::Medium
        ]
    );
    assert_eq!(
        findings[2].to_string(),
        format!(
            "MEDIUM DEVICE_CERTIFICATE_EXPIRING_CHECK device certificate c-soon (dev-soon): \
             expires in 5 days ({})",
            soon.not_after().date()
        )
    );
    // The order of the inventory does not matter.
    inv.cas.reverse();
    inv.device_certificates.reverse();
    inv.crls.reverse();
    inv.connections.reverse();
    inv.client_id_conflicts.reverse();
    assert_eq!(audit(&inv), findings);
}

#[test]
fn check_metadata() {
    let names: BTreeSet<&str> = CertificateCheck::ALL.iter().map(|c| c.api_name()).collect();
    assert_eq!(names.len(), CertificateCheck::ALL.len());
    assert!(names.iter().all(|n| n.ends_with("_CHECK")));
    assert!(CertificateCheck::ALL.windows(2).all(|w| w[0] < w[1]));
    let of = |s: Severity| {
        CertificateCheck::ALL
            .iter()
            .filter(|c| c.severity() == s)
            .count()
    };
    assert_eq!(
        (
            of(Severity::Critical),
            of(Severity::High),
            of(Severity::Medium),
            of(Severity::Low)
        ),
        (5, 1, 3, 1)
    );
    assert_eq!(
        CertificateCheck::ConflictingClientIds.to_string(),
        "CONFLICTING_CLIENT_IDS_CHECK"
    );
    assert_eq!(
        AuditResource::ClientId("a".into()).to_string(),
        "client id a"
    );
    let config = AuditConfig::default();
    assert_eq!(config.device_expiry_threshold, days(30));
    assert_eq!(config.ca_expiry_threshold, days(30));
    assert_eq!(config.device_cert_max_age, None);
    assert_eq!((config.min_rsa_bits, config.min_ec_bits), (2048, 256));
}

#[test]
fn spans_are_rounded_to_a_readable_unit() {
    let t = time::Duration::seconds;
    assert_eq!(span(t(12 * 86_400 - 5)), "12 days");
    assert_eq!(span(t(36 * 3600)), "2 days");
    assert_eq!(span(t(30 * 3600)), "30 hours");
    assert_eq!(span(t(3600)), "1 hour");
    assert_eq!(span(t(59)), "1 minute");
    assert_eq!(span(t(10)), "0 minutes");
}
