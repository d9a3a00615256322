//! Fleet provisioning by claim, as a hub service: AWS IoT's MQTT API (PROTOCOLS.md §1.9) —
//! the most widely deployed claim flow, and the one the AWS dialect must serve anyway.
//!
//! A device holding a shared *claim* certificate (whose policy,
//! [`provisioning_claim`](crate::policy::builtin::provisioning_claim), allows nothing else)
//! asks for an operational identity in two requests:
//!
//! 1. `$aws/certificates/create-from-csr/json` with `{"certificateSigningRequest": "<PEM>"}`
//!    (the key stays on the device), or `$aws/certificates/create/json` with an empty payload
//!    (the hub generates the key and returns it once) → a certificate, its id and a
//!    `certificateOwnershipToken` (single use, expires after an hour by default);
//! 2. `$aws/provisioning-templates/<template>/provision/json` with the token and
//!    `parameters` → the [`ProvisioningTemplate`] decides the device id, groups, attributes and
//!    policy, an optional pre-provisioning hook may refuse, and the device, its certificate and
//!    the policy attachment are created together (all or nothing).
//!
//! Answers go to `<request topic>/accepted` or `/rejected` **of the requesting connection
//! only** (claim devices share a certificate; one must never see another's key or token).
//! Rejections carry AWS's shape `{"statusCode", "errorCode", "errorMessage"}`.
//!
//! A certificate from a CSR carries the CSR's common name, which must be a valid device id
//! that no device has yet (a claim cannot take over an existing identity); the template must
//! then assign that same id. With a hub-generated key the device id is not known at step 1, so
//! that certificate is named `prov-<random>` and the registry — not the name — ties it to the
//! device the template creates.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{Outbox, Publisher};
use crate::identity::{DeviceId, Signer, SoftwareKey};
use crate::local::registry::DeviceRecord;
use crate::pki::{Certificate, DeviceCertOptions, DeviceCsr};
use crate::{Error, Result};

/// What a pre-provisioning hook sees.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct PreProvisionRequest {
    /// The template used.
    pub template: String,
    /// The device id the template assigns.
    pub device_id: String,
    /// The parameters the device sent.
    pub parameters: BTreeMap<String, String>,
    /// The claim connection's client id.
    pub claim_client_id: String,
}

/// A pre-provisioning hook: `Ok` lets provisioning go on; an error refuses it (its message is
/// what the device is told).
pub type PreProvisionHook = Arc<dyn Fn(&PreProvisionRequest) -> Result<()> + Send + Sync>;

/// How a claim turns into a device: its id, groups, attributes, policy and the configuration
/// returned to the device.
#[derive(Clone)]
pub struct ProvisioningTemplate {
    name: String,
    device_id: String,
    policy: Option<String>,
    groups: Vec<String>,
    attributes: Vec<(String, String)>,
    required: Vec<String>,
    configuration: Map<String, Value>,
    hook: Option<PreProvisionHook>,
}

impl std::fmt::Debug for ProvisioningTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisioningTemplate")
            .field("name", &self.name)
            .field("device_id", &self.device_id)
            .field("policy", &self.policy)
            .field("groups", &self.groups)
            .field("attributes", &self.attributes)
            .field("required", &self.required)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl ProvisioningTemplate {
    /// A template named `name` (AWS's rule: 1–36 of `0-9 A-Z a-z _ -`) whose device id is
    /// `device_id` with `{Parameter}` placeholders filled from the request's parameters, e.g.
    /// `"thermostat-{SerialNumber}"`. Placeholders are required parameters.
    pub fn new(name: &str, device_id: &str) -> Result<Self> {
        if name.is_empty()
            || name.len() > 36
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::invalid(
                "template name",
                format!("{name:?}: use 1-36 of 0-9 A-Z a-z _ -"),
            ));
        }
        let required = placeholders(device_id)?;
        Ok(ProvisioningTemplate {
            name: name.to_string(),
            device_id: device_id.to_string(),
            policy: None,
            groups: Vec::new(),
            attributes: Vec::new(),
            required,
            configuration: Map::new(),
            hook: None,
        })
    }

    /// Attaches the policy named `policy` (which must exist on the hub) to every device made.
    pub fn with_policy(mut self, policy: &str) -> Self {
        self.policy = Some(policy.to_string());
        self
    }

    /// Puts every device made in `group`.
    pub fn in_group(mut self, group: &str) -> Self {
        self.groups.push(group.to_string());
        self
    }

    /// Sets attribute `name` from parameter `parameter` (which becomes required).
    pub fn with_attribute_from(mut self, name: &str, parameter: &str) -> Self {
        self.attributes
            .push((name.to_string(), parameter.to_string()));
        if !self.required.iter().any(|r| r == parameter) {
            self.required.push(parameter.to_string());
        }
        self
    }

    /// Requires parameter `parameter`.
    pub fn requiring(mut self, parameter: &str) -> Self {
        if !self.required.iter().any(|r| r == parameter) {
            self.required.push(parameter.to_string());
        }
        self
    }

    /// The `deviceConfiguration` returned to the device.
    pub fn with_configuration(mut self, configuration: Map<String, Value>) -> Self {
        self.configuration = configuration;
        self
    }

    /// A pre-provisioning hook (AWS's Lambda hook): may refuse, e.g. a serial number not on an
    /// allow-list.
    pub fn with_hook(
        mut self,
        hook: impl Fn(&PreProvisionRequest) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// The template's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A template from an AWS fleet-provisioning template body (the JSON of
    /// CreateProvisioningTemplate's `templateBody`), in the subset the hub can carry out:
    ///
    /// - `Parameters`: names (type `String`);
    /// - exactly one `AWS::IoT::Thing` resource: `ThingName` as a literal, `{"Ref": p}` or
    ///   `{"Fn::Join": ["", [literal | {"Ref": p}, …]]}`; `ThingGroups` as literals;
    ///   `AttributePayload` values as `{"Ref": p}`;
    /// - `AWS::IoT::Certificate` with `CertificateId` `{"Ref": "AWS::IoT::Certificate::Id"}`
    ///   and `Status` `ACTIVE`;
    /// - `AWS::IoT::Policy` naming an existing policy (`PolicyName`, a literal);
    /// - `DeviceConfiguration`: literal values (returned to the device).
    ///
    /// Anything else (inline policy documents, thing types, `Fn::` functions other than
    /// `Join`, conditions, `OverrideSettings`) is [`Error::InvalidInput`] naming the place.
    pub fn from_aws_template_body(name: &str, body: &Value) -> Result<Self> {
        let bad =
            |place: &str, why: &str| Error::invalid("templateBody", format!("{place}: {why}"));
        let Value::Object(top) = body else {
            return Err(bad("the body", "must be a JSON object"));
        };
        let mut parameters: Vec<String> = Vec::new();
        if let Some(p) = top.get("Parameters") {
            let Value::Object(p) = p else {
                return Err(bad("Parameters", "must be an object"));
            };
            for (k, v) in p {
                match v.get("Type").and_then(Value::as_str) {
                    Some("String") | None => parameters.push(k.clone()),
                    Some(other) => {
                        return Err(bad(
                            &format!("Parameters.{k}.Type"),
                            &format!("{other:?} is not supported (String only)"),
                        ));
                    }
                }
            }
        }
        let reference = |place: &str, v: &Value| -> Result<String> {
            match v.get("Ref").and_then(Value::as_str) {
                Some(p) if v.as_object().map(Map::len) == Some(1) => {
                    if parameters.iter().any(|q| q == p) {
                        Ok(p.to_string())
                    } else {
                        Err(bad(
                            place,
                            &format!("Ref to {p:?}, which is not a declared parameter"),
                        ))
                    }
                }
                _ => Err(bad(place, "expected {\"Ref\": \"<parameter>\"}")),
            }
        };
        // A name pattern with {Parameter} placeholders.
        let pattern = |place: &str, v: &Value| -> Result<String> {
            let piece = |v: &Value| -> Result<String> {
                match v {
                    Value::String(s) if !s.contains(['{', '}']) => Ok(s.clone()),
                    Value::String(_) => Err(bad(place, "braces are not allowed in names")),
                    other => Ok(format!("{{{}}}", reference(place, other)?)),
                }
            };
            match v.get("Fn::Join") {
                Some(Value::Array(args)) if args.len() == 2 => {
                    if args[0] != Value::String(String::new()) {
                        return Err(bad(place, "Fn::Join with a separator other than \"\""));
                    }
                    let Value::Array(parts) = &args[1] else {
                        return Err(bad(place, "Fn::Join needs a list of parts"));
                    };
                    parts.iter().map(piece).collect()
                }
                Some(_) => Err(bad(place, "Fn::Join takes [\"\", [parts]]")),
                None => piece(v),
            }
        };
        let Some(Value::Object(resources)) = top.get("Resources") else {
            return Err(bad("Resources", "required, an object"));
        };
        let mut device_id = None;
        let mut groups = Vec::new();
        let mut attributes = Vec::new();
        let mut policy = None;
        for (id, resource) in resources {
            let place = format!("Resources.{id}");
            let props = resource
                .get("Properties")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let unknown = |allowed: &[&str]| {
                props
                    .keys()
                    .find(|k| !allowed.contains(&k.as_str()))
                    .map(|k| bad(&format!("{place}.Properties.{k}"), "not supported"))
            };
            if let Some(Value::Object(extra)) = resource.get("OverrideSettings")
                && !extra.is_empty()
            {
                return Err(bad(&format!("{place}.OverrideSettings"), "not supported"));
            }
            match resource.get("Type").and_then(Value::as_str) {
                Some("AWS::IoT::Thing") => {
                    if let Some(e) = unknown(&["ThingName", "ThingGroups", "AttributePayload"]) {
                        return Err(e);
                    }
                    if device_id.is_some() {
                        return Err(bad(&place, "a second AWS::IoT::Thing"));
                    }
                    let name = props
                        .get("ThingName")
                        .ok_or_else(|| bad(&place, "ThingName is required"))?;
                    device_id = Some(pattern(&format!("{place}.Properties.ThingName"), name)?);
                    if let Some(g) = props.get("ThingGroups") {
                        let Value::Array(g) = g else {
                            return Err(bad(
                                &format!("{place}.Properties.ThingGroups"),
                                "must be a list",
                            ));
                        };
                        for group in g {
                            let Some(group) = group.as_str() else {
                                return Err(bad(
                                    &format!("{place}.Properties.ThingGroups"),
                                    "literal group names only",
                                ));
                            };
                            groups.push(group.to_string());
                        }
                    }
                    if let Some(a) = props.get("AttributePayload") {
                        let Value::Object(a) = a else {
                            return Err(bad(
                                &format!("{place}.Properties.AttributePayload"),
                                "must be an object",
                            ));
                        };
                        for (k, v) in a {
                            let p =
                                reference(&format!("{place}.Properties.AttributePayload.{k}"), v)?;
                            attributes.push((k.clone(), p));
                        }
                    }
                }
                Some("AWS::IoT::Certificate") => {
                    if let Some(e) = unknown(&["CertificateId", "Status"]) {
                        return Err(e);
                    }
                    let id_ok = props.get("CertificateId")
                        == Some(&json!({"Ref": "AWS::IoT::Certificate::Id"}));
                    if !id_ok {
                        return Err(bad(
                            &format!("{place}.Properties.CertificateId"),
                            "must be {\"Ref\": \"AWS::IoT::Certificate::Id\"}",
                        ));
                    }
                    match props.get("Status").and_then(Value::as_str) {
                        None => {}
                        Some(s) if s.eq_ignore_ascii_case("active") => {}
                        Some(s) => {
                            return Err(bad(
                                &format!("{place}.Properties.Status"),
                                &format!("{s:?}: only ACTIVE certificates are supported"),
                            ));
                        }
                    }
                }
                Some("AWS::IoT::Policy") => {
                    if let Some(e) = unknown(&["PolicyName"]) {
                        return Err(e);
                    }
                    let name = props.get("PolicyName").and_then(Value::as_str).ok_or_else(|| {
                        bad(&format!("{place}.Properties.PolicyName"), "a literal name of an existing policy is required (inline documents are not supported)")
                    })?;
                    if policy.replace(name.to_string()).is_some() {
                        return Err(bad(&place, "a second AWS::IoT::Policy"));
                    }
                }
                other => {
                    return Err(bad(
                        &format!("{place}.Type"),
                        &format!("{other:?} is not supported"),
                    ));
                }
            }
        }
        let device_id =
            device_id.ok_or_else(|| bad("Resources", "an AWS::IoT::Thing is required"))?;
        let mut template = ProvisioningTemplate::new(name, &device_id)?;
        if let Some(p) = policy {
            template = template.with_policy(&p);
        }
        for g in groups {
            template = template.in_group(&g);
        }
        for (attribute, parameter) in attributes {
            template = template.with_attribute_from(&attribute, &parameter);
        }
        if let Some(c) = top.get("DeviceConfiguration") {
            let Value::Object(c) = c else {
                return Err(bad("DeviceConfiguration", "must be an object"));
            };
            template = template.with_configuration(c.clone());
        }
        for other in top.keys() {
            if ![
                "Parameters",
                "Resources",
                "DeviceConfiguration",
                "AWSTemplateFormatVersion",
            ]
            .contains(&other.as_str())
            {
                return Err(bad(other, "not supported"));
            }
        }
        Ok(template)
    }

    /// The device id for `parameters`.
    fn device_id_for(&self, parameters: &BTreeMap<String, String>) -> Result<String> {
        let mut out = String::new();
        let mut rest = self.device_id.as_str();
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("checked in new") + start;
            let key = &rest[start + 1..end];
            let value = parameters
                .get(key)
                .ok_or_else(|| Error::invalid(format!("parameters.{key}"), "missing"))?;
            out.push_str(value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        DeviceId::new(&out)?;
        Ok(out)
    }
}

/// `{Name}` placeholders in a device-id pattern.
fn placeholders(pattern: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            return Err(Error::invalid("device id pattern", "unclosed '{'"));
        };
        let name = &rest[start + 1..start + len];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Error::invalid(
                "device id pattern",
                format!("bad placeholder {{{name}}}"),
            ));
        }
        names.push(name.to_string());
        rest = &rest[start + len + 1..];
    }
    if rest.contains('}') {
        return Err(Error::invalid("device id pattern", "stray '}'"));
    }
    Ok(names)
}

/// A certificate issued at step 1, waiting for its owner to register.
struct Pending {
    certificate: Certificate,
    /// From a CSR: the template must assign the certificate's common name.
    from_csr: bool,
    expires: Instant,
}

/// The fleet-provisioning service: templates and outstanding ownership tokens.
pub struct FleetProvisioning {
    templates: Mutex<HashMap<String, ProvisioningTemplate>>,
    pending: Mutex<HashMap<String, Pending>>,
    token_lifetime: Duration,
}

impl std::fmt::Debug for FleetProvisioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetProvisioning")
            .field(
                "templates",
                &self
                    .templates
                    .lock()
                    .expect("templates lock")
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>(),
            )
            .field("token_lifetime", &self.token_lifetime)
            .finish_non_exhaustive()
    }
}

impl Default for FleetProvisioning {
    fn default() -> Self {
        Self::new()
    }
}

/// A rejection: AWS's status code, error code and message.
struct Rejected(u16, &'static str, String);

impl From<Error> for Rejected {
    fn from(e: Error) -> Self {
        match &e {
            Error::InvalidInput { .. } => Rejected(400, "InvalidPayload", e.to_string()),
            Error::NotFound { .. } => Rejected(404, "ResourceNotFound", e.to_string()),
            Error::AlreadyExists { .. } => Rejected(409, "ResourceAlreadyExists", e.to_string()),
            Error::PermissionDenied(_) => Rejected(403, "AccessDenied", e.to_string()),
            Error::Expired(_) | Error::Unauthenticated(_) => {
                Rejected(400, "InvalidCertificateOwnershipToken", e.to_string())
            }
            _ => Rejected(500, "InternalFailure", e.to_string()),
        }
    }
}

impl FleetProvisioning {
    /// No templates; ownership tokens live one hour (AWS's figure).
    pub fn new() -> Self {
        FleetProvisioning {
            templates: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            token_lifetime: Duration::from_secs(3600),
        }
    }

    /// How long an ownership token stays valid.
    pub fn with_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Adds or replaces a template.
    pub fn put_template(&self, template: ProvisioningTemplate) {
        self.templates
            .lock()
            .expect("templates lock")
            .insert(template.name.clone(), template);
    }

    /// Whether `topic` is one of this service's request topics.
    pub fn serves(topic: &str) -> bool {
        topic == "$aws/certificates/create-from-csr/json"
            || topic == "$aws/certificates/create/json"
            || topic == "$aws/certificates/create-from-csr/cbor"
            || topic == "$aws/certificates/create/cbor"
            || template_of(topic).is_some()
    }

    /// Handles a request (after the policy allowed the publish) and answers the requester.
    pub fn on_publish(
        &self,
        from: &Publisher<'_>,
        topic: &str,
        payload: &Bytes,
        outbox: &Outbox,
    ) -> Result<()> {
        let result = if topic.ends_with("/cbor") {
            Err(Rejected(
                400,
                "InvalidPayload",
                "CBOR is not supported by the local hub; use the json topics".into(),
            ))
        } else if topic == "$aws/certificates/create-from-csr/json" {
            self.create_from_csr(payload, outbox)
        } else if topic == "$aws/certificates/create/json" {
            self.create_keys(outbox)
        } else if let Some(template) = template_of(topic) {
            self.register(template, from, payload, outbox)
        } else {
            return Err(Error::NotSupported(format!("no service owns {topic:?}")));
        };
        let (suffix, body) = match result {
            Ok(body) => ("accepted", body),
            Err(Rejected(status, code, message)) => (
                "rejected",
                json!({"statusCode": status, "errorCode": code, "errorMessage": message}),
            ),
        };
        outbox.publish_to(
            from.client_id,
            &format!("{topic}/{suffix}"),
            Bytes::from(serde_json::to_vec(&body).expect("JSON")),
            0,
        )?;
        Ok(())
    }

    fn new_token(&self, certificate: Certificate, from_csr: bool) -> Result<String> {
        let mut raw = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .map_err(|_| Error::Crypto("no randomness for the ownership token".into()))?;
        let token = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw);
        let now = Instant::now();
        let mut pending = self.pending.lock().expect("pending lock");
        pending.retain(|_, p| p.expires > now);
        pending.insert(
            token.clone(),
            Pending {
                certificate,
                from_csr,
                expires: now + self.token_lifetime,
            },
        );
        Ok(token)
    }

    fn create_from_csr(
        &self,
        payload: &Bytes,
        outbox: &Outbox,
    ) -> std::result::Result<Value, Rejected> {
        let body: Value = serde_json::from_slice(payload)
            .map_err(|e| Rejected(400, "InvalidPayload", format!("not JSON: {e}")))?;
        let pem = body
            .get("certificateSigningRequest")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Rejected(
                    400,
                    "InvalidPayload",
                    "certificateSigningRequest is missing".into(),
                )
            })?;
        let csr = DeviceCsr::from_pem(pem)?;
        let name = csr.subject_common_name().unwrap_or_default().to_string();
        let id = DeviceId::new(&name).map_err(|e| {
            Rejected(
                400,
                "InvalidCsr",
                format!("the CSR's common name must be the device id to provision: {e}"),
            )
        })?;
        let shared = outbox.shared()?;
        if shared
            .registry
            .read()
            .expect("registry lock")
            .device(id.as_str())
            .is_some()
        {
            return Err(Rejected(
                403,
                "AccessDenied",
                format!(
                    "the CSR names device {id}, which exists: a claim cannot take over another device's identity"
                ),
            ));
        }
        let certificate = shared
            .ca
            .issue_for_csr(&id, &csr, &DeviceCertOptions::default())?;
        let token = self.new_token(certificate.clone(), true)?;
        Ok(json!({
            "certificateId": certificate.fingerprint_sha256(),
            "certificatePem": chain_pem(&certificate, &shared.ca.chain_for_devices()),
            "certificateOwnershipToken": token,
        }))
    }

    fn create_keys(&self, outbox: &Outbox) -> std::result::Result<Value, Rejected> {
        let shared = outbox.shared()?;
        let key = SoftwareKey::generate_p256()?;
        let mut suffix = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix)
            .map_err(|_| Rejected(500, "InternalFailure", "no randomness".into()))?;
        let name: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let id = DeviceId::new(format!("prov-{name}"))?;
        let certificate =
            shared
                .ca
                .issue(&id, key.public_key_spki(), &DeviceCertOptions::default())?;
        let private_key = key
            .to_pkcs8_pem()
            .map_err(|e| Rejected(500, "InternalFailure", e.to_string()))?;
        let token = self.new_token(certificate.clone(), false)?;
        Ok(json!({
            "certificateId": certificate.fingerprint_sha256(),
            "certificatePem": chain_pem(&certificate, &shared.ca.chain_for_devices()),
            "privateKey": private_key.as_str(),
            "certificateOwnershipToken": token,
        }))
    }

    fn register(
        &self,
        template: &str,
        from: &Publisher<'_>,
        payload: &Bytes,
        outbox: &Outbox,
    ) -> std::result::Result<Value, Rejected> {
        let body: Value = serde_json::from_slice(payload)
            .map_err(|e| Rejected(400, "InvalidPayload", format!("not JSON: {e}")))?;
        let template = self
            .templates
            .lock()
            .expect("templates lock")
            .get(template)
            .cloned()
            .ok_or_else(|| {
                Rejected(
                    404,
                    "ResourceNotFound",
                    format!("no provisioning template {template:?}"),
                )
            })?;
        let token = body
            .get("certificateOwnershipToken")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Rejected(
                    400,
                    "InvalidPayload",
                    "certificateOwnershipToken is missing".into(),
                )
            })?;
        let mut parameters = BTreeMap::new();
        if let Some(p) = body.get("parameters") {
            let Value::Object(p) = p else {
                return Err(Rejected(
                    400,
                    "InvalidPayload",
                    "parameters must be an object".into(),
                ));
            };
            for (k, v) in p {
                let Value::String(v) = v else {
                    return Err(Rejected(
                        400,
                        "InvalidPayload",
                        format!("parameter {k} must be a string"),
                    ));
                };
                parameters.insert(k.clone(), v.clone());
            }
        }
        for r in &template.required {
            if !parameters.contains_key(r) {
                return Err(Rejected(
                    400,
                    "InvalidParameters",
                    format!("parameter {r} is required by template {}", template.name),
                ));
            }
        }
        let device_id = template.device_id_for(&parameters)?;
        // The token is spent whatever happens next: a refused registration does not leave a
        // certificate anyone could claim later.
        let pending = {
            let mut pending = self.pending.lock().expect("pending lock");
            pending.remove(token)
        }
        .ok_or_else(|| {
            Rejected(
                400,
                "InvalidCertificateOwnershipToken",
                "unknown or already used certificateOwnershipToken".into(),
            )
        })?;
        if pending.expires <= Instant::now() {
            return Err(Rejected(
                400,
                "InvalidCertificateOwnershipToken",
                "the certificateOwnershipToken has expired".into(),
            ));
        }
        if pending.from_csr && pending.certificate.subject_common_name() != Some(device_id.as_str())
        {
            return Err(Rejected(
                403,
                "AccessDenied",
                format!(
                    "the certificate was issued for {:?}, the template assigns {device_id:?}",
                    pending
                        .certificate
                        .subject_common_name()
                        .unwrap_or_default()
                ),
            ));
        }
        if let Some(hook) = &template.hook {
            hook(&PreProvisionRequest {
                template: template.name.clone(),
                device_id: device_id.clone(),
                parameters: parameters.clone(),
                claim_client_id: from.client_id.to_string(),
            })
            .map_err(|e| {
                let reason = match e {
                    Error::PermissionDenied(m) | Error::InvalidInput { reason: m, .. } => m,
                    other => other.to_string(),
                };
                Rejected(
                    403,
                    "AccessDenied",
                    format!("refused by the pre-provisioning hook: {reason}"),
                )
            })?;
        }
        let mut record = DeviceRecord::new(&device_id);
        for g in &template.groups {
            record = record.in_group(g);
        }
        for (attr, param) in &template.attributes {
            record = record.with_attribute(attr, &parameters[param]);
        }
        let shared = outbox.shared()?;
        shared.provision_device(record, pending.certificate, template.policy.as_deref())?;
        Ok(json!({
            "thingName": device_id,
            "deviceConfiguration": template.configuration,
        }))
    }
}

/// `$aws/provisioning-templates/<name>/provision/json` → `<name>`.
fn template_of(topic: &str) -> Option<&str> {
    let name = topic
        .strip_prefix("$aws/provisioning-templates/")?
        .strip_suffix("/provision/json")
        .or_else(|| {
            topic
                .strip_prefix("$aws/provisioning-templates/")?
                .strip_suffix("/provision/cbor")
        })?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

fn chain_pem(leaf: &Certificate, rest: &[Certificate]) -> String {
    let mut pem = leaf.to_pem();
    for c in rest {
        pem.push_str(&c.to_pem());
    }
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(thing: Value) -> Value {
        json!({
            "Parameters": {"SerialNumber": {"Type": "String"}, "Site": {"Type": "String"}},
            "Resources": {
                "thing": {"Type": "AWS::IoT::Thing", "Properties": thing},
                "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
                    "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}},
                "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "device"}}
            },
            "DeviceConfiguration": {"interval": "60"}
        })
    }

    #[test]
    fn aws_template_bodies_become_templates() {
        let t = ProvisioningTemplate::from_aws_template_body(
            "meters",
            &body(json!({
                "ThingName": {"Fn::Join": ["", ["meter-", {"Ref": "SerialNumber"}]]},
                "ThingGroups": ["meters", "north"],
                "AttributePayload": {"site": {"Ref": "Site"}}
            })),
        )
        .unwrap();
        assert_eq!(t.name(), "meters");
        assert_eq!(t.device_id, "meter-{SerialNumber}");
        assert_eq!(t.policy.as_deref(), Some("device"));
        assert_eq!(t.groups, vec!["meters".to_string(), "north".to_string()]);
        assert_eq!(t.attributes, vec![("site".to_string(), "Site".to_string())]);
        assert_eq!(t.configuration["interval"], "60");
        let params: BTreeMap<String, String> = [
            ("SerialNumber".to_string(), "SN1".to_string()),
            ("Site".to_string(), "n".to_string()),
        ]
        .into();
        assert_eq!(t.device_id_for(&params).unwrap(), "meter-SN1");
        // A bare Ref works too.
        let t = ProvisioningTemplate::from_aws_template_body(
            "by-serial",
            &body(json!({"ThingName": {"Ref": "SerialNumber"}})),
        )
        .unwrap();
        assert_eq!(t.device_id, "{SerialNumber}");
    }

    #[test]
    fn what_the_hub_cannot_do_is_refused_naming_the_place() {
        let field =
            |thing: Value| match ProvisioningTemplate::from_aws_template_body("t", &body(thing)) {
                Err(Error::InvalidInput { reason, .. }) => reason,
                other => panic!("{other:?}"),
            };
        assert!(field(json!({"ThingName": "x", "ThingTypeName": "m"})).contains("ThingTypeName"));
        assert!(field(json!({"ThingName": {"Ref": "Nope"}})).contains("not a declared parameter"));
        assert!(
            field(json!({"ThingName": {"Fn::Join": ["-", ["a", {"Ref": "Site"}]]}}))
                .contains("separator")
        );
        assert!(field(json!({"ThingGroups": ["g"]})).contains("ThingName is required"));
        assert!(
            field(json!({"ThingName": "x", "AttributePayload": {"a": "literal"}}))
                .contains("AttributePayload.a")
        );
        let no_thing = json!({"Resources": {}});
        assert!(ProvisioningTemplate::from_aws_template_body("t", &no_thing).is_err());
        let inline_policy = json!({"Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "x"}},
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": "{}"}}}});
        assert!(ProvisioningTemplate::from_aws_template_body("t", &inline_policy).is_err());
    }
}
