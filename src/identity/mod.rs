//! Who a device is and how it proves it.
//!
//! - [`DeviceId`]: a validated name, portable across clouds by default.
//! - [`Signer`]: a private key you can sign with but need not read; [`SoftwareKey`] is the
//!   in-memory implementation (P-256 and RSA). [`TlsSigningKey`], [`ClientIdentity`] and
//!   [`RcgenKey`] adapt any signer to rustls and rcgen.
//! - [`Credentials`]: a symmetric key, an X.509 chain with its key, or a JWT-signing key.
//! - [`CredentialStore`]: crash-safe on-disk slots (*active*, *pending*, *previous*) for
//!   rotating credentials without ever leaving the device unable to connect.

mod adapters;
mod credentials;
mod device_id;
mod signer;
mod store;

pub use adapters::{ClientIdentity, RcgenKey, TlsSigningKey};
pub use credentials::{Credentials, SymmetricKey, X509Credential};
pub use device_id::{DeviceId, IdRule};
pub use signer::{KeyAlgorithm, SignatureScheme, Signer, SoftwareKey, spki_fingerprint};
pub use store::{CredentialStore, Slot};

pub(crate) use signer::pem_encode;
