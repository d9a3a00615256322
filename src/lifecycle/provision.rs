//! Provisioning, device side: from a claim (or factory) credential to an operational identity.
//!
//! [`Provisioner`] is what every backend's provisioning service implements (AWS fleet
//! provisioning, Azure DPS, the local hub). [`ClaimProvisioner`] is fleet provisioning by
//! claim over MQTT with AWS's topics and documents (PROTOCOLS.md §1.9), which the local hub
//! serves ([`FleetProvisioning`](crate::local::dialect::FleetProvisioning)) and AWS IoT Core
//! serves as is.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Map, Value, json};

use crate::device::{Endpoint, tls_config};
use crate::identity::{
    CredentialStore, Credentials, DeviceId, Signer, SoftwareKey, X509Credential,
};
use crate::pki::build_csr;
use crate::{Error, Result};

/// Where the device's key comes from.
#[derive(Clone)]
pub enum KeySource {
    /// A key made on the device (in its HSM/TPM or as a software key): only a CSR leaves the
    /// device. The preferred way.
    OnDevice(Arc<dyn Signer>),
    /// The service generates the key and sends it once over the TLS connection.
    ServiceGenerated,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::OnDevice(s) => f.debug_tuple("OnDevice").field(s).finish(),
            KeySource::ServiceGenerated => f.write_str("ServiceGenerated"),
        }
    }
}

/// What a device asks to be provisioned as.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct ProvisionRequest {
    /// The device id it proposes (required with [`KeySource::OnDevice`]: the CSR names it).
    pub device_id: Option<DeviceId>,
    /// Where the key comes from.
    pub key: KeySource,
    /// Template parameters (serial number, model, …).
    pub parameters: BTreeMap<String, String>,
}

impl ProvisionRequest {
    /// A request for `device_id` with a key made on the device.
    pub fn with_device_key(device_id: DeviceId, key: Arc<dyn Signer>) -> Self {
        ProvisionRequest {
            device_id: Some(device_id),
            key: KeySource::OnDevice(key),
            parameters: BTreeMap::new(),
        }
    }

    /// A request where the service generates the key.
    pub fn with_service_key() -> Self {
        ProvisionRequest {
            device_id: None,
            key: KeySource::ServiceGenerated,
            parameters: BTreeMap::new(),
        }
    }

    /// Adds a template parameter.
    pub fn parameter(mut self, name: &str, value: &str) -> Self {
        self.parameters.insert(name.to_string(), value.to_string());
        self
    }
}

/// An operational identity, as provisioning returned it.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct Provisioned {
    /// The device id assigned.
    pub device_id: DeviceId,
    /// The certificate chain and key to connect with.
    pub credential: X509Credential,
    /// The certificate's id at the service.
    pub certificate_id: String,
    /// Configuration the template returned.
    pub configuration: Map<String, Value>,
}

impl Provisioned {
    /// Stores the credential in `store` atomically as the active one (stage, then commit): a
    /// crash leaves either the previous credential or this one, never a mix.
    pub fn store(&self, store: &CredentialStore) -> Result<()> {
        store.stage(&Credentials::X509(self.credential.clone()))?;
        store.commit()
    }
}

/// A provisioning service, device side: claim → operational identity.
#[async_trait::async_trait]
pub trait Provisioner: Send + Sync {
    /// Provisions; on success the device has an identity it can connect with.
    async fn provision(&self, request: &ProvisionRequest) -> Result<Provisioned>;
}

/// Fleet provisioning by claim over MQTT (AWS's API; the local hub serves it too).
///
/// ```no_run
/// # async fn f(endpoint: fleetkit::device::Endpoint, claim: fleetkit::identity::X509Credential) -> fleetkit::Result<()> {
/// use std::sync::Arc;
/// use fleetkit::identity::{DeviceId, SoftwareKey};
/// use fleetkit::lifecycle::provision::{ClaimProvisioner, ProvisionRequest, Provisioner};
///
/// let key = Arc::new(SoftwareKey::generate_p256()?); // made on the device; only a CSR leaves
/// let request = ProvisionRequest::with_device_key(DeviceId::new("thermostat-0042")?, key)
///     .parameter("SerialNumber", "0042");
/// let identity = ClaimProvisioner::new(endpoint, claim, "thermostats").provision(&request).await?;
/// println!("provisioned as {}", identity.device_id);
/// # Ok(()) }
/// ```
pub struct ClaimProvisioner {
    endpoint: Endpoint,
    claim: X509Credential,
    template: String,
    timeout: Duration,
    client_id: Option<String>,
}

impl std::fmt::Debug for ClaimProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimProvisioner")
            .field("endpoint", &self.endpoint)
            .field("claim", &self.claim.leaf().fingerprint_sha256())
            .field("template", &self.template)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ClaimProvisioner {
    /// Provisions at `endpoint` with the shared `claim` credential and `template`.
    pub fn new(endpoint: Endpoint, claim: X509Credential, template: &str) -> Self {
        ClaimProvisioner {
            endpoint,
            claim,
            template: template.to_string(),
            timeout: Duration::from_secs(30),
            client_id: None,
        }
    }

    /// How long the whole exchange may take (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The claim connection's client id (default `claim-<random>`, which the built-in
    /// [`provisioning_claim`](crate::policy::builtin::provisioning_claim) policy expects).
    pub fn with_client_id(mut self, client_id: &str) -> Self {
        self.client_id = Some(client_id.to_string());
        self
    }

    async fn run(&self, request: &ProvisionRequest) -> Result<Provisioned> {
        let client_id = match &self.client_id {
            Some(c) => c.clone(),
            None => {
                let mut raw = [0u8; 12];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
                    .map_err(|_| Error::Crypto("no randomness for the client id".into()))?;
                let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                format!("{}{hex}", crate::policy::builtin::CLAIM_CLIENT_ID_PREFIX)
            }
        };
        let (create_topic, create_body, key) = match &request.key {
            KeySource::OnDevice(key) => {
                let id = request.device_id.as_ref().ok_or_else(|| {
                    Error::invalid("device_id", "required when the key is made on the device")
                })?;
                let csr = build_csr(key.clone(), id)?;
                (
                    "$aws/certificates/create-from-csr/json",
                    json!({"certificateSigningRequest": csr.to_pem()}),
                    Some(key.clone()),
                )
            }
            KeySource::ServiceGenerated => ("$aws/certificates/create/json", json!({}), None),
        };
        let register_topic = format!(
            "$aws/provisioning-templates/{}/provision/json",
            self.template
        );
        let mut options =
            MqttOptions::new(client_id, self.endpoint.host.clone(), self.endpoint.port);
        options
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(256 * 1024, 256 * 1024)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls_config(&self.endpoint, Some(&self.claim))?,
            )));
        let (client, mut events) = AsyncClient::new(options, 16);
        for t in [create_topic, register_topic.as_str()] {
            client
                .subscribe(format!("{t}/accepted"), QoS::AtLeastOnce)
                .await
                .map_err(unavailable)?;
            client
                .subscribe(format!("{t}/rejected"), QoS::AtLeastOnce)
                .await
                .map_err(unavailable)?;
        }
        // Publish only once both subscriptions are acknowledged (AWS's rule: the answer goes
        // to the subscriptions the connection has when it is produced).
        let mut subacks = 0;
        let mut step = 0u8;
        let mut created: Option<Value> = None;
        loop {
            let event = events.poll().await.map_err(|e| match e {
                rumqttc::ConnectionError::ConnectionRefused(code) => {
                    Error::PermissionDenied(format!("the claim connection was refused: {code:?}"))
                }
                other => Error::Unavailable(format!("claim connection: {other}")),
            })?;
            match event {
                Event::Incoming(Packet::SubAck(ack)) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        return Err(Error::PermissionDenied(
                            "the claim policy does not allow the provisioning topics".into(),
                        ));
                    }
                    subacks += 1;
                    if subacks == 4 && step == 0 {
                        step = 1;
                        client
                            .publish(
                                create_topic,
                                QoS::AtLeastOnce,
                                false,
                                serde_json::to_vec(&create_body).expect("JSON"),
                            )
                            .await
                            .map_err(unavailable)?;
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let body: Value = serde_json::from_slice(&p.payload).map_err(|e| {
                        Error::invalid("provisioning answer", format!("not JSON: {e}"))
                    })?;
                    if p.topic.ends_with("/rejected") {
                        let _ = client.try_disconnect();
                        return Err(rejection(&body));
                    }
                    if p.topic == format!("{create_topic}/accepted") && step == 1 {
                        let token = body
                            .get("certificateOwnershipToken")
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                Error::invalid("provisioning answer", "no ownership token")
                            })?;
                        let register = json!({
                            "certificateOwnershipToken": token,
                            "parameters": request.parameters,
                        });
                        created = Some(body);
                        step = 2;
                        client
                            .publish(
                                register_topic.clone(),
                                QoS::AtLeastOnce,
                                false,
                                serde_json::to_vec(&register).expect("JSON"),
                            )
                            .await
                            .map_err(unavailable)?;
                    } else if p.topic == format!("{register_topic}/accepted") && step == 2 {
                        let _ = client.try_disconnect();
                        let created = created.take().expect("step 1 done");
                        return finish(created, &body, key);
                    }
                }
                _ => {}
            }
        }
    }
}

fn unavailable(e: rumqttc::ClientError) -> Error {
    Error::Unavailable(format!("claim connection: {e}"))
}

/// The typed error a rejection means.
fn rejection(body: &Value) -> Error {
    let status = body.get("statusCode").and_then(Value::as_u64).unwrap_or(0);
    let code = body
        .get("errorCode")
        .and_then(Value::as_str)
        .unwrap_or("Unknown");
    let message = body
        .get("errorMessage")
        .and_then(Value::as_str)
        .unwrap_or("");
    let text = format!("{code}: {message}");
    match (status, code) {
        (_, "InvalidCertificateOwnershipToken") if message.contains("expired") => {
            Error::Expired(text)
        }
        (_, "InvalidCertificateOwnershipToken") => Error::Unauthenticated(text),
        (403, _) => Error::PermissionDenied(text),
        (404, _) => Error::NotFound {
            what: "provisioning resource",
            id: text,
        },
        (409, _) => Error::AlreadyExists {
            what: "device",
            id: text,
        },
        (400, _) => Error::invalid("provisioning request", text),
        _ => Error::Unavailable(text),
    }
}

/// Builds the credential from the two answers.
fn finish(created: Value, registered: &Value, key: Option<Arc<dyn Signer>>) -> Result<Provisioned> {
    let pem = created
        .get("certificatePem")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid("provisioning answer", "no certificatePem"))?;
    let key: Arc<dyn Signer> = match key {
        Some(k) => k,
        None => {
            let private = created
                .get("privateKey")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::invalid("provisioning answer", "no privateKey"))?;
            Arc::new(SoftwareKey::from_pem(private)?)
        }
    };
    let credential = X509Credential::from_pem(pem, key)?;
    let device = registered
        .get("thingName")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid("provisioning answer", "no thingName"))?;
    Ok(Provisioned {
        device_id: DeviceId::new(device)?,
        certificate_id: created
            .get("certificateId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        credential,
        configuration: registered
            .get("deviceConfiguration")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    })
}

#[async_trait::async_trait]
impl Provisioner for ClaimProvisioner {
    async fn provision(&self, request: &ProvisionRequest) -> Result<Provisioned> {
        tokio::time::timeout(self.timeout, self.run(request))
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "provisioning did not finish within {:?}",
                    self.timeout
                ))
            })?
    }
}
