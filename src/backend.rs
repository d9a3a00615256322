//! The control plane every backend implements, and the registry types it speaks.
//!
//! [`FleetAdmin`] is what a fleet or manufacturing tool programs against: register CAs and
//! devices, register and revoke certificates, manage and attach policies. The local hub
//! implements it today ([`LocalHub`](crate::local::LocalHub)); the AWS, Azure and GCP backends
//! will implement the same trait over their control-plane APIs, so a provisioning tool is
//! written once.

use std::fmt;

use async_trait::async_trait;

use crate::Result;
use crate::pki::{Certificate, Crl};
use crate::policy::{AttachTarget, PolicyDocument};

/// A device certificate's status, as AWS IoT models it.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CertificateState {
    /// Connections with it are accepted.
    Active,
    /// Temporarily refused; can be activated again.
    Inactive,
    /// Permanently refused.
    Revoked,
}

/// A registered device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceRecord {
    /// The device id (also its thing name).
    pub id: String,
    /// Thing type, if any.
    pub thing_type: Option<String>,
    /// Attributes, readable by policies as `iot:Connection.Thing.Attributes[name]`.
    pub attributes: Vec<(String, String)>,
    /// Thing groups the device is directly in.
    pub groups: Vec<String>,
    /// A disabled device cannot connect.
    pub enabled: bool,
}

impl DeviceRecord {
    /// An enabled device with no type, attributes or groups.
    pub fn new(id: &str) -> Self {
        DeviceRecord {
            id: id.to_string(),
            thing_type: None,
            attributes: Vec::new(),
            groups: Vec::new(),
            enabled: true,
        }
    }

    /// Adds the device to `group`.
    pub fn in_group(mut self, group: &str) -> Self {
        self.groups.push(group.to_string());
        self
    }

    /// Sets an attribute.
    pub fn with_attribute(mut self, name: &str, value: &str) -> Self {
        self.attributes.retain(|(n, _)| n != name);
        self.attributes.push((name.to_string(), value.to_string()));
        self
    }
}

/// The status of a CA certificate registered with a backend, as AWS IoT names them.
///
/// Only ACTIVE CAs are trust anchors. A device certificate issued under an INACTIVE or REVOKED CA
/// is refused at the TLS handshake, and so is any chain that presents such a CA certificate as
/// an intermediate.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CaStatus {
    /// Devices under this CA may connect.
    Active,
    /// Temporarily not trusted (for example before rollout, or while investigating); can be made
    /// ACTIVE again.
    Inactive,
    /// Not trusted, meant for good: the CA's key is considered compromised.
    Revoked,
}

impl CaStatus {
    /// The status as AWS IoT writes it: `ACTIVE`, `INACTIVE` or `REVOKED`.
    pub fn as_str(self) -> &'static str {
        match self {
            CaStatus::Active => "ACTIVE",
            CaStatus::Inactive => "INACTIVE",
            CaStatus::Revoked => "REVOKED",
        }
    }
}

impl fmt::Display for CaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The control plane of a fleet backend.
///
/// Semantics are AWS IoT's where clouds differ: certificate revocation is permanent, a policy
/// must be detached before it can be deleted, and status changes take effect at once (the local
/// hub closes affected live connections immediately). Operations a backend cannot express return
/// [`Error::NotSupported`](crate::Error::NotSupported).
///
/// ```no_run
/// # async fn f(admin: &dyn fleetkit::backend::FleetAdmin, cert: fleetkit::pki::Certificate)
/// #     -> fleetkit::Result<()> {
/// use fleetkit::backend::{CertificateState, DeviceRecord};
/// use fleetkit::policy::{builtin, AttachTarget};
///
/// admin.create_device(DeviceRecord::new("sensor-7").in_group("line-2")).await?;
/// let id = admin.register_certificate(&cert, "sensor-7").await?;
/// admin.put_policy("device", &builtin::aws_thing_scoped()).await?;
/// admin.attach_policy("device", AttachTarget::Group("line-2".into())).await?;
/// // Later, the device is compromised:
/// admin.set_certificate_state(&id, CertificateState::Revoked).await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait FleetAdmin: Send + Sync + fmt::Debug {
    /// Registers a device.
    async fn create_device(&self, device: DeviceRecord) -> Result<()>;

    /// Looks a device up ([`Error::NotFound`](crate::Error::NotFound) if unknown).
    async fn device(&self, id: &str) -> Result<DeviceRecord>;

    /// Enables or disables a device; a disabled device cannot connect.
    async fn set_device_enabled(&self, id: &str, enabled: bool) -> Result<()>;

    /// Registers a CA whose device certificates are accepted (ACTIVE).
    async fn register_ca(&self, ca: &Certificate) -> Result<()>;

    /// Changes a registered CA's status.
    async fn set_ca_status(&self, ca: &Certificate, status: CaStatus) -> Result<()>;

    /// Publishes a CRL signed by a registered CA.
    async fn add_crl(&self, crl: Crl) -> Result<()>;

    /// Registers a device certificate (ACTIVE) for `device`; returns its id.
    async fn register_certificate(&self, certificate: &Certificate, device: &str)
    -> Result<String>;

    /// Changes a device certificate's state.
    async fn set_certificate_state(&self, id: &str, state: CertificateState) -> Result<()>;

    /// Creates a policy or adds a new default version; returns the version.
    async fn put_policy(&self, name: &str, document: &PolicyDocument) -> Result<u32>;

    /// Attaches a policy to a certificate, device, group or scope.
    async fn attach_policy(&self, name: &str, target: AttachTarget) -> Result<()>;

    /// Detaches a policy.
    async fn detach_policy(&self, name: &str, target: &AttachTarget) -> Result<()>;
}
