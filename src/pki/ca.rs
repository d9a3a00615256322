//! [`CertificateAuthority`]: create or import a CA, create intermediates, issue device certificates.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::{Certificate, DeviceCsr};
use crate::identity::{DeviceId, RcgenKey, Signer, SoftwareKey};
use crate::{Error, Result};

/// How to make a CA certificate.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct CaOptions {
    /// Subject common name.
    pub common_name: String,
    /// Subject organization, if any.
    pub organization: Option<String>,
    /// How long the CA is valid from now (capped at its issuer's end for intermediates).
    pub validity: Duration,
    /// basicConstraints pathLenConstraint: how many intermediate CAs may follow below this one.
    /// `None` means unconstrained for a root; for an intermediate the default is `Some(0)`.
    pub path_len: Option<u8>,
}

impl CaOptions {
    /// A CA named `common_name`, valid for 10 years, with default path length.
    pub fn new(common_name: impl Into<String>) -> Self {
        CaOptions {
            common_name: common_name.into(),
            organization: None,
            validity: Duration::from_secs(10 * 365 * 86_400),
            path_len: None,
        }
    }

    /// Sets the organization (O).
    pub fn with_organization(mut self, organization: impl Into<String>) -> Self {
        self.organization = Some(organization.into());
        self
    }

    /// Sets the validity period.
    pub fn with_validity(mut self, validity: Duration) -> Self {
        self.validity = validity;
        self
    }

    /// Sets pathLenConstraint.
    pub fn with_path_len(mut self, path_len: u8) -> Self {
        self.path_len = Some(path_len);
        self
    }
}

/// How to issue a device certificate.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct DeviceCertOptions {
    /// Validity from now; the certificate never outlives its issuer (it is cut to the issuer's
    /// end instead).
    pub validity: Duration,
    /// How far notBefore is set into the past, so devices with a slightly slow clock accept it.
    pub backdate: Duration,
    /// Extra subject alternative names as URIs (for example a DevID URN or SPIFFE id).
    pub uri_sans: Vec<String>,
    /// Subject organization, if any.
    pub organization: Option<String>,
}

impl Default for DeviceCertOptions {
    /// One year, backdated one hour, no extra names.
    fn default() -> Self {
        DeviceCertOptions {
            validity: Duration::from_secs(365 * 86_400),
            backdate: Duration::from_secs(3600),
            uri_sans: Vec::new(),
            organization: None,
        }
    }
}

impl DeviceCertOptions {
    /// Sets the validity period.
    pub fn with_validity(mut self, validity: Duration) -> Self {
        self.validity = validity;
        self
    }

    /// Adds a URI subject alternative name.
    pub fn with_uri_san(mut self, uri: impl Into<String>) -> Self {
        self.uri_sans.push(uri.into());
        self
    }

    /// Sets the subject organization (O).
    pub fn with_organization(mut self, organization: impl Into<String>) -> Self {
        self.organization = Some(organization.into());
        self
    }
}

/// A certificate authority: its certificate, the chain above it, and its signing key.
///
/// The CA decides what goes into every certificate it issues: a device certificate always has
/// `CN = <device id>`, extendedKeyUsage clientAuth, keyUsage digitalSignature, CA:FALSE, a
/// random 127-bit serial, and a validity inside the CA's own.
///
/// ```
/// use fleetkit::identity::{DeviceId, Signer, SoftwareKey};
/// use fleetkit::pki::{CaOptions, CertificateAuthority, DeviceCertOptions};
///
/// let root = CertificateAuthority::new_root(&CaOptions::new("Acme Root").with_path_len(1))?;
/// let issuing = root.new_intermediate(&CaOptions::new("Acme Devices 2026"))?;
///
/// let device_key = SoftwareKey::generate_p256()?;
/// let id = DeviceId::new("sensor-0042")?;
/// let cert = issuing.issue(&id, device_key.public_key_spki(), &DeviceCertOptions::default())?;
/// assert_eq!(cert.subject_common_name(), Some("sensor-0042"));
/// assert_eq!(cert.issuer_common_name(), Some("Acme Devices 2026"));
/// # Ok::<(), fleetkit::Error>(())
/// ```
pub struct CertificateAuthority {
    certificate: Certificate,
    /// Certificates above this CA, nearest first (empty for a root).
    parents: Vec<Certificate>,
    signer: Arc<dyn Signer>,
    issuer: Issuer<'static, RcgenKey>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.certificate.subject())
            .field("not_after", &self.certificate.not_after())
            .field("path_len", &self.certificate.path_len())
            .field("parents", &self.parents.len())
            .field("signer", &self.signer)
            .finish()
    }
}

impl CertificateAuthority {
    /// Creates a self-signed root CA with a new P-256 key.
    pub fn new_root(options: &CaOptions) -> Result<Self> {
        Self::new_root_with_key(options, Arc::new(SoftwareKey::generate_p256()?))
    }

    /// Creates a self-signed root CA whose key is `signer` (software, HSM or TPM).
    pub fn new_root_with_key(options: &CaOptions, signer: Arc<dyn Signer>) -> Result<Self> {
        let now = OffsetDateTime::now_utc();
        let params = ca_params(options, options.path_len, now, now + options.validity)?;
        let key = RcgenKey::new(signer.clone())?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::Crypto(format!("signing the root certificate: {e}")))?;
        Self::assemble(Certificate::from_der(cert.der())?, Vec::new(), signer)
    }

    /// Creates an intermediate CA below this one, with a new P-256 key.
    ///
    /// The default pathLenConstraint is 0 (it issues device certificates only). Fails with
    /// [`Error::InvalidInput`] if this CA's own path length forbids another CA below it.
    pub fn new_intermediate(&self, options: &CaOptions) -> Result<Self> {
        self.new_intermediate_with_key(options, Arc::new(SoftwareKey::generate_p256()?))
    }

    /// Creates an intermediate CA below this one whose key is `signer`.
    pub fn new_intermediate_with_key(
        &self,
        options: &CaOptions,
        signer: Arc<dyn Signer>,
    ) -> Result<Self> {
        let path_len = options.path_len.unwrap_or(0);
        if let Some(parent_len) = self.certificate.path_len() {
            if parent_len == 0 {
                return Err(Error::invalid(
                    "path_len",
                    format!(
                        "{} has pathLenConstraint 0: it may not issue CA certificates",
                        self.certificate.subject()
                    ),
                ));
            }
            if u32::from(path_len) >= parent_len {
                return Err(Error::invalid(
                    "path_len",
                    format!("{path_len} is not below the issuer's pathLenConstraint {parent_len}"),
                ));
            }
        }
        let (not_before, not_after) = self.validity_window(Duration::ZERO, options.validity)?;
        let mut params = ca_params(options, Some(path_len), not_before, not_after)?;
        params.use_authority_key_identifier_extension = true;
        let key = RcgenKey::new(signer.clone())?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| Error::Crypto(format!("signing the intermediate certificate: {e}")))?;
        let mut parents = vec![self.certificate.clone()];
        parents.extend(self.parents.iter().cloned());
        Self::assemble(Certificate::from_der(cert.der())?, parents, signer)
    }

    /// Imports an existing CA (for example one made with openssl) from its PEM certificate and
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    ///
    /// Checks that it is a CA (basicConstraints CA:TRUE, keyUsage keyCertSign when present) and
    /// that the key belongs to the certificate. `parents_pem` holds the certificates above it,
    /// nearest first (empty for a root).
    pub fn from_pem(cert_pem: &str, key_pem: &str, parents_pem: &str) -> Result<Self> {
        let certificate = Certificate::from_pem(cert_pem)?;
        let signer: Arc<dyn Signer> = Arc::new(SoftwareKey::from_pem(key_pem)?);
        let parents = if parents_pem.trim().is_empty() {
            Vec::new()
        } else {
            Certificate::chain_from_pem(parents_pem)?
        };
        Self::from_parts(certificate, parents, signer)
    }

    /// Assembles a CA from its parsed certificate, the certificates above it and its signer,
    /// checking that they fit together.
    pub fn from_parts(
        certificate: Certificate,
        parents: Vec<Certificate>,
        signer: Arc<dyn Signer>,
    ) -> Result<Self> {
        certificate.ensure_ca()?;
        if certificate.public_key_spki() != signer.public_key_spki() {
            return Err(Error::invalid(
                "private key",
                format!(
                    "does not belong to the CA certificate {}",
                    certificate.subject()
                ),
            ));
        }
        Self::assemble(certificate, parents, signer)
    }

    fn assemble(
        certificate: Certificate,
        parents: Vec<Certificate>,
        signer: Arc<dyn Signer>,
    ) -> Result<Self> {
        let issuer = Issuer::from_ca_cert_der(certificate.der(), RcgenKey::new(signer.clone())?)
            .map_err(|e| {
                Error::NotSupported(format!(
                    "CA subject {} cannot be used as an issuer name: {e}",
                    certificate.subject()
                ))
            })?;
        Ok(CertificateAuthority {
            certificate,
            parents,
            signer,
            issuer,
        })
    }

    /// This CA's certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// The certificates above this CA, nearest first (empty for a root).
    pub fn parents(&self) -> &[Certificate] {
        &self.parents
    }

    /// The certificates a device presents after its own: this CA and its parents except the
    /// self-signed root.
    pub fn chain_for_devices(&self) -> Vec<Certificate> {
        std::iter::once(&self.certificate)
            .chain(self.parents.iter())
            .filter(|c| c.subject_der() != c.issuer_der())
            .cloned()
            .collect()
    }

    /// The root at the top of this CA's chain (itself for a root).
    pub fn root(&self) -> &Certificate {
        self.parents.last().unwrap_or(&self.certificate)
    }

    /// This CA's signer.
    pub fn signer(&self) -> &Arc<dyn Signer> {
        &self.signer
    }

    pub(crate) fn rcgen_issuer(&self) -> &Issuer<'static, RcgenKey> {
        &self.issuer
    }

    /// The window `[now - backdate, now + validity]` cut to this CA's own validity.
    fn validity_window(
        &self,
        backdate: Duration,
        validity: Duration,
    ) -> Result<(OffsetDateTime, OffsetDateTime)> {
        let now = OffsetDateTime::now_utc();
        let ca = &self.certificate;
        if now > ca.not_after() {
            return Err(Error::Expired(format!(
                "issuer {} expired at {}; it cannot issue certificates",
                ca.subject(),
                ca.not_after()
            )));
        }
        if now < ca.not_before() {
            return Err(Error::Expired(format!(
                "issuer {} is not valid before {}",
                ca.subject(),
                ca.not_before()
            )));
        }
        let not_before = (now - backdate).max(ca.not_before());
        let not_after = (now + validity).min(ca.not_after());
        Ok((not_before, not_after))
    }

    /// Issues a device certificate for the public key `spki` (DER SubjectPublicKeyInfo).
    ///
    /// Used when the device's key was generated elsewhere (on the device, or in a factory HSM)
    /// and only its public half is at hand.
    pub fn issue(
        &self,
        device: &DeviceId,
        spki: &[u8],
        options: &DeviceCertOptions,
    ) -> Result<Certificate> {
        Certificate::from_der(self.issue_der(device, spki, options)?.as_ref())
    }

    /// Like [`issue`](Self::issue), but returns the DER without parsing it back: the path for
    /// minting certificates at factory rates.
    pub fn issue_der(
        &self,
        device: &DeviceId,
        spki: &[u8],
        options: &DeviceCertOptions,
    ) -> Result<CertificateDer<'static>> {
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki).map_err(|e| {
            Error::invalid(
                "public key",
                format!("not a supported SubjectPublicKeyInfo: {e}"),
            )
        })?;
        let (not_before, not_after) = self.validity_window(options.backdate, options.validity)?;
        let mut params = base_params(
            device.as_str(),
            options.organization.as_deref(),
            not_before,
            not_after,
        )?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        for uri in &options.uri_sans {
            params.subject_alt_names.push(rcgen::SanType::URI(
                uri.as_str()
                    .try_into()
                    .map_err(|e| Error::invalid("uri_sans", format!("{uri:?}: {e}")))?,
            ));
        }
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| Error::Crypto(format!("signing the device certificate: {e}")))?;
        Ok(cert.der().clone())
    }

    /// Issues a device certificate for a CSR, after checking its signature.
    ///
    /// Only the CSR's public key is used: the CA sets every field itself, so requested
    /// extensions never reach the certificate. A CSR whose subject names another device is
    /// refused with [`Error::PermissionDenied`]; a CSR asking for CA:TRUE was already refused
    /// when it was parsed.
    pub fn issue_for_csr(
        &self,
        device: &DeviceId,
        csr: &DeviceCsr,
        options: &DeviceCertOptions,
    ) -> Result<Certificate> {
        if let Some(cn) = csr.subject_common_name()
            && cn != device.as_str()
        {
            return Err(Error::PermissionDenied(format!(
                "the CSR asks for CN={cn:?} but is being signed for device {device}"
            )));
        }
        self.issue(device, csr.public_key_spki(), options)
    }
}

fn ca_params(
    options: &CaOptions,
    path_len: Option<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams> {
    if options.common_name.trim().is_empty() {
        return Err(Error::invalid("common_name", "a CA needs a common name"));
    }
    if options.validity.is_zero() {
        return Err(Error::invalid("validity", "must be longer than zero"));
    }
    let mut params = base_params(
        &options.common_name,
        options.organization.as_deref(),
        not_before,
        not_after,
    )?;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Subject (CN, optional O), validity and a fresh serial: what every certificate gets.
fn base_params(
    common_name: &str,
    organization: Option<&str>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    params.distinguished_name = dn;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// A random positive serial of 127 bits (16 bytes, top bit clear, second bit set so the DER
/// length is always 16): far above the 64 bits of entropy CA/B rules ask for.
pub(crate) fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Crypto("the system random source failed".into()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}
