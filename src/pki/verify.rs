//! Chain verification for device (TLS client) certificates, with a typed reason on failure.
//!
//! Path building and signature checks are rustls-webpki's, the same code the TLS stack runs, so
//! a chain this accepts is one a rustls server accepts.

use std::fmt;
use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use time::OffsetDateTime;

use super::{Certificate, Crl};

/// Why a certificate chain was not accepted.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// No path leads from the certificate to a trusted root.
    UnknownIssuer,
    /// A certificate in the path expired before the verification time.
    Expired {
        /// When it expired.
        not_after: OffsetDateTime,
        /// The time the chain was checked for.
        at: OffsetDateTime,
    },
    /// A certificate in the path is not valid yet.
    NotYetValid {
        /// When it becomes valid.
        not_before: OffsetDateTime,
        /// The time the chain was checked for.
        at: OffsetDateTime,
    },
    /// The certificate or one of its issuers is on a revocation list.
    Revoked {
        /// Serial number of the certificate checked (the leaf), lowercase hex.
        serial: String,
    },
    /// A signature in the path does not verify.
    BadSignature,
    /// The leaf is not allowed for TLS client authentication (extendedKeyUsage).
    WrongUsage,
    /// A CA certificate was presented as the leaf.
    CaUsedAsLeaf,
    /// A non-CA certificate was used to issue another, or the path is too long.
    NotACa,
    /// A CA's pathLenConstraint forbids this path.
    PathLenExceeded,
    /// The CA's name constraints forbid this certificate's names.
    NameConstraints,
    /// A certificate, CRL or extension could not be parsed or uses something unsupported.
    Malformed(String),
    /// A server certificate does not name the server that was asked for (the details say
    /// which names it has).
    WrongName(String),
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::UnknownIssuer => f.write_str("no path to a trusted root (unknown issuer)"),
            ChainError::Expired { not_after, at } => {
                write!(f, "certificate expired at {not_after} (checked at {at})")
            }
            ChainError::NotYetValid { not_before, at } => {
                write!(
                    f,
                    "certificate not valid before {not_before} (checked at {at})"
                )
            }
            ChainError::Revoked { serial } => {
                write!(f, "certificate {serial} or an issuer is revoked")
            }
            ChainError::BadSignature => f.write_str("a signature in the chain does not verify"),
            ChainError::WrongUsage => {
                f.write_str("certificate is not allowed for TLS client authentication")
            }
            ChainError::CaUsedAsLeaf => f.write_str("a CA certificate was presented as the leaf"),
            ChainError::NotACa => f.write_str("a certificate that is not a CA issued another"),
            ChainError::PathLenExceeded => f.write_str("a CA's path length constraint is exceeded"),
            ChainError::NameConstraints => f.write_str("a CA's name constraints are violated"),
            ChainError::Malformed(why) => write!(f, "malformed or unsupported: {why}"),
            ChainError::WrongName(why) => write!(f, "not valid for the server's name: {why}"),
        }
    }
}

impl std::error::Error for ChainError {}

fn to_datetime(t: UnixTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.as_secs() as i64).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn from_webpki(e: webpki::Error, leaf: &Certificate) -> ChainError {
    use webpki::Error as W;
    match e {
        W::UnknownIssuer => ChainError::UnknownIssuer,
        W::CertExpired { time, not_after } => ChainError::Expired {
            not_after: to_datetime(not_after),
            at: to_datetime(time),
        },
        W::CertNotValidYet { time, not_before } => ChainError::NotYetValid {
            not_before: to_datetime(not_before),
            at: to_datetime(time),
        },
        W::CertRevoked => ChainError::Revoked {
            serial: leaf.serial_hex(),
        },
        W::InvalidSignatureForPublicKey | W::InvalidCrlSignatureForPublicKey => {
            ChainError::BadSignature
        }
        W::RequiredEkuNotFoundContext(_) => ChainError::WrongUsage,
        W::CaUsedAsEndEntity => ChainError::CaUsedAsLeaf,
        W::EndEntityUsedAsCa | W::MaximumPathDepthExceeded => ChainError::NotACa,
        W::PathLenConstraintViolated => ChainError::PathLenExceeded,
        W::NameConstraintViolation => ChainError::NameConstraints,
        other => ChainError::Malformed(format!("{other:?}")),
    }
}

/// Verifies device certificates against a set of trusted roots, optionally with CRLs.
///
/// ```
/// use fleetkit::identity::{DeviceId, Signer, SoftwareKey};
/// use fleetkit::pki::{CaOptions, CertificateAuthority, ChainVerifier, DeviceCertOptions};
///
/// let root = CertificateAuthority::new_root(&CaOptions::new("Root"))?;
/// let ica = root.new_intermediate(&CaOptions::new("Issuing CA"))?;
/// let key = SoftwareKey::generate_p256()?;
/// let id = DeviceId::new("sensor-1")?;
/// let leaf = ica.issue(&id, key.public_key_spki(), &DeviceCertOptions::default())?;
///
/// let verifier = ChainVerifier::new(&[root.certificate().clone()])?;
/// verifier.verify(&leaf, &[ica.certificate().clone()])?;
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    roots: Vec<CertificateDer<'static>>,
    crls: Vec<Crl>,
    at: Option<OffsetDateTime>,
}

impl ChainVerifier {
    /// Trusts `roots`. Each must parse as a trust anchor.
    pub fn new(roots: &[Certificate]) -> crate::Result<Self> {
        for root in roots {
            webpki::anchor_from_trusted_cert(root.der()).map_err(|e| {
                crate::Error::invalid(
                    "trusted root",
                    format!("{} is not usable as a trust anchor: {e:?}", root.subject()),
                )
            })?;
        }
        Ok(ChainVerifier {
            roots: roots.iter().map(|r| r.der().clone()).collect(),
            crls: Vec::new(),
            at: None,
        })
    }

    /// Also checks revocation against `crls`. Certificates whose issuer has no CRL here are
    /// treated as not revoked.
    pub fn with_crls(mut self, crls: impl IntoIterator<Item = Crl>) -> Self {
        self.crls.extend(crls);
        self
    }

    /// Verifies as of `at` instead of now.
    pub fn at(mut self, at: OffsetDateTime) -> Self {
        self.at = Some(at);
        self
    }

    /// Verifies `leaf` (a TLS client certificate) through `intermediates` to a trusted root.
    pub fn verify(
        &self,
        leaf: &Certificate,
        intermediates: &[Certificate],
    ) -> Result<(), ChainError> {
        let anchors: Vec<TrustAnchor<'_>> = self
            .roots
            .iter()
            .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
            .collect();
        let intermediates: Vec<CertificateDer<'_>> =
            intermediates.iter().map(|c| c.der().clone()).collect();
        let end_entity =
            webpki::EndEntityCert::try_from(leaf.der()).map_err(|e| from_webpki(e, leaf))?;
        let time = match self.at {
            Some(at) => {
                UnixTime::since_unix_epoch(Duration::from_secs(at.unix_timestamp().max(0) as u64))
            }
            None => UnixTime::since_unix_epoch(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
        };
        let parsed_crls: Vec<webpki::CertRevocationList<'_>> = self
            .crls
            .iter()
            .map(|c| {
                webpki::BorrowedCertRevocationList::from_der(c.der())
                    .map(webpki::CertRevocationList::from)
                    .map_err(|e| ChainError::Malformed(format!("CRL: {e:?}")))
            })
            .collect::<Result<_, _>>()?;
        let crl_refs: Vec<&webpki::CertRevocationList<'_>> = parsed_crls.iter().collect();
        let revocation = if crl_refs.is_empty() {
            None
        } else {
            Some(
                webpki::RevocationOptionsBuilder::new(&crl_refs)
                    .map_err(|_| ChainError::Malformed("no CRLs".into()))?
                    .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                    .build(),
            )
        };
        let algs = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all;
        end_entity
            .verify_for_usage(
                algs,
                &anchors,
                &intermediates,
                time,
                webpki::KeyUsage::client_auth(),
                revocation,
                None,
            )
            .map(|_| ())
            .map_err(|e| from_webpki(e, leaf))
    }
}
