//! The hub's registry: devices, device certificates and policies.

use std::collections::HashMap;
use std::fmt;

use crate::pki::Certificate;
use crate::policy::{AttachTarget, Partition, PolicyDocument, PolicyEngine, PrincipalContext};
use crate::{Error, Result};

pub use crate::backend::{CertificateState, DeviceRecord};

/// A registered device certificate.
#[derive(Clone, Debug)]
pub struct CertificateRecord {
    /// The certificate.
    pub certificate: Certificate,
    /// Its id: SHA-256 of the DER, lowercase hex (AWS's certificate id).
    pub id: String,
    /// Status.
    pub state: CertificateState,
    /// The device it belongs to.
    pub device: String,
}

/// The registry as saved in a hub's data directory.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct RegistrySnapshot {
    pub(crate) devices: Vec<DeviceRecord>,
    /// (certificate PEM, state, device id).
    pub(crate) certificates: Vec<(String, CertificateState, String)>,
    pub(crate) policies: crate::policy::EngineSnapshot,
}

/// Devices, certificates and policies. Shared by the broker (which reads it on every connection)
/// and the admin API (which changes it).
pub struct Registry {
    devices: HashMap<String, DeviceRecord>,
    certificates: HashMap<String, CertificateRecord>,
    policies: PolicyEngine,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("devices", &self.devices.len())
            .field("certificates", &self.certificates.len())
            .field("policies", &self.policies)
            .finish()
    }
}

fn not_found(what: &'static str, id: &str) -> Error {
    Error::NotFound {
        what,
        id: id.to_string(),
    }
}

impl Registry {
    pub(crate) fn new(partition: Partition) -> Self {
        Registry {
            devices: HashMap::new(),
            certificates: HashMap::new(),
            policies: PolicyEngine::new(partition),
        }
    }

    /// The policy engine (read access).
    pub fn policies(&self) -> &PolicyEngine {
        &self.policies
    }

    /// Adds a device. The id must be a valid [`DeviceId`](crate::identity::DeviceId).
    pub(crate) fn create_device(&mut self, device: DeviceRecord) -> Result<()> {
        crate::identity::DeviceId::new(device.id.as_str())?;
        if self.devices.contains_key(&device.id) {
            return Err(Error::AlreadyExists {
                what: "device",
                id: device.id,
            });
        }
        self.devices.insert(device.id.clone(), device);
        Ok(())
    }

    /// Looks a device up.
    pub fn device(&self, id: &str) -> Option<&DeviceRecord> {
        self.devices.get(id)
    }

    /// Replaces the thing groups `id` is in (each a valid group name).
    pub(crate) fn set_device_groups(&mut self, id: &str, groups: Vec<String>) -> Result<()> {
        let device = self
            .devices
            .get_mut(id)
            .ok_or_else(|| not_found("device", id))?;
        device.groups = groups;
        self.policies.touch();
        Ok(())
    }

    pub(crate) fn set_device_enabled(&mut self, id: &str, enabled: bool) -> Result<()> {
        let device = self
            .devices
            .get_mut(id)
            .ok_or_else(|| not_found("device", id))?;
        device.enabled = enabled;
        Ok(())
    }

    /// Registers `certificate` for `device` (which must exist) with `state`.
    pub(crate) fn register_certificate(
        &mut self,
        certificate: Certificate,
        device: &str,
        state: CertificateState,
    ) -> Result<String> {
        if !self.devices.contains_key(device) {
            return Err(not_found("device", device));
        }
        if certificate.is_ca() {
            return Err(Error::invalid(
                "certificate",
                "a CA certificate cannot be a device certificate",
            ));
        }
        let id = certificate.fingerprint_sha256();
        if self.certificates.contains_key(&id) {
            return Err(Error::AlreadyExists {
                what: "certificate",
                id,
            });
        }
        self.certificates.insert(
            id.clone(),
            CertificateRecord {
                certificate,
                id: id.clone(),
                state,
                device: device.to_string(),
            },
        );
        Ok(id)
    }

    /// Changes a certificate's state. A revoked certificate stays revoked (as in AWS).
    pub(crate) fn set_certificate_state(
        &mut self,
        id: &str,
        state: CertificateState,
    ) -> Result<()> {
        let record = self
            .certificates
            .get_mut(id)
            .ok_or_else(|| not_found("certificate", id))?;
        if record.state == CertificateState::Revoked && state != CertificateState::Revoked {
            return Err(Error::Precondition(format!(
                "certificate {id} is revoked; revocation is permanent"
            )));
        }
        record.state = state;
        Ok(())
    }

    /// Looks a certificate up by id.
    pub fn certificate(&self, id: &str) -> Option<&CertificateRecord> {
        self.certificates.get(id)
    }

    /// Checks that `leaf` may connect: registered, ACTIVE, and its device exists and is enabled.
    /// Returns its record.
    /// Every registered device certificate, sorted by id.
    pub fn all_certificates(&self) -> Vec<&CertificateRecord> {
        let mut certs: Vec<&CertificateRecord> = self.certificates.values().collect();
        certs.sort_by(|a, b| a.id.cmp(&b.id));
        certs
    }

    /// The certificates registered for `device`, sorted by id.
    pub fn certificates_of(&self, device: &str) -> Vec<&CertificateRecord> {
        let mut certs: Vec<&CertificateRecord> = self
            .certificates
            .values()
            .filter(|c| c.device == device)
            .collect();
        certs.sort_by(|a, b| a.id.cmp(&b.id));
        certs
    }

    pub(crate) fn admit(&self, leaf: &Certificate) -> Result<&CertificateRecord> {
        let id = leaf.fingerprint_sha256();
        let record = self
            .certificates
            .get(&id)
            .ok_or_else(|| Error::Unauthenticated(format!("certificate {id} is not registered")))?;
        match record.state {
            CertificateState::Active => {}
            CertificateState::Inactive => {
                return Err(Error::Unauthenticated(format!(
                    "certificate {id} is inactive"
                )));
            }
            CertificateState::Revoked => {
                return Err(Error::Revoked(format!("certificate {id} is revoked")));
            }
        }
        let device = self.devices.get(&record.device).ok_or_else(|| {
            Error::Unauthenticated(format!("device {} is deleted", record.device))
        })?;
        if !device.enabled {
            return Err(Error::PermissionDenied(format!(
                "device {} is disabled",
                device.id
            )));
        }
        Ok(record)
    }

    /// The principal context of a device connecting with `leaf` as `client_id`.
    /// The principal context of a device that authenticated without a certificate (by the
    /// password hook): the device must exist and be enabled.
    pub(crate) fn device_principal_context(
        &self,
        device: &str,
        client_id: &str,
    ) -> Result<PrincipalContext> {
        let record = self
            .devices
            .get(device)
            .ok_or_else(|| Error::Unauthenticated(format!("device {device} is not registered")))?;
        if !record.enabled {
            return Err(Error::PermissionDenied(format!(
                "device {device} is disabled"
            )));
        }
        let mut ctx = PrincipalContext::device(device, client_id, None);
        ctx.groups = record.groups.clone();
        if let Some(thing) = ctx.thing.as_mut() {
            thing.type_name = record.thing_type.clone();
            thing.attributes = record.attributes.clone();
        }
        Ok(ctx)
    }

    pub(crate) fn principal_context(
        &self,
        record: &CertificateRecord,
        client_id: &str,
    ) -> PrincipalContext {
        let mut ctx =
            PrincipalContext::device(&record.device, client_id, Some(&record.certificate));
        if let Some(device) = self.devices.get(&record.device) {
            ctx.groups = device.groups.clone();
            if let Some(thing) = ctx.thing.as_mut() {
                thing.type_name = device.thing_type.clone();
                thing.attributes = device.attributes.clone();
            }
        }
        ctx
    }

    /// Stores a policy version.
    pub(crate) fn put_policy(&mut self, name: &str, document: &PolicyDocument) -> Result<u32> {
        self.policies.put_policy(name, document)
    }

    /// Everything the registry holds, for the data directory.
    pub(crate) fn snapshot(&self) -> RegistrySnapshot {
        let mut devices: Vec<DeviceRecord> = self.devices.values().cloned().collect();
        devices.sort_by(|a, b| a.id.cmp(&b.id));
        let mut certificates: Vec<(String, CertificateState, String)> = self
            .certificates
            .values()
            .map(|r| (r.certificate.to_pem(), r.state, r.device.clone()))
            .collect();
        certificates.sort_by(|a, b| a.2.cmp(&b.2).then(a.0.cmp(&b.0)));
        RegistrySnapshot {
            devices,
            certificates,
            policies: self.policies.snapshot(),
        }
    }

    /// Rebuilds a registry from a snapshot; fails without building anything on bad content.
    pub(crate) fn restore(partition: Partition, snapshot: &RegistrySnapshot) -> Result<Self> {
        let mut registry = Registry {
            devices: HashMap::new(),
            certificates: HashMap::new(),
            policies: PolicyEngine::restore(partition, &snapshot.policies)?,
        };
        for d in &snapshot.devices {
            registry.create_device(d.clone())?;
        }
        for (pem, state, device) in &snapshot.certificates {
            registry.register_certificate(Certificate::from_pem(pem)?, device, *state)?;
        }
        Ok(registry)
    }

    /// Detaches a policy.
    pub(crate) fn detach_policy(&mut self, name: &str, target: &AttachTarget) -> Result<()> {
        self.policies.detach_policy(name, target)
    }

    /// Attaches a policy.
    pub(crate) fn attach_policy(&mut self, name: &str, target: AttachTarget) -> Result<()> {
        self.policies.attach_policy(name, target)
    }
}
