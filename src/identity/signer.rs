//! Private keys behind a trait: [`Signer`] and the software implementation [`SoftwareKey`].
//!
//! Everything in fleetkit that needs a private key — the TLS client handshake, certificate and
//! CSR signing, JWT minting — goes through [`Signer`]. A key in a file, a PKCS#11 token or a TPM
//! then works the same: implement the trait, and [`TlsSigningKey`](super::TlsSigningKey) and
//! [`RcgenKey`](super::RcgenKey) adapt it for rustls and rcgen without further changes.

use std::fmt;
use std::sync::Arc;

use p256::pkcs8::der::{Decode, Encode};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ring::rand::SystemRandom;
use ring::signature::{self as ring_sig, KeyPair as _};
use rustls_pki_types::pem::{PemObject, SectionKind};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The kind of key a [`Signer`] holds.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 (secp256r1): the default for new device keys.
    EcdsaP256,
    /// RSA with a modulus of `bits` bits (AWS `CreateKeysAndCertificate` hands out 2048-bit keys).
    Rsa {
        /// Modulus size in bits.
        bits: u32,
    },
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyAlgorithm::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyAlgorithm::Rsa { bits } => write!(f, "RSA-{bits}"),
        }
    }
}

/// A signature scheme: key type, hash and padding.
///
/// ECDSA signatures are always returned ASN.1 DER encoded (as X.509 and TLS want them); JWT code
/// converts to the fixed-width form itself.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureScheme {
    /// ECDSA P-256 with SHA-256, DER-encoded signature.
    EcdsaP256Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (X.509, TLS 1.2).
    RsaPkcs1Sha256,
    /// RSASSA-PSS with SHA-256, salt length 32 (TLS 1.3 requires PSS for RSA).
    RsaPssSha256,
}

/// A private key that can sign but need not be readable.
///
/// Signing is synchronous because rustls calls it inside the TLS handshake. Implementations for
/// slow hardware (a TPM signs in tens to hundreds of milliseconds) should not hold a global lock
/// across [`sign`](Signer::sign).
pub trait Signer: Send + Sync + fmt::Debug {
    /// The key's algorithm.
    fn algorithm(&self) -> KeyAlgorithm;

    /// The public key as a DER-encoded X.509 `SubjectPublicKeyInfo`.
    fn public_key_spki(&self) -> &[u8];

    /// The schemes this key can sign with, most preferred first.
    fn schemes(&self) -> &[SignatureScheme];

    /// Signs `message` (the signer hashes it) with `scheme`.
    ///
    /// Returns [`Error::NotSupported`] for a scheme not in [`schemes`](Signer::schemes).
    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>>;

    /// The private key as PKCS#8 DER, if the key may leave its store.
    ///
    /// Hardware keys return [`Error::NotSupported`], which is the default.
    fn export_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>> {
        Err(Error::NotSupported(format!(
            "the {} key in {:?} cannot be exported",
            self.algorithm(),
            self
        )))
    }
}

impl<S: Signer + ?Sized> Signer for Arc<S> {
    fn algorithm(&self) -> KeyAlgorithm {
        (**self).algorithm()
    }
    fn public_key_spki(&self) -> &[u8] {
        (**self).public_key_spki()
    }
    fn schemes(&self) -> &[SignatureScheme] {
        (**self).schemes()
    }
    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>> {
        (**self).sign(scheme, message)
    }
    fn export_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>> {
        (**self).export_pkcs8_der()
    }
}

/// A private key held in memory: P-256 (generate, import, export) or RSA (import and use).
///
/// Signing uses *ring*. The key material is zeroized when dropped and never appears in `Debug`
/// output, which shows only the algorithm and the SHA-256 of the public key.
///
/// ```
/// use fleetkit::identity::{Signer, SignatureScheme, SoftwareKey};
///
/// let key = SoftwareKey::generate_p256()?;
/// let pem = key.to_pkcs8_pem()?;            // write it 0600 (CredentialStore does)
/// let again = SoftwareKey::from_pem(&pem)?;
/// assert_eq!(key.public_key_spki(), again.public_key_spki());
/// let sig = again.sign(SignatureScheme::EcdsaP256Sha256, b"hello")?;
/// assert!(!sig.is_empty());
/// # Ok::<(), fleetkit::Error>(())
/// ```
pub struct SoftwareKey {
    inner: Inner,
    spki: Vec<u8>,
    pkcs8: Zeroizing<Vec<u8>>,
}

enum Inner {
    P256(ring_sig::EcdsaKeyPair),
    Rsa(ring_sig::RsaKeyPair),
}

const P256_SCHEMES: &[SignatureScheme] = &[SignatureScheme::EcdsaP256Sha256];
const RSA_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::RsaPssSha256,
    SignatureScheme::RsaPkcs1Sha256,
];

/// OID 1.2.840.113549.1.1.1 (rsaEncryption).
const RSA_ENCRYPTION: p256::pkcs8::ObjectIdentifier =
    p256::pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

impl SoftwareKey {
    /// Generates a new P-256 key from the operating system's random source.
    pub fn generate_p256() -> Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 =
            ring_sig::EcdsaKeyPair::generate_pkcs8(&ring_sig::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .map_err(|_| Error::Crypto("P-256 key generation failed".into()))?;
        Self::from_pkcs8_der(pkcs8.as_ref())
    }

    /// Imports a PEM private key: `PRIVATE KEY` (PKCS#8, P-256 or RSA), `EC PRIVATE KEY` (SEC1,
    /// P-256) or `RSA PRIVATE KEY` (PKCS#1, as AWS hands them out).
    ///
    /// Encrypted PEM is refused with [`Error::NotSupported`]; other labels and malformed content
    /// with [`Error::InvalidInput`] naming `private key`.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let mut found = None;
        for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
            let (kind, der) = item.map_err(|e| bad_key(format!("malformed PEM: {e}")))?;
            let der = Zeroizing::new(der);
            match kind {
                SectionKind::PrivateKey => found = Some(Self::from_pkcs8_der(&der)),
                SectionKind::EcPrivateKey => found = Some(Self::from_sec1_der(&der)),
                SectionKind::RsaPrivateKey => found = Some(Self::from_pkcs1_der(&der)),
                _ => continue,
            }
            break;
        }
        match found {
            Some(key) => key,
            None if pem.contains("ENCRYPTED PRIVATE KEY") => Err(Error::NotSupported(
                "encrypted PKCS#8 private keys; decrypt with `openssl pkcs8` first".into(),
            )),
            None => Err(bad_key(
                "no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block in the PEM text",
            )),
        }
    }

    /// Imports a PKCS#8 DER private key (P-256 or RSA).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        let info = p256::pkcs8::PrivateKeyInfoRef::from_der(der)
            .map_err(|e| bad_key(format!("not a PKCS#8 private key: {e}")))?;
        if info.algorithm.oid == RSA_ENCRYPTION {
            return Self::from_pkcs1_der(info.private_key.as_bytes());
        }
        // Fast path: *ring* parses complete P-256 PKCS#8 (its own output included) directly.
        if let Ok(pair) = ring_sig::EcdsaKeyPair::from_pkcs8(
            &ring_sig::ECDSA_P256_SHA256_ASN1_SIGNING,
            der,
            &SystemRandom::new(),
        ) {
            let spki = p256_spki(pair.public_key().as_ref());
            return Ok(SoftwareKey {
                inner: Inner::P256(pair),
                spki,
                pkcs8: Zeroizing::new(der.to_vec()),
            });
        }
        // P-256: p256 parses (and checks the curve); ring signs. Going through p256 also accepts
        // PKCS#8 files whose inner SEC1 key omits the public point, which ring alone refuses.
        let secret = p256::SecretKey::from_pkcs8_der(der)
            .map_err(|e| bad_key(format!("not a P-256 or RSA PKCS#8 key: {e}")))?;
        Self::from_p256_secret(&secret)
    }

    /// Imports a SEC1 (`EC PRIVATE KEY`) DER private key on P-256.
    pub fn from_sec1_der(der: &[u8]) -> Result<Self> {
        let secret = p256::SecretKey::from_sec1_der(der)
            .map_err(|e| bad_key(format!("not a SEC1 P-256 private key: {e}")))?;
        Self::from_p256_secret(&secret)
    }

    /// Imports a PKCS#1 (`RSA PRIVATE KEY`) DER private key.
    ///
    /// Keys below 2048 bits are refused: AWS Device Defender flags them as weak, and *ring*
    /// does not sign with them.
    pub fn from_pkcs1_der(der: &[u8]) -> Result<Self> {
        let pair = ring_sig::RsaKeyPair::from_der(der)
            .map_err(|e| bad_key(format!("not a usable RSA private key ({e})")))?;
        let pkcs1_public = pair.public().as_ref();
        let spki = p256::pkcs8::spki::SubjectPublicKeyInfoRef {
            algorithm: p256::pkcs8::AlgorithmIdentifierRef {
                oid: RSA_ENCRYPTION,
                parameters: Some(p256::pkcs8::der::AnyRef::NULL),
            },
            subject_public_key: p256::pkcs8::der::asn1::BitStringRef::from_bytes(pkcs1_public)
                .map_err(|e| Error::Crypto(format!("RSA public key encoding: {e}")))?,
        }
        .to_der()
        .map_err(|e| Error::Crypto(format!("RSA public key encoding: {e}")))?;
        let pkcs8 = p256::pkcs8::PrivateKeyInfoRef::new(
            p256::pkcs8::AlgorithmIdentifierRef {
                oid: RSA_ENCRYPTION,
                parameters: Some(p256::pkcs8::der::AnyRef::NULL),
            },
            p256::pkcs8::der::asn1::OctetStringRef::new(der)
                .map_err(|e| Error::Crypto(format!("PKCS#8 encoding: {e}")))?,
        )
        .to_der()
        .map_err(|e| Error::Crypto(format!("PKCS#8 encoding: {e}")))?;
        Ok(SoftwareKey {
            inner: Inner::Rsa(pair),
            spki,
            pkcs8: Zeroizing::new(pkcs8),
        })
    }

    fn from_p256_secret(secret: &p256::SecretKey) -> Result<Self> {
        let scalar = Zeroizing::new(secret.to_bytes());
        let public = secret.public_key();
        let point = p256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&public, false);
        let pair = ring_sig::EcdsaKeyPair::from_private_key_and_public_key(
            &ring_sig::ECDSA_P256_SHA256_ASN1_SIGNING,
            scalar.as_slice(),
            point.as_bytes(),
            &SystemRandom::new(),
        )
        .map_err(|e| bad_key(format!("P-256 key rejected ({e})")))?;
        let spki = public
            .to_public_key_der()
            .map_err(|e| Error::Crypto(format!("P-256 public key encoding: {e}")))?
            .into_vec();
        let pkcs8 = secret
            .to_pkcs8_der()
            .map_err(|e| Error::Crypto(format!("PKCS#8 encoding: {e}")))?;
        Ok(SoftwareKey {
            inner: Inner::P256(pair),
            spki,
            pkcs8: Zeroizing::new(pkcs8.as_bytes().to_vec()),
        })
    }

    /// The private key as PKCS#8 DER.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        self.pkcs8.clone()
    }

    /// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), readable by openssl.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>> {
        Ok(Zeroizing::new(pem_encode("PRIVATE KEY", &self.pkcs8)))
    }

    /// The private key as SEC1 PEM (`-----BEGIN EC PRIVATE KEY-----`). P-256 only.
    pub fn to_sec1_pem(&self) -> Result<Zeroizing<String>> {
        match self.inner {
            Inner::P256(_) => {
                let secret = p256::SecretKey::from_pkcs8_der(&self.pkcs8)
                    .map_err(|e| Error::Crypto(format!("PKCS#8 round trip: {e}")))?;
                let der = secret
                    .to_sec1_der()
                    .map_err(|e| Error::Crypto(format!("SEC1 encoding: {e}")))?;
                Ok(Zeroizing::new(pem_encode("EC PRIVATE KEY", &der)))
            }
            Inner::Rsa(_) => Err(Error::NotSupported(
                "SEC1 encoding of an RSA key (use PKCS#8)".into(),
            )),
        }
    }

    /// Writes the private key as PKCS#8 PEM to `path`: created with mode 0600, fsynced, and
    /// renamed into place atomically, so a crash never leaves a torn or world-readable key file.
    pub fn write_pkcs8_pem(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        crate::fsutil::write_atomic(path.as_ref(), self.to_pkcs8_pem()?.as_bytes())
    }

    /// The public key as PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_key_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.spki)
    }
}

impl Signer for SoftwareKey {
    fn algorithm(&self) -> KeyAlgorithm {
        match &self.inner {
            Inner::P256(_) => KeyAlgorithm::EcdsaP256,
            Inner::Rsa(pair) => KeyAlgorithm::Rsa {
                bits: (pair.public().modulus_len() * 8) as u32,
            },
        }
    }

    fn public_key_spki(&self) -> &[u8] {
        &self.spki
    }

    fn schemes(&self) -> &[SignatureScheme] {
        match self.inner {
            Inner::P256(_) => P256_SCHEMES,
            Inner::Rsa(_) => RSA_SCHEMES,
        }
    }

    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>> {
        let rng = SystemRandom::new();
        match (&self.inner, scheme) {
            (Inner::P256(pair), SignatureScheme::EcdsaP256Sha256) => pair
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| Error::Crypto("ECDSA signing failed".into())),
            (Inner::Rsa(pair), SignatureScheme::RsaPkcs1Sha256 | SignatureScheme::RsaPssSha256) => {
                let padding: &dyn ring_sig::RsaEncoding = match scheme {
                    SignatureScheme::RsaPssSha256 => &ring_sig::RSA_PSS_SHA256,
                    _ => &ring_sig::RSA_PKCS1_SHA256,
                };
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(padding, &rng, message, &mut out)
                    .map_err(|_| Error::Crypto("RSA signing failed".into()))?;
                Ok(out)
            }
            (_, scheme) => Err(Error::NotSupported(format!(
                "signature scheme {scheme:?} with a {} key",
                self.algorithm()
            ))),
        }
    }

    fn export_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>> {
        Ok(self.pkcs8.clone())
    }
}

impl fmt::Debug for SoftwareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareKey")
            .field("algorithm", &self.algorithm())
            .field("public_key_sha256", &spki_fingerprint(&self.spki))
            .finish_non_exhaustive()
    }
}

/// The fixed DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1, and the
/// BIT STRING header for a 65-byte uncompressed point).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

fn p256_spki(uncompressed_point: &[u8]) -> Vec<u8> {
    let mut spki = Vec::with_capacity(P256_SPKI_PREFIX.len() + uncompressed_point.len());
    spki.extend_from_slice(&P256_SPKI_PREFIX);
    spki.extend_from_slice(uncompressed_point);
    spki
}

/// SHA-256 of a DER `SubjectPublicKeyInfo`, lowercase hex: a stable, non-secret key id.
pub fn spki_fingerprint(spki: &[u8]) -> String {
    crate::pki::hex_lower(ring::digest::digest(&ring::digest::SHA256, spki).as_ref())
}

fn bad_key(reason: impl Into<String>) -> Error {
    Error::invalid("private key", reason)
}

/// PEM-encodes DER with 64-column lines and `\n` endings, as openssl writes it.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    // The pem crate (already in the graph through rcgen) does the base64 and line wrapping.
    let block = pem::Pem::new(label, der);
    pem::encode_config(
        &block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
