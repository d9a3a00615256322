//! Offline certificate audit: AWS IoT Device Defender's certificate and connection checks, run
//! on an inventory of the fleet — no cloud account needed.
//!
//! A caller gathers a [`FleetInventory`]: the registered CA certificates with their
//! [`CaStatus`], the device certificates with their [`CertificateState`] and device, the CRLs it
//! knows, the live connections and the recent client-id conflicts. The local hub builds one from
//! its registry and connection table; a cloud backend from its list APIs. [`audit_fleet`] then
//! returns [`CertificateFinding`]s, most severe first; [`devices_under_ca`] lists the device
//! certificates a CA's revocation affects, for the revocation flow to re-provision.
//!
//! The policy checks of the same service are in [`policy::audit`](crate::policy::audit); both
//! use its [`Severity`].
//!
//! # Checks
//!
//! | [`CertificateCheck`] (AWS check id) | severity | when |
//! |---|---|---|
//! | `INTERMEDIATE_CA_REVOKED_FOR_ACTIVE_DEVICE_CERTIFICATES_CHECK` | Critical | a registered CA is REVOKED, or is on a CRL of its issuer, and ACTIVE device certificates chain to it — issued by it, or by a registered CA below it. The finding lists them in [`affected`](CertificateFinding::affected) |
//! | `REVOKED_CA_CERTIFICATE_STILL_ACTIVE_CHECK` | Critical | a registered CA is on a CRL of its issuer but still ACTIVE |
//! | `DEVICE_CERTIFICATE_SHARED_CHECK` | Critical | one device certificate authenticates two or more live connections at once |
//! | `DEVICE_CERTIFICATE_KEY_QUALITY_CHECK` | Critical | an ACTIVE device certificate has a weak key (below) |
//! | `CA_CERTIFICATE_KEY_QUALITY_CHECK` | Critical | an ACTIVE CA certificate has a weak key |
//! | `CA_CERTIFICATE_EXPIRING_CHECK` | Medium | an ACTIVE CA certificate expires within [`ca_expiry_threshold`](AuditConfig::ca_expiry_threshold) (30 days) or has expired |
//! | `CONFLICTING_CLIENT_IDS_CHECK` | High | a client id was used by two or more distinct devices or certificates, which took it over from each other |
//! | `DEVICE_CERTIFICATE_EXPIRING_CHECK` | Medium | an ACTIVE device certificate expires within [`device_expiry_threshold`](AuditConfig::device_expiry_threshold) (30 days) or has expired |
//! | `DEVICE_CERTIFICATE_AGE_CHECK` | Low | only when [`device_cert_max_age`](AuditConfig::device_cert_max_age) is set (off by default, as in AWS): an ACTIVE device certificate was issued (notBefore) at least that long ago |
//! | `REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK` | Medium | a device certificate is on a CRL of its issuer but still ACTIVE |
//!
//! Severities are AWS's: those in SECURITY.md §6, and Medium (both expiring checks and the
//! revoked device certificate) and Low (age) from the checks' own pages. As in AWS, the checks of
//! a certificate's own properties (expiry, age, key) look at ACTIVE certificates only: INACTIVE
//! ones cannot connect, REVOKED ones never will again.
//!
//! The expiring checks say which case applies, in the reason ("expires in 12 days (2026-12-07)"
//! or "expired 3 days ago (2026-11-01)") and in the AWS reason code
//! (`CERTIFICATE_APPROACHING_EXPIRATION` or `CERTIFICATE_PAST_EXPIRATION`).
//!
//! # Weak keys
//!
//! A key is weak when it is:
//! - RSA with a modulus shorter than [`min_rsa_bits`](AuditConfig::min_rsa_bits) (2048), a
//!   public exponent that is even or below 3, or the ROCA fingerprint (CVE-2017-15361, keys made
//!   by Infineon's flawed library in TPMs and secure elements — one of the two tests AWS runs;
//!   the other, Debian's predictable OpenSSL keys of CVE-2008-0166, needs a blocklist and is not
//!   run);
//! - ECDSA on a curve shorter than [`min_ec_bits`](AuditConfig::min_ec_bits) (256), on a named
//!   curve AWS IoT does not accept (anything but P-256, P-384 and P-521: secp256k1, Brainpool),
//!   on an unknown curve, or with explicit curve parameters;
//! - anything else: DSA, Ed25519, Ed448, GOST, or a key that cannot be read.
//!
//! # Revocation lists
//!
//! A CRL counts when its issuer is a registered CA whose key verifies its signature. A CRL from
//! an issuer that is not in the inventory (a root kept offline, say) is taken as given: verify it
//! before you add it. A certificate counts as revoked when any counted CRL of its issuer (same
//! issuer name and serial) lists it, whatever the reason — certificateHold included.
//!
//! Certificates are matched to their issuing CA by issuer name and, when both carry one, by
//! authority key id against the CA's subject key id: two CAs with the same name but different
//! keys are kept apart. Signatures of certificates are not checked.
//!
//! ```
//! use fleetkit::backend::{CaStatus, CertificateState};
//! use fleetkit::identity::{DeviceId, Signer, SoftwareKey};
//! use fleetkit::lifecycle::audit::{
//!     AuditConfig, CaEntry, CertificateCheck, DeviceCertEntry, FleetInventory, audit_fleet,
//! };
//! use fleetkit::pki::{CaOptions, CertificateAuthority, DeviceCertOptions};
//! use fleetkit::policy::audit::Severity;
//! use std::time::Duration;
//!
//! let root = CertificateAuthority::new_root(&CaOptions::new("Acme Root").with_path_len(1))?;
//! let issuing = root.new_intermediate(&CaOptions::new("Acme Devices"))?;
//! let key = SoftwareKey::generate_p256()?;
//! let cert = issuing.issue(
//!     &DeviceId::new("sensor-1")?,
//!     key.public_key_spki(),
//!     &DeviceCertOptions::default().with_validity(Duration::from_secs(10 * 86_400)),
//! )?;
//!
//! let inventory = FleetInventory::new()
//!     .with_ca(CaEntry::new(issuing.certificate().clone(), CaStatus::Active))
//!     .with_device_certificate(DeviceCertEntry::new(
//!         cert.fingerprint_sha256(),
//!         cert.clone(),
//!         CertificateState::Active,
//!         "sensor-1",
//!     ));
//! let findings = audit_fleet(&inventory, &AuditConfig::default(), time::OffsetDateTime::now_utc());
//! assert_eq!(findings.len(), 1);
//! assert_eq!(findings[0].check, CertificateCheck::DeviceCertificateExpiring);
//! assert_eq!(findings[0].check.api_name(), "DEVICE_CERTIFICATE_EXPIRING_CHECK");
//! assert_eq!(findings[0].severity, Severity::Medium);
//! assert_eq!(findings[0].devices, ["sensor-1"]);
//! assert!(findings[0].reason.starts_with("expires in 10 days ("));
//! # Ok::<(), fleetkit::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use time::{OffsetDateTime, UtcOffset};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::RSAPublicKey;
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::backend::{CaStatus, CertificateState};
use crate::pki::{Certificate, Crl, Revocation, RevocationReason};
pub use crate::policy::audit::Severity;

const DAY: u64 = 86_400;

// ---------------------------------------------------------------------------------------------
// Inventory

/// A registered CA certificate and its status.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct CaEntry {
    /// The CA's id in the registry (AWS IoT and the local hub: the SHA-256 fingerprint).
    pub id: String,
    /// The CA certificate.
    pub certificate: Certificate,
    /// Its status in the registry.
    pub status: CaStatus,
}

impl CaEntry {
    /// A CA whose id is its SHA-256 fingerprint, as in AWS IoT and the local hub.
    pub fn new(certificate: Certificate, status: CaStatus) -> Self {
        CaEntry {
            id: certificate.fingerprint_sha256(),
            certificate,
            status,
        }
    }

    /// Sets the id, for registries that name CAs otherwise.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

/// A registered device certificate, its state and the device it belongs to.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct DeviceCertEntry {
    /// The certificate's id in the registry (AWS IoT: the SHA-256 fingerprint).
    pub id: String,
    /// The certificate.
    pub certificate: Certificate,
    /// Its state in the registry.
    pub state: CertificateState,
    /// The device (thing) it is registered for.
    pub device: String,
}

impl DeviceCertEntry {
    /// A device certificate with id `id`, registered for `device`.
    pub fn new(
        id: impl Into<String>,
        certificate: Certificate,
        state: CertificateState,
        device: impl Into<String>,
    ) -> Self {
        DeviceCertEntry {
            id: id.into(),
            certificate,
            state,
            device: device.into(),
        }
    }
}

/// A live connection.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionEntry {
    /// The MQTT client id.
    pub client_id: String,
    /// The id of the device certificate it authenticated with (`None`: another credential).
    pub cert_id: Option<String>,
    /// The device it authenticated as.
    pub device: String,
}

impl ConnectionEntry {
    /// A connection of `device` with client id `client_id`, not (yet) tied to a certificate.
    pub fn new(client_id: impl Into<String>, device: impl Into<String>) -> Self {
        ConnectionEntry {
            client_id: client_id.into(),
            cert_id: None,
            device: device.into(),
        }
    }

    /// Sets the id of the certificate the connection authenticated with.
    pub fn with_certificate(mut self, cert_id: impl Into<String>) -> Self {
        self.cert_id = Some(cert_id.into());
        self
    }
}

/// A client id that several connections used in the audited period, knocking each other off.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdConflict {
    /// The MQTT client id.
    pub client_id: String,
    /// The devices (or certificate ids) seen connecting with it; repeats are ignored.
    pub devices: Vec<String>,
    /// How many times a connection with it closed an earlier one.
    pub takeovers: u32,
}

impl ClientIdConflict {
    /// `client_id`, used by `devices`, with `takeovers` takeovers.
    pub fn new<S: Into<String>>(
        client_id: impl Into<String>,
        devices: impl IntoIterator<Item = S>,
        takeovers: u32,
    ) -> Self {
        ClientIdConflict {
            client_id: client_id.into(),
            devices: devices.into_iter().map(Into::into).collect(),
            takeovers,
        }
    }
}

/// What the audit looks at: registered CAs and device certificates, CRLs, live connections and
/// recent client-id conflicts. Build it with [`new`](Self::new) and the `with_*` methods, or
/// push onto the fields.
#[non_exhaustive]
#[derive(Clone, Debug, Default)]
pub struct FleetInventory {
    /// Registered CA certificates.
    pub cas: Vec<CaEntry>,
    /// Registered device certificates.
    pub device_certificates: Vec<DeviceCertEntry>,
    /// Known CRLs (see the [module docs](self#revocation-lists) for which count).
    pub crls: Vec<Crl>,
    /// Live connections.
    pub connections: Vec<ConnectionEntry>,
    /// Recent client-id conflicts.
    pub client_id_conflicts: Vec<ClientIdConflict>,
}

impl FleetInventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a registered CA.
    pub fn with_ca(mut self, ca: CaEntry) -> Self {
        self.cas.push(ca);
        self
    }

    /// Adds a registered device certificate.
    pub fn with_device_certificate(mut self, certificate: DeviceCertEntry) -> Self {
        self.device_certificates.push(certificate);
        self
    }

    /// Adds a CRL.
    pub fn with_crl(mut self, crl: Crl) -> Self {
        self.crls.push(crl);
        self
    }

    /// Adds a live connection.
    pub fn with_connection(mut self, connection: ConnectionEntry) -> Self {
        self.connections.push(connection);
        self
    }

    /// Adds a client-id conflict.
    pub fn with_client_id_conflict(mut self, conflict: ClientIdConflict) -> Self {
        self.client_id_conflicts.push(conflict);
        self
    }
}

/// Thresholds of the audit. The defaults are AWS's.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    /// A device certificate expiring within this is reported (default 30 days).
    pub device_expiry_threshold: Duration,
    /// A CA certificate expiring within this is reported (default 30 days).
    pub ca_expiry_threshold: Duration,
    /// A device certificate issued at least this long ago is reported; `None` (the default)
    /// turns the check off.
    pub device_cert_max_age: Option<Duration>,
    /// Shortest acceptable RSA modulus in bits (default 2048).
    pub min_rsa_bits: u32,
    /// Shortest acceptable elliptic curve in bits (default 256).
    pub min_ec_bits: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            device_expiry_threshold: Duration::from_secs(30 * DAY),
            ca_expiry_threshold: Duration::from_secs(30 * DAY),
            device_cert_max_age: None,
            min_rsa_bits: 2048,
            min_ec_bits: 256,
        }
    }
}

impl AuditConfig {
    /// Sets the device certificate expiry threshold.
    pub fn with_device_expiry_threshold(mut self, threshold: Duration) -> Self {
        self.device_expiry_threshold = threshold;
        self
    }

    /// Sets the CA certificate expiry threshold.
    pub fn with_ca_expiry_threshold(mut self, threshold: Duration) -> Self {
        self.ca_expiry_threshold = threshold;
        self
    }

    /// Turns the age check on (AWS's default, when enabled, is 365 days).
    pub fn with_device_cert_max_age(mut self, max_age: Duration) -> Self {
        self.device_cert_max_age = Some(max_age);
        self
    }

    /// Sets the shortest acceptable RSA modulus.
    pub fn with_min_rsa_bits(mut self, bits: u32) -> Self {
        self.min_rsa_bits = bits;
        self
    }

    /// Sets the shortest acceptable elliptic curve.
    pub fn with_min_ec_bits(mut self, bits: u32) -> Self {
        self.min_ec_bits = bits;
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Findings

/// A Device Defender certificate or connection check. See the [module docs](self) for when
/// each is reported. Ordered as SECURITY.md §6 lists them (the order findings of equal severity
/// come in).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CertificateCheck {
    /// A revoked CA with ACTIVE device certificates below it.
    IntermediateCaRevokedForActiveDeviceCertificates,
    /// A CA on its issuer's CRL, still ACTIVE.
    RevokedCaCertificateStillActive,
    /// One device certificate in several live connections.
    DeviceCertificateShared,
    /// A weak device certificate key.
    DeviceCertificateKeyQuality,
    /// A weak CA certificate key.
    CaCertificateKeyQuality,
    /// A CA certificate expiring or expired.
    CaCertificateExpiring,
    /// A client id several devices take from each other.
    ConflictingClientIds,
    /// A device certificate expiring or expired.
    DeviceCertificateExpiring,
    /// A device certificate older than the configured age.
    DeviceCertificateAge,
    /// A device certificate on its issuer's CRL, still ACTIVE.
    RevokedDeviceCertificateStillActive,
}

impl CertificateCheck {
    /// Every check, in SECURITY.md §6's order.
    pub const ALL: [CertificateCheck; 10] = [
        CertificateCheck::IntermediateCaRevokedForActiveDeviceCertificates,
        CertificateCheck::RevokedCaCertificateStillActive,
        CertificateCheck::DeviceCertificateShared,
        CertificateCheck::DeviceCertificateKeyQuality,
        CertificateCheck::CaCertificateKeyQuality,
        CertificateCheck::CaCertificateExpiring,
        CertificateCheck::ConflictingClientIds,
        CertificateCheck::DeviceCertificateExpiring,
        CertificateCheck::DeviceCertificateAge,
        CertificateCheck::RevokedDeviceCertificateStillActive,
    ];

    /// The check's name in the AWS CLI and API, e.g. `DEVICE_CERTIFICATE_EXPIRING_CHECK`.
    pub fn api_name(self) -> &'static str {
        match self {
            CertificateCheck::IntermediateCaRevokedForActiveDeviceCertificates => {
                "INTERMEDIATE_CA_REVOKED_FOR_ACTIVE_DEVICE_CERTIFICATES_CHECK"
            }
            CertificateCheck::RevokedCaCertificateStillActive => {
                "REVOKED_CA_CERTIFICATE_STILL_ACTIVE_CHECK"
            }
            CertificateCheck::DeviceCertificateShared => "DEVICE_CERTIFICATE_SHARED_CHECK",
            CertificateCheck::DeviceCertificateKeyQuality => "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK",
            CertificateCheck::CaCertificateKeyQuality => "CA_CERTIFICATE_KEY_QUALITY_CHECK",
            CertificateCheck::CaCertificateExpiring => "CA_CERTIFICATE_EXPIRING_CHECK",
            CertificateCheck::ConflictingClientIds => "CONFLICTING_CLIENT_IDS_CHECK",
            CertificateCheck::DeviceCertificateExpiring => "DEVICE_CERTIFICATE_EXPIRING_CHECK",
            CertificateCheck::DeviceCertificateAge => "DEVICE_CERTIFICATE_AGE_CHECK",
            CertificateCheck::RevokedDeviceCertificateStillActive => {
                "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK"
            }
        }
    }

    /// The severity Device Defender gives the check.
    pub fn severity(self) -> Severity {
        match self {
            CertificateCheck::IntermediateCaRevokedForActiveDeviceCertificates
            | CertificateCheck::RevokedCaCertificateStillActive
            | CertificateCheck::DeviceCertificateShared
            | CertificateCheck::DeviceCertificateKeyQuality
            | CertificateCheck::CaCertificateKeyQuality => Severity::Critical,
            CertificateCheck::ConflictingClientIds => Severity::High,
            CertificateCheck::CaCertificateExpiring
            | CertificateCheck::DeviceCertificateExpiring
            | CertificateCheck::RevokedDeviceCertificateStillActive => Severity::Medium,
            CertificateCheck::DeviceCertificateAge => Severity::Low,
        }
    }
}

impl fmt::Display for CertificateCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

/// What a finding is about.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuditResource {
    /// A registered CA, by its [`CaEntry::id`].
    CaCertificate(String),
    /// A device certificate, by its [`DeviceCertEntry::id`] (or the id a connection named).
    DeviceCertificate(String),
    /// An MQTT client id.
    ClientId(String),
}

impl AuditResource {
    /// The id: CA id, certificate id or client id.
    pub fn id(&self) -> &str {
        match self {
            AuditResource::CaCertificate(id)
            | AuditResource::DeviceCertificate(id)
            | AuditResource::ClientId(id) => id,
        }
    }

    /// What kind of resource, in words: `CA certificate`, `device certificate`, `client id`.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditResource::CaCertificate(_) => "CA certificate",
            AuditResource::DeviceCertificate(_) => "device certificate",
            AuditResource::ClientId(_) => "client id",
        }
    }
}

impl fmt::Display for AuditResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.id())
    }
}

/// One problem found in the fleet.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFinding {
    /// Which check.
    pub check: CertificateCheck,
    /// How urgent ([`CertificateCheck::severity`]).
    pub severity: Severity,
    /// The CA, certificate or client id concerned.
    pub resource: AuditResource,
    /// The devices concerned, sorted: the certificate's device, the devices sharing a
    /// certificate or a client id, or those under a revoked CA. Empty for a CA's own findings.
    pub devices: Vec<String>,
    /// What is wrong, in one line with the figures ("expires in 12 days (2026-12-07)",
    /// "RSA 1024-bit key (minimum 2048)").
    pub reason: String,
    /// The reason code AWS reports for this case, where its documentation names one.
    pub reason_code: Option<&'static str>,
    /// For [`IntermediateCaRevokedForActiveDeviceCertificates`]: the ACTIVE device
    /// certificates below the CA as `(certificate id, device)`, sorted — what to re-provision.
    /// Empty for the other checks.
    ///
    /// [`IntermediateCaRevokedForActiveDeviceCertificates`]:
    /// CertificateCheck::IntermediateCaRevokedForActiveDeviceCertificates
    pub affected: Vec<(String, String)>,
}

impl CertificateFinding {
    fn new(check: CertificateCheck, resource: AuditResource, reason: String) -> Self {
        CertificateFinding {
            check,
            severity: check.severity(),
            resource,
            devices: Vec::new(),
            reason,
            reason_code: None,
            affected: Vec::new(),
        }
    }

    fn with_devices<'a>(mut self, devices: impl IntoIterator<Item = &'a str>) -> Self {
        self.devices = sorted_unique(devices);
        self
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.reason_code = Some(code);
        self
    }
}

impl fmt::Display for CertificateFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.severity, self.check, self.resource)?;
        if !self.devices.is_empty() {
            write!(f, " ({})", self.devices.join(", "))?;
        }
        write!(f, ": {}", self.reason)
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points

/// Runs every certificate and connection check on `inventory` at time `now`.
///
/// Findings come sorted by severity (most severe first), then check (in
/// [`CertificateCheck::ALL`] order), then resource, then reason: the same inventory always gives
/// the same list. See the [module docs](self) for the checks and an example.
pub fn audit_fleet(
    inventory: &FleetInventory,
    config: &AuditConfig,
    now: OffsetDateTime,
) -> Vec<CertificateFinding> {
    let crls = Revocations::new(inventory);
    let mut out = Vec::new();
    ca_checks(inventory, config, now, &crls, &mut out);
    device_checks(inventory, config, now, &crls, &mut out);
    revoked_cas_with_active_devices(inventory, &crls, &mut out);
    shared_certificates(inventory, &mut out);
    conflicting_client_ids(inventory, &mut out);
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.check.cmp(&b.check))
            .then_with(|| a.resource.cmp(&b.resource))
            .then_with(|| a.reason.cmp(&b.reason))
    });
    out
}

/// The device certificates whose chain goes through `ca`: issued by it, or by a registered CA
/// that it issued (transitively, through the registered CAs). `(certificate id, device)` pairs
/// in every state, sorted by certificate id.
///
/// ```
/// use fleetkit::backend::{CaStatus, CertificateState};
/// use fleetkit::identity::{DeviceId, Signer, SoftwareKey};
/// use fleetkit::lifecycle::audit::{CaEntry, DeviceCertEntry, FleetInventory, devices_under_ca};
/// use fleetkit::pki::{CaOptions, CertificateAuthority, DeviceCertOptions};
///
/// let root = CertificateAuthority::new_root(&CaOptions::new("Acme Root").with_path_len(1))?;
/// let issuing = root.new_intermediate(&CaOptions::new("Acme Devices"))?;
/// let key = SoftwareKey::generate_p256()?;
/// let cert =
///     issuing.issue(&DeviceId::new("s-1")?, key.public_key_spki(), &DeviceCertOptions::default())?;
/// let inventory = FleetInventory::new()
///     .with_ca(CaEntry::new(root.certificate().clone(), CaStatus::Active))
///     .with_ca(CaEntry::new(issuing.certificate().clone(), CaStatus::Active))
///     .with_device_certificate(DeviceCertEntry::new("c-1", cert, CertificateState::Active, "s-1"));
/// let expected = vec![("c-1".to_string(), "s-1".to_string())];
/// assert_eq!(devices_under_ca(&inventory, root.certificate()), expected);
/// assert_eq!(devices_under_ca(&inventory, issuing.certificate()), expected);
/// # Ok::<(), fleetkit::Error>(())
/// ```
pub fn devices_under_ca(inventory: &FleetInventory, ca: &Certificate) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = certificates_under(inventory, ca)
        .into_iter()
        .map(|d| (d.id.clone(), d.device.clone()))
        .collect();
    out.sort();
    out.dedup();
    out
}

// ---------------------------------------------------------------------------------------------
// Chains and revocation

/// Whether `issuer` issued `cert`, by name and, when both are present, key id.
fn issued_by(cert: &Certificate, issuer: &Certificate) -> bool {
    if cert.issuer_der() != issuer.subject_der() {
        return false;
    }
    match (cert.authority_key_id(), issuer.subject_key_id()) {
        (Some(aki), Some(ski)) => aki == ski,
        _ => true,
    }
}

/// The device certificates issued by `ca` or by the registered CAs below it.
fn certificates_under<'a>(
    inventory: &'a FleetInventory,
    ca: &Certificate,
) -> Vec<&'a DeviceCertEntry> {
    let mut issuers: Vec<&Certificate> = vec![ca];
    // Grow the set until no registered CA is added: each pass adds the next level down.
    loop {
        let before = issuers.len();
        for entry in &inventory.cas {
            let c = &entry.certificate;
            if !issuers.contains(&c) && issuers.iter().any(|i| issued_by(c, i)) {
                issuers.push(c);
            }
        }
        if issuers.len() == before {
            break;
        }
    }
    inventory
        .device_certificates
        .iter()
        .filter(|d| issuers.iter().any(|i| issued_by(&d.certificate, i)))
        .collect()
}

/// The entries of the CRLs that count (see the module docs), by issuer name and serial: those
/// of CRLs a registered CA of the same name signed, and of CRLs whose issuer is not registered.
/// Where several CRLs list a certificate, the first in the inventory is kept.
struct Revocations<'a> {
    by_issuer_and_serial: HashMap<IssuerAndSerial<'a>, (&'a Crl, &'a Revocation)>,
}

/// A certificate's issuer (DER name) and serial (big-endian, no leading zeros).
type IssuerAndSerial<'a> = (&'a [u8], &'a [u8]);

impl<'a> Revocations<'a> {
    fn new(inventory: &'a FleetInventory) -> Self {
        let mut by_issuer_and_serial = HashMap::new();
        for crl in &inventory.crls {
            // `Crl` keeps its issuer's DER name private; read it from the DER.
            let Ok((_, parsed)) = CertificateRevocationList::from_der(crl.der()) else {
                continue;
            };
            let issuer = parsed.tbs_cert_list.issuer.as_raw();
            let mut same_name = inventory
                .cas
                .iter()
                .filter(|ca| ca.certificate.subject_der() == issuer)
                .peekable();
            let counts = same_name.peek().is_none()
                || same_name.any(|ca| crl.verify_signature(&ca.certificate).is_ok());
            if counts {
                for entry in crl.entries() {
                    by_issuer_and_serial
                        .entry((issuer, entry.serial.as_slice()))
                        .or_insert((crl, entry));
                }
            }
        }
        Revocations {
            by_issuer_and_serial,
        }
    }

    /// The counted CRL entry that revokes `cert`.
    fn of(&self, cert: &Certificate) -> Option<(&'a Crl, &'a Revocation)> {
        self.by_issuer_and_serial
            .get(&(cert.issuer_der(), cert.serial()))
            .copied()
    }
}

/// "the CRL of CN=Acme Root (revoked 2026-11-01, keyCompromise)".
fn describe_revocation(crl: &Crl, revocation: &Revocation) -> String {
    let reason = match revocation.reason {
        Some(r) => format!(", {}", reason_name(r)),
        None => String::new(),
    };
    format!(
        "the CRL of {} (revoked {}{reason})",
        crl.issuer(),
        date(revocation.revoked_at)
    )
}

fn reason_name(reason: RevocationReason) -> &'static str {
    match reason {
        RevocationReason::Unspecified => "unspecified",
        RevocationReason::KeyCompromise => "keyCompromise",
        RevocationReason::CaCompromise => "cACompromise",
        RevocationReason::AffiliationChanged => "affiliationChanged",
        RevocationReason::Superseded => "superseded",
        RevocationReason::CessationOfOperation => "cessationOfOperation",
        RevocationReason::CertificateHold => "certificateHold",
        RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
    }
}

// ---------------------------------------------------------------------------------------------
// Checks

const APPROACHING: &str = "CERTIFICATE_APPROACHING_EXPIRATION";
const PAST: &str = "CERTIFICATE_PAST_EXPIRATION";
const REVOKED_BY_ISSUER: &str = "CERTIFICATE_REVOKED_BY_ISSUER";

fn ca_checks(
    inventory: &FleetInventory,
    config: &AuditConfig,
    now: OffsetDateTime,
    crls: &Revocations<'_>,
    out: &mut Vec<CertificateFinding>,
) {
    for ca in inventory
        .cas
        .iter()
        .filter(|c| c.status == CaStatus::Active)
    {
        let cert = &ca.certificate;
        let resource = || AuditResource::CaCertificate(ca.id.clone());
        if let Some((text, code)) = expiry(cert, config.ca_expiry_threshold, now) {
            out.push(
                CertificateFinding::new(
                    CertificateCheck::CaCertificateExpiring,
                    resource(),
                    format!("{} {text}", cert.subject()),
                )
                .with_code(code),
            );
        }
        if let Some(problem) = key_problems(cert, config) {
            out.push(CertificateFinding::new(
                CertificateCheck::CaCertificateKeyQuality,
                resource(),
                format!("{}: {problem}", cert.subject()),
            ));
        }
        if let Some((crl, revocation)) = crls.of(cert) {
            out.push(
                CertificateFinding::new(
                    CertificateCheck::RevokedCaCertificateStillActive,
                    resource(),
                    format!(
                        "{} is on {} but is ACTIVE",
                        cert.subject(),
                        describe_revocation(crl, revocation)
                    ),
                )
                .with_code(REVOKED_BY_ISSUER),
            );
        }
    }
}

fn device_checks(
    inventory: &FleetInventory,
    config: &AuditConfig,
    now: OffsetDateTime,
    crls: &Revocations<'_>,
    out: &mut Vec<CertificateFinding>,
) {
    let active = inventory
        .device_certificates
        .iter()
        .filter(|d| d.state == CertificateState::Active);
    for entry in active {
        let cert = &entry.certificate;
        let finding = |check, reason| {
            CertificateFinding::new(
                check,
                AuditResource::DeviceCertificate(entry.id.clone()),
                reason,
            )
            .with_devices([entry.device.as_str()])
        };
        if let Some((text, code)) = expiry(cert, config.device_expiry_threshold, now) {
            out.push(finding(CertificateCheck::DeviceCertificateExpiring, text).with_code(code));
        }
        if let Some(max_age) = config.device_cert_max_age {
            let age = now - cert.not_before();
            if age >= to_time(max_age) {
                out.push(
                    finding(
                        CertificateCheck::DeviceCertificateAge,
                        format!(
                            "issued {} ago ({}); the limit is {}",
                            span(age),
                            date(cert.not_before()),
                            span(to_time(max_age))
                        ),
                    )
                    .with_code("CERTIFICATE_PAST_AGE_THRESHOLD"),
                );
            }
        }
        if let Some(problem) = key_problems(cert, config) {
            out.push(finding(
                CertificateCheck::DeviceCertificateKeyQuality,
                problem,
            ));
        }
        if let Some((crl, revocation)) = crls.of(cert) {
            out.push(
                finding(
                    CertificateCheck::RevokedDeviceCertificateStillActive,
                    format!("on {} but ACTIVE", describe_revocation(crl, revocation)),
                )
                .with_code(REVOKED_BY_ISSUER),
            );
        }
    }
}

fn revoked_cas_with_active_devices(
    inventory: &FleetInventory,
    crls: &Revocations<'_>,
    out: &mut Vec<CertificateFinding>,
) {
    for ca in &inventory.cas {
        let cert = &ca.certificate;
        let on_crl = crls.of(cert);
        let how = match (ca.status == CaStatus::Revoked, on_crl) {
            (false, None) => continue,
            (true, None) => "is REVOKED in the registry".to_string(),
            (false, Some((crl, r))) => format!("is on {}", describe_revocation(crl, r)),
            (true, Some((crl, r))) => format!(
                "is REVOKED in the registry and on {}",
                describe_revocation(crl, r)
            ),
        };
        let mut affected: Vec<(String, String)> = certificates_under(inventory, cert)
            .into_iter()
            .filter(|d| d.state == CertificateState::Active)
            .map(|d| (d.id.clone(), d.device.clone()))
            .collect();
        if affected.is_empty() {
            continue;
        }
        affected.sort();
        affected.dedup();
        let devices = sorted_unique(affected.iter().map(|(_, d)| d.as_str()));
        let mut finding = CertificateFinding::new(
            CertificateCheck::IntermediateCaRevokedForActiveDeviceCertificates,
            AuditResource::CaCertificate(ca.id.clone()),
            format!(
                "{} {how}, yet {} ACTIVE device certificate{} of {} device{} chain to it",
                cert.subject(),
                affected.len(),
                plural(affected.len()),
                devices.len(),
                plural(devices.len()),
            ),
        )
        .with_code("INTERMEDIATE_CA_REVOKED_BY_ISSUER");
        finding.devices = devices;
        finding.affected = affected;
        out.push(finding);
    }
}

fn shared_certificates(inventory: &FleetInventory, out: &mut Vec<CertificateFinding>) {
    let mut by_cert: BTreeMap<&str, Vec<&ConnectionEntry>> = BTreeMap::new();
    for c in &inventory.connections {
        if let Some(id) = &c.cert_id {
            by_cert.entry(id.as_str()).or_default().push(c);
        }
    }
    let registered: HashMap<&str, &DeviceCertEntry> = inventory
        .device_certificates
        .iter()
        .map(|d| (d.id.as_str(), d))
        .collect();
    for (cert_id, connections) in by_cert.into_iter().filter(|(_, c)| c.len() >= 2) {
        let client_ids = sorted_unique(connections.iter().map(|c| c.client_id.as_str()));
        let devices = connections
            .iter()
            .map(|c| c.device.as_str())
            .chain(registered.get(cert_id).map(|d| d.device.as_str()));
        out.push(
            CertificateFinding::new(
                CertificateCheck::DeviceCertificateShared,
                AuditResource::DeviceCertificate(cert_id.to_string()),
                format!(
                    "{} concurrent connections authenticate with it (client ids {})",
                    connections.len(),
                    client_ids.join(", ")
                ),
            )
            .with_devices(devices)
            .with_code("CERTIFICATE_SHARED_BY_MULTIPLE_DEVICES"),
        );
    }
}

fn conflicting_client_ids(inventory: &FleetInventory, out: &mut Vec<CertificateFinding>) {
    for conflict in &inventory.client_id_conflicts {
        let devices = sorted_unique(conflict.devices.iter().map(String::as_str));
        if devices.len() < 2 || conflict.takeovers == 0 {
            continue;
        }
        let mut finding = CertificateFinding::new(
            CertificateCheck::ConflictingClientIds,
            AuditResource::ClientId(conflict.client_id.clone()),
            format!(
                "used by {} devices ({}) that took it over from each other {} time{}",
                devices.len(),
                devices.join(", "),
                conflict.takeovers,
                plural(conflict.takeovers as usize)
            ),
        )
        .with_code("DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS");
        finding.devices = devices;
        out.push(finding);
    }
}

/// "expires in 12 days (2026-12-07)" or "expired 3 days ago (2026-11-01)", with the AWS reason
/// code, when `cert` expires within `threshold` of `now` or has expired.
fn expiry(
    cert: &Certificate,
    threshold: Duration,
    now: OffsetDateTime,
) -> Option<(String, &'static str)> {
    let left = cert.not_after() - now;
    if left > to_time(threshold) {
        return None;
    }
    let when = date(cert.not_after());
    Some(if left.is_negative() {
        (format!("expired {} ago ({when})", span(-left)), PAST)
    } else {
        (format!("expires in {} ({when})", span(left)), APPROACHING)
    })
}

// ---------------------------------------------------------------------------------------------
// Keys

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_RSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_EC: &str = "1.2.840.10045.2.1";

/// Named curves: OID, name, size in bits, accepted by AWS IoT.
const CURVES: [(&str, &str, u32, bool); 9] = [
    ("1.2.840.10045.3.1.1", "P-192", 192, false),
    ("1.3.132.0.33", "P-224", 224, false),
    ("1.2.840.10045.3.1.7", "P-256", 256, true),
    ("1.3.132.0.34", "P-384", 384, true),
    ("1.3.132.0.35", "P-521", 521, true),
    ("1.3.132.0.10", "secp256k1", 256, false),
    ("1.3.36.3.3.2.8.1.1.7", "brainpoolP256r1", 256, false),
    ("1.3.36.3.3.2.8.1.1.11", "brainpoolP384r1", 384, false),
    ("1.3.36.3.3.2.8.1.1.13", "brainpoolP512r1", 512, false),
];

/// Key types AWS IoT does not accept at all.
const OTHER_KEYS: [(&str, &str); 7] = [
    ("1.2.840.10040.4.1", "DSA"),
    ("1.3.101.110", "X25519"),
    ("1.3.101.111", "X448"),
    ("1.3.101.112", "Ed25519"),
    ("1.3.101.113", "Ed448"),
    ("1.2.643.2.2.19", "GOST R 34.10-2001"),
    ("1.2.643.7.1.1.1.1", "GOST R 34.10-2012"),
];

const ACCEPTED: &str = "AWS IoT accepts RSA (2048 bits or more) and ECDSA on P-256, P-384 or P-521";

/// What is wrong with `cert`'s key, or `None` if nothing. Several problems are joined with `; `.
fn key_problems(cert: &Certificate, config: &AuditConfig) -> Option<String> {
    let problems = match SubjectPublicKeyInfo::from_der(cert.public_key_spki()) {
        Ok((_, spki)) => spki_problems(&spki, config),
        Err(e) => vec![format!("unreadable public key ({e})")],
    };
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn spki_problems(spki: &SubjectPublicKeyInfo<'_>, config: &AuditConfig) -> Vec<String> {
    let oid = spki.algorithm.algorithm.to_id_string();
    match oid.as_str() {
        OID_RSA | OID_RSA_PSS => match RSAPublicKey::from_der(spki.subject_public_key.as_ref()) {
            Ok((_, rsa)) => rsa_problems(rsa.modulus, rsa.exponent, config),
            Err(e) => vec![format!("unreadable RSA public key ({e})")],
        },
        OID_EC => {
            let Some(params) = spki.algorithm.parameters.as_ref() else {
                return vec!["ECDSA key without curve parameters".into()];
            };
            let Ok(curve) = params.as_oid() else {
                return vec!["ECDSA key with explicit curve parameters (not a named curve)".into()];
            };
            let curve = curve.to_id_string();
            match CURVES.iter().find(|(o, ..)| *o == curve) {
                Some((_, name, bits, _)) if *bits < config.min_ec_bits => vec![format!(
                    "ECDSA {name} key ({bits}-bit curve, minimum {})",
                    config.min_ec_bits
                )],
                Some((_, name, _, false)) => {
                    vec![format!(
                        "ECDSA key on {name}, a curve AWS IoT does not accept"
                    )]
                }
                Some(_) => Vec::new(),
                None => vec![format!("ECDSA key on unknown curve {curve}")],
            }
        }
        _ => {
            let name = OTHER_KEYS.iter().find(|(o, _)| *o == oid).map_or_else(
                || format!("key of algorithm {oid}"),
                |(_, n)| format!("{n} key"),
            );
            vec![format!("{name}: {ACCEPTED}")]
        }
    }
}

fn rsa_problems(modulus: &[u8], exponent: &[u8], config: &AuditConfig) -> Vec<String> {
    let modulus = strip_zeros(modulus);
    let bits = match modulus.first() {
        Some(first) => modulus.len() as u32 * 8 - first.leading_zeros(),
        None => 0,
    };
    let mut problems = Vec::new();
    if bits < config.min_rsa_bits {
        problems.push(format!(
            "RSA {bits}-bit key (minimum {})",
            config.min_rsa_bits
        ));
    }
    let exponent = strip_zeros(exponent);
    let odd = exponent.last().is_some_and(|b| b & 1 == 1);
    if !odd || (exponent.len() == 1 && exponent[0] < 3) {
        let value = if exponent.len() <= 8 {
            exponent
                .iter()
                .fold(0u64, |v, &b| (v << 8) | u64::from(b))
                .to_string()
        } else {
            "of many bytes".to_string()
        };
        problems.push(format!(
            "RSA public exponent {value} (it must be odd and at least 3)"
        ));
    }
    if roca_fingerprint(modulus) {
        problems.push(
            "RSA key with the ROCA fingerprint (CVE-2017-15361): made by Infineon's flawed key \
             generation, its factors can be recovered"
                .to_string(),
        );
    }
    problems
}

/// The primes of the ROCA test: an affected modulus is, modulo each of them, a power of 65537.
const ROCA_PRIMES: [u32; 38] = [
    3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97,
    101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
];

/// Whether `modulus` (big-endian) has the structure of keys from Infineon's RSALib
/// (Nemec et al., "The Return of Coppersmith's Attack", CCS 2017): `N mod p` lies in the
/// subgroup generated by 65537 for every prime of [`ROCA_PRIMES`]. A random modulus passes with
/// probability below 2^-150.
fn roca_fingerprint(modulus: &[u8]) -> bool {
    !modulus.is_empty()
        && ROCA_PRIMES.iter().all(|&p| {
            let residue = modulus
                .iter()
                .fold(0u32, |acc, &b| (acc * 256 + u32::from(b)) % p);
            let generator = 65_537 % p;
            let mut power = 1;
            loop {
                if power == residue {
                    return true;
                }
                power = power * generator % p;
                if power == 1 {
                    return false;
                }
            }
        })
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

// ---------------------------------------------------------------------------------------------
// Text

fn sorted_unique<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    items
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(str::to_string)
        .collect()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn to_time(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// The UTC date, `2026-12-07`.
fn date(t: OffsetDateTime) -> String {
    t.to_offset(UtcOffset::UTC).date().to_string()
}

/// A non-negative span in words, rounded: "12 days", "30 hours", "5 minutes".
fn span(d: time::Duration) -> String {
    let secs = d.whole_seconds().max(0);
    let (n, unit) = if secs >= 36 * 3600 {
        ((secs + 43_200) / 86_400, "day")
    } else if secs >= 3600 {
        ((secs + 1800) / 3600, "hour")
    } else {
        ((secs + 30) / 60, "minute")
    };
    format!("{n} {unit}{}", plural(n as usize))
}

#[cfg(test)]
mod tests;
