//! # fleetkit
//!
//! A cloud-agnostic SDK for IoT device fleets. Device makers choose a cloud on three
//! considerations — **identity & authentication**, **authorization**, and **device-to-cloud
//! protocols** — and live for years with the **credential lifecycle** behind them:
//! provisioning, rotation before expiry, and revocation. fleetkit gives one API for all of it,
//! with backends per cloud and a local hub for offline tests (see the README for what exists
//! today).
//!
//! What exists today:
//!
//! - [`identity`]: validated [`DeviceId`](identity::DeviceId)s; private keys behind the
//!   [`Signer`](identity::Signer) trait (software P-256 and RSA now, HSM/TPM later) with
//!   adapters for rustls client authentication and rcgen signing;
//!   [`Credentials`](identity::Credentials); and a crash-safe
//!   [`CredentialStore`](identity::CredentialStore).
//! - [`pki`]: CA hierarchies, device certificates from public keys or CSRs, chain verification,
//!   CRLs, inspection and fingerprints — all interoperable with openssl.
//! - [`policy`]: a portable, AWS IoT policy compatible authorization engine — compiled
//!   policies with variables, thing-group inheritance, AWS semantics (explicit deny wins), a
//!   readable explanation of every decision, built-in Azure/GCP-style device policies, and an
//!   offline audit of Device Defender's policy checks.
//! - [`auth`]: ES256 JWTs minted with any [`Signer`](identity::Signer) and verified by the
//!   rules of RFC 8725; a verified token's scopes select policies for users and applications.
//! - `local` (feature `local`, on by default): the local hub — a real MQTT 3.1.1 server over
//!   mutual TLS and WebSocket with a device registry, CA and CRL handling, and the policy engine
//!   deciding every action; optionally persistent in a data directory.
//! - `device` (feature `device`, part of `local`): the `DeviceClient` — telemetry,
//!   commands, twin, direct methods over any `Dialect` — with reconnect backoff and a bounded
//!   offline queue (`protocol`), and the cloud-neutral twin model.
//! - `local::dialect`: how the hub speaks a cloud's device protocol (authentication,
//!   reserved-topic services, limits); the native dialect's twin, methods and commands.
//! - [`lifecycle`]: provisioning by claim and enrollment groups, crash-safe certificate
//!   rotation, and an offline audit of certificate hygiene (Device Defender's checks).
//! - [`backend`]: [`FleetAdmin`](backend::FleetAdmin), the control plane every backend
//!   implements (the local hub today).
//!
//! ## Crypto provider
//!
//! fleetkit uses *ring* throughout and passes rustls its provider explicitly; it never installs
//! a process-wide default. There is exactly one rustls (0.23) in the dependency tree.
//!
//! ## A first look
//!
//! ```
//! use std::sync::Arc;
//! use fleetkit::identity::{DeviceId, SoftwareKey, X509Credential};
//! use fleetkit::pki::{build_csr, CaOptions, CertificateAuthority, ChainVerifier, DeviceCertOptions};
//!
//! // Factory side: a root and an issuing intermediate.
//! let root = CertificateAuthority::new_root(&CaOptions::new("Acme Root").with_path_len(1))?;
//! let issuing = root.new_intermediate(&CaOptions::new("Acme Devices"))?;
//!
//! // Device side: the key is generated on the device; only a CSR leaves it.
//! let id = DeviceId::new("sensor-0042")?;
//! let key = Arc::new(SoftwareKey::generate_p256()?);
//! let csr = build_csr(key.clone(), &id)?;
//!
//! // Factory side: the CA verifies the CSR and decides the certificate's content.
//! let cert = issuing.issue_for_csr(&id, &csr, &DeviceCertOptions::default())?;
//! ChainVerifier::new(&[root.certificate().clone()])?.verify(&cert, &issuing.chain_for_devices())?;
//!
//! // Device side again: certificate + key = a credential for mutual TLS.
//! let mut chain = vec![cert.der().clone()];
//! chain.extend(issuing.chain_for_devices().iter().map(|c| c.der().clone()));
//! let credential = X509Credential::new(chain, key)?;
//! assert_eq!(credential.leaf().subject_common_name(), Some("sensor-0042"));
//! # Ok::<(), fleetkit::Error>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub, rustdoc::broken_intra_doc_links)]

pub mod auth;
#[cfg(feature = "aws")]
pub mod aws;
pub mod backend;
#[cfg(feature = "device")]
pub mod device;
mod error;
mod fsutil;
pub mod identity;
pub mod lifecycle;
#[cfg(feature = "local")]
pub mod local;
pub mod pki;
pub mod policy;
#[cfg(feature = "device")]
pub mod protocol;

pub use error::{Error, Result};
