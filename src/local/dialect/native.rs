//! The hub's native dialect: mutual-TLS (or password-hook) authentication and the hub's own
//! twin and method services on `$fleetkit/devices/{id}/…` (topics in
//! [`crate::device::native`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::provisioning::{FleetProvisioning, ProvisioningTemplate};
use super::{
    Authenticated, Hello, HubDialect, MethodResponse, Outbox, PasswordAuthenticator, Publisher,
    authenticate_certificate,
};
use crate::device::twin::{TwinDocument, TwinLimits};
use crate::local::registry::Registry;
use crate::{Error, Result};

use crate::device::native::topics;
use topics::Reserved;

/// A method call waiting for the device's answer.
struct PendingCall {
    device: String,
    answer: oneshot::Sender<MethodResponse>,
}

/// The native dialect, hub side: twin and method services, commands, and an optional
/// username/password hook besides client certificates. Topics: [`crate::device::native`].
///
/// ```no_run
/// # async fn f() -> fleetkit::Result<()> {
/// use fleetkit::local::{LocalHub, dialect::NativeHubDialect};
/// // Accept a password "let-me-in" for device "legacy-1" besides client certificates.
/// let dialect = NativeHubDialect::new().with_password_auth(|hello: &fleetkit::local::dialect::Hello<'_>, _: &fleetkit::local::Registry| {
///     match (hello.username, hello.password) {
///         (Some("legacy-1"), Some("let-me-in")) => Ok("legacy-1".to_string()),
///         _ => Err(fleetkit::Error::Unauthenticated("bad username or password".into())),
///     }
/// });
/// let hub = LocalHub::builder().dialect(dialect).start().await?;
/// # let _ = hub; Ok(()) }
/// ```
pub struct NativeHubDialect {
    outbox: OnceLock<Outbox>,
    twins: Mutex<HashMap<String, TwinDocument>>,
    calls: Mutex<HashMap<String, PendingCall>>,
    next_request: AtomicU64,
    twin_limits: TwinLimits,
    password: Option<Arc<dyn PasswordAuthenticator>>,
    provisioning: FleetProvisioning,
}

impl std::fmt::Debug for NativeHubDialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeHubDialect")
            .field("password_auth", &self.password.is_some())
            .field("twin_limits", &self.twin_limits)
            .finish_non_exhaustive()
    }
}

impl Default for NativeHubDialect {
    fn default() -> Self {
        Self::new()
    }
}

impl NativeHubDialect {
    /// The native dialect: client certificates only, default twin limits.
    pub fn new() -> Self {
        NativeHubDialect {
            outbox: OnceLock::new(),
            twins: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            twin_limits: TwinLimits::default(),
            password: None,
            provisioning: FleetProvisioning::new(),
        }
    }

    /// Also accepts clients without a certificate whose username/password `hook` maps to a
    /// device (certificates are still checked first when presented).
    pub fn with_password_auth(mut self, hook: impl PasswordAuthenticator) -> Self {
        self.password = Some(Arc::new(hook));
        self
    }

    /// Serves fleet provisioning by claim with `template` (see [`FleetProvisioning`]); may
    /// be called for several templates.
    pub fn with_provisioning_template(self, template: ProvisioningTemplate) -> Self {
        self.provisioning.put_template(template);
        self
    }

    /// How long a provisioning ownership token stays valid (default one hour).
    pub fn with_provisioning_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.provisioning = std::mem::take(&mut self.provisioning).with_token_lifetime(lifetime);
        self
    }

    /// The fleet-provisioning service (add templates at run time).
    pub fn provisioning(&self) -> &FleetProvisioning {
        &self.provisioning
    }

    /// Limits on twin documents.
    pub fn with_twin_limits(mut self, limits: TwinLimits) -> Self {
        self.twin_limits = limits;
        self
    }

    /// Applies `change` to a copy of `device`'s twin, keeps it, and writes the twins to the
    /// data directory before returning — so an acknowledged change survives a restart, and a
    /// change that cannot be saved is undone (nothing half-applied).
    fn update_twin(
        &self,
        device: &str,
        change: impl FnOnce(&mut TwinDocument) -> Result<crate::device::twin::Applied>,
    ) -> Result<crate::device::twin::Applied> {
        // The lock is held while saving, so concurrent changes are saved in order and an
        // undo never clobbers another change.
        let mut twins = self.twins.lock().expect("twins lock");
        let before = twins.get(device).cloned();
        let mut doc = before.clone().unwrap_or_default();
        let applied = change(&mut doc)?;
        twins.insert(device.to_string(), doc);
        let saved = match self.outbox.get() {
            Some(outbox) => outbox.persist_state(&twins_state(&twins)),
            None => Ok(()),
        };
        if let Err(e) = saved {
            match before {
                Some(doc) => twins.insert(device.to_string(), doc),
                None => twins.remove(device),
            };
            return Err(e);
        }
        Ok(applied)
    }

    fn outbox(&self) -> Result<&Outbox> {
        self.outbox
            .get()
            .ok_or_else(|| Error::Unavailable("the dialect is not attached to a hub".into()))
    }

    fn ensure_device(&self, device: &str) -> Result<()> {
        let exists = self
            .outbox()?
            .with_registry(|r| r.device(device).is_some())?;
        if exists {
            Ok(())
        } else {
            Err(Error::NotFound {
                what: "device",
                id: device.to_string(),
            })
        }
    }

    fn answer_twin(
        &self,
        outbox: &Outbox,
        device: &str,
        request_id: &str,
        status: u16,
        body: &Value,
    ) {
        let topic = topics::twin_response(device, status, request_id);
        let payload = Bytes::from(serde_json::to_vec(body).expect("JSON"));
        let _ = outbox.publish_now(&topic, payload, 0);
    }

    fn twin_report(&self, device: &str, payload: &Bytes) -> std::result::Result<u64, (u16, Value)> {
        let body: Value = serde_json::from_slice(payload).map_err(|e| {
            (
                400,
                json!({"error": "invalid_input", "field": "payload", "message": format!("not JSON: {e}")}),
            )
        })?;
        let patch = match body.get("patch") {
            Some(Value::Object(m)) => m.clone(),
            _ => {
                return Err((
                    400,
                    json!({"error": "invalid_input", "field": "patch", "message": "expected {\"patch\": {…}, \"version\"?: n}"}),
                ));
            }
        };
        let expected = match body.get("version") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or((
                400,
                json!({"error": "invalid_input", "field": "version", "message": "must be a non-negative integer"}),
            ))?),
        };
        self.update_twin(device, |doc| {
            doc.apply_reported(
                &Value::Object(patch),
                expected,
                &self.twin_limits,
                time::OffsetDateTime::now_utc(),
            )
        })
        .map(|applied| applied.versions.version)
        .map_err(|e| error_body(&e))
    }
}

impl NativeHubDialect {
    /// Rotation, step 1: a certificate for a CSR of the requesting device's own id.
    fn issue_for_csr(
        &self,
        from: &Publisher<'_>,
        device: &str,
        payload: &Bytes,
        outbox: &Outbox,
    ) -> Result<Value> {
        if from.device != device {
            return Err(Error::PermissionDenied(format!(
                "{} cannot ask for a certificate for {device}",
                from.device
            )));
        }
        let body: Value = serde_json::from_slice(payload)
            .map_err(|e| Error::invalid("payload", format!("not JSON: {e}")))?;
        let pem = body
            .get("csr")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid("csr", "missing"))?;
        let csr = crate::pki::DeviceCsr::from_pem(pem)?;
        if csr.subject_common_name() != Some(device) {
            return Err(Error::PermissionDenied(format!(
                "the CSR names {:?}; a device can only renew its own identity ({device})",
                csr.subject_common_name().unwrap_or_default()
            )));
        }
        let shared = outbox.shared()?;
        let id = crate::identity::DeviceId::new(device)?;
        let certificate =
            shared
                .ca
                .issue_for_csr(&id, &csr, &crate::pki::DeviceCertOptions::default())?;
        let mut chain = certificate.to_pem();
        for c in shared.ca.chain_for_devices() {
            chain.push_str(&c.to_pem());
        }
        let cert_id = shared.register_certificate(certificate, device)?;
        Ok(json!({"certificateId": cert_id, "certificatePem": chain}))
    }

    /// Rotation, last step: over the new certificate, retire the old one.
    fn confirm(
        &self,
        from: &Publisher<'_>,
        device: &str,
        payload: &Bytes,
        outbox: &Outbox,
    ) -> Result<Value> {
        if from.device != device {
            return Err(Error::PermissionDenied(format!(
                "{} cannot confirm for {device}",
                from.device
            )));
        }
        let body: Value = serde_json::from_slice(payload)
            .map_err(|e| Error::invalid("payload", format!("not JSON: {e}")))?;
        let new = body
            .get("certificateId")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid("certificateId", "missing"))?;
        let retire = body
            .get("retire")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid("retire", "missing"))?;
        if from.cert_id != Some(new) {
            return Err(Error::PermissionDenied(
                "confirm over a connection authenticated with the new certificate".into(),
            ));
        }
        if new == retire {
            return Err(Error::invalid("retire", "is the new certificate"));
        }
        let shared = outbox.shared()?;
        let state = {
            let registry = shared.registry.read().expect("registry lock");
            let old = registry
                .certificate(retire)
                .ok_or_else(|| Error::NotFound {
                    what: "certificate",
                    id: retire.to_string(),
                })?;
            if old.device != device {
                return Err(Error::PermissionDenied(format!(
                    "certificate {retire} is not {device}'s"
                )));
            }
            old.state
        };
        // Idempotent: a confirmation repeated after a lost answer changes nothing more.
        if state == crate::local::CertificateState::Active {
            shared.set_certificate_state(retire, crate::local::CertificateState::Inactive)?;
        }
        Ok(json!({"certificateId": new, "retired": retire}))
    }
}

/// Answers a certificate request to the requesting connection only.
fn answer_certificate(
    outbox: &Outbox,
    from: &Publisher<'_>,
    device: &str,
    request_id: &str,
    result: Result<Value>,
) {
    let (status, body) = match result {
        Ok(body) => (200, body),
        Err(e) => error_body(&e),
    };
    let topic = topics::certificate_response(device, status, request_id);
    let _ = outbox.publish_to(
        from.client_id,
        &topic,
        Bytes::from(serde_json::to_vec(&body).expect("JSON")),
        0,
    );
}

/// The twins as the dialect's saved state.
fn twins_state(twins: &HashMap<String, TwinDocument>) -> Value {
    let twins: serde_json::Map<String, Value> = twins
        .iter()
        .map(|(d, t)| (d.clone(), serde_json::to_value(t).expect("JSON")))
        .collect();
    json!({ "twins": twins })
}

/// The status and JSON body that answer a failed request.
fn error_body(e: &Error) -> (u16, Value) {
    match e {
        Error::PermissionDenied(_) => (
            403,
            json!({"error": "permission_denied", "message": e.to_string()}),
        ),
        Error::NotFound { .. } => (404, json!({"error": "not_found", "message": e.to_string()})),
        Error::Precondition(_) => (
            409,
            json!({"error": "precondition", "message": e.to_string()}),
        ),
        Error::Conflict {
            expected, current, ..
        } => (
            409,
            json!({"error": "conflict", "message": e.to_string(), "expected_version": expected, "current_version": current}),
        ),
        Error::InvalidInput { field, .. } => (
            400,
            json!({"error": "invalid_input", "field": field, "message": e.to_string()}),
        ),
        other => (
            500,
            json!({"error": "internal", "message": other.to_string()}),
        ),
    }
}

#[async_trait::async_trait]
impl HubDialect for NativeHubDialect {
    fn name(&self) -> &str {
        "native"
    }

    fn attach(&self, outbox: Outbox) {
        let _ = self.outbox.set(outbox);
    }

    fn authenticate(&self, hello: &Hello<'_>, registry: &Registry) -> Result<Authenticated> {
        if hello.certificate.is_some() {
            return authenticate_certificate(hello, registry);
        }
        match (&self.password, hello.password) {
            (Some(hook), Some(_)) => {
                let device = hook.authenticate(hello, registry)?;
                Ok(Authenticated::Password { device })
            }
            (Some(_), None) => Err(Error::Unauthenticated(
                "no client certificate and no password".into(),
            )),
            (None, _) => Err(Error::Unauthenticated("no client certificate".into())),
        }
    }

    fn save_state(&self) -> Option<Value> {
        Some(twins_state(&self.twins.lock().expect("twins lock")))
    }

    fn load_state(&self, state: Value) -> Result<()> {
        let mut loaded = HashMap::new();
        if let Some(Value::Object(twins)) = state.get("twins") {
            for (device, doc) in twins {
                let doc: TwinDocument = serde_json::from_value(doc.clone()).map_err(|e| {
                    Error::invalid("dialect state", format!("twin of {device}: {e}"))
                })?;
                loaded.insert(device.clone(), doc);
            }
        }
        *self.twins.lock().expect("twins lock") = loaded;
        Ok(())
    }

    fn accepts_clients_without_certificate(&self) -> bool {
        self.password.is_some()
    }

    fn serves(&self, topic: &str) -> bool {
        FleetProvisioning::serves(topic)
            || matches!(
                topics::parse(topic),
                Some(
                    Reserved::TwinGet { .. }
                        | Reserved::TwinReported { .. }
                        | Reserved::MethodResponse { .. }
                        | Reserved::CertificateCsr { .. }
                        | Reserved::CertificateConfirm { .. }
                )
            )
    }

    fn on_publish(
        &self,
        from: &Publisher<'_>,
        topic: &str,
        payload: &Bytes,
        outbox: &Outbox,
    ) -> Result<()> {
        if FleetProvisioning::serves(topic) {
            return self.provisioning.on_publish(from, topic, payload, outbox);
        }
        match topics::parse(topic) {
            Some(Reserved::TwinGet { device, request_id }) => {
                let doc = self
                    .twins
                    .lock()
                    .expect("twins lock")
                    .get(device)
                    .cloned()
                    .unwrap_or_default();
                let body = serde_json::to_value(&doc).expect("JSON");
                self.answer_twin(outbox, device, request_id, 200, &body);
                Ok(())
            }
            Some(Reserved::TwinReported { device, request_id }) => {
                match self.twin_report(device, payload) {
                    Ok(version) => self.answer_twin(
                        outbox,
                        device,
                        request_id,
                        200,
                        &json!({"version": version}),
                    ),
                    Err((status, body)) => {
                        self.answer_twin(outbox, device, request_id, status, &body)
                    }
                }
                Ok(())
            }
            Some(Reserved::MethodResponse {
                device,
                status,
                request_id,
            }) => {
                let mut calls = self.calls.lock().expect("calls lock");
                // Only the device the call went to may answer it.
                if calls
                    .get(request_id)
                    .is_some_and(|c| c.device == device && device == from.device)
                {
                    let call = calls.remove(request_id).expect("present");
                    let payload = if payload.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_slice(payload).unwrap_or_else(|_| {
                            Value::String(String::from_utf8_lossy(payload).into_owned())
                        })
                    };
                    let _ = call.answer.send(MethodResponse::new(status, payload));
                }
                // An answer nobody waits for (late, or unknown) is dropped, as the clouds do.
                Ok(())
            }
            Some(Reserved::CertificateCsr { device, request_id }) => {
                let result = self.issue_for_csr(from, device, payload, outbox);
                answer_certificate(outbox, from, device, request_id, result);
                Ok(())
            }
            Some(Reserved::CertificateConfirm { device, request_id }) => {
                let result = self.confirm(from, device, payload, outbox);
                answer_certificate(outbox, from, device, request_id, result);
                Ok(())
            }
            _ => Err(Error::NotSupported(format!("no service owns {topic:?}"))),
        }
    }

    async fn send_command(&self, device: &str, name: &str, payload: Bytes) -> Result<usize> {
        self.ensure_device(device)?;
        if name.is_empty() || name.contains(['/', '+', '#']) {
            return Err(Error::invalid(
                "command name",
                "must be one non-empty topic level without wildcards",
            ));
        }
        let reach = self
            .outbox()?
            .publish(&topics::command(device, name), payload, 1)
            .await?;
        if reach.reached() == 0 {
            return Err(Error::Unavailable(format!(
                "no session of device {device} subscribes to its commands (connect it with a persistent session to queue commands while it is offline)"
            )));
        }
        Ok(reach.reached())
    }

    fn twin(&self, device: &str) -> Result<TwinDocument> {
        self.ensure_device(device)?;
        Ok(self
            .twins
            .lock()
            .expect("twins lock")
            .get(device)
            .cloned()
            .unwrap_or_default())
    }

    async fn update_desired(
        &self,
        device: &str,
        patch: Value,
        expected_version: Option<u64>,
    ) -> Result<u64> {
        self.ensure_device(device)?;
        let Value::Object(patch) = patch else {
            return Err(Error::invalid("patch", "must be a JSON object"));
        };
        let applied = self.update_twin(device, |doc| {
            doc.apply_desired(
                &Value::Object(patch),
                expected_version,
                &self.twin_limits,
                time::OffsetDateTime::now_utc(),
            )
        })?;
        let (version, effective): (u64, Map<String, Value>) = (
            applied.versions.version,
            applied.desired.unwrap_or_default(),
        );
        let notification = json!({"version": version, "patch": effective});
        self.outbox()?
            .publish(
                &topics::twin_desired(device),
                Bytes::from(serde_json::to_vec(&notification).expect("JSON")),
                1,
            )
            .await?;
        Ok(version)
    }

    async fn invoke_method(
        &self,
        device: &str,
        method: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<MethodResponse> {
        self.ensure_device(device)?;
        if method.is_empty() || method.contains(['/', '+', '#']) {
            return Err(Error::invalid(
                "method name",
                "must be one non-empty topic level without wildcards",
            ));
        }
        let outbox = self.outbox()?;
        if !outbox.is_connected(device) {
            return Err(Error::Unavailable(format!(
                "device {device} is not connected"
            )));
        }
        let request_id = self
            .next_request
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let (tx, rx) = oneshot::channel();
        self.calls.lock().expect("calls lock").insert(
            request_id.clone(),
            PendingCall {
                device: device.to_string(),
                answer: tx,
            },
        );
        let forget = || {
            self.calls.lock().expect("calls lock").remove(&request_id);
        };
        let reach = outbox.publish_now(
            &topics::method_request(device, method, &request_id),
            Bytes::from(serde_json::to_vec(&payload).expect("JSON")),
            0,
        );
        match reach {
            Ok(r) if r.delivered > 0 => {}
            Ok(_) => {
                forget();
                return Err(Error::Unavailable(format!(
                    "device {device} does not subscribe to method calls (or its policy refuses them)"
                )));
            }
            Err(e) => {
                forget();
                return Err(e);
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(Error::Unavailable("the hub shut down".into())),
            Err(_) => {
                forget();
                Err(Error::Timeout(format!(
                    "device {device} did not answer method {method:?} within {timeout:?}"
                )))
            }
        }
    }
}
