//! The credential lifecycle: provisioning, rotation, revocation and audit.
//!
//! - [`provision`] (feature `device`): a device's way from a claim credential to its own
//!   identity ([`Provisioner`](provision::Provisioner), [`ClaimProvisioner`](provision::ClaimProvisioner)).
//! - [`enrollment`]: enrollment groups — symmetric-key derivation and X.509 attestation with
//!   an allocation rule.
//! - [`rotation`] (feature `device`): crash-safe certificate rotation on a running client, and
//!   [`recover`](rotation::recover) after a crash.
//! - [`audit`]: Device Defender's certificate checks over a fleet inventory (the local hub
//!   builds one with `LocalHub::inventory`).

pub mod audit;
pub mod enrollment;
#[cfg(feature = "device")]
pub mod provision;
#[cfg(feature = "device")]
pub mod rotation;
