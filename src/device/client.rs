//! [`DeviceClient`]: the application-facing client on the device.
//!
//! One task drives rumqttc's event loop. Everything the application sends goes through one
//! bounded [`OfflineQueue`]: a QoS 1 message stays there until the hub's PUBACK, across
//! disconnects, so an acknowledged send is never lost and an unacknowledged one is resent.
//! fleetkit does its own resending and subscription restore instead of rumqttc's (which
//! drops what it held when the new session is not a resumed one), and reconnects with capped
//! exponential backoff and full jitter ([`Backoff`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS, SubscribeReasonCode, TlsConfiguration, Transport,
};
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::dialect::{
    Command, Dialect, Feature, Inbound, MethodRequest, MethodResponse, Outbound,
    valid_property_name,
};
use super::twin::{DesiredChange, TwinDocument};
use crate::identity::{ClientIdentity, DeviceId, X509Credential};
use crate::protocol::{
    Backoff, BackoffConfig, MessageId, OfflineQueue, Outgoing as QueuedMessage, Overflow, Pushed,
    QueueLimits,
};
use crate::{Error, Result};

/// A telemetry message: payload, QoS (default 1) and application properties.
///
/// ```
/// use fleetkit::device::Telemetry;
/// let t = Telemetry::new(r#"{"temp": 21.5}"#).property("unit", "C").qos(0);
/// # let _ = t;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Telemetry {
    payload: Bytes,
    qos: u8,
    properties: Vec<(String, String)>,
}

impl Telemetry {
    /// A QoS 1 message with `payload` and no properties.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Telemetry {
            payload: payload.into(),
            qos: 1,
            properties: Vec::new(),
        }
    }

    /// A QoS 1 message carrying `value` as JSON.
    pub fn json(value: &impl serde::Serialize) -> Result<Self> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::invalid("payload", format!("cannot serialize: {e}")))?;
        Ok(Telemetry::new(bytes))
    }

    /// Sets the QoS: 0 (at most once) or 1 (at least once, kept until acknowledged).
    pub fn qos(mut self, qos: u8) -> Self {
        self.qos = qos;
        self
    }

    /// Adds an application property (name: 1–64 of `A-Z a-z 0-9 - _ .`).
    pub fn property(mut self, name: &str, value: &str) -> Self {
        self.properties.push((name.to_string(), value.to_string()));
        self
    }

    /// The application properties, in the order added.
    pub fn properties(&self) -> &[(String, String)] {
        &self.properties
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
}

/// Where the client's connection stands (see [`DeviceClient::state`]).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting (first attempt or a reconnect).
    Connecting {
        /// Attempts since the last successful connection.
        attempt: u32,
    },
    /// Connected; `session_present` if the hub resumed a persistent session.
    Connected {
        /// Whether the hub resumed a persistent session.
        session_present: bool,
    },
    /// Disconnected; the next attempt is in `retry_in`.
    Disconnected {
        /// Why, as a typed error's message.
        reason: String,
        /// Whether the hub refused us (authentication or authorization), as opposed to a
        /// network failure.
        refused: bool,
        /// The backoff delay before the next attempt (full jitter: anywhere from zero to the
        /// current ceiling).
        retry_in: Duration,
        /// Attempts since the last successful connection.
        attempt: u32,
    },
    /// Shut down; the client is finished.
    Closed,
}

/// What to do with a method call.
type MethodHandler =
    Arc<dyn Fn(Value) -> Pin<Box<dyn Future<Output = MethodResponse> + Send>> + Send + Sync>;

/// A send that has been handed to rumqttc and is waiting for its `Outgoing::Publish` event.
enum Handed {
    /// From the offline queue (telemetry).
    Queued(MessageId, u8),
    /// A request or answer that is not queued (twin request, method answer; QoS 0).
    Direct,
}

/// A request (twin, certificate) waiting for its answer.
struct TwinWaiter {
    answer: oneshot::Sender<(u16, Bytes)>,
}

/// Senders waiting for queued messages, in id order (ids only grow).
#[derive(Default)]
struct Waiters(VecDeque<(MessageId, oneshot::Sender<Result<()>>)>);

impl Waiters {
    fn insert(&mut self, id: MessageId, tx: oneshot::Sender<Result<()>>) {
        self.0.push_back((id, tx));
    }
    fn remove(&mut self, id: &MessageId) -> Option<oneshot::Sender<Result<()>>> {
        let i = self.0.binary_search_by_key(id, |(k, _)| *k).ok()?;
        self.0.remove(i).map(|(_, tx)| tx)
    }
    fn drain(&mut self) -> impl Iterator<Item = (MessageId, oneshot::Sender<Result<()>>)> + '_ {
        self.0.drain(..)
    }
}

/// The state the driver task and the API share.
struct Inner {
    queue: OfflineQueue,
    /// Publishes handed to rumqttc, in order, awaiting their `Outgoing::Publish` event.
    handed: VecDeque<Handed>,
    /// QoS 1 messages written, by packet id, awaiting PUBACK.
    pkids: VecDeque<(u16, MessageId)>,
    /// Senders waiting for a queued message's fate.
    waiters: Waiters,
    twin_waiters: HashMap<String, TwinWaiter>,
    connected: bool,
    closed: bool,
}

struct Shared {
    dialect: Arc<dyn Dialect>,
    capabilities: super::Capabilities,
    limits: super::dialect::DeviceLimits,
    plain_topic: Option<String>,
    device: DeviceId,
    mqtt: AsyncClient,
    inner: Mutex<Inner>,
    /// Window of publishes handed to rumqttc and not yet acknowledged.
    window: usize,
    methods: Mutex<HashMap<String, (MethodHandler, Duration)>>,
    commands_tx: mpsc::Sender<Command>,
    desired_tx: mpsc::Sender<DesiredChange>,
    others_tx: mpsc::Sender<(String, Bytes)>,
    notifications_tx: mpsc::Sender<(String, Bytes)>,
    state: watch::Sender<ConnectionState>,
    request_timeout: Duration,
    next_request: AtomicU64,
    request_prefix: String,
    shutdown: Notify,
    drained: Notify,
    /// A credential switch asked for and not yet applied by the driver: the new TLS
    /// configuration and who waits for the outcome.
    switch: Mutex<Option<PendingSwitch>>,
    endpoint: super::Endpoint,
}

/// A credential switch on its way.
struct PendingSwitch {
    tls: Arc<rustls::ClientConfig>,
    done: oneshot::Sender<Result<()>>,
}

/// Configures and connects a [`DeviceClient`].
pub struct DeviceClientBuilder {
    dialect: Arc<dyn Dialect>,
    device: DeviceId,
    credential: Option<X509Credential>,
    backoff: BackoffConfig,
    queue: QueueLimits,
    overflow: Overflow,
    keep_alive: Duration,
    persistent_session: bool,
    request_timeout: Duration,
    method_timeout: Duration,
    window: u16,
    connect_timeout: Duration,
    tcp_nodelay: bool,
}

impl std::fmt::Debug for DeviceClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceClientBuilder")
            .field("dialect", &self.dialect.name())
            .field("device", &self.device)
            .field(
                "credential",
                &self
                    .credential
                    .as_ref()
                    .map(|c| c.leaf().fingerprint_sha256()),
            )
            .field("backoff", &self.backoff)
            .field("queue", &self.queue)
            .field("overflow", &self.overflow)
            .field("keep_alive", &self.keep_alive)
            .field("persistent_session", &self.persistent_session)
            .finish_non_exhaustive()
    }
}

impl DeviceClientBuilder {
    /// Authenticates with this X.509 credential (mutual TLS). Without one, the dialect's
    /// username/password is the only credential.
    pub fn credential(mut self, credential: X509Credential) -> Self {
        self.credential = Some(credential);
        self
    }

    /// Reconnect backoff (default 1 s → 120 s, full jitter, reset after 30 s connected).
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// Bounds of the offline queue (messages and payload bytes, counting those in flight)
    /// and what happens when it is full.
    pub fn offline_queue(mut self, limits: QueueLimits, overflow: Overflow) -> Self {
        self.queue = limits;
        self.overflow = overflow;
        self
    }

    /// MQTT keep-alive (default 30 s).
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// Whether the hub keeps the session while the device is offline (default `true`:
    /// commands sent meanwhile are queued by the hub and delivered on reconnect).
    pub fn persistent_session(mut self, on: bool) -> Self {
        self.persistent_session = on;
        self
    }

    /// How long a twin request waits for its answer (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The default time a method handler may take before the client answers 504 (default
    /// 30 s; [`DeviceClient::on_method_with_timeout`] sets it per method).
    pub fn method_timeout(mut self, timeout: Duration) -> Self {
        self.method_timeout = timeout;
        self
    }

    /// How many publishes may be in flight (sent, not acknowledged) at once (default 64).
    pub fn window(mut self, window: u16) -> Self {
        self.window = window;
        self
    }

    /// How long the first connection may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether small writes go out at once (`TCP_NODELAY`, default `true`). On, a request
    /// and its answer (twin, jobs, methods) take one round trip; off, Nagle's algorithm
    /// coalesces small packets, which roughly doubles bulk QoS 1 telemetry throughput on
    /// loopback but can hold each request/response exchange for the peer's delayed ACK
    /// (about 40 ms).
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.tcp_nodelay = on;
        self
    }

    /// Connects. Returns once the hub accepted the first connection and the subscriptions
    /// the dialect needs (commands, twin, methods); a refusal
    /// ([`Error::Unauthenticated`], [`Error::PermissionDenied`]) or an unreachable hub
    /// ([`Error::Unavailable`]) is returned as an error and nothing keeps running. After the
    /// first connection the client reconnects on its own.
    pub async fn connect(self) -> Result<DeviceClient> {
        self.backoff.validate()?;
        if self.window == 0 {
            return Err(Error::invalid("window", "must be at least 1"));
        }
        let queue = OfflineQueue::new(self.queue, self.overflow)?;
        let endpoint = self.dialect.endpoint().clone();
        let client_id = self.dialect.client_id(&self.device);
        let websocket_url = self.dialect.websocket_url(&self.device)?;
        let tls = tls_config(&endpoint, self.credential.as_ref())?;
        let mut options = match &websocket_url {
            Some(url) => MqttOptions::new(client_id, url.clone(), endpoint.port),
            None => MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port),
        };
        if websocket_url.is_some() {
            // A fresh URL (a new signature) for every connection attempt.
            let dialect = self.dialect.clone();
            let device = self.device.clone();
            options.set_request_modifier(move |mut request| {
                let fresh = dialect.websocket_url(&device);
                async move {
                    match fresh.map(|u| u.map(|u| u.parse())) {
                        Ok(Some(Ok(uri))) => *request.uri_mut() = uri,
                        Ok(Some(Err(e))) => {
                            tracing::warn!(error = %e, "the dialect's WebSocket URL does not parse")
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "no WebSocket URL for this attempt"),
                    }
                    request
                }
            });
        }
        options
            .set_keep_alive(self.keep_alive)
            .set_clean_session(!self.persistent_session)
            .set_manual_acks(true)
            .set_inflight(self.window)
            .set_max_packet_size(
                self.dialect.limits().max_payload + 4096,
                self.dialect.limits().max_payload + 4096,
            )
            .set_transport(if websocket_url.is_some() {
                Transport::wss_with_config(TlsConfiguration::Rustls(tls))
            } else {
                Transport::tls_with_config(TlsConfiguration::Rustls(tls))
            });
        let capacity = usize::from(self.window) + 64;
        let (mqtt, mut eventloop) = AsyncClient::new(options, capacity);
        // By default request/response traffic (a PUBACK, then the next request) does not
        // wait for Nagle's algorithm and the peer's delayed ACK (40 ms a round trip).
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(self.tcp_nodelay);
        eventloop.set_network_options(network);
        let (commands_tx, commands_rx) = mpsc::channel(256);
        let (desired_tx, desired_rx) = mpsc::channel(64);
        let (others_tx, others_rx) = mpsc::channel(256);
        let (notifications_tx, notifications_rx) = mpsc::channel(64);
        let (state, _) = watch::channel(ConnectionState::Connecting { attempt: 0 });
        let mut prefix = [0u8; 6];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut prefix)
            .map_err(|_| Error::Crypto("no randomness for request ids".into()))?;
        let capabilities = self.dialect.capabilities();
        let limits = self.dialect.limits();
        let plain_topic = self.dialect.telemetry_topic(&self.device, &[]).ok();
        let shared = Arc::new(Shared {
            capabilities,
            limits,
            plain_topic,
            dialect: self.dialect,
            device: self.device,
            mqtt,
            inner: Mutex::new(Inner {
                queue,
                handed: VecDeque::new(),
                pkids: VecDeque::new(),
                waiters: Waiters::default(),
                twin_waiters: HashMap::new(),
                connected: false,
                closed: false,
            }),
            window: usize::from(self.window),
            methods: Mutex::new(HashMap::new()),
            commands_tx,
            desired_tx,
            others_tx,
            notifications_tx,
            state,
            request_timeout: self.request_timeout,
            next_request: AtomicU64::new(1),
            request_prefix: prefix.iter().map(|b| format!("{b:02x}")).collect(),
            shutdown: Notify::new(),
            drained: Notify::new(),
            switch: Mutex::new(None),
            endpoint: endpoint.clone(),
        });
        let backoff = Backoff::new(self.backoff)?;
        let (first_tx, first_rx) = oneshot::channel();
        let driver = tokio::spawn(drive(shared.clone(), eventloop, backoff, first_tx));
        let first = match tokio::time::timeout(self.connect_timeout, first_rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Unavailable("the client's task ended".into())),
            Err(_) => Err(Error::Timeout(format!(
                "no connection to {}:{} within {:?}",
                endpoint.host, endpoint.port, self.connect_timeout
            ))),
        };
        if let Err(e) = first {
            driver.abort();
            return Err(e);
        }
        Ok(DeviceClient {
            shared,
            driver: Mutex::new(Some(driver)),
            commands: Mutex::new(Some(commands_rx)),
            desired: Mutex::new(Some(desired_rx)),
            others: Mutex::new(Some(others_rx)),
            notifications: Mutex::new(Some(notifications_rx)),
            method_timeout: self.method_timeout,
        })
    }
}

/// The transport `options` uses (TLS or WebSocket over TLS), with the TLS configuration `tls`.
fn same_transport(options: &MqttOptions, tls: Arc<rustls::ClientConfig>) -> Transport {
    match options.transport() {
        Transport::Wss(_) => Transport::wss_with_config(TlsConfiguration::Rustls(tls)),
        _ => Transport::tls_with_config(TlsConfiguration::Rustls(tls)),
    }
}

/// Verifies the server certificate for a fixed name instead of the dialled host.
#[derive(Debug)]
struct ExpectedName {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: rustls_pki_types::ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for ExpectedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A rustls client configuration for `endpoint`, presenting `credential` if given. Uses the
/// ring provider explicitly. The server certificate must name `endpoint.server_name`.
pub fn tls_config(
    endpoint: &super::Endpoint,
    credential: Option<&X509Credential>,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for root in &endpoint.roots {
        roots
            .add(root.clone())
            .map_err(|e| Error::invalid("endpoint roots", e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(Error::invalid(
            "endpoint roots",
            "no trust anchor for the server certificate",
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::NotSupported(format!("TLS versions: {e}")))?;
    let builder = if endpoint.server_name != endpoint.host {
        // The certificate must name `server_name`, whatever address we dial (a hub on
        // 127.0.0.1 whose certificate says "localhost"). Only the name changes; the chain
        // and signatures are checked by webpki as always.
        let name = rustls_pki_types::ServerName::try_from(endpoint.server_name.clone())
            .map_err(|e| Error::invalid("server name", e.to_string()))?;
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::invalid("endpoint roots", e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ExpectedName { inner, name }))
    } else {
        builder.with_root_certificates(roots)
    };
    let mut config = match credential {
        Some(c) => builder.with_client_cert_resolver(Arc::new(ClientIdentity::new(c)?)),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = endpoint.alpn.clone();
    Ok(Arc::new(config))
}

/// What a refused or failed connection means, as fleetkit's error; `true` if the hub
/// refused us (as opposed to the network failing).
fn connection_error(e: &ConnectionError) -> (Error, bool) {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            let refused = true;
            let err = match code {
                ConnectReturnCode::NotAuthorized => Error::PermissionDenied(
                    "the hub refused the connection: not authorized (CONNACK 5)".into(),
                ),
                ConnectReturnCode::BadUserNamePassword => Error::Unauthenticated(
                    "the hub refused the connection: bad username or password (CONNACK 4)".into(),
                ),
                other => Error::Unavailable(format!("the hub refused the connection: {other:?}")),
            };
            (err, refused)
        }
        ConnectionError::Tls(t) => {
            // Our side refusing the server's certificate is distrust, not a refusal of us.
            let invalid = match t {
                rumqttc::TlsError::Io(io) => io
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>())
                    .and_then(|e| match e {
                        rustls::Error::InvalidCertificate(c) => Some(c.clone()),
                        _ => None,
                    }),
                rumqttc::TlsError::TLS(rustls::Error::InvalidCertificate(c)) => Some(c.clone()),
                _ => None,
            };
            if let Some(reason) = invalid {
                use crate::pki::ChainError;
                use rustls::CertificateError as C;
                let chain = match reason {
                    C::UnknownIssuer => ChainError::UnknownIssuer,
                    C::BadSignature => ChainError::BadSignature,
                    C::NotValidForName | C::NotValidForNameContext { .. } => {
                        ChainError::WrongName(t.to_string())
                    }
                    other => ChainError::Malformed(format!("the server's certificate: {other:?}")),
                };
                (Error::Untrusted(chain), false)
            } else {
                (
                    Error::Unauthenticated(format!("TLS handshake failed: {t}")),
                    true,
                )
            }
        }
        ConnectionError::Io(io)
        | ConnectionError::MqttState(rumqttc::StateError::Io(io))
        | ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::Io(io),
        )) => match tls_alert(io) {
            Some(alert) => (refusal(alert), true),
            None => (Error::Unavailable(io.to_string()), false),
        },
        other => (Error::Unavailable(other.to_string()), false),
    }
}

/// The TLS alert the server sent, if that is what ended the connection (a refused client
/// certificate shows up as an alert on the first read after the handshake in TLS 1.3).
fn tls_alert(e: &std::io::Error) -> Option<rustls::AlertDescription> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// What a server's TLS alert means for the client's credential.
fn refusal(alert: rustls::AlertDescription) -> Error {
    use rustls::AlertDescription as A;
    match alert {
        A::CertificateRevoked => {
            Error::Revoked("the hub refused the client certificate: revoked".into())
        }
        A::CertificateExpired => {
            Error::Expired("the hub refused the client certificate: expired".into())
        }
        A::CertificateRequired => Error::Unauthenticated(
            "the hub requires a client certificate and none was configured".into(),
        ),
        other => Error::Unauthenticated(format!("the hub refused the TLS handshake ({other:?})")),
    }
}

impl Shared {
    fn set_state(&self, state: ConnectionState) {
        self.state.send_replace(state);
    }

    /// Hands queued messages to rumqttc while there is room in the window.
    fn pump(&self, inner: &mut Inner) {
        if !inner.connected {
            return;
        }
        while inner.handed.len() + inner.pkids.len() < self.window {
            let Some(next) = inner.queue.next_to_send() else {
                break;
            };
            let id = next.id();
            let m = next.message();
            let qos = if m.qos == 1 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            match self
                .mqtt
                .try_publish(m.topic.clone(), qos, m.retain, m.payload.clone())
            {
                Ok(()) => inner.handed.push_back(Handed::Queued(id, m.qos)),
                Err(_) => {
                    // The request channel is full (it is sized for the window, so this means
                    // the event loop is gone): take it back for the next connection.
                    let _ = inner.queue.requeue_inflight();
                    break;
                }
            }
        }
    }

    /// Sends a request that is not queued (twin request, method answer).
    fn send_direct(&self, out: Outbound) -> Result<()> {
        let mut inner = self.inner.lock().expect("client lock");
        if inner.closed {
            return Err(Error::Unavailable("the client is shut down".into()));
        }
        if !inner.connected {
            return Err(Error::Unavailable("not connected to the hub".into()));
        }
        let qos = if out.qos == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        self.mqtt
            .try_publish(out.topic, qos, false, out.payload)
            .map_err(|e| Error::Unavailable(format!("cannot send: {e}")))?;
        inner.handed.push_back(Handed::Direct);
        Ok(())
    }

    /// Marks the client connected and (re)subscribes, at most
    /// [`DeviceLimits::max_filters_per_subscribe`](super::DeviceLimits) filters per SUBSCRIBE;
    /// returns how many SUBSCRIBE packets went out (the client is ready once each is
    /// acknowledged).
    fn on_connected(&self, session_present: bool) -> usize {
        let mut inner = self.inner.lock().expect("client lock");
        inner.connected = true;
        let subs = self.dialect.subscriptions(&self.device);
        let per_packet = self.dialect.limits().max_filters_per_subscribe.max(1);
        let mut packets = 0;
        for chunk in subs.chunks(per_packet) {
            let filters = chunk.iter().map(|(f, q)| {
                rumqttc::SubscribeFilter::new(
                    f.clone(),
                    if *q == 1 {
                        QoS::AtLeastOnce
                    } else {
                        QoS::AtMostOnce
                    },
                )
            });
            if self.mqtt.try_subscribe_many(filters).is_ok() {
                packets += 1;
            }
        }
        self.pump(&mut inner);
        drop(inner);
        self.set_state(ConnectionState::Connected { session_present });
        packets
    }

    /// After the connection dropped: every message in flight goes back to the queue (QoS 1)
    /// or is reported lost (QoS 0); pending requests fail.
    fn on_disconnected(&self) {
        let mut inner = self.inner.lock().expect("client lock");
        inner.connected = false;
        inner.handed.clear();
        inner.pkids.clear();
        let requeued = inner.queue.requeue_inflight();
        for lost in requeued.dropped {
            if let Some(w) = inner.waiters.remove(&lost.id()) {
                let _ = w.send(Err(Error::Unavailable(
                    "the connection dropped before this QoS 0 message was written".into(),
                )));
            }
        }
        // Twin requests fail fast; the caller may retry after the reconnect.
        inner.twin_waiters.clear();
    }

    fn on_outgoing_publish(&self, pkid: u16) {
        let mut inner = self.inner.lock().expect("client lock");
        match inner.handed.pop_front() {
            Some(Handed::Queued(id, 1)) => {
                inner.pkids.push_back((pkid, id));
            }
            Some(Handed::Queued(id, _)) => {
                inner.queue.acked(id);
                if let Some(w) = inner.waiters.remove(&id) {
                    let _ = w.send(Ok(()));
                }
                if inner.queue.is_empty() {
                    self.drained.notify_waiters();
                }
            }
            Some(Handed::Direct) | None => {}
        }
        self.pump(&mut inner);
    }

    fn on_puback(&self, pkid: u16) {
        let mut inner = self.inner.lock().expect("client lock");
        let found = inner.pkids.iter().position(|(p, _)| *p == pkid);
        if let Some(id) = found.and_then(|i| inner.pkids.remove(i)).map(|(_, id)| id) {
            inner.queue.acked(id);
            if let Some(w) = inner.waiters.remove(&id) {
                let _ = w.send(Ok(()));
            }
        }
        if inner.queue.is_empty() {
            self.drained.notify_waiters();
        }
        self.pump(&mut inner);
    }

    /// Acknowledges a QoS 1 message from the hub.
    fn ack(&self, p: &rumqttc::Publish) {
        if p.qos != QoS::AtMostOnce {
            let _ = self.mqtt.try_ack(p);
        }
    }

    /// Hands `item` to the application's stream and acknowledges the message — the
    /// acknowledgement first, so it is on its way before the application can act (for
    /// instance shut the client down). While the stream is full the message is not
    /// acknowledged: the hub redelivers it after a reconnect instead of the client dropping
    /// it.
    fn hand_over<T>(&self, tx: &mpsc::Sender<T>, p: &rumqttc::Publish, item: T) {
        if let Ok(permit) = tx.try_reserve() {
            self.ack(p);
            permit.send(item);
        } else {
            tracing::warn!(
                device = %self.device,
                topic = %p.topic,
                "the application's stream is full: not acknowledged, the hub will redeliver"
            );
        }
    }

    /// Handles a message from the hub.
    fn on_message(self: &Arc<Self>, p: &rumqttc::Publish) {
        match self.dialect.classify(&self.device, &p.topic, &p.payload) {
            Inbound::Command(c) => self.hand_over(&self.commands_tx, p, c),
            Inbound::DesiredChange(d) => self.hand_over(&self.desired_tx, p, d),
            Inbound::Other { topic, payload } => {
                self.hand_over(&self.others_tx, p, (topic, payload))
            }
            Inbound::Notification { topic, payload } => {
                self.hand_over(&self.notifications_tx, p, (topic, payload))
            }
            Inbound::TwinResponse {
                request_id,
                status,
                body,
            }
            | Inbound::Response {
                request_id,
                status,
                body,
            }
            | Inbound::CertificateResponse {
                request_id,
                status,
                body,
            } => {
                self.ack(p);
                let waiter = self
                    .inner
                    .lock()
                    .expect("client lock")
                    .twin_waiters
                    .remove(&request_id);
                if let Some(w) = waiter {
                    let _ = w.answer.send((status, body));
                }
            }
            Inbound::MethodRequest(request) => {
                self.ack(p);
                self.clone().answer_method(request);
            }
        }
    }

    /// Runs the handler for a method call in its own task, under its timeout, and answers.
    fn answer_method(self: Arc<Self>, request: MethodRequest) {
        let handler = self
            .methods
            .lock()
            .expect("methods lock")
            .get(&request.name)
            .cloned();
        tokio::spawn(async move {
            let response = match handler {
                None => MethodResponse::new(
                    404,
                    serde_json::json!({"error": format!("no handler for method {:?}", request.name)}),
                ),
                Some((handler, timeout)) => {
                    let call = tokio::spawn(handler(request.payload.clone()));
                    let abort = call.abort_handle();
                    match tokio::time::timeout(timeout, call).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) if e.is_panic() => MethodResponse::new(
                            500,
                            serde_json::json!({"error": "the method handler panicked"}),
                        ),
                        Ok(Err(_)) => MethodResponse::new(
                            500,
                            serde_json::json!({"error": "the method handler was cancelled"}),
                        ),
                        Err(_) => {
                            abort.abort();
                            MethodResponse::new(
                                504,
                                serde_json::json!({"error": format!("the method handler took longer than {timeout:?}")}),
                            )
                        }
                    }
                }
            };
            if let Ok(out) = self
                .dialect
                .method_response(&self.device, &request, &response)
            {
                let _ = self.send_direct(out);
            }
        });
    }

    fn request_id(&self) -> String {
        format!(
            "{}{}",
            self.request_prefix,
            self.next_request.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Sends a request (twin, certificate) and waits for its answer.
    async fn request(&self, request_id: String, out: Outbound) -> Result<(u16, Bytes)> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .lock()
            .expect("client lock")
            .twin_waiters
            .insert(request_id.clone(), TwinWaiter { answer: tx });
        if let Err(e) = self.send_direct(out) {
            self.inner
                .lock()
                .expect("client lock")
                .twin_waiters
                .remove(&request_id);
            return Err(e);
        }
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(Error::Unavailable(
                "the connection dropped before the service answered".into(),
            )),
            Err(_) => {
                self.inner
                    .lock()
                    .expect("client lock")
                    .twin_waiters
                    .remove(&request_id);
                Err(Error::Timeout(format!(
                    "no answer from the service within {:?}",
                    self.request_timeout
                )))
            }
        }
    }
}

/// The driver: polls rumqttc's event loop, reconnects with backoff, dispatches.
async fn drive(
    shared: Arc<Shared>,
    mut eventloop: EventLoop,
    mut backoff: Backoff,
    first: oneshot::Sender<Result<()>>,
) {
    let mut first = Some(first);
    let mut attempt: u32 = 0;
    // A switch applied, waiting for the outcome of the next connection attempt.
    let mut switching: Option<oneshot::Sender<Result<()>>> = None;
    // Connected, waiting for the SUBACK of the subscriptions made on connect.
    let mut ready_pending = 0usize;
    loop {
        // The password is minted anew for every attempt; a username alone (AWS's SDK
        // metrics) goes out without one (an empty password is not sent).
        let password = shared.dialect.password(&shared.device).ok().flatten();
        let user = shared.dialect.username(&shared.device);
        if password.is_some() || user.is_some() {
            eventloop.mqtt_options.set_credentials(
                user.unwrap_or_default(),
                password.map(|p| p.expose().to_string()).unwrap_or_default(),
            );
        }
        let event = eventloop.poll().await;
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                attempt = 0;
                backoff.connected(std::time::Instant::now());
                // Ready once the hub has the subscriptions too, so a command or method call
                // sent right after `connect()` returns reaches the device.
                ready_pending = shared.on_connected(ack.session_present);
                if ready_pending == 0 {
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Ok(()));
                    }
                    if let Some(tx) = switching.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => shared.on_message(&p),
            Ok(Event::Incoming(Packet::PubAck(ack))) => shared.on_puback(ack.pkid),
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ready_pending > 1 {
                    ready_pending -= 1;
                } else if ready_pending == 1 {
                    ready_pending = 0;
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Ok(()));
                    }
                    if let Some(tx) = switching.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    tracing::warn!(
                        device = %shared.device,
                        "the hub refused a subscription (its policy does not allow it)"
                    );
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => shared.on_outgoing_publish(pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let pending = shared.switch.lock().expect("switch lock").take();
                let Some(pending) = pending else { break };
                // A credential switch: drop the connection and reconnect at once with the
                // new TLS configuration. The offline queue and subscriptions carry over.
                let transport = same_transport(&eventloop.mqtt_options, pending.tls);
                eventloop.mqtt_options.set_transport(transport);
                eventloop.clean();
                eventloop.pending.clear();
                shared.on_disconnected();
                if let Some(previous) = switching.replace(pending.done) {
                    let _ = previous.send(Err(Error::Precondition(
                        "superseded by another credential switch".into(),
                    )));
                }
                shared.set_state(ConnectionState::Connecting { attempt: 0 });
            }
            Ok(_) => {}
            Err(e) => {
                // fleetkit resends from its own queue: drop rumqttc's copies.
                eventloop.pending.clear();
                let was_connected = shared.inner.lock().expect("client lock").connected;
                shared.on_disconnected();
                let (error, refused) = connection_error(&e);
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(error));
                    return;
                }
                if let Some(tx) = switching.take() {
                    let _ = tx.send(Err(Error::clone_kind(&error)));
                }
                // A switch asked for while offline applies to the next attempt.
                if let Some(pending) = shared.switch.lock().expect("switch lock").take() {
                    let transport = same_transport(&eventloop.mqtt_options, pending.tls);
                    eventloop.mqtt_options.set_transport(transport);
                    switching = Some(pending.done);
                }
                if was_connected {
                    backoff.disconnected(std::time::Instant::now());
                }
                attempt = attempt.saturating_add(1);
                let delay = backoff.next_delay();
                shared.set_state(ConnectionState::Disconnected {
                    reason: error.to_string(),
                    refused,
                    retry_in: delay,
                    attempt,
                });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shared.shutdown.notified() => break,
                }
                shared.set_state(ConnectionState::Connecting { attempt });
            }
        }
    }
    let mut inner = shared.inner.lock().expect("client lock");
    inner.closed = true;
    inner.connected = false;
    for (_, w) in inner.waiters.drain() {
        let _ = w.send(Err(Error::Unavailable("the client shut down".into())));
    }
    drop(inner);
    shared.set_state(ConnectionState::Closed);
}

/// A message's acknowledgement, to await later (see [`DeviceClient::queue_telemetry`]).
#[derive(Debug)]
pub struct Receipt {
    rx: Option<oneshot::Receiver<Result<()>>>,
}

impl Receipt {
    /// Waits until the hub acknowledged the message (QoS 1) or it was written (QoS 0).
    /// An error says it was evicted from a full queue, or the client shut down first.
    pub async fn acknowledged(self) -> Result<()> {
        match self.rx {
            None => Ok(()),
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Err(Error::Unavailable("the client shut down".into()))),
        }
    }
}

/// The client on the device: telemetry, commands, twin, methods — the same code whichever
/// [`Dialect`] (cloud) is behind it.
///
/// ```no_run
/// # async fn f(hub: &fleetkit::local::LocalHub, credential: fleetkit::identity::X509Credential) -> fleetkit::Result<()> {
/// use fleetkit::device::{DeviceClient, MethodResponse, NativeDialect, Telemetry};
/// use fleetkit::identity::DeviceId;
///
/// let dialect = NativeDialect::new("localhost", hub.mqtt_addr().port(), hub.ca_certificate());
/// let client = DeviceClient::builder(dialect, DeviceId::new("sensor-1")?)
///     .credential(credential)
///     .connect()
///     .await?;
/// client.send_telemetry(Telemetry::new(r#"{"temp": 21.5}"#)).await?; // waits for the PUBACK
/// client.on_method("reboot", |_args| async { MethodResponse::ok(serde_json::json!({"in": 5})) });
/// let version = client.twin().report(serde_json::json!({"firmware": "1.2.0"})).await?;
/// let mut commands = client.commands()?;
/// while let Some(command) = commands.recv().await {
///     println!("{} {:?}", command.name, command.payload);
/// }
/// client.shutdown(std::time::Duration::from_secs(5)).await;
/// # let _ = version; Ok(()) }
/// ```
pub struct DeviceClient {
    shared: Arc<Shared>,
    driver: Mutex<Option<JoinHandle<()>>>,
    commands: Mutex<Option<mpsc::Receiver<Command>>>,
    desired: Mutex<Option<mpsc::Receiver<DesiredChange>>>,
    others: Mutex<Option<mpsc::Receiver<(String, Bytes)>>>,
    notifications: Mutex<Option<mpsc::Receiver<(String, Bytes)>>>,
    method_timeout: Duration,
}

impl std::fmt::Debug for DeviceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceClient")
            .field("dialect", &self.shared.dialect.name())
            .field("device", &self.shared.device)
            .field("state", &*self.shared.state.borrow())
            .finish_non_exhaustive()
    }
}

fn take<T>(slot: &Mutex<Option<T>>, what: &str) -> Result<T> {
    slot.lock()
        .expect("slot lock")
        .take()
        .ok_or_else(|| Error::Precondition(format!("{what} was already taken (there is one)")))
}

impl DeviceClient {
    /// A builder for device `device` speaking `dialect`.
    pub fn builder(dialect: impl Dialect, device: DeviceId) -> DeviceClientBuilder {
        Self::builder_shared(Arc::new(dialect), device)
    }

    /// [`builder`](Self::builder) for a dialect already behind an `Arc`.
    pub fn builder_shared(dialect: Arc<dyn Dialect>, device: DeviceId) -> DeviceClientBuilder {
        DeviceClientBuilder {
            dialect,
            device,
            credential: None,
            backoff: BackoffConfig::default(),
            queue: QueueLimits::default(),
            overflow: Overflow::default(),
            keep_alive: Duration::from_secs(30),
            persistent_session: true,
            request_timeout: Duration::from_secs(10),
            method_timeout: Duration::from_secs(30),
            window: 64,
            connect_timeout: Duration::from_secs(10),
            tcp_nodelay: true,
        }
    }

    /// The device this client is.
    pub fn device(&self) -> &DeviceId {
        &self.shared.device
    }

    /// The dialect's capabilities.
    pub fn capabilities(&self) -> super::Capabilities {
        self.shared.dialect.capabilities()
    }

    fn require(&self, feature: Feature) -> Result<()> {
        self.shared
            .capabilities
            .require(feature, self.shared.dialect.name())
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.shared.state.borrow().clone()
    }

    /// A stream of connection states (each change; a slow reader sees the latest).
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.subscribe()
    }

    /// Validates telemetry and puts it in the offline queue; it is sent as soon as the
    /// connection allows. Returns at once with a [`Receipt`] for its acknowledgement.
    ///
    /// Errors (nothing queued): invalid property names or too many, payload or topic over
    /// the dialect's limits ([`Error::InvalidInput`]), an unsupported QoS or properties
    /// ([`Error::NotSupported`]), a full queue under [`Overflow::Error`] or
    /// [`Overflow::DropNewest`] ([`Error::Unavailable`]), a shut-down client.
    pub fn queue_telemetry(&self, telemetry: Telemetry) -> Result<Receipt> {
        self.require(Feature::Telemetry)?;
        let limits = &self.shared.limits;
        match telemetry.qos {
            0 => {}
            1 => self.require(Feature::AtLeastOnce)?,
            q => {
                return Err(Error::invalid(
                    "qos",
                    format!("QoS {q} is not supported; use 0 or 1"),
                ));
            }
        }
        if !telemetry.properties.is_empty() {
            self.require(Feature::TelemetryProperties)?;
        }
        if telemetry.properties.len() > limits.max_properties {
            return Err(Error::invalid(
                "properties",
                format!(
                    "{} properties; the {} dialect allows {}",
                    telemetry.properties.len(),
                    self.shared.dialect.name(),
                    limits.max_properties
                ),
            ));
        }
        if let Some((bad, _)) = telemetry
            .properties
            .iter()
            .find(|(k, _)| !valid_property_name(k))
        {
            return Err(Error::invalid(
                "properties",
                format!("invalid property name {bad:?}: use 1-64 of A-Z a-z 0-9 - _ ."),
            ));
        }
        if telemetry.payload.len() > limits.max_payload {
            return Err(Error::invalid(
                "payload",
                format!(
                    "{} bytes; the {} dialect allows {}",
                    telemetry.payload.len(),
                    self.shared.dialect.name(),
                    limits.max_payload
                ),
            ));
        }
        let topic = match (&self.shared.plain_topic, telemetry.properties.is_empty()) {
            (Some(t), true) => t.clone(),
            _ => self
                .shared
                .dialect
                .telemetry_topic(&self.shared.device, &telemetry.properties)?,
        };
        if topic.len() > limits.max_topic_len {
            return Err(Error::invalid(
                "properties",
                format!(
                    "the topic would be {} bytes; the {} dialect allows {}",
                    topic.len(),
                    self.shared.dialect.name(),
                    limits.max_topic_len
                ),
            ));
        }
        let mut inner = self.shared.inner.lock().expect("client lock");
        if inner.closed {
            return Err(Error::Unavailable("the client is shut down".into()));
        }
        let message = QueuedMessage::new(topic, telemetry.payload, telemetry.qos);
        let id = match inner.queue.push(message)? {
            Pushed::Queued { id, evicted } => {
                for old in evicted {
                    if let Some(w) = inner.waiters.remove(&old.id()) {
                        let _ = w.send(Err(Error::Unavailable(
                            "evicted from the full offline queue by newer telemetry".into(),
                        )));
                    }
                }
                id
            }
            Pushed::Refused(_) => {
                return Err(Error::Unavailable(
                    "the offline queue is full; the message was not queued".into(),
                ));
            }
        };
        let (tx, rx) = oneshot::channel();
        inner.waiters.insert(id, tx);
        self.shared.pump(&mut inner);
        Ok(Receipt { rx: Some(rx) })
    }

    /// Sends telemetry and waits until the hub acknowledged it (QoS 1) or it was written
    /// (QoS 0). While offline this waits for the reconnect: the message is queued, not lost.
    pub async fn send_telemetry(&self, telemetry: Telemetry) -> Result<()> {
        self.queue_telemetry(telemetry)?.acknowledged().await
    }

    /// Messages waiting in the offline queue or in flight.
    pub fn queued(&self) -> usize {
        self.shared.inner.lock().expect("client lock").queue.len()
    }

    /// Waits until every queued message is acknowledged, or `timeout` passes; returns how many
    /// are still queued.
    pub async fn flush(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.drained.notified();
            let left = self.queued();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.queued();
            }
        }
    }

    /// The stream of commands from the cloud (there is one; a second call is
    /// [`Error::Precondition`]). While the stream is full, commands are not acknowledged, so
    /// the hub redelivers them after a reconnect instead of their being lost.
    pub fn commands(&self) -> Result<mpsc::Receiver<Command>> {
        self.require(Feature::Commands)?;
        take(&self.commands, "the command stream")
    }

    /// Messages on topics the dialect does not interpret (there is one stream).
    pub fn other_messages(&self) -> Result<mpsc::Receiver<(String, Bytes)>> {
        take(&self.others, "the stream of other messages")
    }

    /// The stream of backend-service notifications (`(topic, payload)`, e.g. AWS jobs'
    /// `notify-next`), for backend-specific clients such as
    /// [`aws::Jobs`](crate::aws) to parse. There is one; a second call is
    /// [`Error::Precondition`].
    pub fn notifications(&self) -> Result<mpsc::Receiver<(String, Bytes)>> {
        take(&self.notifications, "the stream of notifications")
    }

    /// A fresh request id, unique for this client, for a backend-specific request.
    pub fn new_request_id(&self) -> String {
        self.shared.request_id()
    }

    /// Sends a backend-specific request `out` (which carries `request_id` where the backend
    /// expects it) and waits for the answer the dialect classifies as an
    /// [`Inbound::Response`](super::Inbound::Response) with that id: `(status, body)`. The
    /// extension point for services beyond telemetry, twin and methods (AWS jobs, …).
    ///
    /// Errors: [`Error::Timeout`] after the request timeout, [`Error::Unavailable`] when
    /// offline or the connection drops first.
    pub async fn request(&self, request_id: String, out: Outbound) -> Result<(u16, Bytes)> {
        self.shared.request(request_id, out).await
    }

    /// The twin: get, report, desired changes.
    pub fn twin(&self) -> TwinClient<'_> {
        TwinClient { client: self }
    }

    /// Answers direct method `name` with `handler` (replacing any earlier one), under the
    /// builder's default method timeout. A handler that panics is answered 500, one that
    /// overruns 504; methods without a handler 404. The client stays usable either way.
    pub fn on_method<F, Fut>(&self, name: &str, handler: F)
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = MethodResponse> + Send + 'static,
    {
        self.on_method_with_timeout(name, self.method_timeout, handler);
    }

    /// [`on_method`](Self::on_method) with its own timeout.
    pub fn on_method_with_timeout<F, Fut>(&self, name: &str, timeout: Duration, handler: F)
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = MethodResponse> + Send + 'static,
    {
        let handler: MethodHandler = Arc::new(move |args| Box::pin(handler(args)));
        self.shared
            .methods
            .lock()
            .expect("methods lock")
            .insert(name.to_string(), (handler, timeout));
    }

    /// Asks the service for a certificate for `csr_pem` (a CSR for this device's own id) over
    /// the current authenticated connection. The new certificate is active at once; the old
    /// one stays active until [`confirm_certificate`](Self::confirm_certificate).
    pub async fn request_certificate(&self, csr_pem: &str) -> Result<super::IssuedCertificate> {
        self.require(Feature::CertificateRotation)?;
        let shared = &self.shared;
        let rid = shared.request_id();
        let out = shared
            .dialect
            .certificate_request(&shared.device, &rid, csr_pem)?;
        let (status, body) = shared.request(rid, out).await?;
        shared.dialect.parse_certificate(status, &body)
    }

    /// Confirms, over a connection authenticated with the new certificate `new_id`, that it
    /// works; the service then retires `retire_id` (its connections are closed).
    pub async fn confirm_certificate(&self, new_id: &str, retire_id: &str) -> Result<()> {
        self.require(Feature::CertificateRotation)?;
        let shared = &self.shared;
        let rid = shared.request_id();
        let out = shared
            .dialect
            .certificate_confirm(&shared.device, &rid, new_id, retire_id)?;
        let (status, body) = shared.request(rid, out).await?;
        shared.dialect.parse_certificate(status, &body).map(|_| ())
    }

    /// Switches the running client to `credential`: it disconnects and reconnects at once
    /// with it, keeping its offline queue, subscriptions and streams. Returns when the hub
    /// accepted the new credential, or the error it answered (the client then keeps retrying
    /// with the new credential under backoff until switched again — switch back to roll
    /// back).
    pub async fn switch_credential(&self, credential: &X509Credential) -> Result<()> {
        let tls = tls_config(&self.shared.endpoint, Some(credential))?;
        let (tx, rx) = oneshot::channel();
        let connected = {
            let inner = self.shared.inner.lock().expect("client lock");
            if inner.closed {
                return Err(Error::Unavailable("the client is shut down".into()));
            }
            inner.connected
        };
        *self.shared.switch.lock().expect("switch lock") = Some(PendingSwitch { tls, done: tx });
        if connected {
            self.shared
                .mqtt
                .try_disconnect()
                .map_err(|e| Error::Unavailable(format!("cannot switch: {e}")))?;
        }
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Unavailable("the client shut down".into())),
            Err(_) => Err(Error::Timeout(
                "the switch to the new credential did not complete in 30 s".into(),
            )),
        }
    }

    /// Sends what is queued for up to `drain` (only while connected), disconnects cleanly
    /// and stops. Returns how many queued messages were not acknowledged (they are lost with
    /// the client; keep `drain` long enough, or persist them yourself).
    pub async fn shutdown(&self, drain: Duration) -> usize {
        let connected = self.shared.inner.lock().expect("client lock").connected;
        let left = if connected {
            self.flush(drain).await
        } else {
            self.queued()
        };
        let _ = self.shared.mqtt.try_disconnect();
        let driver = self.driver.lock().expect("driver lock").take();
        if let Some(driver) = driver {
            let abort = driver.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), driver)
                .await
                .is_err()
            {
                self.shared.shutdown.notify_waiters();
                abort.abort();
            }
        }
        let mut inner = self.shared.inner.lock().expect("client lock");
        inner.closed = true;
        for (_, w) in inner.waiters.drain() {
            let _ = w.send(Err(Error::Unavailable("the client shut down".into())));
        }
        drop(inner);
        self.shared.set_state(ConnectionState::Closed);
        left
    }
}

impl Drop for DeviceClient {
    fn drop(&mut self) {
        if let Some(driver) = self.driver.lock().expect("driver lock").take() {
            driver.abort();
        }
    }
}

/// The device's twin, through its [`DeviceClient`] (see [`DeviceClient::twin`]).
#[derive(Debug)]
pub struct TwinClient<'a> {
    client: &'a DeviceClient,
}

impl TwinClient<'_> {
    /// Fetches the twin from the hub.
    pub async fn get(&self) -> Result<TwinDocument> {
        self.client.require(Feature::Twin)?;
        let shared = &self.client.shared;
        let rid = shared.request_id();
        let out = shared.dialect.twin_get(&shared.device, &rid)?;
        let (status, body) = shared.request(rid, out).await?;
        if (200..300).contains(&status) {
            shared.dialect.parse_twin_document(&body)
        } else {
            Err(shared.dialect.twin_error(&shared.device, status, &body))
        }
    }

    /// Reports properties (a JSON object, merged into reported; `null` deletes). Returns the
    /// twin's new version.
    pub async fn report(&self, patch: Value) -> Result<u64> {
        self.report_inner(patch, None).await
    }

    /// Reports properties only if the twin is still at `expected_version`;
    /// [`Error::Conflict`] otherwise, and nothing changes.
    pub async fn report_if_version(&self, patch: Value, expected_version: u64) -> Result<u64> {
        self.client.require(Feature::TwinVersioning)?;
        self.report_inner(patch, Some(expected_version)).await
    }

    async fn report_inner(&self, patch: Value, expected: Option<u64>) -> Result<u64> {
        self.client.require(Feature::Twin)?;
        let Value::Object(patch) = patch else {
            return Err(Error::invalid("patch", "must be a JSON object"));
        };
        if patch.is_empty() {
            return Err(Error::invalid("patch", "is empty"));
        }
        let shared = &self.client.shared;
        let rid = shared.request_id();
        let out = shared
            .dialect
            .twin_report(&shared.device, &rid, &patch, expected)?;
        let (status, body) = shared.request(rid, out).await?;
        if (200..300).contains(&status) {
            return shared.dialect.parse_twin_reported(&body);
        }
        match shared.dialect.twin_error(&shared.device, status, &body) {
            // Some clouds (AWS) say only "Version conflict": fill in what the caller
            // expected and, with one more read, the version the twin is at now.
            Error::Conflict { what, current, .. } if current == 0 && expected.is_some() => {
                let current = self.get().await.map(|d| d.version()).unwrap_or(0);
                Err(Error::Conflict {
                    what,
                    expected: expected.unwrap_or(0),
                    current,
                })
            }
            other => Err(other),
        }
    }

    /// The stream of desired-property changes (there is one).
    pub fn desired_changes(&self) -> Result<mpsc::Receiver<DesiredChange>> {
        self.client.require(Feature::DesiredNotifications)?;
        take(&self.client.desired, "the desired-change stream")
    }
}
