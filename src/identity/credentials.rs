//! [`Credentials`]: what a device presents to prove who it is.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use zeroize::Zeroizing;

use super::Signer;
use crate::pki::Certificate;
use crate::{Error, Result};

/// The ways a device can authenticate.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub enum Credentials {
    /// A shared secret from which tokens are derived (Azure SAS, DPS group enrollment).
    SymmetricKey(SymmetricKey),
    /// An X.509 certificate chain and the private key of its leaf (mutual TLS).
    X509(X509Credential),
    /// A key that signs JWTs whose public half is registered with the cloud (GCP / ClearBlade).
    JwtKey(Arc<dyn Signer>),
}

/// A symmetric key: zeroized on drop, never shown by `Debug`.
///
/// ```
/// use fleetkit::identity::SymmetricKey;
/// let key = SymmetricKey::from_base64("NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=")?;
/// assert_eq!(format!("{key:?}"), "SymmetricKey(<32 bytes redacted>)");
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Clone)]
pub struct SymmetricKey(Zeroizing<Vec<u8>>);

impl SymmetricKey {
    /// Wraps raw key bytes. Refuses an empty key.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self> {
        let bytes = Zeroizing::new(bytes.into());
        if bytes.is_empty() {
            return Err(Error::invalid("symmetric key", "is empty"));
        }
        Ok(SymmetricKey(bytes))
    }

    /// Decodes a standard-alphabet base64 key, as Azure shows them.
    pub fn from_base64(text: &str) -> Result<Self> {
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| Error::invalid("symmetric key", format!("not valid base64: {e}")))?,
        );
        Self::new(bytes.to_vec())
    }

    /// The key bytes. Keep what you derive from them out of logs too.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// The key as standard base64 text.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*self.0))
    }
}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SymmetricKey(<{} bytes redacted>)", self.0.len())
    }
}

impl PartialEq for SymmetricKey {
    /// Constant-time comparison.
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SymmetricKey {}

/// A certificate chain (leaf first) with the [`Signer`] holding the leaf's private key.
///
/// Construction checks that the key belongs to the leaf certificate, so a credential that exists
/// is one that can complete a TLS handshake.
#[derive(Clone)]
pub struct X509Credential {
    chain: Vec<CertificateDer<'static>>,
    leaf: Arc<Certificate>,
    signer: Arc<dyn Signer>,
}

impl X509Credential {
    /// Pairs `chain` (leaf first, then intermediates; the root may be omitted) with `signer`.
    ///
    /// Fails with [`Error::InvalidInput`] (field `private key`) if the signer's public key is
    /// not the leaf's, or (field `certificate`) if the chain is empty or the leaf unparsable.
    pub fn new(chain: Vec<CertificateDer<'static>>, signer: Arc<dyn Signer>) -> Result<Self> {
        let first = chain
            .first()
            .ok_or_else(|| Error::invalid("certificate", "the chain is empty"))?;
        let leaf = Arc::new(Certificate::from_der(first.as_ref())?);
        if leaf.public_key_spki() != signer.public_key_spki() {
            return Err(Error::invalid(
                "private key",
                format!(
                    "does not belong to the certificate for {:?} (serial {})",
                    leaf.subject_common_name().unwrap_or("<no CN>"),
                    leaf.serial_hex()
                ),
            ));
        }
        Ok(X509Credential {
            chain,
            leaf,
            signer,
        })
    }

    /// Pairs a PEM chain (leaf first) with `signer`.
    pub fn from_pem(chain_pem: &str, signer: Arc<dyn Signer>) -> Result<Self> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid("certificate", format!("malformed PEM: {e}")))?;
        Self::new(chain, signer)
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The parsed leaf certificate.
    pub fn leaf(&self) -> &Certificate {
        &self.leaf
    }

    /// The leaf's private key.
    pub fn signer(&self) -> &Arc<dyn Signer> {
        &self.signer
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| super::signer::pem_encode("CERTIFICATE", c.as_ref()))
            .collect()
    }
}

impl fmt::Debug for X509Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Credential")
            .field("subject", &self.leaf.subject())
            .field("serial", &self.leaf.serial_hex())
            .field("not_after", &self.leaf.not_after())
            .field("chain_len", &self.chain.len())
            .field("signer", &self.signer)
            .finish()
    }
}
