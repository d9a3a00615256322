//! An in-library PKI for device fleets.
//!
//! - [`CertificateAuthority`]: create a root and intermediates (basicConstraints with pathLen,
//!   keyUsage keyCertSign + cRLSign, SKI/AKI, random 127-bit serials), or import one made by
//!   openssl; issue device certificates for a public key or a verified CSR.
//! - [`build_csr`] / [`DeviceCsr`]: a CSR made on the device from any
//!   [`Signer`](crate::identity::Signer), checked by the CA.
//! - [`ChainVerifier`]: verify leaf → intermediates → trusted roots at a time, with CRLs, and
//!   a typed [`ChainError`] when it fails.
//! - [`Crl`]: issue, parse, verify and check revocation lists.
//! - [`Certificate`]: inspect fields and compute the fingerprints the clouds use as ids.
//!
//! Everything reads and writes PEM and DER that openssl reads and writes.

mod ca;
mod certificate;
mod crl;
mod csr;
mod verify;

#[cfg(feature = "local")]
pub(crate) use ca::random_serial;
pub use ca::{CaOptions, CertificateAuthority, DeviceCertOptions};
pub use certificate::{Certificate, ExtendedKeyUsage, KeyUsage, SubjectAltName};
pub use crl::{Crl, CrlOptions, Revocation, RevocationReason};
pub use csr::{DeviceCsr, build_csr};
pub use verify::{ChainError, ChainVerifier};

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex_with(bytes: &[u8], digits: &[u8; 16]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(digits[usize::from(b >> 4)] as char);
        s.push(digits[usize::from(b & 0x0f)] as char);
    }
    s
}

/// Lowercase hex, no separators.
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    hex_with(bytes, HEX_LOWER)
}

/// Uppercase hex, no separators.
pub(crate) fn hex_upper(bytes: &[u8]) -> String {
    hex_with(bytes, HEX_UPPER)
}
