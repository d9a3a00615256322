//! Certificate revocation lists: issue, parse, verify and check against.

use std::fmt;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::certificate::strip_leading_zeros;
use super::{Certificate, CertificateAuthority, hex_lower};
use crate::{Error, Result};

/// Why a certificate was revoked (RFC 5280 §5.3.1 CRLReason).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// unspecified (0).
    Unspecified,
    /// keyCompromise (1): the device key leaked or the device was cloned.
    KeyCompromise,
    /// cACompromise (2).
    CaCompromise,
    /// affiliationChanged (3).
    AffiliationChanged,
    /// superseded (4): replaced by a rotated certificate.
    Superseded,
    /// cessationOfOperation (5): the device was decommissioned.
    CessationOfOperation,
    /// certificateHold (6).
    CertificateHold,
    /// privilegeWithdrawn (9).
    PrivilegeWithdrawn,
}

impl RevocationReason {
    fn to_rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            RevocationReason::Unspecified => R::Unspecified,
            RevocationReason::KeyCompromise => R::KeyCompromise,
            RevocationReason::CaCompromise => R::CaCompromise,
            RevocationReason::AffiliationChanged => R::AffiliationChanged,
            RevocationReason::Superseded => R::Superseded,
            RevocationReason::CessationOfOperation => R::CessationOfOperation,
            RevocationReason::CertificateHold => R::CertificateHold,
            RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => RevocationReason::Unspecified,
            1 => RevocationReason::KeyCompromise,
            2 => RevocationReason::CaCompromise,
            3 => RevocationReason::AffiliationChanged,
            4 => RevocationReason::Superseded,
            5 => RevocationReason::CessationOfOperation,
            6 => RevocationReason::CertificateHold,
            9 => RevocationReason::PrivilegeWithdrawn,
            _ => return None,
        })
    }
}

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Serial number, big-endian without leading zeros.
    pub serial: Vec<u8>,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
    /// Why, if stated.
    pub reason: Option<RevocationReason>,
}

impl Revocation {
    /// Revokes `certificate` now for `reason`.
    pub fn of(certificate: &Certificate, reason: RevocationReason) -> Self {
        Revocation {
            serial: certificate.serial().to_vec(),
            revoked_at: OffsetDateTime::now_utc(),
            reason: Some(reason),
        }
    }
}

/// What goes into a CRL.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct CrlOptions {
    /// The CRL number: must increase with every CRL the CA publishes.
    pub number: u64,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate: when relying parties should expect a newer list.
    pub next_update: OffsetDateTime,
    /// The revoked certificates.
    pub revoked: Vec<Revocation>,
}

impl CrlOptions {
    /// CRL number `number`, valid from now for 7 days, listing `revoked`.
    pub fn new(number: u64, revoked: Vec<Revocation>) -> Self {
        let now = OffsetDateTime::now_utc();
        CrlOptions {
            number,
            this_update: now,
            next_update: now + time::Duration::days(7),
            revoked,
        }
    }
}

/// A parsed certificate revocation list.
#[derive(Clone)]
pub struct Crl {
    der: Vec<u8>,
    issuer: String,
    issuer_raw: Vec<u8>,
    number: Option<Vec<u8>>,
    this_update: OffsetDateTime,
    next_update: Option<OffsetDateTime>,
    entries: Vec<Revocation>,
}

impl fmt::Debug for Crl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crl")
            .field("issuer", &self.issuer)
            .field("number", &self.number.as_deref().map(hex_lower))
            .field("this_update", &self.this_update)
            .field("next_update", &self.next_update)
            .field("entries", &self.entries.len())
            .finish()
    }
}

fn bad_crl(reason: impl Into<String>) -> Error {
    Error::invalid("crl", reason)
}

impl Crl {
    /// Parses a DER CRL (its signature is checked by [`verify_signature`](Crl::verify_signature)
    /// or during chain verification).
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (rest, crl) = CertificateRevocationList::from_der(der)
            .map_err(|e| bad_crl(format!("not a DER X.509 CRL: {e}")))?;
        if !rest.is_empty() {
            return Err(bad_crl(format!(
                "{} trailing bytes after the CRL",
                rest.len()
            )));
        }
        let mut entries = Vec::new();
        for revoked in crl.iter_revoked_certificates() {
            let reason = revoked
                .reason_code()
                .and_then(|(_, code)| RevocationReason::from_code(code.0));
            entries.push(Revocation {
                serial: strip_leading_zeros(revoked.raw_serial()).to_vec(),
                revoked_at: revoked.revocation_date.to_datetime(),
                reason,
            });
        }
        Ok(Crl {
            issuer: crl.issuer().to_string(),
            issuer_raw: crl.issuer().as_raw().to_vec(),
            number: crl.crl_number().map(|n| n.to_bytes_be()),
            this_update: crl.last_update().to_datetime(),
            next_update: crl.next_update().map(|t| t.to_datetime()),
            entries,
            der: der.to_vec(),
        })
    }

    /// Parses a PEM CRL (`-----BEGIN X509 CRL-----`).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| bad_crl(format!("no readable X509 CRL PEM block: {e}")))?;
        Self::from_der(der.as_ref())
    }

    /// Checks that `issuer` signed this CRL (and that the names match).
    pub fn verify_signature(&self, issuer: &Certificate) -> Result<()> {
        if issuer.subject_der() != self.issuer_raw.as_slice() {
            return Err(Error::Unauthenticated(format!(
                "CRL issued by {} cannot be checked with the certificate of {}",
                self.issuer,
                issuer.subject()
            )));
        }
        let (_, crl) = CertificateRevocationList::from_der(&self.der)
            .map_err(|e| bad_crl(format!("not a DER X.509 CRL: {e}")))?;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(issuer.public_key_spki())
            .map_err(|e| Error::invalid("certificate", format!("public key: {e}")))?;
        crl.verify_signature(&spki)
            .map_err(|e| Error::Unauthenticated(format!("the CRL signature does not verify: {e}")))
    }

    /// The entry for `certificate` if this CRL (from its issuer) lists it.
    pub fn revocation_of(&self, certificate: &Certificate) -> Option<&Revocation> {
        if certificate.issuer_der() != self.issuer_raw.as_slice() {
            return None;
        }
        self.entries
            .iter()
            .find(|r| r.serial == certificate.serial())
    }

    /// Whether this CRL lists `certificate`.
    pub fn is_revoked(&self, certificate: &Certificate) -> bool {
        self.revocation_of(certificate).is_some()
    }

    /// The issuer's name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The CRL number, big-endian.
    pub fn number(&self) -> Option<&[u8]> {
        self.number.as_deref()
    }

    /// thisUpdate.
    pub fn this_update(&self) -> OffsetDateTime {
        self.this_update
    }

    /// nextUpdate, if present.
    pub fn next_update(&self) -> Option<OffsetDateTime> {
        self.next_update
    }

    /// The revoked certificates.
    pub fn entries(&self) -> &[Revocation] {
        &self.entries
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The PEM encoding (`-----BEGIN X509 CRL-----`).
    pub fn to_pem(&self) -> String {
        crate::identity::pem_encode("X509 CRL", &self.der)
    }
}

impl CertificateAuthority {
    /// Issues a CRL signed by this CA.
    ///
    /// Fails with [`Error::InvalidInput`] if nextUpdate is not after thisUpdate or a serial is
    /// empty.
    pub fn issue_crl(&self, options: &CrlOptions) -> Result<Crl> {
        if options.next_update <= options.this_update {
            return Err(Error::invalid("next_update", "must be after this_update"));
        }
        let mut revoked_certs = Vec::with_capacity(options.revoked.len());
        for r in &options.revoked {
            let serial = strip_leading_zeros(&r.serial);
            if serial.is_empty() || serial == [0] {
                return Err(Error::invalid("revoked serial", "is empty or zero"));
            }
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(serial),
                revocation_time: r.revoked_at,
                reason_code: r.reason.map(RevocationReason::to_rcgen),
                invalidity_date: None,
            });
        }
        let key_identifier_method = match self.certificate().subject_key_id() {
            Some(id) => KeyIdMethod::PreSpecified(id.to_vec()),
            None => KeyIdMethod::Sha256,
        };
        let params = CertificateRevocationListParams {
            this_update: options.this_update,
            next_update: options.next_update,
            crl_number: SerialNumber::from_slice(strip_leading_zeros(
                &options.number.to_be_bytes(),
            )),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method,
        };
        let crl = params
            .signed_by(self.rcgen_issuer())
            .map_err(|e| Error::Crypto(format!("signing the CRL: {e}")))?;
        Crl::from_der(crl.der().as_ref())
    }
}
