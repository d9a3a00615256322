//! [`Dialect`]: everything cloud-specific about a device's connection and topics.

use std::fmt;

use bytes::Bytes;
use rustls_pki_types::CertificateDer;
use serde_json::{Map, Value};

use super::twin::{DesiredChange, TwinDocument};
use crate::identity::DeviceId;
use crate::{Error, Result};

/// A part of the device plane a backend may or may not offer.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    /// Device-to-cloud messages.
    Telemetry,
    /// Application properties on telemetry (Azure's property bag, the native dialect's).
    TelemetryProperties,
    /// QoS 1 (at-least-once) telemetry.
    AtLeastOnce,
    /// Cloud-to-device commands.
    Commands,
    /// A twin (shadow, config/state): get and report.
    Twin,
    /// Notifications of desired-property changes.
    DesiredNotifications,
    /// Conditional twin reports (with an expected version).
    TwinVersioning,
    /// Direct methods (request/response from the cloud to the device).
    Methods,
    /// A new certificate for a CSR over the device's authenticated connection, and the
    /// confirmation that retires the old one (certificate rotation).
    CertificateRotation,
    /// Jobs: remote operations queued for the device, which it starts, reports progress on
    /// and completes (AWS IoT Jobs).
    Jobs,
}

/// What a backend's device plane supports — data, not prose: the client checks it before
/// every operation and answers [`Error::NotSupported`] for anything missing, never a silent
/// no-op.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    features: Vec<Feature>,
}

impl Capabilities {
    /// Capabilities with exactly `features`.
    pub fn new(features: &[Feature]) -> Self {
        Capabilities {
            features: features.to_vec(),
        }
    }

    /// Whether `feature` is supported.
    pub fn supports(&self, feature: Feature) -> bool {
        self.features.contains(&feature)
    }

    /// `Ok` if `feature` is supported, else [`Error::NotSupported`] naming the dialect.
    pub fn require(&self, feature: Feature, dialect: &str) -> Result<()> {
        if self.supports(feature) {
            Ok(())
        } else {
            Err(Error::NotSupported(format!(
                "{feature:?} in the {dialect} dialect"
            )))
        }
    }

    /// Every supported feature.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }
}

/// Where and how to reach the hub or cloud endpoint.
#[non_exhaustive]
#[derive(Clone)]
pub struct Endpoint {
    /// Host name or IP address to connect to.
    pub host: String,
    /// TCP port (8883 for MQTT over TLS, 443 with ALPN).
    pub port: u16,
    /// The name the server certificate must carry (SNI); usually `host`.
    pub server_name: String,
    /// ALPN protocols to offer (AWS on 443: `x-amzn-mqtt-ca`); empty for none.
    pub alpn: Vec<Vec<u8>>,
    /// Trust anchors for the server certificate.
    pub roots: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("server_name", &self.server_name)
            .field(
                "alpn",
                &self
                    .alpn
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<Vec<_>>(),
            )
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl Endpoint {
    /// An endpoint at `host:port` whose certificate chains to one of `roots`.
    pub fn new(host: &str, port: u16, roots: Vec<CertificateDer<'static>>) -> Self {
        Endpoint {
            host: host.to_string(),
            port,
            server_name: host.to_string(),
            alpn: Vec::new(),
            roots,
        }
    }

    /// Offers ALPN `protocol` in the TLS handshake.
    pub fn with_alpn(mut self, protocol: &[u8]) -> Self {
        self.alpn.push(protocol.to_vec());
        self
    }
}

/// An MQTT password (a SAS token, a JWT): zeroed on drop, never printed.
#[derive(Clone)]
pub struct Password(zeroize::Zeroizing<String>);

impl Password {
    /// Wraps `secret`.
    pub fn new(secret: String) -> Self {
        Password(zeroize::Zeroizing::new(secret))
    }

    /// The secret, to put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Size limits the backend enforces on what a device sends; the client checks them first so
/// an oversized message is a typed error, not a dropped connection.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Largest payload, in bytes.
    pub max_payload: usize,
    /// Longest topic, in bytes.
    pub max_topic_len: usize,
    /// Most telemetry properties per message.
    pub max_properties: usize,
    /// Most topic filters the client puts in one SUBSCRIBE (AWS IoT Core: 8); more
    /// subscriptions go out in several packets.
    pub max_filters_per_subscribe: usize,
}

impl Default for DeviceLimits {
    fn default() -> Self {
        DeviceLimits {
            max_payload: 128 * 1024,
            max_topic_len: 256,
            max_properties: 32,
            max_filters_per_subscribe: 8,
        }
    }
}

/// A message to publish, as a dialect shapes it.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS 0 or 1.
    pub qos: u8,
}

impl Outbound {
    /// A message on `topic`.
    pub fn new(topic: String, payload: impl Into<Bytes>, qos: u8) -> Self {
        Outbound {
            topic,
            payload: payload.into(),
            qos,
        }
    }
}

/// A cloud-to-device command.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Its name (the native dialect's topic suffix; Azure's message properties may carry one).
    pub name: String,
    /// The payload, as sent.
    pub payload: Bytes,
    /// Properties that came with it.
    pub properties: Vec<(String, String)>,
}

/// A direct-method call the device must answer.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub struct MethodRequest {
    /// The method's name.
    pub name: String,
    /// The request id the answer must carry.
    pub request_id: String,
    /// The arguments (JSON; `null` when the payload was empty).
    pub payload: Value,
}

/// The answer to a direct method.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
pub struct MethodResponse {
    /// The status (HTTP-like: 200 success; the client answers 404 for an unknown method,
    /// 500 for a handler that failed or panicked, 504 for one that timed out).
    pub status: u16,
    /// The answer.
    pub payload: Value,
}

impl MethodResponse {
    /// A response with `status` and `payload`.
    pub fn new(status: u16, payload: Value) -> Self {
        MethodResponse { status, payload }
    }

    /// A 200 response.
    pub fn ok(payload: Value) -> Self {
        MethodResponse::new(200, payload)
    }
}

/// A message the device received, sorted by what it is for.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub enum Inbound {
    /// A command.
    Command(Command),
    /// The answer to a twin request.
    TwinResponse {
        /// The request id it answers.
        request_id: String,
        /// Its status (200/204 success, 409 conflict, 400 bad request, …).
        status: u16,
        /// The body, for [`Dialect::parse_twin_document`] / [`Dialect::parse_twin_reported`].
        body: Bytes,
    },
    /// Desired properties changed.
    DesiredChange(DesiredChange),
    /// A direct-method call.
    MethodRequest(MethodRequest),
    /// The answer to a certificate request or confirmation.
    CertificateResponse {
        /// The request id it answers.
        request_id: String,
        /// Its status (200 success).
        status: u16,
        /// The body, for [`Dialect::parse_certificate`].
        body: Bytes,
    },
    /// The answer to a backend-specific request sent with
    /// [`DeviceClient::request`](super::DeviceClient::request) (AWS jobs, …).
    Response {
        /// The request id it answers.
        request_id: String,
        /// Its status (HTTP-like: 2xx success).
        status: u16,
        /// The body, for the backend's own parser.
        body: Bytes,
    },
    /// A notification from a backend service that is neither a command nor an answer (AWS
    /// jobs' `notify-next`), delivered on
    /// [`DeviceClient::notifications`](super::DeviceClient::notifications).
    Notification {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Bytes,
    },
    /// Something else: a topic the application subscribed to itself.
    Other {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Bytes,
    },
}

/// Everything cloud-specific about the device plane. The [`DeviceClient`](super::DeviceClient)
/// is written once on top of it; each backend (native, AWS, Azure, GCP) implements it.
pub trait Dialect: Send + Sync + 'static {
    /// A short name for messages ("native", "aws", …).
    fn name(&self) -> &str;

    /// What this backend supports.
    fn capabilities(&self) -> Capabilities;

    /// Where to connect.
    fn endpoint(&self) -> &Endpoint;

    /// The MQTT client id (default: the device id).
    fn client_id(&self, device: &DeviceId) -> String {
        device.as_str().to_string()
    }

    /// The MQTT username, if the backend uses one.
    fn username(&self, device: &DeviceId) -> Option<String> {
        let _ = device;
        None
    }

    /// The MQTT password, produced anew before **every** connection attempt (so a token that
    /// expires is re-minted on reconnect). `None` for certificate authentication.
    fn password(&self, device: &DeviceId) -> Result<Option<Password>> {
        let _ = device;
        Ok(None)
    }

    /// For MQTT over WebSocket: the `wss://` URL to open, produced anew before **every**
    /// connection attempt (AWS's SigV4-presigned URL is dated). `None` (the default): MQTT
    /// over TLS to [`endpoint`](Self::endpoint).
    fn websocket_url(&self, device: &DeviceId) -> Result<Option<String>> {
        let _ = device;
        Ok(None)
    }

    /// Size limits.
    fn limits(&self) -> DeviceLimits {
        DeviceLimits::default()
    }

    /// The topic for telemetry with `properties` (already validated by the client against
    /// [`valid_property_name`]).
    fn telemetry_topic(&self, device: &DeviceId, properties: &[(String, String)])
    -> Result<String>;

    /// The subscriptions the device holds for the supported features (restored after every
    /// reconnect).
    fn subscriptions(&self, device: &DeviceId) -> Vec<(String, u8)>;

    /// Sorts an incoming message.
    fn classify(&self, device: &DeviceId, topic: &str, payload: &Bytes) -> Inbound;

    /// The request that fetches the twin.
    fn twin_get(&self, device: &DeviceId, request_id: &str) -> Result<Outbound>;

    /// The request that reports `patch` (a JSON merge patch), conditionally on
    /// `expected_version` when given.
    fn twin_report(
        &self,
        device: &DeviceId,
        request_id: &str,
        patch: &Map<String, Value>,
        expected_version: Option<u64>,
    ) -> Result<Outbound>;

    /// The twin in a successful get response.
    fn parse_twin_document(&self, body: &Bytes) -> Result<TwinDocument>;

    /// The new version in a successful report response.
    fn parse_twin_reported(&self, body: &Bytes) -> Result<u64>;

    /// The error a failed twin response means (409 → [`Error::Conflict`], …).
    fn twin_error(&self, device: &DeviceId, status: u16, body: &Bytes) -> Error;

    /// The message that answers a method request.
    fn method_response(
        &self,
        device: &DeviceId,
        request: &MethodRequest,
        response: &MethodResponse,
    ) -> Result<Outbound>;

    /// The request for a certificate for `csr_pem` (a CSR for this device's own id), sent over
    /// the device's current authenticated connection.
    fn certificate_request(
        &self,
        device: &DeviceId,
        request_id: &str,
        csr_pem: &str,
    ) -> Result<Outbound> {
        let _ = (device, request_id, csr_pem);
        Err(Error::NotSupported(format!(
            "certificate rotation in the {} dialect",
            self.name()
        )))
    }

    /// The confirmation, sent over a connection authenticated with the **new** certificate
    /// `new_id`, that retires `retire_id`.
    fn certificate_confirm(
        &self,
        device: &DeviceId,
        request_id: &str,
        new_id: &str,
        retire_id: &str,
    ) -> Result<Outbound> {
        let _ = (device, request_id, new_id, retire_id);
        Err(Error::NotSupported(format!(
            "certificate rotation in the {} dialect",
            self.name()
        )))
    }

    /// The certificate chain (PEM) and id in a successful certificate answer, or the error a
    /// failed one means.
    fn parse_certificate(&self, status: u16, body: &Bytes) -> Result<IssuedCertificate> {
        let _ = (status, body);
        Err(Error::NotSupported(format!(
            "certificate rotation in the {} dialect",
            self.name()
        )))
    }
}

/// A certificate the service issued for a CSR.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// Its id at the service.
    pub certificate_id: String,
    /// The chain, leaf first, as PEM (empty for a confirmation).
    pub chain_pem: String,
}

/// Whether `name` may be a telemetry property name: 1–64 characters of `A-Z a-z 0-9 - _ .`,
/// not starting with `$` (reserved for system properties in every cloud).
pub fn valid_property_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
