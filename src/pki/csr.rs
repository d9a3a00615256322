//! Certificate signing requests: built on the device from any [`Signer`], checked by the CA.

use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, ParsedExtension, X509CertificationRequest};

use crate::identity::{DeviceId, RcgenKey, Signer};
use crate::{Error, Result};

/// Builds a PKCS#10 CSR for `device` signed by `signer`; the private key never leaves it.
///
/// The subject is `CN = <device id>`; nothing else is requested, since the CA decides the
/// certificate's content anyway.
///
/// ```
/// use std::sync::Arc;
/// use fleetkit::identity::{DeviceId, SoftwareKey};
/// use fleetkit::pki::{build_csr, DeviceCsr};
///
/// let key = Arc::new(SoftwareKey::generate_p256()?);
/// let csr = build_csr(key, &DeviceId::new("sensor-7")?)?;
/// let checked = DeviceCsr::from_pem(&csr.to_pem())?; // what the CA side does
/// assert_eq!(checked.subject_common_name(), Some("sensor-7"));
/// # Ok::<(), fleetkit::Error>(())
/// ```
pub fn build_csr(signer: Arc<dyn Signer>, device: &DeviceId) -> Result<DeviceCsr> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, device.as_str());
    params.distinguished_name = dn;
    let key = RcgenKey::new(signer)?;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| Error::Crypto(format!("signing the CSR: {e}")))?;
    DeviceCsr::from_der(csr.der().as_ref())
}

/// A parsed PKCS#10 CSR whose signature has been verified.
///
/// Parsing refuses, with [`Error::InvalidInput`] (field `csr`): malformed DER or PEM, a
/// signature that does not verify with the CSR's own key, and a request for
/// basicConstraints CA:TRUE. Other requested extensions are recorded in
/// [`requested_extensions`](DeviceCsr::requested_extensions) but never copied into a
/// certificate.
#[derive(Clone, Debug)]
pub struct DeviceCsr {
    der: Vec<u8>,
    subject_cn: Option<String>,
    spki: Vec<u8>,
    requested_extensions: Vec<String>,
}

fn bad_csr(reason: impl Into<String>) -> Error {
    Error::invalid("csr", reason)
}

impl DeviceCsr {
    /// Parses and verifies a DER CSR.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| bad_csr(format!("not a DER PKCS#10 request: {e}")))?;
        if !rest.is_empty() {
            return Err(bad_csr(format!(
                "{} trailing bytes after the request",
                rest.len()
            )));
        }
        csr.verify_signature()
            .map_err(|e| bad_csr(format!("the signature does not verify ({e})")))?;
        let info = &csr.certification_request_info;
        let mut requested_extensions = Vec::new();
        if let Some(exts) = csr.requested_extensions() {
            for ext in exts {
                match ext {
                    ParsedExtension::BasicConstraints(bc) if bc.ca => {
                        return Err(bad_csr(
                            "requests basicConstraints CA:TRUE; a device certificate is never a CA",
                        ));
                    }
                    ParsedExtension::ParseError { error } => {
                        return Err(bad_csr(format!("malformed requested extension: {error}")));
                    }
                    other => requested_extensions.push(format!("{other:?}")),
                }
            }
        }
        let subject_cn = info
            .subject
            .iter_common_name()
            .next()
            .map(|cn| {
                cn.as_str()
                    .map(str::to_owned)
                    .map_err(|e| bad_csr(format!("subject CN is not a string: {e}")))
            })
            .transpose()?;
        Ok(DeviceCsr {
            der: der.to_vec(),
            subject_cn,
            spki: info.subject_pki.raw.to_vec(),
            requested_extensions,
        })
    }

    /// Parses and verifies a PEM CSR (`-----BEGIN CERTIFICATE REQUEST-----`).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| bad_csr(format!("no readable CERTIFICATE REQUEST PEM block: {e}")))?;
        Self::from_der(der.as_ref())
    }

    /// The subject's common name, if any.
    pub fn subject_common_name(&self) -> Option<&str> {
        self.subject_cn.as_deref()
    }

    /// The requested public key, as a DER SubjectPublicKeyInfo.
    pub fn public_key_spki(&self) -> &[u8] {
        &self.spki
    }

    /// Descriptions of the extensions the CSR asked for (ignored when issuing).
    pub fn requested_extensions(&self) -> &[String] {
        &self.requested_extensions
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The PEM encoding.
    pub fn to_pem(&self) -> String {
        crate::identity::pem_encode("CERTIFICATE REQUEST", &self.der)
    }
}
