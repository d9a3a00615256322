//! The credential lifecycle: provisioning, rotation, revocation and audit.

pub mod audit;
pub mod enrollment;
#[cfg(feature = "device")]
pub mod provision;
#[cfg(feature = "device")]
pub mod rotation;
