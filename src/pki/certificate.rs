//! [`Certificate`]: a parsed X.509 certificate, its fields, fingerprints and encodings.

use std::fmt;
use std::net::IpAddr;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{hex_lower, hex_upper};
use crate::identity::KeyAlgorithm;
use crate::{Error, Result};

/// A subject alternative name.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectAltName {
    /// A DNS name.
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
    /// A URI (for example a SPIFFE id or a DevID URN).
    Uri(String),
    /// An e-mail address.
    Email(String),
    /// Any other kind of name, kept as a description.
    Other(String),
}

/// Key usages from the `keyUsage` extension.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    /// digitalSignature: the key signs (TLS client authentication).
    DigitalSignature,
    /// nonRepudiation / contentCommitment.
    ContentCommitment,
    /// keyEncipherment.
    KeyEncipherment,
    /// dataEncipherment.
    DataEncipherment,
    /// keyAgreement.
    KeyAgreement,
    /// keyCertSign: the key signs certificates (CAs).
    KeyCertSign,
    /// cRLSign: the key signs revocation lists (CAs).
    CrlSign,
}

/// Purposes from the `extendedKeyUsage` extension.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExtendedKeyUsage {
    /// TLS server authentication.
    ServerAuth,
    /// TLS client authentication (what a device certificate needs).
    ClientAuth,
    /// Any purpose.
    Any,
    /// Another purpose, by dotted OID.
    Other(String),
}

/// A parsed X.509 certificate.
///
/// Parsing happens once, in [`from_der`](Certificate::from_der) or
/// [`from_pem`](Certificate::from_pem); the accessors then return owned, already-decoded values.
///
/// ```
/// use fleetkit::pki::{CaOptions, CertificateAuthority};
///
/// let root = CertificateAuthority::new_root(&CaOptions::new("Acme Root"))?;
/// let cert = root.certificate();
/// assert_eq!(cert.subject_common_name(), Some("Acme Root"));
/// assert!(cert.is_ca());
/// assert_eq!(cert.fingerprint_sha256().len(), 64); // AWS IoT's certificate id
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Clone)]
pub struct Certificate {
    der: CertificateDer<'static>,
    subject: String,
    subject_cn: Option<String>,
    issuer: String,
    issuer_cn: Option<String>,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
    serial: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    sans: Vec<SubjectAltName>,
    key_usage: Vec<KeyUsage>,
    extended_key_usage: Vec<ExtendedKeyUsage>,
    ca: Option<Option<u32>>,
    subject_key_id: Option<Vec<u8>>,
    authority_key_id: Option<Vec<u8>>,
    spki: Vec<u8>,
    key_algorithm: Option<KeyAlgorithm>,
}

fn bad_cert(reason: impl Into<String>) -> Error {
    Error::invalid("certificate", reason)
}

impl Certificate {
    /// Parses a DER certificate. Trailing bytes and unparsable extensions are errors.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (rest, x509) = X509Certificate::from_der(der)
            .map_err(|e| bad_cert(format!("not a DER X.509 certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(bad_cert(format!(
                "{} trailing bytes after the certificate",
                rest.len()
            )));
        }
        let ext_err = |what: &str, e: x509_parser::error::X509Error| {
            bad_cert(format!("malformed {what} extension: {e}"))
        };
        let sans = match x509
            .subject_alternative_name()
            .map_err(|e| ext_err("subjectAltName", e))?
        {
            Some(ext) => ext
                .value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(s) => SubjectAltName::Dns(s.to_string()),
                    GeneralName::URI(s) => SubjectAltName::Uri(s.to_string()),
                    GeneralName::RFC822Name(s) => SubjectAltName::Email(s.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => SubjectAltName::Ip(IpAddr::from(
                            <[u8; 4]>::try_from(*b).unwrap_or_default(),
                        )),
                        16 => SubjectAltName::Ip(IpAddr::from(
                            <[u8; 16]>::try_from(*b).unwrap_or_default(),
                        )),
                        _ => SubjectAltName::Other(format!("IP address of {} bytes", b.len())),
                    },
                    other => SubjectAltName::Other(format!("{other:?}")),
                })
                .collect(),
            None => Vec::new(),
        };
        let mut key_usage = Vec::new();
        if let Some(ku) = x509.key_usage().map_err(|e| ext_err("keyUsage", e))? {
            let ku = ku.value;
            for (set, usage) in [
                (ku.digital_signature(), KeyUsage::DigitalSignature),
                (ku.non_repudiation(), KeyUsage::ContentCommitment),
                (ku.key_encipherment(), KeyUsage::KeyEncipherment),
                (ku.data_encipherment(), KeyUsage::DataEncipherment),
                (ku.key_agreement(), KeyUsage::KeyAgreement),
                (ku.key_cert_sign(), KeyUsage::KeyCertSign),
                (ku.crl_sign(), KeyUsage::CrlSign),
            ] {
                if set {
                    key_usage.push(usage);
                }
            }
        }
        let mut extended_key_usage = Vec::new();
        if let Some(eku) = x509
            .extended_key_usage()
            .map_err(|e| ext_err("extendedKeyUsage", e))?
        {
            let eku = eku.value;
            if eku.server_auth {
                extended_key_usage.push(ExtendedKeyUsage::ServerAuth);
            }
            if eku.client_auth {
                extended_key_usage.push(ExtendedKeyUsage::ClientAuth);
            }
            if eku.any {
                extended_key_usage.push(ExtendedKeyUsage::Any);
            }
            for oid in &eku.other {
                extended_key_usage.push(ExtendedKeyUsage::Other(oid.to_id_string()));
            }
        }
        let ca = x509
            .basic_constraints()
            .map_err(|e| ext_err("basicConstraints", e))?
            .and_then(|bc| bc.value.ca.then_some(bc.value.path_len_constraint));
        let mut subject_key_id = None;
        let mut authority_key_id = None;
        for ext in x509.extensions() {
            match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    subject_key_id = Some(id.0.to_vec())
                }
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    authority_key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                x509_parser::extensions::ParsedExtension::ParseError { error } => {
                    return Err(bad_cert(format!(
                        "malformed extension {}: {error}",
                        ext.oid.to_id_string()
                    )));
                }
                _ => {}
            }
        }
        let spki = x509.public_key().raw.to_vec();
        let key_algorithm = key_algorithm_of(&x509);
        let cn = |name: &x509_parser::x509::X509Name<'_>| {
            name.iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned)
        };
        Ok(Certificate {
            subject: x509.subject().to_string(),
            subject_cn: cn(x509.subject()),
            issuer: x509.issuer().to_string(),
            issuer_cn: cn(x509.issuer()),
            subject_raw: x509.subject().as_raw().to_vec(),
            issuer_raw: x509.issuer().as_raw().to_vec(),
            serial: strip_leading_zeros(x509.raw_serial()).to_vec(),
            not_before: x509.validity().not_before.to_datetime(),
            not_after: x509.validity().not_after.to_datetime(),
            sans,
            key_usage,
            extended_key_usage,
            ca,
            subject_key_id,
            authority_key_id,
            spki,
            key_algorithm,
            der: CertificateDer::from(der.to_vec()),
        })
    }

    /// Parses the first `CERTIFICATE` block of a PEM text.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| bad_cert(format!("no readable CERTIFICATE PEM block: {e}")))?;
        Self::from_der(der.as_ref())
    }

    /// Parses every `CERTIFICATE` block of a PEM text, in order.
    pub fn chain_from_pem(pem: &str) -> Result<Vec<Self>> {
        let ders = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad_cert(format!("malformed PEM: {e}")))?;
        if ders.is_empty() {
            return Err(bad_cert("no CERTIFICATE PEM block found"));
        }
        ders.iter().map(|d| Self::from_der(d.as_ref())).collect()
    }

    /// The DER encoding.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The PEM encoding (`-----BEGIN CERTIFICATE-----`).
    pub fn to_pem(&self) -> String {
        crate::identity::pem_encode("CERTIFICATE", self.der.as_ref())
    }

    /// The subject as an RFC 4514-style string, e.g. `CN=sensor-1, O=Acme`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The subject's first common name.
    pub fn subject_common_name(&self) -> Option<&str> {
        self.subject_cn.as_deref()
    }

    /// The issuer as an RFC 4514-style string.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The issuer's first common name.
    pub fn issuer_common_name(&self) -> Option<&str> {
        self.issuer_cn.as_deref()
    }

    /// The DER-encoded subject name, exactly as in the certificate.
    pub fn subject_der(&self) -> &[u8] {
        &self.subject_raw
    }

    /// The DER-encoded issuer name, exactly as in the certificate.
    pub fn issuer_der(&self) -> &[u8] {
        &self.issuer_raw
    }

    /// The serial number as big-endian bytes without leading zeros.
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// The serial number as lowercase hex (as `openssl x509 -serial` prints it, lowercased).
    pub fn serial_hex(&self) -> String {
        hex_lower(&self.serial)
    }

    /// Start of the validity period.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// End of the validity period.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Whether `at` lies within the validity period.
    pub fn is_valid_at(&self, at: OffsetDateTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    /// Subject alternative names.
    pub fn subject_alt_names(&self) -> &[SubjectAltName] {
        &self.sans
    }

    /// Key usages (empty when the extension is absent).
    pub fn key_usage(&self) -> &[KeyUsage] {
        &self.key_usage
    }

    /// Extended key usages (empty when the extension is absent).
    pub fn extended_key_usage(&self) -> &[ExtendedKeyUsage] {
        &self.extended_key_usage
    }

    /// Whether basicConstraints says CA:TRUE.
    pub fn is_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// Checks the certificate may act as a CA: basicConstraints CA:TRUE, and keyUsage
    /// keyCertSign when a keyUsage extension is present. The error names field `CA certificate`.
    pub fn ensure_ca(&self) -> Result<()> {
        if !self.is_ca() {
            return Err(Error::invalid(
                "CA certificate",
                format!(
                    "{} is not a CA (basicConstraints CA:TRUE missing)",
                    self.subject()
                ),
            ));
        }
        if !self.key_usage.is_empty() && !self.key_usage.contains(&KeyUsage::KeyCertSign) {
            return Err(Error::invalid(
                "CA certificate",
                format!("{} lacks keyUsage keyCertSign", self.subject()),
            ));
        }
        Ok(())
    }

    /// For a CA, its pathLenConstraint (`None`: unconstrained). `None` for non-CAs too.
    pub fn path_len(&self) -> Option<u32> {
        self.ca.flatten()
    }

    /// The subjectKeyIdentifier, if present.
    pub fn subject_key_id(&self) -> Option<&[u8]> {
        self.subject_key_id.as_deref()
    }

    /// The authorityKeyIdentifier's key id, if present.
    pub fn authority_key_id(&self) -> Option<&[u8]> {
        self.authority_key_id.as_deref()
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub fn public_key_spki(&self) -> &[u8] {
        &self.spki
    }

    /// The public key's algorithm, if it is one fleetkit can sign with.
    pub fn key_algorithm(&self) -> Option<KeyAlgorithm> {
        self.key_algorithm
    }

    /// SHA-256 of the DER, lowercase hex: AWS IoT's certificate id.
    pub fn fingerprint_sha256(&self) -> String {
        hex_lower(ring::digest::digest(&ring::digest::SHA256, self.der.as_ref()).as_ref())
    }

    /// SHA-256 of the DER, uppercase hex: Azure's SHA-256 thumbprint.
    pub fn thumbprint_sha256(&self) -> String {
        hex_upper(ring::digest::digest(&ring::digest::SHA256, self.der.as_ref()).as_ref())
    }

    /// SHA-1 of the DER, uppercase hex: Azure's (legacy) X.509 thumbprint.
    pub fn thumbprint_sha1(&self) -> String {
        hex_upper(
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, self.der.as_ref())
                .as_ref(),
        )
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject)
            .field("issuer", &self.issuer)
            .field("serial", &self.serial_hex())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for Certificate {}

fn key_algorithm_of(x509: &X509Certificate<'_>) -> Option<KeyAlgorithm> {
    use x509_parser::public_key::PublicKey;
    let spki = x509.public_key();
    match spki.parsed().ok()? {
        PublicKey::RSA(rsa) => Some(KeyAlgorithm::Rsa {
            bits: (strip_leading_zeros(rsa.modulus).len() * 8) as u32,
        }),
        PublicKey::EC(_) => {
            let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
            (curve.to_id_string() == "1.2.840.10045.3.1.7").then_some(KeyAlgorithm::EcdsaP256)
        }
        _ => None,
    }
}

pub(crate) fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    &bytes[start..]
}
