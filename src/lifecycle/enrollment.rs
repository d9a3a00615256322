//! Enrollment groups: the service side of zero-touch provisioning, after Azure DPS.
//!
//! A factory never has to tell the service about each device. Instead an
//! [`EnrollmentGroup`] says how a whole family of devices proves it belongs, and what each one
//! gets when it does:
//!
//! - [`Attestation`]: a *group key* from which every device's key is derived
//!   ([`derive_device_key`]), or a *CA certificate* every device chain must go through.
//! - [`Allocation`]: which hub the device is sent to, as an [`Assignment`].
//! - [`InitialDeviceSettings`]: the thing groups, attributes, policy and enabled state the
//!   device starts with.
//!
//! [`EnrollmentGroups`] holds several and finds the right one for what a device presents
//! ([`Evidence`]), returning a [`Registration`] that can be rendered as DPS's
//! `registrationState` (PROTOCOLS.md §3.2).
//!
//! ## Registration ids
//!
//! DPS: "a case-insensitive string (up to 128 characters long) of alphanumeric characters plus
//! the special characters: `-`, `.`, `_`, `:`. The last character must be alphanumeric or dash"
//! (Microsoft Learn, *Azure IoT Hub Device Provisioning Service terminology*, "Registration ID";
//! the same rule on *Symmetric key attestation*). A derived key is an HMAC of the id's exact
//! bytes, so a case-insensitive id would have one key per spelling; fleetkit therefore takes
//! registration ids in **lower case** only ([`validate_registration_id`]), which is also what
//! the symmetric-key attestation page recommends (PROTOCOLS.md §3.4).
//!
//! ## Symmetric keys
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use fleetkit::identity::SymmetricKey;
//! use fleetkit::lifecycle::enrollment::{
//!     Allocation, EnrollmentGroup, derive_device_key, registration_sas,
//! };
//!
//! let group_key = SymmetricKey::from_base64(
//!     "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
//! )?;
//! let group = EnrollmentGroup::symmetric_key(
//!     "line-7", "0ne00000A0A", group_key.clone(), Allocation::static_endpoint("hub.example:8883"),
//! )?;
//!
//! // In the factory: each device gets only its own derived key.
//! let device_key = derive_device_key(&group_key, "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6")?;
//! assert_eq!(&*device_key.to_base64(), "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=");
//!
//! // On the device: a SAS token for its registration resource (the MQTT password).
//! let now = SystemTime::now();
//! let token = registration_sas(
//!     "0ne00000A0A", "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6", &device_key,
//!     now + Duration::from_secs(3600),
//! )?;
//!
//! // On the service: the group re-derives the key and checks the token.
//! let assignment = group.attest_symmetric(
//!     "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6", token.expose_secret(), now,
//! )?;
//! assert_eq!(assignment.endpoint, "hub.example:8883");
//! assert_eq!(assignment.device_id, "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6");
//! # Ok::<(), fleetkit::Error>(())
//! ```
//!
//! ## X.509
//!
//! ```
//! use std::time::SystemTime;
//! use fleetkit::identity::{DeviceId, Signer, SoftwareKey};
//! use fleetkit::lifecycle::enrollment::{Allocation, EnrollmentGroup};
//! use fleetkit::pki::{CaOptions, CertificateAuthority, DeviceCertOptions};
//!
//! let root = CertificateAuthority::new_root(&CaOptions::new("Acme Root").with_path_len(1))?;
//! let line7 = root.new_intermediate(&CaOptions::new("Acme Line 7"))?;
//! let group = EnrollmentGroup::x509(
//!     "line-7", "0ne00000A0A", line7.certificate().clone(),
//!     Allocation::hashed(["hub-a:8883", "hub-b:8883"])?,
//! )?;
//!
//! let key = SoftwareKey::generate_p256()?;
//! let leaf = line7.issue(&DeviceId::new("sensor-42")?, key.public_key_spki(),
//!                        &DeviceCertOptions::default())?;
//! // The device presents its chain, leaf first; its registration id is the leaf's CN.
//! let chain = vec![leaf, line7.certificate().clone()];
//! let assignment = group.attest_x509(&chain, SystemTime::now())?;
//! assert_eq!(assignment.device_id, "sensor-42");
//! # Ok::<(), fleetkit::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::auth::sas::{ResourceMatch, SasToken};
use crate::identity::SymmetricKey;
use crate::pki::{Certificate, ChainError, ChainVerifier, Crl};
use crate::{Error, Result};

mod allocation;
#[cfg(test)]
mod tests;

pub use allocation::{Allocation, Assignment, CustomAllocator};

/// The longest registration id DPS accepts.
pub const MAX_REGISTRATION_ID_LEN: usize = 128;

/// The `skn` of a DPS registration SAS token (PROTOCOLS.md §3.1).
pub const REGISTRATION_KEY_NAME: &str = "registration";

/// The shortest and longest group key DPS takes from a user (PROTOCOLS.md §3.4).
const GROUP_KEY_LEN: std::ops::RangeInclusive<usize> = 16..=64;

/// Checks a registration id: 1–128 characters, lower-case ASCII letters, digits, `-`, `.`,
/// `_`, `:`, ending in a letter, digit or `-`. See the [module docs](self) for the source.
///
/// Fails with [`Error::InvalidInput`] (field `registration id`) naming the first offending
/// character.
///
/// ```
/// use fleetkit::lifecycle::enrollment::validate_registration_id;
/// assert!(validate_registration_id("sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6").is_ok());
/// assert!(validate_registration_id("line7:unit_3.a").is_ok());
/// assert!(validate_registration_id("Sensor-1").is_err()); // upper case
/// assert!(validate_registration_id("sensor/1").is_err());
/// assert!(validate_registration_id("sensor.").is_err()); // must end alphanumeric or '-'
/// ```
pub fn validate_registration_id(registration_id: &str) -> Result<()> {
    const FIELD: &str = "registration id";
    if registration_id.is_empty() {
        return Err(Error::invalid(FIELD, "is empty"));
    }
    let len = registration_id.chars().count();
    if len > MAX_REGISTRATION_ID_LEN {
        return Err(Error::invalid(
            FIELD,
            format!("is {len} characters long; DPS allows at most {MAX_REGISTRATION_ID_LEN}"),
        ));
    }
    for (position, c) in registration_id.chars().enumerate() {
        let allowed =
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_' | ':');
        if allowed {
            continue;
        }
        let reason = if c.is_ascii_uppercase() {
            format!(
                "upper-case {c:?} at position {position}: registration ids are case-insensitive \
                 in DPS, and fleetkit takes them in lower case so each has exactly one derived key"
            )
        } else {
            format!(
                "{c:?} at position {position} is not allowed (allowed are lower-case letters, \
                 digits, '-', '.', '_' and ':')"
            )
        };
        return Err(Error::invalid(FIELD, reason));
    }
    let last = registration_id.chars().next_back().unwrap_or('-');
    if !(last.is_ascii_alphanumeric() || last == '-') {
        return Err(Error::invalid(
            FIELD,
            format!("ends with {last:?}; the last character must be a letter, digit or '-'"),
        ));
    }
    Ok(())
}

/// Derives a device's key from its enrollment group's key:
/// HMAC-SHA256(key = group key bytes, message = UTF-8 registration id) (PROTOCOLS.md §3.4).
///
/// The registration id is checked with [`validate_registration_id`] first, so a key is never
/// derived for an id the group would refuse.
///
/// ```
/// use fleetkit::identity::SymmetricKey;
/// use fleetkit::lifecycle::enrollment::derive_device_key;
///
/// // Microsoft's documented example.
/// let group = SymmetricKey::from_base64(
///     "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==",
/// )?;
/// let device = derive_device_key(&group, "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6")?;
/// assert_eq!(&*device.to_base64(), "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=");
/// assert_eq!(format!("{device:?}"), "SymmetricKey(<32 bytes redacted>)");
/// # Ok::<(), fleetkit::Error>(())
/// ```
pub fn derive_device_key(group_key: &SymmetricKey, registration_id: &str) -> Result<SymmetricKey> {
    validate_registration_id(registration_id)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, group_key.expose_secret());
    let tag = ring::hmac::sign(&key, registration_id.as_bytes());
    SymmetricKey::new(tag.as_ref())
}

/// The resource a device's registration SAS token is for: `{id_scope}/registrations/{registration_id}`
/// (PROTOCOLS.md §3.1).
pub fn registration_resource(id_scope: &str, registration_id: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}")
}

/// The device side: a DPS registration SAS token, signed with the device's (derived) key for
/// [`registration_resource`], with `skn=registration`, valid until `expiry`.
///
/// Fails with [`Error::InvalidInput`] for an invalid registration id or id scope.
pub fn registration_sas(
    id_scope: &str,
    registration_id: &str,
    device_key: &SymmetricKey,
    expiry: SystemTime,
) -> Result<SasToken> {
    validate_id_scope(id_scope)?;
    validate_registration_id(registration_id)?;
    SasToken::sign(
        &registration_resource(id_scope, registration_id),
        device_key,
        Some(REGISTRATION_KEY_NAME),
        expiry,
    )
}

fn validate_id_scope(id_scope: &str) -> Result<()> {
    if id_scope.is_empty() || id_scope.len() > 64 {
        return Err(Error::invalid("id scope", "must be 1 to 64 characters"));
    }
    if let Some(c) = id_scope
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(Error::invalid(
            "id scope",
            format!("{c:?} is not allowed (letters, digits, '-', '.', '_')"),
        ));
    }
    Ok(())
}

fn validate_group_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().count() > 128 {
        return Err(Error::invalid(
            "enrollment group name",
            "must be 1 to 128 characters",
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')))
    {
        return Err(Error::invalid(
            "enrollment group name",
            format!("{c:?} is not allowed (letters, digits, '-', '.', '_', ':')"),
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The group
// ------------------------------------------------------------------------------------------

/// How the devices of an [`EnrollmentGroup`] prove they belong to it.
#[non_exhaustive]
#[derive(Clone, Debug)]
// A group is built once and kept; boxing the certificate would only make matching clumsier.
#[allow(clippy::large_enum_variant)]
pub enum Attestation {
    /// Each device holds `HMAC-SHA256(group_key, registration id)` ([`derive_device_key`]) and
    /// signs its registration SAS token with it. The group key itself is never accepted.
    SymmetricKey {
        /// The group's key (16–64 bytes). Shown by `Debug` only as its length.
        group_key: SymmetricKey,
    },
    /// Each device presents a certificate chain that goes through `ca`; its registration id is
    /// the leaf's subject CN.
    X509 {
        /// A root or intermediate CA certificate, used as the trust anchor.
        ca: Certificate,
    },
}

impl Attestation {
    /// Which kind of attestation this is.
    pub fn kind(&self) -> AttestationKind {
        match self {
            Attestation::SymmetricKey { .. } => AttestationKind::SymmetricKey,
            Attestation::X509 { .. } => AttestationKind::X509,
        }
    }
}

/// The kind of an [`Attestation`], without its key or certificate.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttestationKind {
    /// Derived symmetric keys and SAS tokens.
    SymmetricKey,
    /// A certificate chain through the group's CA.
    X509,
}

/// What a device gets in the registry when it first registers through a group.
///
/// ```
/// use fleetkit::lifecycle::enrollment::InitialDeviceSettings;
/// let initial = InitialDeviceSettings::new()
///     .with_group("line-7")
///     .with_attribute("site", "lyon")
///     .with_policy("sensor-policy");
/// assert!(initial.enabled);
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialDeviceSettings {
    /// Thing groups the device is put in.
    pub groups: Vec<String>,
    /// Attributes (tags) set on the device.
    pub attributes: BTreeMap<String, String>,
    /// The policy attached to the device, if any.
    pub policy: Option<String>,
    /// Whether the device may connect once registered.
    pub enabled: bool,
}

impl Default for InitialDeviceSettings {
    /// Enabled, in no group, without attributes or policy.
    fn default() -> Self {
        InitialDeviceSettings {
            groups: Vec::new(),
            attributes: BTreeMap::new(),
            policy: None,
            enabled: true,
        }
    }
}

impl InitialDeviceSettings {
    /// The defaults: enabled, nothing else.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a thing group.
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self
    }

    /// Sets an attribute.
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Sets the policy.
    pub fn with_policy(mut self, policy: impl Into<String>) -> Self {
        self.policy = Some(policy.into());
        self
    }

    /// Registers devices disabled: they exist but may not connect until enabled.
    pub fn disabled(mut self) -> Self {
        self.enabled = false;
        self
    }
}

/// An enrollment group: how a family of devices attests, where they are sent, and what they
/// start with. See the [module docs](self) for examples.
///
/// `Debug` shows the group key only as its length.
#[derive(Clone, Debug)]
pub struct EnrollmentGroup {
    name: String,
    id_scope: String,
    attestation: Attestation,
    allocation: Allocation,
    initial: InitialDeviceSettings,
    crls: Vec<Crl>,
}

impl EnrollmentGroup {
    /// A group named `name` in the provisioning scope `id_scope`.
    ///
    /// Fails with [`Error::InvalidInput`] if the name (1–128 letters, digits, `- . _ :`) or id
    /// scope (1–64 letters, digits, `- . _`) is not valid, a group key is not 16–64 bytes
    /// (PROTOCOLS.md §3.4), or a CA certificate is not a CA.
    pub fn new(
        name: impl Into<String>,
        id_scope: impl Into<String>,
        attestation: Attestation,
        allocation: Allocation,
    ) -> Result<Self> {
        let name = name.into();
        let id_scope = id_scope.into();
        validate_group_name(&name)?;
        validate_id_scope(&id_scope)?;
        match &attestation {
            Attestation::SymmetricKey { group_key } => {
                let len = group_key.expose_secret().len();
                if !GROUP_KEY_LEN.contains(&len) {
                    return Err(Error::invalid(
                        "group key",
                        format!(
                            "is {len} bytes; DPS takes {} to {} bytes",
                            GROUP_KEY_LEN.start(),
                            GROUP_KEY_LEN.end()
                        ),
                    ));
                }
            }
            Attestation::X509 { ca } => {
                ca.ensure_ca()?;
                // Fails early if webpki cannot use it as an anchor.
                ChainVerifier::new(std::slice::from_ref(ca))?;
            }
        }
        Ok(EnrollmentGroup {
            name,
            id_scope,
            attestation,
            allocation,
            initial: InitialDeviceSettings::default(),
            crls: Vec::new(),
        })
    }

    /// A symmetric-key group: devices sign with keys derived from `group_key`.
    pub fn symmetric_key(
        name: impl Into<String>,
        id_scope: impl Into<String>,
        group_key: SymmetricKey,
        allocation: Allocation,
    ) -> Result<Self> {
        Self::new(
            name,
            id_scope,
            Attestation::SymmetricKey { group_key },
            allocation,
        )
    }

    /// An X.509 group: devices present chains through `ca` (a root or an intermediate).
    pub fn x509(
        name: impl Into<String>,
        id_scope: impl Into<String>,
        ca: Certificate,
        allocation: Allocation,
    ) -> Result<Self> {
        Self::new(name, id_scope, Attestation::X509 { ca }, allocation)
    }

    /// Sets what registered devices start with.
    pub fn with_initial(mut self, initial: InitialDeviceSettings) -> Self {
        self.initial = initial;
        self
    }

    /// Checks X.509 chains against `crls` too (certificates whose issuer has no CRL here are
    /// treated as not revoked). Has no effect on a symmetric-key group.
    pub fn with_crls(mut self, crls: impl IntoIterator<Item = Crl>) -> Self {
        self.crls.extend(crls);
        self
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The provisioning scope: the first segment of a registration SAS resource.
    pub fn id_scope(&self) -> &str {
        &self.id_scope
    }

    /// How devices attest.
    pub fn attestation(&self) -> &Attestation {
        &self.attestation
    }

    /// How devices are assigned.
    pub fn allocation(&self) -> &Allocation {
        &self.allocation
    }

    /// What devices start with.
    pub fn initial(&self) -> &InitialDeviceSettings {
        &self.initial
    }

    /// Attests a device by its registration SAS token and assigns it (with no payload).
    ///
    /// The token must be signed with the key [derived](derive_device_key) from this group's
    /// key for `registration_id`, be for exactly [`registration_resource`]`(id_scope,
    /// registration_id)` (not a prefix of it, unlike IoT Hub tokens) and not have expired at
    /// `now`. Refused:
    ///
    /// - [`Error::InvalidInput`]: `registration_id` is not a valid registration id.
    /// - [`Error::Unauthenticated`]: a malformed token; one signed with the group key itself,
    ///   with another device's key or any other key; one for another resource (another
    ///   registration id or scope); or this is an X.509 group.
    /// - [`Error::Expired`]: a genuine token past its `se`.
    pub fn attest_symmetric(
        &self,
        registration_id: &str,
        sas_token: &str,
        now: SystemTime,
    ) -> Result<Assignment> {
        let evidence = Evidence::SymmetricKey {
            group: None,
            registration_id,
            sas_token,
        };
        Ok(self.attest(&evidence, &Value::Null, now)?.assignment)
    }

    /// Attests a device by its certificate chain (leaf first, then intermediates; the root may
    /// be included) and assigns it (with no payload). Its registration id is the leaf's CN.
    ///
    /// The chain is verified with [`ChainVerifier`] at `now`, with this group's CA as the only
    /// trust anchor and the group's CRLs. Refused:
    ///
    /// - [`Error::InvalidInput`]: an empty chain, or a leaf CN that is not a valid
    ///   registration id.
    /// - [`Error::Unauthenticated`]: a leaf without a CN, or this is a symmetric-key group.
    /// - [`Error::Expired`]: a certificate in the path, or the group CA, is outside its
    ///   validity at `now`.
    /// - [`Error::Revoked`]: the leaf or an issuer is on one of the group's CRLs.
    /// - [`Error::Untrusted`]: the chain does not lead to the group's CA (for example a device
    ///   under a sibling intermediate), a signature is bad, or the leaf is not a client
    ///   certificate.
    pub fn attest_x509(&self, chain: &[Certificate], now: SystemTime) -> Result<Assignment> {
        Ok(self
            .attest(&Evidence::X509 { chain }, &Value::Null, now)?
            .assignment)
    }

    /// Attests a device by `evidence` and assigns it, passing `payload` (the `payload` of the
    /// DPS registration request, `Value::Null` if none) to the allocation.
    ///
    /// Errors are those of [`attest_symmetric`](Self::attest_symmetric) and
    /// [`attest_x509`](Self::attest_x509); evidence naming another group is
    /// [`Error::NotFound`].
    pub fn attest(
        &self,
        evidence: &Evidence<'_>,
        payload: &Value,
        now: SystemTime,
    ) -> Result<Registration> {
        match *evidence {
            Evidence::SymmetricKey {
                group,
                registration_id,
                sas_token,
            } => {
                if let Some(group) = group
                    && group != self.name
                {
                    return Err(Error::NotFound {
                        what: "enrollment group",
                        id: group.to_owned(),
                    });
                }
                validate_registration_id(registration_id)?;
                let token = SasToken::parse(sas_token)?;
                self.attest_token(registration_id, &token, payload, now)
            }
            Evidence::X509 { chain } => self.attest_chain(chain, payload, now),
        }
    }

    /// The group key, or the refusal a device gets for presenting a token to an X.509 group.
    fn group_key(&self) -> Result<&SymmetricKey> {
        match &self.attestation {
            Attestation::SymmetricKey { group_key } => Ok(group_key),
            Attestation::X509 { .. } => Err(Error::Unauthenticated(format!(
                "enrollment group {:?} attests devices by X.509 certificate, not SAS token",
                self.name
            ))),
        }
    }

    /// The derived key for `registration_id`, if it signed `token`.
    fn derived_key_signing(
        &self,
        registration_id: &str,
        token: &SasToken,
    ) -> Result<Option<SymmetricKey>> {
        let device_key = derive_device_key(self.group_key()?, registration_id)?;
        Ok(token.signed_with(&device_key).then_some(device_key))
    }

    fn attest_token(
        &self,
        registration_id: &str,
        token: &SasToken,
        payload: &Value,
        now: SystemTime,
    ) -> Result<Registration> {
        if self.derived_key_signing(registration_id, token)?.is_none() {
            return Err(self.refusal_for_bad_signature(registration_id, token));
        }
        // Exactly the registration resource: a DPS token is never scoped wider (§3.1).
        token.check_claims(
            &registration_resource(&self.id_scope, registration_id),
            ResourceMatch::Exact,
            now,
        )?;
        self.register(registration_id, AttestationKind::SymmetricKey, payload)
    }

    /// Why a token that the derived key did not sign is refused.
    fn refusal_for_bad_signature(&self, registration_id: &str, token: &SasToken) -> Error {
        let signed_by_group_key = self.group_key().is_ok_and(|k| token.signed_with(k));
        Error::Unauthenticated(if signed_by_group_key {
            format!(
                "the SAS token for {registration_id:?} is signed with the key of enrollment group \
                 {:?} itself; a device must sign with the key derived for its registration id",
                self.name
            )
        } else {
            format!(
                "the SAS token for {registration_id:?} is not signed with the key derived for it \
                 from enrollment group {:?}",
                self.name
            )
        })
    }

    fn attest_chain(
        &self,
        chain: &[Certificate],
        payload: &Value,
        now: SystemTime,
    ) -> Result<Registration> {
        let Attestation::X509 { ca } = &self.attestation else {
            return Err(Error::Unauthenticated(format!(
                "enrollment group {:?} attests devices by SAS token, not X.509 certificate",
                self.name
            )));
        };
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| Error::invalid("certificate chain", "is empty"))?;
        let registration_id = leaf.subject_common_name().ok_or_else(|| {
            Error::Unauthenticated(format!(
                "the device certificate {} has no subject CN to use as registration id",
                leaf.subject()
            ))
        })?;
        validate_registration_id(registration_id)?;
        let at = OffsetDateTime::from(now);
        // webpki does not check a trust anchor's own validity; DPS would not accept an expired
        // CA, so neither does the group.
        if !ca.is_valid_at(at) {
            return Err(Error::Expired(format!(
                "the CA {} of enrollment group {:?} is valid only from {} to {} (checked at {at})",
                ca.subject(),
                self.name,
                ca.not_before(),
                ca.not_after()
            )));
        }
        ChainVerifier::new(std::slice::from_ref(ca))?
            .with_crls(self.crls.iter().cloned())
            .at(at)
            .verify(leaf, intermediates)?;
        self.register(registration_id, AttestationKind::X509, payload)
    }

    fn register(
        &self,
        registration_id: &str,
        attestation: AttestationKind,
        payload: &Value,
    ) -> Result<Registration> {
        Ok(Registration {
            group: self.name.clone(),
            registration_id: registration_id.to_owned(),
            attestation,
            assignment: self.allocation.allocate(registration_id, payload)?,
            initial: self.initial.clone(),
        })
    }
}

// ------------------------------------------------------------------------------------------
// Evidence and result
// ------------------------------------------------------------------------------------------

/// What a device presents when it registers.
///
/// `Debug` never shows the SAS token.
#[non_exhaustive]
#[derive(Clone, Copy)]
pub enum Evidence<'a> {
    /// A registration SAS token signed with a derived key (the MQTT password, or the
    /// `Authorization` header over HTTPS).
    SymmetricKey {
        /// The enrollment group to check against; `None` lets [`EnrollmentGroups`] try every
        /// symmetric-key group.
        group: Option<&'a str>,
        /// The registration id the device registers as (its MQTT client id).
        registration_id: &'a str,
        /// The `SharedAccessSignature …` token.
        sas_token: &'a str,
    },
    /// The device's TLS client certificate chain, leaf first.
    X509 {
        /// Leaf, then intermediates; the root may be included.
        chain: &'a [Certificate],
    },
}

impl fmt::Debug for Evidence<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::SymmetricKey {
                group,
                registration_id,
                ..
            } => f
                .debug_struct("SymmetricKey")
                .field("group", group)
                .field("registration_id", registration_id)
                .field("sas_token", &"<redacted>")
                .finish(),
            Evidence::X509 { chain } => f
                .debug_struct("X509")
                .field("leaf", &chain.first().map(Certificate::subject))
                .field("chain_len", &chain.len())
                .finish(),
        }
    }
}

/// A device that attested successfully: which group took it, and what it gets.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The enrollment group's name.
    pub group: String,
    /// The registration id the device proved.
    pub registration_id: String,
    /// How it proved it.
    pub attestation: AttestationKind,
    /// Where it goes and as whom.
    pub assignment: Assignment,
    /// What it starts with.
    pub initial: InitialDeviceSettings,
}

impl Registration {
    /// DPS's `registrationState` for this registration, as the final `status: assigned`
    /// response carries it (PROTOCOLS.md §3.2), with `createdDateTimeUtc` and
    /// `lastUpdatedDateTimeUtc` set to `at`:
    ///
    /// ```json
    /// {"registrationId":"…","createdDateTimeUtc":"…","assignedHub":"…","deviceId":"…",
    ///  "status":"assigned","substatus":"initialAssignment","lastUpdatedDateTimeUtc":"…",
    ///  "symmetricKey":{"enrollmentGroupId":"…"}}
    /// ```
    ///
    /// (`x509` instead of `symmetricKey` for an X.509 registration.) `assignedHub` is the
    /// assignment's endpoint as given.
    pub fn registration_state(&self, at: SystemTime) -> Value {
        let timestamp = dps_timestamp(at);
        let attestation_key = match self.attestation {
            AttestationKind::SymmetricKey => "symmetricKey",
            AttestationKind::X509 => "x509",
        };
        let mut state = json!({
            "registrationId": self.registration_id,
            "createdDateTimeUtc": timestamp,
            "assignedHub": self.assignment.endpoint,
            "deviceId": self.assignment.device_id,
            "status": "assigned",
            "substatus": "initialAssignment",
            "lastUpdatedDateTimeUtc": timestamp,
        });
        state[attestation_key] = json!({ "enrollmentGroupId": self.group });
        state
    }
}

/// `2019-04-05T20:35:51.3434366Z`: UTC with seven fractional digits, as DPS writes times.
fn dps_timestamp(at: SystemTime) -> String {
    let t = OffsetDateTime::from(at);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 100
    )
}

// ------------------------------------------------------------------------------------------
// The registry
// ------------------------------------------------------------------------------------------

/// The enrollment groups of one provisioning service, by name.
///
/// [`attest`](Self::attest) finds the group for what a device presents:
///
/// - a SAS token: the named group, or else every symmetric-key group in name order until one
///   whose derived key signed the token;
/// - a certificate chain: the groups whose CA is on the chain's issuer path, nearest the leaf
///   first (so a group on an intermediate wins over one on its root), until one verifies it.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use fleetkit::identity::SymmetricKey;
/// use fleetkit::lifecycle::enrollment::{
///     Allocation, EnrollmentGroup, EnrollmentGroups, Evidence, InitialDeviceSettings,
///     derive_device_key, registration_sas,
/// };
///
/// let key = SymmetricKey::new(vec![0x42; 64])?;
/// let mut groups = EnrollmentGroups::new();
/// groups.add(
///     EnrollmentGroup::symmetric_key("meters", "0ne00000A0A", key.clone(),
///                                    Allocation::static_endpoint("hub.example:8883"))?
///         .with_initial(InitialDeviceSettings::new().with_group("meters")),
/// )?;
///
/// let now = SystemTime::now();
/// let token = registration_sas("0ne00000A0A", "meter-1", &derive_device_key(&key, "meter-1")?,
///                              now + Duration::from_secs(600))?;
/// let registration = groups.attest(
///     &Evidence::SymmetricKey { group: None, registration_id: "meter-1",
///                               sas_token: token.expose_secret() },
///     &serde_json::Value::Null,
///     now,
/// )?;
/// assert_eq!(registration.group, "meters");
/// assert_eq!(registration.initial.groups, ["meters"]);
/// assert_eq!(registration.registration_state(now)["status"], "assigned");
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct EnrollmentGroups {
    groups: BTreeMap<String, EnrollmentGroup>,
}

impl EnrollmentGroups {
    /// No groups.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `group`. Fails with [`Error::AlreadyExists`] if one has its name.
    pub fn add(&mut self, group: EnrollmentGroup) -> Result<()> {
        if self.groups.contains_key(group.name()) {
            return Err(Error::AlreadyExists {
                what: "enrollment group",
                id: group.name().to_owned(),
            });
        }
        self.groups.insert(group.name().to_owned(), group);
        Ok(())
    }

    /// Adds `group`, replacing and returning any group of the same name.
    pub fn replace(&mut self, group: EnrollmentGroup) -> Option<EnrollmentGroup> {
        self.groups.insert(group.name().to_owned(), group)
    }

    /// Removes and returns the group named `name`.
    pub fn remove(&mut self, name: &str) -> Option<EnrollmentGroup> {
        self.groups.remove(name)
    }

    /// The group named `name`.
    pub fn get(&self, name: &str) -> Option<&EnrollmentGroup> {
        self.groups.get(name)
    }

    /// The groups, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &EnrollmentGroup> {
        self.groups.values()
    }

    /// How many groups there are.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Finds the group for `evidence` (see the type's docs), attests the device with it and
    /// assigns it with `payload`.
    ///
    /// Fails as [`EnrollmentGroup::attest`] does, and also with [`Error::NotFound`] for a
    /// named group that does not exist, [`Error::Unauthenticated`] when no symmetric-key group
    /// signed the token, and [`Error::Untrusted`] (unknown issuer) when no group's CA is on the
    /// chain. When several groups' CAs are on the chain and none verifies it, the error is the
    /// nearest group's.
    pub fn attest(
        &self,
        evidence: &Evidence<'_>,
        payload: &Value,
        now: SystemTime,
    ) -> Result<Registration> {
        match *evidence {
            Evidence::SymmetricKey {
                group: Some(name), ..
            } => self
                .groups
                .get(name)
                .ok_or_else(|| Error::NotFound {
                    what: "enrollment group",
                    id: name.to_owned(),
                })?
                .attest(evidence, payload, now),
            Evidence::SymmetricKey {
                group: None,
                registration_id,
                sas_token,
            } => self.attest_any_symmetric(registration_id, sas_token, payload, now),
            Evidence::X509 { chain } => self.attest_by_issuer_path(chain, payload, now),
        }
    }

    fn attest_any_symmetric(
        &self,
        registration_id: &str,
        sas_token: &str,
        payload: &Value,
        now: SystemTime,
    ) -> Result<Registration> {
        validate_registration_id(registration_id)?;
        let token = SasToken::parse(sas_token)?;
        let symmetric = || {
            self.groups
                .values()
                .filter(|g| g.attestation.kind() == AttestationKind::SymmetricKey)
        };
        for group in symmetric() {
            if group
                .derived_key_signing(registration_id, &token)?
                .is_some()
            {
                return group.attest_token(registration_id, &token, payload, now);
            }
        }
        if let Some(group) = symmetric().find(|g| g.group_key().is_ok_and(|k| token.signed_with(k)))
        {
            return Err(group.refusal_for_bad_signature(registration_id, &token));
        }
        Err(Error::Unauthenticated(format!(
            "no symmetric-key enrollment group derives the key that signed the SAS token for \
             {registration_id:?}"
        )))
    }

    fn attest_by_issuer_path(
        &self,
        chain: &[Certificate],
        payload: &Value,
        now: SystemTime,
    ) -> Result<Registration> {
        if chain.is_empty() {
            return Err(Error::invalid("certificate chain", "is empty"));
        }
        // The issuer names along the chain, nearest the leaf first.
        let mut candidates: Vec<&EnrollmentGroup> = Vec::new();
        for issuer in chain.iter().map(Certificate::issuer_der) {
            for group in self.groups.values() {
                if let Attestation::X509 { ca } = &group.attestation
                    && ca.subject_der() == issuer
                    && !candidates.iter().any(|c| c.name == group.name)
                {
                    candidates.push(group);
                }
            }
        }
        let mut first_error = None;
        for group in candidates {
            match group.attest_chain(chain, payload, now) {
                Ok(registration) => return Ok(registration),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(Error::Untrusted(ChainError::UnknownIssuer)))
    }
}
