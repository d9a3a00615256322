//! The credential lifecycle: provisioning, rotation, revocation and audit.
//!
//! - [`provision`] (feature `device`): a device's way from a claim credential to its own
//!   identity ([`Provisioner`](provision::Provisioner), [`ClaimProvisioner`](provision::ClaimProvisioner)).
//! - [`enrollment`]: enrollment groups — symmetric-key derivation and X.509 attestation with
//!   an allocation rule.
//! - [`rotation`] (feature `device`): crash-safe certificate rotation on a running client, and
//!   [`recover`](rotation::recover) after a crash.
//! - [`agent`] (feature `device`): the device side of a rotation campaign — a
//!   [`RotationAgent`](agent::RotationAgent) that acts on `rotate` commands and reports in the
//!   twin.
//! - [`campaign`] (feature `device`; the local hub implements its backend with `local`):
//!   rotation campaigns — selection, canary and waves, failure threshold, resumable state file.
//! - [`jobs`]: the status of a job execution (AWS IoT Jobs' model), shared by the AWS
//!   device client and the hub's jobs service.
//! - [`audit`]: Device Defender's certificate checks over a fleet inventory (the local hub
//!   builds one with `LocalHub::inventory`).

#[cfg(feature = "device")]
pub mod agent;
pub mod audit;
#[cfg(feature = "device")]
pub mod campaign;
pub mod enrollment;
pub mod jobs;
#[cfg(feature = "device")]
pub mod provision;
#[cfg(feature = "device")]
pub mod rotation;
