//! Adapters that let any [`Signer`] act as a rustls client key and as an rcgen signing key.
//!
//! These are the only places where a key meets rustls or rcgen, so a PKCS#11 or TPM signer added
//! later works for TLS client authentication, certificate issuing and CSRs with no other change.

use std::fmt;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};

use super::{KeyAlgorithm, SignatureScheme, Signer};
use crate::{Error, Result};

/// A [`Signer`] seen as a [`rustls::sign::SigningKey`].
///
/// ```
/// use std::sync::Arc;
/// use fleetkit::identity::{SoftwareKey, TlsSigningKey};
///
/// let key = Arc::new(SoftwareKey::generate_p256()?);
/// let tls_key: Arc<dyn rustls::sign::SigningKey> = Arc::new(TlsSigningKey::new(key));
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Clone)]
pub struct TlsSigningKey {
    signer: Arc<dyn Signer>,
}

impl TlsSigningKey {
    /// Wraps `signer`.
    pub fn new(signer: Arc<dyn Signer>) -> Self {
        TlsSigningKey { signer }
    }
}

impl fmt::Debug for TlsSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TlsSigningKey").field(&self.signer).finish()
    }
}

fn to_rustls(scheme: SignatureScheme) -> rustls::SignatureScheme {
    match scheme {
        SignatureScheme::EcdsaP256Sha256 => rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::RsaPkcs1Sha256 => rustls::SignatureScheme::RSA_PKCS1_SHA256,
        SignatureScheme::RsaPssSha256 => rustls::SignatureScheme::RSA_PSS_SHA256,
    }
}

impl rustls::sign::SigningKey for TlsSigningKey {
    fn choose_scheme(
        &self,
        offered: &[rustls::SignatureScheme],
    ) -> Option<Box<dyn rustls::sign::Signer>> {
        // Our preference order wins: for RSA that puts PSS first, which TLS 1.3 requires.
        self.signer
            .schemes()
            .iter()
            .copied()
            .find(|s| offered.contains(&to_rustls(*s)))
            .map(|scheme| {
                Box::new(TlsSigner {
                    signer: self.signer.clone(),
                    scheme,
                }) as Box<dyn rustls::sign::Signer>
            })
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.signer.public_key_spki()))
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        match self.signer.algorithm() {
            KeyAlgorithm::EcdsaP256 => rustls::SignatureAlgorithm::ECDSA,
            KeyAlgorithm::Rsa { .. } => rustls::SignatureAlgorithm::RSA,
        }
    }
}

struct TlsSigner {
    signer: Arc<dyn Signer>,
    scheme: SignatureScheme,
}

impl fmt::Debug for TlsSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSigner")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl rustls::sign::Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, rustls::Error> {
        self.signer
            .sign(self.scheme, message)
            .map_err(|e| rustls::Error::General(format!("client key could not sign: {e}")))
    }

    fn scheme(&self) -> rustls::SignatureScheme {
        to_rustls(self.scheme)
    }
}

/// Presents a device's certificate chain and [`Signer`] to TLS servers that ask for a client
/// certificate (mutual TLS).
///
/// ```no_run
/// use std::sync::Arc;
/// use fleetkit::identity::{ClientIdentity, X509Credential};
///
/// # fn f(credential: X509Credential, roots: rustls::RootCertStore) -> fleetkit::Result<()> {
/// let provider = Arc::new(rustls::crypto::ring::default_provider());
/// let config = rustls::ClientConfig::builder_with_provider(provider)
///     .with_safe_default_protocol_versions()
///     .expect("ring supports TLS 1.2 and 1.3")
///     .with_root_certificates(roots)
///     .with_client_cert_resolver(Arc::new(ClientIdentity::new(&credential)?));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ClientIdentity {
    certified: Arc<CertifiedKey>,
}

impl ClientIdentity {
    /// Builds the identity from a credential (its chain, leaf first, and its signer).
    pub fn new(credential: &super::X509Credential) -> Result<Self> {
        Self::from_parts(credential.chain().to_vec(), credential.signer().clone())
    }

    /// Builds the identity from a chain (leaf first) and a signer whose public key is the leaf's.
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        signer: Arc<dyn Signer>,
    ) -> Result<Self> {
        let key: Arc<dyn rustls::sign::SigningKey> = Arc::new(TlsSigningKey::new(signer));
        let certified = CertifiedKey::new(chain, key);
        certified.keys_match().map_err(|e| {
            Error::invalid(
                "private key",
                format!("does not belong to the certificate ({e})"),
            )
        })?;
        Ok(ClientIdentity {
            certified: Arc::new(certified),
        })
    }
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certified
            .key
            .choose_scheme(schemes)
            .map(|_| self.certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A [`Signer`] seen as an [`rcgen::SigningKey`], for signing certificates, CSRs and CRLs.
pub struct RcgenKey {
    signer: Arc<dyn Signer>,
    /// The contents of the SPKI's BIT STRING: what rcgen calls the key's "DER bytes".
    public_key_bits: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
    scheme: SignatureScheme,
}

impl RcgenKey {
    /// Wraps `signer`. X.509 signatures use ECDSA-SHA256 or RSA PKCS#1 v1.5 with SHA-256.
    pub fn new(signer: Arc<dyn Signer>) -> Result<Self> {
        let (algorithm, scheme) = match signer.algorithm() {
            KeyAlgorithm::EcdsaP256 => (
                &rcgen::PKCS_ECDSA_P256_SHA256,
                SignatureScheme::EcdsaP256Sha256,
            ),
            KeyAlgorithm::Rsa { .. } => (&rcgen::PKCS_RSA_SHA256, SignatureScheme::RsaPkcs1Sha256),
        };
        let public_key_bits = spki_bits(signer.public_key_spki())?;
        Ok(RcgenKey {
            signer,
            public_key_bits,
            algorithm,
            scheme,
        })
    }
}

impl fmt::Debug for RcgenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RcgenKey").field(&self.signer).finish()
    }
}

impl rcgen::PublicKeyData for RcgenKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key_bits
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

impl rcgen::SigningKey for RcgenKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.signer
            .sign(self.scheme, msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// Extracts the subjectPublicKey BIT STRING contents from a DER SubjectPublicKeyInfo.
fn spki_bits(spki: &[u8]) -> Result<Vec<u8>> {
    use x509_parser::prelude::FromDer;
    let (rest, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki)
        .map_err(|e| Error::invalid("public key", format!("not a SubjectPublicKeyInfo: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::invalid(
            "public key",
            "trailing bytes after the SubjectPublicKeyInfo",
        ));
    }
    Ok(info.subject_public_key.data.to_vec())
}
