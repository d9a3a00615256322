//! Dialects: what makes the hub speak one cloud's device protocol.
//!
//! The broker core (sessions, routing, TLS, the policy checks) is the same for every cloud. A
//! [`HubDialect`] is the pluggable bundle around it:
//!
//! - **authentication** of a CONNECT (client certificate, or a username/password such as a
//!   SAS token or a JWT) to a registry device;
//! - **topic services**: reserved topics (`$aws/things/…/shadow/…`, `$iothub/twin/…`,
//!   `$fleetkit/devices/…/twin/…`) whose publishes a service answers instead of routing;
//! - **limits** and **error behaviour** (what a denied publish does);
//! - the **admin side** of the device plane: send a command, change desired properties, invoke
//!   a method and await the answer.
//!
//! The hub speaks the [native dialect](NativeHubDialect) unless told otherwise
//! ([`LocalHubBuilder::dialect`](super::LocalHubBuilder::dialect)); the AWS, Azure and GCP
//! dialects plug in here without touching the broker.

pub mod aws;
mod native;
pub mod provisioning;

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;

use super::broker::Limits;
use super::hub::{HubEvent, Shared};
use super::registry::Registry;
use crate::device::twin::TwinDocument;
use crate::pki::Certificate;
use crate::{Error, Result};

pub use crate::device::dialect::MethodResponse;
pub use native::NativeHubDialect;
pub use provisioning::{FleetProvisioning, ProvisioningTemplate};

/// How a client reached the hub.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket over TLS.
    WebSocket,
    /// MQTT over plain TCP (only when the hub was asked to listen on it).
    Tcp,
    /// HTTPS publish (AWS's `POST /topics/…`), not MQTT.
    Https,
}

/// The HTTP request that opened a WebSocket connection, for dialects that authenticate it
/// (AWS: a SigV4-presigned URL). Its `Debug` leaves out the query and header values, which
/// carry signatures and session tokens.
#[non_exhaustive]
#[derive(Clone)]
pub struct UpgradeRequest {
    /// The request path, percent-encoded as received (`/mqtt`).
    pub path: String,
    /// The raw query string, without `?` (empty when there is none).
    pub query: String,
    /// The headers as received: `(name, value)`.
    pub headers: Vec<(String, String)>,
}

impl UpgradeRequest {
    /// A request from its parts.
    pub fn new(path: &str, query: &str, headers: Vec<(String, String)>) -> Self {
        UpgradeRequest {
            path: path.to_string(),
            query: query.to_string(),
            headers,
        }
    }
}

impl std::fmt::Debug for UpgradeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradeRequest")
            .field("path", &self.path)
            .field("query_len", &self.query.len())
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What a client presented when it connected: the input to [`HubDialect::authenticate`].
#[non_exhaustive]
#[derive(Clone, Copy)]
pub struct Hello<'a> {
    /// The MQTT client id.
    pub client_id: &'a str,
    /// The MQTT username, if any.
    pub username: Option<&'a str>,
    /// The MQTT password, if any. A secret: never log it.
    pub password: Option<&'a str>,
    /// The client certificate (leaf), already verified in the TLS handshake to chain to an
    /// active registered CA and not to be on a CRL.
    pub certificate: Option<&'a Certificate>,
    /// The transport the client came in on.
    pub transport: Transport,
    /// For a WebSocket connection: the upgrade request.
    pub upgrade: Option<&'a UpgradeRequest>,
}

impl<'a> Hello<'a> {
    /// A hello from its parts (for testing a dialect's authentication).
    pub fn new(
        client_id: &'a str,
        username: Option<&'a str>,
        password: Option<&'a str>,
        certificate: Option<&'a Certificate>,
        transport: Transport,
    ) -> Self {
        Hello {
            client_id,
            username,
            password,
            certificate,
            transport,
            upgrade: None,
        }
    }

    /// The same hello, for a WebSocket connection opened by `request`.
    pub fn with_upgrade(mut self, request: &'a UpgradeRequest) -> Self {
        self.upgrade = Some(request);
        self
    }
}

impl std::fmt::Debug for Hello<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.map(|_| "<redacted>"))
            .field(
                "certificate",
                &self.certificate.map(|c| c.fingerprint_sha256()),
            )
            .field("transport", &self.transport)
            .field("upgrade", &self.upgrade)
            .finish()
    }
}

/// Who a connecting client is, as a dialect decided.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authenticated {
    /// By a registered, active device certificate (its id is the SHA-256 fingerprint).
    Certificate {
        /// The certificate's registry id.
        cert_id: String,
    },
    /// By a username/password (token) naming this registry device.
    Password {
        /// The device.
        device: String,
    },
}

/// The username/password hook: decides which device a CONNECT's username and password
/// authenticate, for clients that come without a certificate (token dialects: SAS, JWT).
///
/// Implemented for closures `Fn(&Hello, &Registry) -> Result<String>`. Return
/// [`Error::Unauthenticated`] (or `Expired`, `PermissionDenied`) to refuse: the client gets
/// CONNACK "not authorized" and an [`HubEvent::AuthFailure`] says why.
pub trait PasswordAuthenticator: Send + Sync + 'static {
    /// The device id the credentials prove, or why not.
    fn authenticate(&self, hello: &Hello<'_>, registry: &Registry) -> Result<String>;
}

impl<F> PasswordAuthenticator for F
where
    F: Fn(&Hello<'_>, &Registry) -> Result<String> + Send + Sync + 'static,
{
    fn authenticate(&self, hello: &Hello<'_>, registry: &Registry) -> Result<String> {
        self(hello, registry)
    }
}

/// What the hub does with a publish the policy denies.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeniedPublish {
    /// Close the connection (AWS IoT Core, Azure IoT Hub).
    Disconnect,
    /// Drop the message and keep the connection (QoS 1 is still acknowledged, as MQTT 3.1.1
    /// has no negative PUBACK).
    Drop,
}

/// One connection, as lifecycle events (AWS's `$aws/events/presence/…`) describe it.
#[non_exhaustive]
#[derive(Clone, Copy, Debug)]
pub struct Presence<'a> {
    /// The MQTT client id.
    pub client_id: &'a str,
    /// The registry device it authenticated as.
    pub device: &'a str,
    /// The certificate it authenticated with (`None` for a password).
    pub cert_id: Option<&'a str>,
    /// The peer's address, when the hub accepted the socket itself.
    pub peer: Option<std::net::SocketAddr>,
    /// The hub's id for this connection (unique while the hub runs).
    pub connection: u64,
    /// How the client came in.
    pub transport: Transport,
    /// Whether the client asked for a clean session.
    pub clean_session: bool,
}

/// Why a connection ended, in the terms lifecycle events use.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    ClientInitiated,
    /// Another connection took the client id over.
    DuplicateClientId,
    /// Nothing was heard within 1.5 × the keep-alive.
    KeepAliveTimeout,
    /// The socket closed or failed without a DISCONNECT.
    ConnectionLost,
    /// The client broke the protocol (or a dialect rule) and was disconnected.
    ClientError,
    /// The policy refused an action that closes the connection.
    Unauthorized,
    /// The hub closed it (a credential or device status change, or shutdown).
    ServerInitiated,
}

impl DisconnectReason {
    /// AWS IoT Core's name for it (the `disconnectReason` of a disconnected event).
    pub fn aws_name(self) -> &'static str {
        match self {
            DisconnectReason::ClientInitiated => "CLIENT_INITIATED_DISCONNECT",
            DisconnectReason::DuplicateClientId => "DUPLICATE_CLIENTID",
            DisconnectReason::KeepAliveTimeout => "MQTT_KEEP_ALIVE_TIMEOUT",
            DisconnectReason::ConnectionLost => "CONNECTION_LOST",
            DisconnectReason::ClientError => "CLIENT_ERROR",
            DisconnectReason::Unauthorized => "AUTH_ERROR",
            DisconnectReason::ServerInitiated => "SERVER_INITIATED_DISCONNECT",
        }
    }
}

/// What the hub does with QoS 2, which no cloud supports.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos2 {
    /// A QoS 2 subscription is granted QoS 1; a QoS 2 publish closes the connection (Azure
    /// IoT Hub, Google Cloud IoT Core).
    Downgrade,
    /// Neither is answered: a QoS 2 publish gets no PUBREC and is dropped, a SUBSCRIBE asking
    /// for QoS 2 gets no SUBACK and subscribes nothing (AWS IoT Core).
    Unanswered,
}

/// The device that published to a service topic.
#[non_exhaustive]
#[derive(Clone, Copy, Debug)]
pub struct Publisher<'a> {
    /// Its MQTT client id.
    pub client_id: &'a str,
    /// The registry device it authenticated as.
    pub device: &'a str,
    /// The device certificate the connection authenticated with (`None` for a password).
    pub cert_id: Option<&'a str>,
}

/// A service's way to publish: messages go through the broker's routing, so subscribers get
/// them only where their policy allows `iot:Receive`.
#[derive(Clone)]
pub struct Outbox {
    shared: Weak<Shared>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

/// Where one published message went.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    /// Handed to live connections.
    pub delivered: usize,
    /// Kept for offline persistent sessions.
    pub queued: usize,
    /// Subscribers whose policy refused it.
    pub denied: usize,
    /// Dropped (QoS 0 to an offline client, or a full queue).
    pub dropped: usize,
}

impl Reach {
    /// Sessions that have it or will get it (live or queued).
    pub fn reached(&self) -> usize {
        self.delivered + self.queued
    }
}

impl Outbox {
    pub(crate) fn from_weak(shared: Weak<Shared>) -> Self {
        Outbox { shared }
    }

    /// Publishes `payload` on `topic` with QoS 0 or 1 (not retained). Waits until what was
    /// queued for offline persistent sessions is on disk when the hub has a data directory.
    pub async fn publish(&self, topic: &str, payload: Bytes, qos: u8) -> Result<Reach> {
        let reach = self.publish_now(topic, payload, qos)?;
        if reach.queued > 0
            && let Some(shared) = self.shared.upgrade()
        {
            shared.durable().await;
        }
        Ok(reach)
    }

    /// Publishes without waiting for durability (for answers to requests, which are QoS 0
    /// or retried by the device).
    pub fn publish_now(&self, topic: &str, payload: Bytes, qos: u8) -> Result<Reach> {
        let shared = self
            .shared
            .upgrade()
            .ok_or_else(|| Error::Unavailable("the hub has shut down".into()))?;
        if qos > 1 {
            return Err(Error::invalid("qos", "the hub publishes with QoS 0 or 1"));
        }
        let limits = shared.limits.clone();
        let routed = {
            let mut state = shared.broker.lock().expect("broker lock");
            state.route(topic, &payload, qos, &limits, |client, explanation| {
                shared.event(HubEvent::PolicyDenied {
                    client_id: client.to_string(),
                    explanation,
                })
            })
        };
        Ok(Reach {
            delivered: routed.delivered,
            queued: routed.queued,
            denied: routed.denied,
            dropped: routed.dropped,
        })
    }

    /// Publishes `payload` on `topic` to **one** client only — the per-connection answers of
    /// request/response services (fleet provisioning, Azure's `$iothub/…`): delivered if that
    /// client's session subscribes to a matching filter and its policy allows receiving it.
    /// Returns whether it was handed over (live or queued).
    pub fn publish_to(
        &self,
        client_id: &str,
        topic: &str,
        payload: Bytes,
        qos: u8,
    ) -> Result<bool> {
        let shared = self
            .shared
            .upgrade()
            .ok_or_else(|| Error::Unavailable("the hub has shut down".into()))?;
        let limits = shared.limits.clone();
        let mut state = shared.broker.lock().expect("broker lock");
        let granted = state
            .subscriptions
            .filters_of(&client_id.to_string())
            .into_iter()
            .filter(|(f, _)| super::broker::topic::filter_matches(f, topic))
            .map(|(_, q)| q)
            .max();
        let Some(granted) = granted else {
            return Ok(false);
        };
        let Some(session) = state.sessions.get_mut(client_id) else {
            return Ok(false);
        };
        let decision = session
            .principal
            .authorize(&crate::policy::Request::receive(topic));
        if !decision.is_allowed() {
            shared.event(HubEvent::PolicyDenied {
                client_id: client_id.to_string(),
                explanation: decision.to_string(),
            });
            return Ok(false);
        }
        let delivery = super::broker::Delivery {
            topic: topic.into(),
            payload,
            qos: qos.min(granted),
            retain: false,
            dup: false,
        };
        Ok(matches!(
            super::broker::deliver(session, delivery, &limits),
            super::broker::Handed::Live | super::broker::Handed::Queued
        ))
    }

    /// Writes the dialect's service state ([`HubDialect::save_state`]) to the data directory
    /// now, so what a service is about to acknowledge survives a restart (no-op without a
    /// data directory).
    pub fn persist(&self) -> Result<()> {
        self.shared()?.save_dialect_state()
    }

    /// Writes `state` as the dialect's service state now (for a service that holds its own
    /// lock while it saves; no-op without a data directory).
    pub fn persist_state(&self, state: &serde_json::Value) -> Result<()> {
        self.shared()?.save_dialect_value(state)
    }

    pub(crate) fn shared(&self) -> Result<std::sync::Arc<Shared>> {
        self.shared
            .upgrade()
            .ok_or_else(|| Error::Unavailable("the hub has shut down".into()))
    }

    /// Whether `device` has a live connection now.
    pub fn is_connected(&self, device: &str) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        let state = shared.broker.lock().expect("broker lock");
        state.connections.values().any(|c| c.device == device)
    }

    /// Runs `f` with the registry (read-only).
    pub fn with_registry<T>(&self, f: impl FnOnce(&Registry) -> T) -> Result<T> {
        let shared = self
            .shared
            .upgrade()
            .ok_or_else(|| Error::Unavailable("the hub has shut down".into()))?;
        let registry = shared.registry.read().expect("registry lock");
        Ok(f(&registry))
    }
}

/// One cloud's device protocol, as the hub speaks it. See the [module docs](self).
///
/// Every method has a default, so a dialect states only what differs: the defaults
/// authenticate by client certificate, own no reserved topic, disconnect on a denied publish,
/// and answer admin operations with [`Error::NotSupported`].
#[async_trait::async_trait]
pub trait HubDialect: Send + Sync + 'static {
    /// A short name for logs ("native", "aws", …).
    fn name(&self) -> &str;

    /// The limits this dialect enforces (the cloud's own). The builder's
    /// [`limits`](super::LocalHubBuilder::limits) overrides them.
    fn limits(&self) -> Limits {
        Limits::default()
    }

    /// Called once when the hub starts, with the outbox services publish through.
    fn attach(&self, outbox: Outbox) {
        let _ = outbox;
    }

    /// Decides who a CONNECT is. The default accepts a registered, active certificate of an
    /// enabled device and refuses clients without one.
    fn authenticate(&self, hello: &Hello<'_>, registry: &Registry) -> Result<Authenticated> {
        authenticate_certificate(hello, registry)
    }

    /// The service state to keep across restarts when the hub has a data directory (twins,
    /// …); `None` if the dialect keeps none.
    fn save_state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Restores what [`save_state`](Self::save_state) returned, when the hub starts.
    fn load_state(&self, state: serde_json::Value) -> Result<()> {
        let _ = state;
        Ok(())
    }

    /// Whether clients may complete the TLS handshake without a client certificate (to
    /// authenticate with a username/password at CONNECT instead). Default `false`: mutual TLS
    /// is required and a client without a certificate is refused in the handshake.
    fn accepts_clients_without_certificate(&self) -> bool {
        false
    }

    /// Whether a service of this dialect answers publishes to `topic` (a reserved `$` topic).
    /// Publishes to reserved topics no service owns close the connection.
    fn serves(&self, topic: &str) -> bool {
        let _ = topic;
        false
    }

    /// Handles a publish to a topic [`serves`](Self::serves) claimed, after the policy
    /// allowed it. An error closes the publisher's connection (the request was malformed
    /// beyond answering); a well-formed request that fails is answered on the dialect's
    /// response topic instead.
    fn on_publish(
        &self,
        from: &Publisher<'_>,
        topic: &str,
        payload: &Bytes,
        outbox: &Outbox,
    ) -> Result<()> {
        let _ = (from, payload, outbox);
        Err(Error::NotSupported(format!("no service owns {topic:?}")))
    }

    /// What a denied publish does.
    fn denied_publish(&self) -> DeniedPublish {
        DeniedPublish::Disconnect
    }

    /// Whether TLS clients must name the server (SNI) in their hello; those that do not are
    /// refused in the handshake (AWS IoT Core). Default `false`.
    fn requires_sni(&self) -> bool {
        false
    }

    /// What QoS 2 publishes and subscriptions get. Default [`Qos2::Downgrade`].
    fn qos2(&self) -> Qos2 {
        Qos2::Downgrade
    }

    /// Whether a subscription with a wildcard gets the retained messages it matches (MQTT
    /// says yes; AWS IoT Core sends retained messages only to exact-topic subscriptions).
    fn retained_on_wildcard_subscribe(&self) -> bool {
        true
    }

    /// Called once a client is connected (after its CONNACK), outside every hub lock: the
    /// place for lifecycle events.
    fn on_connected(&self, who: &Presence<'_>, outbox: &Outbox) {
        let _ = (who, outbox);
    }

    /// Called once a connection has ended and its session was settled (will published,
    /// messages kept), outside every hub lock.
    fn on_disconnected(&self, who: &Presence<'_>, reason: DisconnectReason, outbox: &Outbox) {
        let _ = (who, reason, outbox);
    }

    /// Sends a command (cloud-to-device message) to `device`; returns how many sessions it
    /// reached (live or queued for a persistent session).
    async fn send_command(&self, device: &str, name: &str, payload: Bytes) -> Result<usize> {
        let _ = (device, name, payload);
        Err(Error::NotSupported(format!(
            "commands in the {} dialect",
            self.name()
        )))
    }

    /// The device's twin as the hub holds it.
    fn twin(&self, device: &str) -> Result<TwinDocument> {
        let _ = device;
        Err(Error::NotSupported(format!(
            "twins in the {} dialect",
            self.name()
        )))
    }

    /// Changes desired properties with a JSON merge patch; `expected_version` makes it
    /// conditional. Returns the new twin version.
    async fn update_desired(
        &self,
        device: &str,
        patch: serde_json::Value,
        expected_version: Option<u64>,
    ) -> Result<u64> {
        let _ = (device, patch, expected_version);
        Err(Error::NotSupported(format!(
            "twins in the {} dialect",
            self.name()
        )))
    }

    /// Invokes a direct method on a connected device and waits up to `timeout` for its
    /// answer.
    async fn invoke_method(
        &self,
        device: &str,
        method: &str,
        payload: serde_json::Value,
        timeout: Duration,
    ) -> Result<MethodResponse> {
        let _ = (device, method, payload, timeout);
        Err(Error::NotSupported(format!(
            "direct methods in the {} dialect",
            self.name()
        )))
    }
}

/// The default authentication: a registered, active client certificate of an enabled device.
pub fn authenticate_certificate(hello: &Hello<'_>, registry: &Registry) -> Result<Authenticated> {
    let leaf = hello
        .certificate
        .ok_or_else(|| Error::Unauthenticated("no client certificate".into()))?;
    let record = registry.admit(leaf)?;
    Ok(Authenticated::Certificate {
        cert_id: record.id.clone(),
    })
}
