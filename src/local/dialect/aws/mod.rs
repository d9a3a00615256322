//! The hub's AWS IoT Core dialect: what makes the local hub answer like AWS IoT Core, so the
//! AWS backend — and the official AWS IoT Device SDKs — run against it offline.
//!
//! What it speaks (facts from AWS's documentation and service models, see the repository's
//! `reference/PROTOCOLS.md` §1):
//!
//! - **Connect**: TLS with SNI (a client without a server name is refused in the
//!   handshake), mutual TLS with a registered, `ACTIVE` certificate; the username may carry
//!   the SDKs' `?SDK=…&Version=…` metrics and is ignored; client ids must not start with `$`;
//!   a second connection with the same client id takes over (the old one is dropped with
//!   `DUPLICATE_CLIENTID`); keep-alive below 30 s counts as 30 s, above 1200 s as 1200 s.
//! - **Limits**: at most 8 filters per SUBSCRIBE and 8 topic levels (both close or refuse as
//!   AWS does); QoS 2 is never answered (no PUBREC, no SUBACK); a denied publish closes the
//!   connection; retained messages are not allowed on `$` topics and are delivered only to
//!   exact-topic subscriptions, not wildcard ones.
//! - **Lifecycle events** on `$aws/events/presence/{connected|disconnected}/<clientId>`.
//! - **Device Shadow** (classic and named) with AWS's documents, delta rules and error codes:
//!   [`shadow`].
//! - **Jobs** (MQTT API: get, start-next, describe, update, notify, notify-next): [`jobs`].
//! - **Fleet provisioning by claim** (CreateKeysAndCertificate, CreateCertificateFromCsr,
//!   RegisterThing with templates and single-use ownership tokens): [`FleetProvisioning`].
//! - **Commands**: fleetkit's AWS topic design sends a command `name` to a thing on
//!   `cmd/<thing>/<name>` ([`LocalHub::send_command`](crate::local::LocalHub::send_command)).
//!
//! ```no_run
//! # async fn f() -> fleetkit::Result<()> {
//! use fleetkit::local::{LocalHub, dialect::aws::AwsHubDialect};
//! let hub = LocalHub::builder().dialect(AwsHubDialect::new()).start().await?;
//! # let _ = hub; Ok(()) }
//! ```

pub mod jobs;
pub mod rest;
pub mod shadow;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::provisioning::{FleetProvisioning, ProvisioningTemplate};
use super::{
    Authenticated, DeniedPublish, DisconnectReason, Hello, HubDialect, Outbox, Presence, Publisher,
    Qos2, authenticate_certificate,
};
use crate::auth::sigv4::{AwsCredentials, SignedRequest, Verifier};
use crate::device::twin::TwinDocument;
use crate::local::broker::Limits;
use crate::local::registry::Registry;
use crate::{Error, Result};

use jobs::{JobSpec, JobsMessage, JobsService, Recipient};
use shadow::{ShadowId, ShadowLimits, ShadowMessage, ShadowService};

/// The topic a lifecycle event of `client_id` goes to.
pub fn presence_topic(connected: bool, client_id: &str) -> String {
    let kind = if connected {
        "connected"
    } else {
        "disconnected"
    };
    format!("$aws/events/presence/{kind}/{client_id}")
}

/// The topic fleetkit's AWS topic design sends command `name` to `thing` on.
pub fn command_topic(thing: &str, name: &str) -> String {
    format!("cmd/{thing}/{name}")
}

/// The AWS IoT Core dialect, hub side. See the [module docs](self).
pub struct AwsHubDialect {
    outbox: OnceLock<Outbox>,
    shadows: ShadowService,
    jobs: JobsService,
    provisioning: FleetProvisioning,
    /// The last saved state of each service, so one service's save never waits for
    /// another's lock (this lock is always taken last).
    saved: Mutex<Map<String, Value>>,
    /// Lifecycle event version per client id (monotonic, as AWS's `versionNumber`).
    presence_versions: Mutex<HashMap<String, u64>>,
    /// IAM-style identities for MQTT over WebSocket with SigV4: access key id →
    /// (credentials, the registry device it acts as).
    sigv4: HashMap<String, (AwsCredentials, String)>,
    /// The region SigV4 signatures must be scoped to.
    region: String,
}

impl std::fmt::Debug for AwsHubDialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsHubDialect").finish_non_exhaustive()
    }
}

impl Default for AwsHubDialect {
    fn default() -> Self {
        Self::new()
    }
}

impl AwsHubDialect {
    /// The dialect with AWS's default shadow limits and no provisioning template.
    pub fn new() -> Self {
        AwsHubDialect {
            outbox: OnceLock::new(),
            shadows: ShadowService::new(ShadowLimits::default()),
            jobs: JobsService::new(),
            provisioning: FleetProvisioning::new(),
            saved: Mutex::new(Map::new()),
            presence_versions: Mutex::new(HashMap::new()),
            sigv4: HashMap::new(),
            region: "us-east-1".into(),
        }
    }

    /// The region the hub pretends to be in (default `us-east-1`): SigV4 signatures of
    /// WebSocket connections must be scoped to it.
    pub fn with_region(mut self, region: &str) -> Self {
        self.region = region.to_string();
        self
    }

    /// Admits MQTT over WebSocket (`wss://…/mqtt`, [`LocalHubBuilder::websocket`]) from
    /// clients whose URL is pre-signed with `credentials` (SigV4, service
    /// `iotdevicegateway`, this dialect's region; a session token outside the signature as
    /// AWS IoT requires), as registry device `device`: the policies attached to that device
    /// (or its groups) are what an IAM policy is on AWS. Clients without a certificate then
    /// complete the TLS handshake and must authenticate this way.
    ///
    /// [`LocalHubBuilder::websocket`]: crate::local::LocalHubBuilder::websocket
    pub fn with_sigv4_identity(mut self, credentials: AwsCredentials, device: &str) -> Self {
        self.sigv4.insert(
            credentials.access_key_id().to_string(),
            (credentials, device.to_string()),
        );
        self
    }

    /// Authenticates a WebSocket upgrade pre-signed with SigV4.
    fn authenticate_sigv4(&self, hello: &Hello<'_>) -> Result<Authenticated> {
        let upgrade = match (hello.transport, hello.upgrade) {
            (super::Transport::WebSocket, Some(u)) => u,
            _ => {
                return Err(Error::Unauthenticated(
                    "no client certificate (SigV4 is accepted on MQTT over WebSocket only)".into(),
                ));
            }
        };
        let verifier = Verifier::with_credentials(
            self.region.as_str(),
            ["iotdevicegateway"],
            self.sigv4.values().map(|(c, _)| c.clone()),
        )
        .security_token_unsigned(true);
        let request = SignedRequest {
            method: "GET",
            path: &upgrade.path,
            query: &upgrade.query,
            headers: &upgrade.headers,
            body: b"",
        };
        let verified = verifier
            .verify(&request, OffsetDateTime::now_utc())
            .map_err(|e| Error::Unauthenticated(format!("SigV4: {} ({e})", e.json_code())))?;
        let (_, device) = self.sigv4.get(&verified.access_key_id).ok_or_else(|| {
            Error::Unauthenticated(format!("unknown access key {}", verified.access_key_id))
        })?;
        Ok(Authenticated::Password {
            device: device.clone(),
        })
    }

    /// Serves fleet provisioning by claim with `template`; may be called for several.
    pub fn with_provisioning_template(self, template: ProvisioningTemplate) -> Self {
        self.provisioning.put_template(template);
        self
    }

    /// How long a provisioning ownership token stays valid (AWS: one hour).
    pub fn with_provisioning_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.provisioning = std::mem::take(&mut self.provisioning).with_token_lifetime(lifetime);
        self
    }

    /// Shadow limits other than AWS's defaults.
    pub fn with_shadow_limits(mut self, limits: ShadowLimits) -> Self {
        self.shadows = ShadowService::new(limits);
        self
    }

    /// The fleet-provisioning service (add templates at run time).
    pub fn provisioning(&self) -> &FleetProvisioning {
        &self.provisioning
    }

    /// The shadow service.
    pub fn shadows(&self) -> &ShadowService {
        &self.shadows
    }

    /// The jobs service.
    pub fn jobs(&self) -> &JobsService {
        &self.jobs
    }

    fn outbox(&self) -> Result<&Outbox> {
        self.outbox
            .get()
            .ok_or_else(|| Error::Unavailable("the dialect is not attached to a hub".into()))
    }

    /// Writes `part` of the dialect's state with the rest as last saved.
    fn persist_part(&self, part: &str, value: &Value) -> Result<()> {
        let mut saved = self.saved.lock().expect("saved lock");
        let before = saved.insert(part.to_string(), value.clone());
        let written = match self.outbox.get() {
            Some(outbox) => outbox.persist_state(&Value::Object(saved.clone())),
            None => Ok(()),
        };
        if written.is_err() {
            match before {
                Some(v) => saved.insert(part.to_string(), v),
                None => saved.remove(part),
            };
        }
        written
    }

    fn publish_shadow(&self, outbox: &Outbox, messages: Vec<ShadowMessage>) {
        for m in messages {
            let _ = outbox.publish_now(&m.topic, Bytes::from(m.payload), 1);
        }
    }

    fn publish_jobs(&self, outbox: &Outbox, requester: Option<&str>, messages: Vec<JobsMessage>) {
        for m in messages {
            let payload = Bytes::from(m.payload);
            match (m.to, requester) {
                (Recipient::Requester, Some(client)) => {
                    let _ = outbox.publish_to(client, &m.topic, payload, 1);
                }
                (Recipient::Requester, None) => {}
                _ => {
                    let _ = outbox.publish_now(&m.topic, payload, 1);
                }
            }
        }
    }

    fn ensure_thing(&self, thing: &str) -> Result<()> {
        if self
            .outbox()?
            .with_registry(|r| r.device(thing).is_some())?
        {
            Ok(())
        } else {
            Err(Error::NotFound {
                what: "thing",
                id: thing.to_string(),
            })
        }
    }

    /// Creates a job: an execution `QUEUED` for each thing of `spec`, announced to them on
    /// `notify` and `notify-next`.
    pub fn create_job(&self, spec: JobSpec) -> Result<()> {
        for thing in &spec.things {
            self.ensure_thing(thing)?;
        }
        let persist = |v: &Value| self.persist_part("jobs", v);
        let messages = self
            .jobs
            .create_job(spec, OffsetDateTime::now_utc(), &persist)?;
        self.publish_jobs(self.outbox()?, None, messages);
        Ok(())
    }

    /// Cancels a job (`force` also cancels executions in progress).
    pub fn cancel_job(&self, job_id: &str, force: bool) -> Result<()> {
        let persist = |v: &Value| self.persist_part("jobs", v);
        let messages = self
            .jobs
            .cancel_job(job_id, force, OffsetDateTime::now_utc(), &persist)?;
        self.publish_jobs(self.outbox()?, None, messages);
        Ok(())
    }

    /// Updates a shadow from the cloud side with an AWS update request document
    /// (`{"state":{"desired":…},"version":…}`), as the `UpdateThingShadow` API does; returns
    /// the accepted document. Subscribers get the same accepted, delta and documents
    /// messages as for a device's update.
    pub fn update_shadow(&self, thing: &str, name: Option<&str>, request: &Value) -> Result<Value> {
        self.ensure_thing(thing)?;
        let id = ShadowId {
            thing: thing.to_string(),
            name: name.map(str::to_string),
        };
        let persist = |v: &Value| self.persist_part("shadows", v);
        let (accepted, messages) =
            self.shadows
                .update(&id, request, OffsetDateTime::now_utc(), &persist)?;
        self.publish_shadow(self.outbox()?, messages);
        Ok(accepted)
    }

    /// A shadow's document as `GetThingShadow` returns it.
    pub fn shadow_document(&self, thing: &str, name: Option<&str>) -> Result<Value> {
        self.shadows.document(
            &ShadowId {
                thing: thing.to_string(),
                name: name.map(str::to_string),
            },
            OffsetDateTime::now_utc(),
        )
    }

    /// Deletes a shadow as `DeleteThingShadow` does (its version carries on if it is
    /// created again).
    pub fn delete_shadow(&self, thing: &str, name: Option<&str>) -> Result<()> {
        let id = ShadowId {
            thing: thing.to_string(),
            name: name.map(str::to_string),
        };
        let persist = |v: &Value| self.persist_part("shadows", v);
        let messages = self
            .shadows
            .delete(&id, OffsetDateTime::now_utc(), &persist)?;
        self.publish_shadow(self.outbox()?, messages);
        Ok(())
    }

    fn next_presence_version(&self, client_id: &str) -> u64 {
        let mut versions = self.presence_versions.lock().expect("presence lock");
        let v = versions.entry(client_id.to_string()).or_insert(0);
        let now = *v;
        *v += 1;
        now
    }

    fn presence_event(
        &self,
        who: &Presence<'_>,
        reason: Option<DisconnectReason>,
        outbox: &Outbox,
    ) {
        // AWS: client ids with wildcard characters get no lifecycle events.
        if who.client_id.contains(['#', '+']) {
            return;
        }
        let mut event = json!({
            "clientId": who.client_id,
            "timestamp": (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
            "eventType": if reason.is_some() { "disconnected" } else { "connected" },
            "sessionIdentifier": session_identifier(who.connection),
            "principalIdentifier": who.cert_id.unwrap_or(who.device),
            "versionNumber": self.next_presence_version(who.client_id),
        });
        if let Some(peer) = who.peer {
            event["ipAddress"] = json!(peer.ip().to_string());
        }
        if let Some(reason) = reason {
            event["clientInitiatedDisconnect"] = json!(reason == DisconnectReason::ClientInitiated);
            event["disconnectReason"] = json!(reason.aws_name());
        }
        let topic = presence_topic(reason.is_none(), who.client_id);
        let _ = outbox.publish_now(&topic, Bytes::from(event.to_string()), 1);
    }
}

/// A stable, UUID-shaped identifier for connection `id` of this hub process.
fn session_identifier(id: u64) -> String {
    static SALT: OnceLock<[u8; 8]> = OnceLock::new();
    let salt = SALT.get_or_init(|| {
        use ring::rand::SecureRandom as _;
        let mut b = [0u8; 8];
        let _ = ring::rand::SystemRandom::new().fill(&mut b);
        b
    });
    let hi = u64::from_be_bytes(*salt);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (hi >> 32) as u32,
        (hi >> 16) as u16,
        (hi as u16) & 0x0fff,
        ((id >> 48) as u16) & 0x0fff,
        id & 0xffff_ffff_ffff
    )
}

#[async_trait::async_trait]
impl HubDialect for AwsHubDialect {
    fn name(&self) -> &str {
        "aws"
    }

    fn limits(&self) -> Limits {
        Limits {
            // 128 KB payload plus the publish header.
            max_packet_size: 128 * 1024 + 1024,
            min_keep_alive: 30,
            max_keep_alive: 1200,
            max_filters_per_subscribe: Some(8),
            max_topic_levels: Some(8),
            ..Limits::default()
        }
    }

    fn attach(&self, outbox: Outbox) {
        let _ = self.outbox.set(outbox);
    }

    fn authenticate(&self, hello: &Hello<'_>, registry: &Registry) -> Result<Authenticated> {
        if hello.client_id.starts_with('$') {
            return Err(Error::Unauthenticated(format!(
                "client id {:?} starts with '$', which AWS IoT Core reserves",
                hello.client_id
            )));
        }
        if hello.client_id.len() > 128 {
            return Err(Error::Unauthenticated(
                "client id longer than 128 bytes".into(),
            ));
        }
        if hello.certificate.is_none() && !self.sigv4.is_empty() {
            return self.authenticate_sigv4(hello);
        }
        authenticate_certificate(hello, registry)
    }

    fn accepts_clients_without_certificate(&self) -> bool {
        !self.sigv4.is_empty()
    }

    fn save_state(&self) -> Option<Value> {
        Some(json!({
            "shadows": self.shadows.save_state(),
            "jobs": self.jobs.save_state(),
        }))
    }

    fn load_state(&self, state: Value) -> Result<()> {
        let mut saved = Map::new();
        if let Some(shadows) = state.get("shadows") {
            self.shadows.load_state(shadows.clone())?;
            saved.insert("shadows".into(), shadows.clone());
        }
        if let Some(jobs) = state.get("jobs") {
            self.jobs.load_state(jobs.clone())?;
            saved.insert("jobs".into(), jobs.clone());
        }
        *self.saved.lock().expect("saved lock") = saved;
        Ok(())
    }

    fn serves(&self, topic: &str) -> bool {
        FleetProvisioning::serves(topic)
            || shadow::parse_request_topic(topic).is_some()
            || jobs::parse_request_topic(topic).is_some()
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
        let now = OffsetDateTime::now_utc();
        if let Some((id, request)) = shadow::parse_request_topic(topic) {
            let persist = |v: &Value| self.persist_part("shadows", v);
            let messages = self.shadows.handle(&id, request, payload, now, &persist);
            self.publish_shadow(outbox, messages);
            return Ok(());
        }
        if let Some((thing, request)) = jobs::parse_request_topic(topic) {
            let persist = |v: &Value| self.persist_part("jobs", v);
            let messages = self.jobs.handle(&thing, &request, payload, now, &persist);
            self.publish_jobs(outbox, Some(from.client_id), messages);
            return Ok(());
        }
        Err(Error::NotSupported(format!(
            "no AWS service owns {topic:?}"
        )))
    }

    fn denied_publish(&self) -> DeniedPublish {
        DeniedPublish::Disconnect
    }

    fn qos2(&self) -> Qos2 {
        Qos2::Unanswered
    }

    /// AWS refuses TLS connections without SNI.
    fn requires_sni(&self) -> bool {
        true
    }

    fn retained_on_wildcard_subscribe(&self) -> bool {
        false
    }

    fn on_connected(&self, who: &Presence<'_>, outbox: &Outbox) {
        self.presence_event(who, None, outbox);
    }

    fn on_disconnected(&self, who: &Presence<'_>, reason: DisconnectReason, outbox: &Outbox) {
        self.presence_event(who, Some(reason), outbox);
    }

    async fn send_command(&self, device: &str, name: &str, payload: Bytes) -> Result<usize> {
        if name.is_empty() || name.contains(['/', '+', '#']) || name.starts_with('$') {
            return Err(Error::invalid(
                "command name",
                format!("{name:?} must be one non-empty topic level without wildcards"),
            ));
        }
        self.ensure_thing(device)?;
        let reach = self
            .outbox()?
            .publish(&command_topic(device, name), payload, 1)
            .await?;
        Ok(reach.reached())
    }

    /// The classic shadow, as its AWS document says it (what a device's `get` sees).
    fn twin(&self, device: &str) -> Result<TwinDocument> {
        let document = self.shadow_document(device, None)?;
        TwinDocument::from_aws_shadow_document(&document)
    }

    async fn update_desired(
        &self,
        device: &str,
        patch: Value,
        expected_version: Option<u64>,
    ) -> Result<u64> {
        if !patch.is_object() {
            return Err(Error::invalid(
                "desired",
                "a desired-state patch must be a JSON object",
            ));
        }
        let mut request = json!({ "state": { "desired": patch } });
        if let Some(v) = expected_version {
            request["version"] = json!(v);
        }
        let accepted = self.update_shadow(device, None, &request)?;
        accepted
            .get("version")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::Unavailable("the shadow service returned no version".into()))
    }
}
