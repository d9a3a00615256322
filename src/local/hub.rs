//! [`LocalHub`]: builder, handle, admin operations and events.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;

use super::broker::{BrokerState, Limits, connection};
use super::dialect::{HubDialect, MethodResponse, NativeHubDialect, Outbox, Transport};
use super::persist::DataDir;
use super::registry::{CertificateState, DeviceRecord, Registry};
use super::tls::{CaStatus, CertificateStatus, TrustStore};
use crate::identity::{DeviceId, Signer, SoftwareKey, X509Credential};
use crate::pki::{CaOptions, Certificate, CertificateAuthority, Crl, DeviceCertOptions};
use crate::policy::{AttachTarget, Partition, PolicyDocument};
use crate::{Error, Result};

/// Something that happened in the hub: the stream behind [`LocalHub::events`], also published
/// as JSON (QoS 0) on `$fleetkit/events/<kind>` (`connected`, `disconnected`, `auth_failure`,
/// `policy_denied`, `messages_dropped`, `status_changed`) to clients whose policy allows subscribing to and
/// receiving those topics.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HubEvent {
    /// A client connected.
    Connected {
        /// MQTT client id.
        client_id: String,
        /// The registry device it authenticated as.
        device: String,
        /// Whether a persistent session was resumed.
        session_present: bool,
    },
    /// A client's connection ended.
    Disconnected {
        /// MQTT client id.
        client_id: String,
        /// Why.
        reason: String,
    },
    /// A client could not be authenticated.
    AuthFailure {
        /// The client id it asked for.
        client_id: String,
        /// Why.
        reason: String,
    },
    /// The policy engine refused something; the explanation names the deciding statement.
    PolicyDenied {
        /// The client refused.
        client_id: String,
        /// The decision's explanation.
        explanation: String,
    },
    /// Deliveries were dropped: QoS 0 to an offline client, or a subscriber's bounded queue was
    /// full (a slow consumer). Memory stays bounded; this says what it cost.
    MessagesDropped {
        /// The topic of the dropped message.
        topic: String,
        /// How many subscribers did not get it.
        subscribers: usize,
    },
    /// A device certificate's or CA's status changed, or a device was enabled or disabled.
    StatusChanged {
        /// What changed, e.g. `certificate 3f… revoked`.
        what: String,
        /// Live connections closed because of it.
        connections_closed: usize,
    },
}

pub(crate) struct Shared {
    pub(crate) registry: RwLock<Registry>,
    pub(crate) broker: Mutex<BrokerState>,
    pub(crate) limits: Limits,
    /// Wakes the tasks waiting in [`Shared::stopped`].
    shutdown: Notify,
    /// Set once the hub is stopping (read by [`Shared::stopped`]).
    stopping: std::sync::atomic::AtomicBool,
    /// Client ids taken over by another device or certificate: the identities seen and the
    /// number of takeovers (Device Defender's CONFLICTING_CLIENT_IDS_CHECK).
    pub(crate) takeovers:
        Mutex<std::collections::HashMap<String, (std::collections::BTreeSet<String>, u32)>>,
    pub(crate) dialect: Arc<dyn HubDialect>,
    pub(crate) outbox: Outbox,
    /// The hub's CA (issues server and device certificates).
    pub(crate) ca: Arc<CertificateAuthority>,
    trust: Arc<TrustStore>,
    events: broadcast::Sender<HubEvent>,
    next_id: AtomicU64,
    persist: Option<Persistence>,
}

/// The data directory and the flusher's bookkeeping (group commit of broker state).
struct Persistence {
    dir: DataDir,
    /// Flush requests made so far.
    requested: AtomicU64,
    /// The highest request number covered by a completed flush.
    done: watch::Sender<u64>,
    wake: Notify,
}

impl HubEvent {
    /// The event's kind, as in its topic `$fleetkit/events/<kind>`.
    pub fn kind(&self) -> &'static str {
        match self {
            HubEvent::Connected { .. } => "connected",
            HubEvent::Disconnected { .. } => "disconnected",
            HubEvent::AuthFailure { .. } => "auth_failure",
            HubEvent::PolicyDenied { .. } => "policy_denied",
            HubEvent::MessagesDropped { .. } => "messages_dropped",
            HubEvent::StatusChanged { .. } => "status_changed",
        }
    }
}

/// Publishes events on `$fleetkit/events/<kind>` until the hub goes away. Runs as its own task
/// because events are raised while the broker lock is held.
async fn publish_events(shared: std::sync::Weak<Shared>, mut rx: broadcast::Receiver<HubEvent>) {
    loop {
        let event = match rx.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let Ok(json) = serde_json::to_vec(&event) else {
            continue;
        };
        let topic = format!("$fleetkit/events/{}", event.kind());
        let limits = shared.limits.clone();
        let mut state = shared.broker.lock().expect("broker lock");
        // A subscriber refused `iot:Receive` here raises no event: that would loop.
        state.route(&topic, &bytes::Bytes::from(json), 0, &limits, |_, _| {});
    }
}

impl Shared {
    /// Tells every task of the hub to stop.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.shutdown.notify_waiters();
    }

    /// Resolves once the hub is stopping — also for a task that starts waiting after
    /// [`stop`](Self::stop) (a bare `Notify::notified` would miss that and wait forever).
    pub(crate) async fn stopped(&self) {
        loop {
            let notified = self.shutdown.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn event(&self, event: HubEvent) {
        tracing::debug!(?event, "hub event");
        let _ = self.events.send(event);
    }

    /// Waits until the broker state as it is now is on disk (no-op without a data directory).
    pub(crate) async fn durable(&self) {
        let Some(p) = &self.persist else { return };
        let want = p.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = p.done.subscribe();
        p.wake.notify_one();
        let _ = rx.wait_for(|done| *done >= want).await;
    }

    /// Asks for a flush without waiting for it.
    pub(crate) fn request_flush(&self) {
        if let Some(p) = &self.persist {
            p.requested.fetch_add(1, Ordering::SeqCst);
            p.wake.notify_one();
        }
    }

    /// Writes the broker state now; returns the request number it covers.
    fn flush_broker(&self) -> Result<()> {
        let Some(p) = &self.persist else {
            return Ok(());
        };
        let target = p.requested.load(Ordering::SeqCst);
        let snapshot = {
            let state = self.broker.lock().expect("broker lock");
            DataDir::capture_broker(&state)
        };
        let result = p.dir.save_broker(&snapshot);
        if let Err(e) = &result {
            self.event(HubEvent::StatusChanged {
                what: format!("saving broker state failed: {e}"),
                connections_closed: 0,
            });
        }
        p.done.send_replace(target);
        result
    }

    /// Saves the dialect's service state (no-op without a data directory or state).
    pub(crate) fn save_dialect_state(&self) -> Result<()> {
        let Some(p) = &self.persist else {
            return Ok(());
        };
        match self.dialect.save_state() {
            Some(state) => p.dir.save_dialect(self.dialect.name(), &state),
            None => Ok(()),
        }
    }

    /// Saves `state` as the dialect's service state (no-op without a data directory).
    pub(crate) fn save_dialect_value(&self, state: &serde_json::Value) -> Result<()> {
        match &self.persist {
            Some(p) => p.dir.save_dialect(self.dialect.name(), state),
            None => Ok(()),
        }
    }

    /// Saves the registry and trust store after an admin change.
    fn save_admin(&self) -> Result<()> {
        let Some(p) = &self.persist else {
            return Ok(());
        };
        p.dir
            .save_registry(&self.registry.read().expect("registry lock"))?;
        p.dir.save_trust(&self.trust)
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn policy_generation(&self) -> u64 {
        self.registry
            .read()
            .expect("registry lock")
            .policies()
            .generation()
    }

    /// Registers `certificate` for `device` as ACTIVE; returns its id.
    pub(crate) fn register_certificate(
        &self,
        certificate: Certificate,
        device: &str,
    ) -> Result<String> {
        let id = self
            .registry
            .write()
            .expect("registry lock")
            .register_certificate(certificate, device, CertificateState::Active)?;
        self.save_admin()?;
        Ok(id)
    }

    /// Changes a device certificate's state, closing its connections unless ACTIVE.
    pub(crate) fn set_certificate_state(&self, id: &str, state: CertificateState) -> Result<usize> {
        self.registry
            .write()
            .expect("registry lock")
            .set_certificate_state(id, state)?;
        self.save_admin()?;
        let closed = if state == CertificateState::Active {
            0
        } else {
            self.kill_where(|e| e.cert_id == id)
        };
        self.event(HubEvent::StatusChanged {
            what: format!("certificate {id} {state:?}"),
            connections_closed: closed,
        });
        Ok(closed)
    }

    /// Creates `device`, registers `certificate` for it ACTIVE and attaches `policy` to it —
    /// all or nothing (checked first, then applied under one registry lock).
    pub(crate) fn provision_device(
        &self,
        device: DeviceRecord,
        certificate: Certificate,
        policy: Option<&str>,
    ) -> Result<String> {
        let id = {
            let mut registry = self.registry.write().expect("registry lock");
            if registry.device(&device.id).is_some() {
                return Err(Error::AlreadyExists {
                    what: "device",
                    id: device.id.clone(),
                });
            }
            if let Some(name) = policy {
                registry.policies().policy(name)?;
            }
            let fingerprint = certificate.fingerprint_sha256();
            if registry.certificate(&fingerprint).is_some() {
                return Err(Error::AlreadyExists {
                    what: "certificate",
                    id: fingerprint,
                });
            }
            let name = device.id.clone();
            registry.create_device(device)?;
            let id = registry.register_certificate(certificate, &name, CertificateState::Active)?;
            if let Some(policy) = policy {
                registry.attach_policy(policy, AttachTarget::Device(name))?;
            }
            id
        };
        self.save_admin()?;
        Ok(id)
    }

    /// Closes every live connection `matches` selects; returns how many.
    fn kill_where(&self, matches: impl Fn(&super::broker::ConnectionEntry) -> bool) -> usize {
        let state = self.broker.lock().expect("broker lock");
        let mut n = 0;
        for entry in state.connections.values().filter(|e| matches(e)) {
            entry.kill.notify_one();
            n += 1;
        }
        n
    }
}

/// The registry's answer to "may this device certificate connect?", asked during the TLS
/// handshake so a refused certificate never gets as far as MQTT.
#[derive(Debug)]
struct RegistryStatus(std::sync::Weak<Shared>);

impl CertificateStatus for RegistryStatus {
    fn check(&self, leaf: &Certificate) -> std::result::Result<(), rustls::CertificateError> {
        let Some(shared) = self.0.upgrade() else {
            return Err(rustls::CertificateError::ApplicationVerificationFailure);
        };
        let registry = shared.registry.read().expect("registry lock");
        match registry.admit(leaf) {
            Ok(_) => Ok(()),
            Err(Error::Revoked(_)) => Err(rustls::CertificateError::Revoked),
            Err(_) => Err(rustls::CertificateError::ApplicationVerificationFailure),
        }
    }
}

/// Configures and starts a [`LocalHub`].
pub struct LocalHubBuilder {
    bind: SocketAddr,
    host_names: Vec<String>,
    ca: Option<CertificateAuthority>,
    limits: Option<Limits>,
    partition: Partition,
    data_dir: Option<std::path::PathBuf>,
    websocket: bool,
    https: bool,
    tcp: Option<SocketAddr>,
    dialect: Arc<dyn HubDialect>,
}

impl std::fmt::Debug for LocalHubBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHubBuilder")
            .field("bind", &self.bind)
            .field("host_names", &self.host_names)
            .field("limits", &self.limits)
            .field("data_dir", &self.data_dir)
            .field("websocket", &self.websocket)
            .field("https", &self.https)
            .field("tcp", &self.tcp)
            .field("dialect", &self.dialect.name())
            .finish_non_exhaustive()
    }
}

impl LocalHubBuilder {
    /// Keeps the hub's state in `dir` (created 0700 if missing): the hub CA, registry,
    /// registered CAs and CRLs, retained messages and persistent sessions with their queued
    /// QoS 1 messages survive a restart. Without it everything lives in memory.
    pub fn data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The address to listen on for MQTT over TLS (default `127.0.0.1:0`: any free port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// An extra name the server certificate covers (it always covers `localhost`,
    /// `127.0.0.1` and `::1`).
    pub fn host_name(mut self, name: &str) -> Self {
        self.host_names.push(name.to_string());
        self
    }

    /// The CA the hub issues its server certificate and device certificates from (default: a
    /// new root CA). It is also registered as a trusted device CA.
    pub fn ca(mut self, ca: CertificateAuthority) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Broker limits (default: the dialect's).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The dialect the hub speaks (default: [`NativeHubDialect`]).
    pub fn dialect(mut self, dialect: impl HubDialect) -> Self {
        self.dialect = Arc::new(dialect);
        self
    }

    /// Speaks `dialect`, which the caller keeps a handle to — for a dialect's own admin
    /// operations (AWS jobs, shadows by name):
    ///
    /// ```no_run
    /// # async fn f() -> fleetkit::Result<()> {
    /// use std::sync::Arc;
    /// use fleetkit::local::{LocalHub, dialect::aws::AwsHubDialect};
    /// let aws = Arc::new(AwsHubDialect::new());
    /// let hub = LocalHub::builder().dialect_shared(aws.clone()).start().await?;
    /// let doc = aws.shadow_document("thing-1", None);
    /// # let _ = (hub, doc); Ok(()) }
    /// ```
    pub fn dialect_shared(mut self, dialect: Arc<dyn HubDialect>) -> Self {
        self.dialect = dialect;
        self
    }

    /// Also serves MQTT over **plain TCP** at `addr` (port 0: any free port), for clients
    /// that cannot do TLS. Off by default. Without TLS there is no client certificate, so
    /// only a dialect with a password hook can admit anyone there; credentials cross the
    /// network in the clear, so keep it on loopback. See [`LocalHub::tcp_addr`].
    pub fn tcp(mut self, addr: SocketAddr) -> Self {
        self.tcp = Some(addr);
        self
    }

    /// Also serves MQTT over WebSocket (WSS, mutual TLS like the MQTT listener) on a second
    /// port of the same address, at paths `/mqtt` and `/$iothub/websocket` with sub-protocol
    /// `mqtt` (default off). See [`LocalHub::websocket_addr`].
    pub fn websocket(mut self, on: bool) -> Self {
        self.websocket = on;
        self
    }

    /// Also serves the HTTPS publish endpoint (AWS's `POST /topics/<topic>?qos=1`, mutual
    /// TLS) on a port of its own, as AWS does on 8443 (default off; the MQTT port serves it
    /// too, to clients offering ALPN `x-amzn-http-ca`). See [`LocalHub::https_addr`].
    pub fn https(mut self, on: bool) -> Self {
        self.https = on;
        self
    }

    /// Starts listening. Must be called inside a tokio runtime.
    pub async fn start(self) -> Result<LocalHub> {
        let dir = self.data_dir.as_deref().map(DataDir::open).transpose()?;
        let saved_ca = match &dir {
            Some(d) => d.load_ca()?,
            None => None,
        };
        let ca_is_new = self.ca.is_some() || saved_ca.is_none();
        let ca: CertificateAuthority = match (self.ca, saved_ca) {
            (Some(ca), _) | (None, Some(ca)) => ca,
            (None, None) => CertificateAuthority::new_root(
                &CaOptions::new("fleetkit local hub CA").with_organization("fleetkit"),
            )?,
        };
        let ca = Arc::new(ca);
        let trust = Arc::new(TrustStore::new());
        let registry = match &dir {
            Some(d) => d.load_registry(self.partition.clone())?,
            None => None,
        }
        .unwrap_or_else(|| Registry::new(self.partition.clone()));
        let trust_restored = match &dir {
            Some(d) => d.load_trust(&trust)?,
            None => false,
        };
        match trust.register_ca(ca.certificate().clone()) {
            Ok(()) => {}
            Err(Error::AlreadyExists { .. }) if trust_restored => {}
            Err(e) => return Err(e),
        }
        let broker = match &dir {
            Some(d) => d.load_broker(&registry)?,
            None => BrokerState::default(),
        };
        if let Some(d) = &dir
            && ca_is_new
        {
            d.save_ca(&ca)?;
        }
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        names.extend(self.host_names);
        let (server_chain, server_key) = super::tls::issue_server_certificate(&ca, &names)?;
        let (events, _) = broadcast::channel(1024);
        let limits = self.limits.unwrap_or_else(|| self.dialect.limits());
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| Shared {
            registry: RwLock::new(registry),
            broker: Mutex::new(broker),
            limits,
            shutdown: Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            takeovers: Mutex::new(std::collections::HashMap::new()),
            dialect: self.dialect.clone(),
            outbox: Outbox::from_weak(weak.clone()),
            ca: ca.clone(),
            trust: trust.clone(),
            events,
            next_id: AtomicU64::new(1),
            persist: dir.map(|dir| Persistence {
                dir,
                requested: AtomicU64::new(0),
                done: watch::channel(0).0,
                wake: Notify::new(),
            }),
        });
        shared.save_admin()?;
        if let Some(p) = &shared.persist
            && let Some(state) = p.dir.load_dialect(shared.dialect.name())?
        {
            shared.dialect.load_state(state)?;
        }
        shared.dialect.attach(shared.outbox.clone());
        tokio::spawn(publish_events(
            Arc::downgrade(&shared),
            shared.events.subscribe(),
        ));
        let flusher = shared.persist.is_some().then(|| {
            let shared = Arc::downgrade(&shared);
            tokio::spawn(async move {
                loop {
                    let Some(s) = shared.upgrade() else { break };
                    let wake = async {
                        if let Some(p) = &s.persist {
                            p.wake.notified().await;
                        }
                    };
                    tokio::select! {
                        _ = wake => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = s.stopped() => break,
                    }
                    let _ = s.flush_broker();
                }
            })
        });
        trust.set_status_hook(Arc::new(RegistryStatus(Arc::downgrade(&shared))));
        let https_config = if self.https {
            Some(super::tls::server_config(
                server_chain.clone(),
                server_key.clone(),
                trust.clone(),
                vec![b"http/1.1".to_vec()],
                false,
            )?)
        } else {
            None
        };
        let websocket_config = if self.websocket {
            // WebSocket clients (browsers, SDKs' WebSocket libraries) offer ALPN `http/1.1`.
            Some(super::tls::server_config(
                server_chain.clone(),
                server_key.clone(),
                trust.clone(),
                vec![b"http/1.1".to_vec()],
                self.dialect.accepts_clients_without_certificate(),
            )?)
        } else {
            None
        };
        let config = super::tls::server_config(
            server_chain,
            server_key,
            trust.clone(),
            vec![
                b"mqtt".to_vec(),
                b"x-amzn-mqtt-ca".to_vec(),
                super::https::ALPN_HTTP.to_vec(),
            ],
            self.dialect.accepts_clients_without_certificate(),
        )?;
        let sni = |c: Arc<rustls::ServerConfig>| {
            if self.dialect.requires_sni() {
                super::tls::require_sni(c)
            } else {
                c
            }
        };
        let config = sni(config);
        let https_config = https_config.map(sni);
        let websocket_config = websocket_config.map(sni);
        let listener = TcpListener::bind(self.bind)
            .await
            .map_err(|e| Error::io(format!("{}", self.bind), e))?;
        let addr = listener.local_addr()?;
        let (websocket_addr, websocket_task) =
            side_listener(self.bind, websocket_config, &shared, Transport::WebSocket).await?;
        let (https_addr, https_task) =
            side_listener(self.bind, https_config, &shared, Transport::Https).await?;
        let (tcp_addr, tcp_task) = match self.tcp {
            Some(bind) => {
                let listener = TcpListener::bind(bind)
                    .await
                    .map_err(|e| Error::io(format!("{bind}"), e))?;
                (
                    Some(listener.local_addr()?),
                    Some(spawn_tcp_listener(listener, shared.clone())),
                )
            }
            None => (None, None),
        };
        let task = spawn_listener(listener, config, shared.clone(), Transport::Tls);
        Ok(LocalHub {
            shared,
            ca,
            addr,
            task: Some(task),
            websocket_addr,
            websocket_task,
            https_addr,
            https_task,
            tcp_addr,
            tcp_task,
            flusher,
        })
    }
}

/// A listener on a free port of `bind`'s address serving `transport` with `config`, if
/// there is a config: its address and task.
async fn side_listener(
    bind: SocketAddr,
    config: Option<Arc<rustls::ServerConfig>>,
    shared: &Arc<Shared>,
    transport: Transport,
) -> Result<(Option<SocketAddr>, Option<JoinHandle<()>>)> {
    let Some(config) = config else {
        return Ok((None, None));
    };
    let bind = SocketAddr::new(bind.ip(), 0);
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| Error::io(format!("{bind}"), e))?;
    Ok((
        Some(listener.local_addr()?),
        Some(spawn_listener(listener, config, shared.clone(), transport)),
    ))
}

/// Accepts plain TCP connections on `listener` until shutdown and serves MQTT on each.
fn spawn_tcp_listener(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
                },
                _ = shared.stopped() => break,
            };
            let _ = tcp.set_nodelay(true);
            let shared = shared.clone();
            tokio::spawn(connection::serve(
                shared,
                tcp,
                Vec::new(),
                Transport::Tcp,
                Some(peer),
                None,
            ));
        }
    })
}

/// Accepts TLS connections on `listener` until shutdown and serves MQTT on each over
/// `transport`.
fn spawn_listener(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    transport: Transport,
) -> JoinHandle<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
                },
                _ = shared.stopped() => break,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let tls =
                    match tokio::time::timeout(shared.limits.connect_timeout, acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            shared.event(HubEvent::AuthFailure {
                                client_id: String::new(),
                                reason: format!("TLS handshake failed: {e}"),
                            });
                            return;
                        }
                        Err(_) => return,
                    };
                let chain = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|c| Certificate::from_der(c.as_ref()).ok())
                    .collect();
                let https = transport == Transport::Https
                    || tls.get_ref().1.alpn_protocol() == Some(super::https::ALPN_HTTP);
                if https {
                    return super::https::serve(shared, tls, chain).await;
                }
                match transport {
                    Transport::Tls | Transport::Tcp | Transport::Https => {
                        connection::serve(shared, tls, chain, Transport::Tls, Some(peer), None)
                            .await
                    }
                    Transport::WebSocket => {
                        let upgrade = tokio::time::timeout(
                            shared.limits.connect_timeout,
                            super::ws::accept(tls),
                        )
                        .await;
                        match upgrade {
                            Ok(Ok((ws, request))) => {
                                Box::pin(connection::serve(
                                    shared,
                                    ws,
                                    chain,
                                    Transport::WebSocket,
                                    Some(peer),
                                    Some(request),
                                ))
                                .await
                            }
                            Ok(Err(e)) => shared.event(HubEvent::AuthFailure {
                                client_id: String::new(),
                                reason: e.to_string(),
                            }),
                            Err(_) => {}
                        }
                    }
                }
            });
        }
    })
}

/// A cloud-side subscription to device messages (see [`LocalHub::subscribe`]).
pub struct HubSubscription {
    shared: std::sync::Weak<Shared>,
    key: String,
    rx: tokio::sync::mpsc::Receiver<super::broker::Delivery>,
}

impl std::fmt::Debug for HubSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSubscription").finish_non_exhaustive()
    }
}

/// A message a [`HubSubscription`] received.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubMessage {
    /// The topic it was published on.
    pub topic: String,
    /// Its payload.
    pub payload: bytes::Bytes,
    /// The QoS it was published with.
    pub qos: u8,
}

impl HubSubscription {
    /// The next message; `None` once the hub has shut down.
    pub async fn recv(&mut self) -> Option<HubMessage> {
        self.rx.recv().await.map(|d| HubMessage {
            topic: d.topic.to_string(),
            payload: d.payload,
            qos: d.qos,
        })
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<HubMessage> {
        self.rx.try_recv().ok().map(|d| HubMessage {
            topic: d.topic.to_string(),
            payload: d.payload,
            qos: d.qos,
        })
    }
}

impl Drop for HubSubscription {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut state = shared.broker.lock().expect("broker lock");
            state.sessions.remove(&self.key);
            state.subscriptions.remove_key(&self.key);
        }
    }
}

/// A running local hub. Dropping it stops the listener and closes every connection.
///
/// ```no_run
/// # async fn f() -> fleetkit::Result<()> {
/// use fleetkit::local::{DeviceRecord, LocalHub};
/// use fleetkit::policy::{AttachTarget, builtin};
///
/// let hub = LocalHub::builder().start().await?;
/// hub.put_policy("device", &builtin::azure_device())?;
/// hub.create_device(DeviceRecord::new("sensor-1"))?;
/// hub.attach_policy("device", AttachTarget::Device("sensor-1".into()))?;
/// let credential = hub.issue_device_credential("sensor-1")?;
/// println!("MQTT over TLS at {}, CA:\n{}", hub.mqtt_addr(), hub.ca_certificate().to_pem());
/// # let _ = credential; Ok(()) }
/// ```
pub struct LocalHub {
    shared: Arc<Shared>,
    ca: Arc<CertificateAuthority>,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
    websocket_addr: Option<SocketAddr>,
    websocket_task: Option<JoinHandle<()>>,
    https_addr: Option<SocketAddr>,
    https_task: Option<JoinHandle<()>>,
    tcp_addr: Option<SocketAddr>,
    tcp_task: Option<JoinHandle<()>>,
    flusher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LocalHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHub")
            .field("mqtt_addr", &self.addr)
            .field("websocket_addr", &self.websocket_addr)
            .field("ca", &self.ca.certificate().subject())
            .finish_non_exhaustive()
    }
}

impl LocalHub {
    /// A builder with defaults: `127.0.0.1:0`, a new CA, native limits, local partition.
    pub fn builder() -> LocalHubBuilder {
        LocalHubBuilder {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            host_names: Vec::new(),
            ca: None,
            limits: None,
            partition: Partition::local(),
            data_dir: None,
            websocket: false,
            https: false,
            tcp: None,
            dialect: Arc::new(NativeHubDialect::new()),
        }
    }

    /// Where MQTT over TLS listens.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where MQTT over WebSocket (WSS) listens, if the builder turned it on: clients connect
    /// to `wss://localhost:<port>/mqtt` offering sub-protocol `mqtt`.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.websocket_addr
    }

    /// Where the HTTPS publish endpoint listens, if the builder turned it on
    /// ([`LocalHubBuilder::https`]): `https://localhost:<port>/topics/<topic>?qos=1`.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// Where MQTT over plain TCP listens, if the builder asked for it
    /// ([`LocalHubBuilder::tcp`]).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The dialect the hub speaks.
    pub fn dialect(&self) -> &Arc<dyn HubDialect> {
        &self.shared.dialect
    }

    /// Sends a command (cloud-to-device message, QoS 1) to `device`. Returns how many
    /// sessions it reached, live or queued for an offline persistent session;
    /// [`Error::Unavailable`] if none subscribes to the device's commands.
    pub async fn send_command(
        &self,
        device: &str,
        name: &str,
        payload: impl Into<bytes::Bytes>,
    ) -> Result<usize> {
        self.shared
            .dialect
            .send_command(device, name, payload.into())
            .await
    }

    /// The device's twin as the hub holds it.
    pub fn twin(&self, device: &str) -> Result<crate::device::twin::TwinDocument> {
        self.shared.dialect.twin(device)
    }

    /// Changes the device's desired properties with a JSON merge patch (`null` deletes);
    /// with `expected_version` the change applies only if the twin is still at that version
    /// ([`Error::Conflict`] otherwise, and nothing changes). The device is notified.
    /// Returns the twin's new version.
    pub async fn update_desired(
        &self,
        device: &str,
        patch: serde_json::Value,
        expected_version: Option<u64>,
    ) -> Result<u64> {
        self.shared
            .dialect
            .update_desired(device, patch, expected_version)
            .await
    }

    /// Invokes direct method `method` on `device` and waits up to `timeout` for the answer.
    /// [`Error::Unavailable`] if the device is not connected or not listening for methods,
    /// [`Error::Timeout`] if it does not answer in time.
    pub async fn invoke_method(
        &self,
        device: &str,
        method: &str,
        payload: serde_json::Value,
        timeout: Duration,
    ) -> Result<MethodResponse> {
        self.shared
            .dialect
            .invoke_method(device, method, payload, timeout)
            .await
    }

    /// The hub's CA: clients trust it for the server certificate; it also issues devices.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The CA certificate clients put in their trust store.
    pub fn ca_certificate(&self) -> &Certificate {
        self.ca.certificate()
    }

    /// The registered device CAs and CRLs.
    pub fn trust_store(&self) -> &Arc<TrustStore> {
        &self.shared.trust
    }

    /// Events: connections, denials with explanations, status changes.
    pub fn events(&self) -> broadcast::Receiver<HubEvent> {
        self.shared.events.subscribe()
    }

    /// Registers a device.
    pub fn create_device(&self, device: DeviceRecord) -> Result<()> {
        self.shared
            .registry
            .write()
            .expect("registry lock")
            .create_device(device)?;
        self.shared.save_admin()
    }

    /// Enables or disables a device; disabling closes its live connections at once.
    pub fn set_device_enabled(&self, device: &str, enabled: bool) -> Result<usize> {
        self.shared
            .registry
            .write()
            .expect("registry lock")
            .set_device_enabled(device, enabled)?;
        self.shared.save_admin()?;
        let closed = if enabled {
            0
        } else {
            self.shared.kill_where(|e| e.device == device)
        };
        self.shared.event(HubEvent::StatusChanged {
            what: format!(
                "device {device} {}",
                if enabled { "enabled" } else { "disabled" }
            ),
            connections_closed: closed,
        });
        Ok(closed)
    }

    /// Puts `device` in exactly the thing groups `groups`; the policies of its new groups
    /// (and their parents) apply from its next action on, also on live connections.
    pub fn set_device_groups(&self, device: &str, groups: &[&str]) -> Result<()> {
        let mut unique: Vec<String> = Vec::new();
        for g in groups {
            if g.is_empty() || g.len() > 128 || g.contains(['/', '+', '#']) {
                return Err(Error::invalid(
                    "group",
                    format!("{g:?}: 1-128 characters, no '/', '+' or '#'"),
                ));
            }
            if !unique.iter().any(|u| u == g) {
                unique.push(g.to_string());
            }
        }
        self.shared
            .registry
            .write()
            .expect("registry lock")
            .set_device_groups(device, unique)?;
        self.shared.save_admin()
    }

    /// Registers `certificate` for `device` as ACTIVE; returns its id (SHA-256 fingerprint).
    pub fn register_certificate(&self, certificate: Certificate, device: &str) -> Result<String> {
        self.shared.register_certificate(certificate, device)
    }

    /// Changes a device certificate's state; anything but ACTIVE closes its live connections
    /// at once. Returns how many were closed.
    pub fn set_certificate_state(&self, id: &str, state: CertificateState) -> Result<usize> {
        self.shared.set_certificate_state(id, state)
    }

    /// Generates a key "on the device", issues its certificate from the hub CA, and registers
    /// it ACTIVE for `device` (which must exist). For tests and demos.
    pub fn issue_device_credential(&self, device: &str) -> Result<X509Credential> {
        let id = DeviceId::new(device)?;
        let key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256()?);
        let cert = self
            .ca
            .issue(&id, key.public_key_spki(), &DeviceCertOptions::default())?;
        self.register_certificate(cert.clone(), device)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.ca.chain_for_devices().iter().map(|c| c.der().clone()));
        X509Credential::new(chain, key)
    }

    /// Registers another CA whose device certificates the hub accepts (ACTIVE).
    pub fn register_ca(&self, ca: &Certificate) -> Result<()> {
        self.shared.trust.register_ca(ca.clone())?;
        self.shared.save_admin()
    }

    /// Changes a registered CA's status; anything but ACTIVE closes the live connections of
    /// devices whose certificates it issued.
    pub fn set_ca_status(&self, ca: &Certificate, status: CaStatus) -> Result<usize> {
        self.shared
            .trust
            .set_ca_status(&ca.fingerprint_sha256(), status)?;
        self.shared.save_admin()?;
        let subject = ca.subject_der().to_vec();
        let closed = if status == CaStatus::Active {
            0
        } else {
            self.shared.kill_where(|e| e.issuers.contains(&subject))
        };
        self.shared.event(HubEvent::StatusChanged {
            what: format!("CA {} {status:?}", ca.subject()),
            connections_closed: closed,
        });
        Ok(closed)
    }

    /// Adds a CRL (signed by a registered CA); certificates on it are refused from now on and
    /// their live connections closed.
    pub fn add_crl(&self, crl: Crl) -> Result<usize> {
        let revoked: Vec<Vec<u8>> = crl.entries().iter().map(|r| r.serial.clone()).collect();
        self.shared.trust.add_crl(crl)?;
        self.shared.save_admin()?;
        let registry = self.shared.registry.read().expect("registry lock");
        let closed = self.shared.kill_where(|e| {
            registry.certificate(&e.cert_id).is_some_and(|r| {
                revoked
                    .iter()
                    .any(|s| s.as_slice() == r.certificate.serial())
            })
        });
        drop(registry);
        Ok(closed)
    }

    /// Stores a policy (a new version if it exists). Connections see it on their next action.
    pub fn put_policy(&self, name: &str, document: &PolicyDocument) -> Result<u32> {
        let version = self
            .shared
            .registry
            .write()
            .expect("registry lock")
            .put_policy(name, document)?;
        self.shared.save_admin()?;
        Ok(version)
    }

    /// Attaches a policy to a certificate, device, group or scope.
    pub fn attach_policy(&self, name: &str, target: AttachTarget) -> Result<()> {
        self.shared
            .registry
            .write()
            .expect("registry lock")
            .attach_policy(name, target)?;
        self.shared.save_admin()
    }

    /// Detaches a policy from a certificate, device, group or scope.
    pub fn detach_policy(&self, name: &str, target: &AttachTarget) -> Result<()> {
        self.shared
            .registry
            .write()
            .expect("registry lock")
            .detach_policy(name, target)?;
        self.shared.save_admin()
    }

    /// Reads the registry.
    pub fn with_registry<T>(&self, f: impl FnOnce(&Registry) -> T) -> T {
        f(&self.shared.registry.read().expect("registry lock"))
    }

    /// Serves MQTT on a stream that is already authenticated as the holder of `client_chain`
    /// (leaf first): for transports the hub does not listen on itself (a Unix socket, an
    /// in-memory pipe in a test, a tunnel). The caller vouches for what the TLS handshake would
    /// have proven (the peer holds the leaf's key; the chain leads to a trusted CA); every later
    /// check still applies — the leaf must be registered and ACTIVE for an enabled device, and
    /// the policy decides CONNECT and everything after. Returns when the connection ends.
    pub async fn serve_stream<S>(&self, stream: S, client_chain: Vec<Certificate>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        connection::serve(
            self.shared.clone(),
            stream,
            client_chain,
            Transport::Tls,
            None,
            None,
        )
        .await;
    }

    /// Subscribes the **cloud side** to `filter`: what devices publish there (and are allowed
    /// to publish) arrives on the returned [`HubSubscription`], as a rules engine or an Event
    /// Hub endpoint would receive it. Deliveries to it are not policy-checked (it is the hub
    /// itself); its queue is bounded, and messages that find it full are dropped with a
    /// [`HubEvent::MessagesDropped`]. Dropping the subscription unsubscribes.
    pub fn subscribe(&self, filter: &str) -> Result<HubSubscription> {
        super::broker::topic::validate_topic_filter(filter)
            .map_err(|e| Error::invalid("topic filter", format!("{filter:?}: {e}")))?;
        let n = self.shared.next_connection_id();
        let key = format!("\0hub-{n}");
        let (tx, rx) = tokio::sync::mpsc::channel(self.shared.limits.client_queue);
        let principal = {
            let registry = self.shared.registry.read().expect("registry lock");
            Arc::new(
                registry
                    .policies()
                    .principal(crate::policy::PrincipalContext::default()),
            )
        };
        let mut state = self.shared.broker.lock().expect("broker lock");
        state.sessions.insert(
            key.clone(),
            super::broker::Session {
                live: Some((0, tx)),
                persistent: false,
                pending: Default::default(),
                principal,
                cert_id: String::new(),
                device: String::new(),
                internal: true,
            },
        );
        state.subscriptions.subscribe(filter, key.clone(), 1);
        Ok(HubSubscription {
            shared: Arc::downgrade(&self.shared),
            key,
            rx,
        })
    }

    /// What the hub knows about its fleet's certificates, for
    /// [`audit_fleet`](crate::lifecycle::audit::audit_fleet): registered CAs and their status,
    /// device certificates, CRLs, live connections and client ids taken over between devices.
    pub fn inventory(&self) -> crate::lifecycle::audit::FleetInventory {
        use crate::lifecycle::audit::{
            CaEntry, ClientIdConflict, ConnectionEntry, DeviceCertEntry, FleetInventory,
        };
        let mut inventory = FleetInventory::new();
        for (certificate, status) in self.shared.trust.cas() {
            inventory = inventory.with_ca(CaEntry::new(certificate, status));
        }
        for crl in self.shared.trust.crls() {
            inventory = inventory.with_crl(crl);
        }
        self.with_registry(|r| {
            for c in r.all_certificates() {
                inventory.device_certificates.push(DeviceCertEntry::new(
                    c.id.clone(),
                    c.certificate.clone(),
                    c.state,
                    c.device.clone(),
                ));
            }
        });
        {
            let state = self.shared.broker.lock().expect("broker lock");
            for c in state.connections.values() {
                let mut entry = ConnectionEntry::new(c.client_id.clone(), c.device.clone());
                if !c.cert_id.is_empty() {
                    entry = entry.with_certificate(c.cert_id.clone());
                }
                inventory.connections.push(entry);
            }
        }
        for (client_id, (identities, takeovers)) in
            self.shared.takeovers.lock().expect("takeovers lock").iter()
        {
            if identities.len() > 1 {
                inventory.client_id_conflicts.push(ClientIdConflict::new(
                    client_id.clone(),
                    identities.iter().cloned(),
                    *takeovers,
                ));
            }
        }
        inventory
    }

    /// Runs Device Defender's certificate checks over [`inventory`](Self::inventory) now.
    pub fn audit(
        &self,
        config: &crate::lifecycle::audit::AuditConfig,
    ) -> Vec<crate::lifecycle::audit::CertificateFinding> {
        crate::lifecycle::audit::audit_fleet(
            &self.inventory(),
            config,
            time::OffsetDateTime::now_utc(),
        )
    }

    /// The device certificates issued under `ca` (directly, or through registered
    /// intermediates below it), as (certificate id, device) — the devices a revocation of
    /// `ca` cuts off, and that need re-provisioning.
    pub fn devices_under_ca(&self, ca: &Certificate) -> Vec<(String, String)> {
        crate::lifecycle::audit::devices_under_ca(&self.inventory(), ca)
    }

    /// Client ids of the live MQTT connections, sorted.
    pub fn connected_clients(&self) -> Vec<String> {
        let state = self.shared.broker.lock().expect("broker lock");
        let mut ids: Vec<String> = state
            .connections
            .values()
            .map(|e| e.client_id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The topic filters (with granted QoS) a client's session is subscribed to, sorted.
    pub fn subscriptions_of(&self, client_id: &str) -> Vec<(String, u8)> {
        let state = self.shared.broker.lock().expect("broker lock");
        let mut filters = state.subscriptions.filters_of(&client_id.to_string());
        filters.sort();
        filters
    }

    /// Number of (filter, client) subscriptions held, across all sessions.
    pub fn subscription_count(&self) -> usize {
        self.shared
            .broker
            .lock()
            .expect("broker lock")
            .subscriptions
            .len()
    }

    /// Number of live MQTT connections.
    pub fn connection_count(&self) -> usize {
        self.shared
            .broker
            .lock()
            .expect("broker lock")
            .connections
            .len()
    }

    /// Stops accepting, closes every connection (their persistent sessions keep what was not
    /// acknowledged), saves the state if there is a data directory, and returns.
    pub async fn shutdown(mut self) {
        self.shared.stop();
        self.kill_all();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(task) = self.websocket_task.take() {
            let _ = task.await;
        }
        if let Some(task) = self.https_task.take() {
            let _ = task.await;
        }
        if let Some(task) = self.tcp_task.take() {
            let _ = task.await;
        }
        for _ in 0..250 {
            if self.connection_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(flusher) = self.flusher.take() {
            flusher.abort();
        }
        let _ = self.shared.flush_broker();
    }

    fn kill_all(&self) {
        let state = self.shared.broker.lock().expect("broker lock");
        for entry in state.connections.values() {
            entry.kill.notify_one();
        }
    }
}

impl Drop for LocalHub {
    fn drop(&mut self) {
        self.shared.stop();
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(task) = self.websocket_task.take() {
            task.abort();
        }
        if let Some(task) = self.https_task.take() {
            task.abort();
        }
        if let Some(task) = self.tcp_task.take() {
            task.abort();
        }
        if let Some(flusher) = self.flusher.take() {
            flusher.abort();
        }
        // Connection tasks wait on `shutdown` too; wake any that were not waiting yet.
        self.kill_all();
        // Best effort: what connections have not handed back yet is not in this snapshot
        // (`shutdown().await` waits for them).
        let _ = self.shared.flush_broker();
    }
}

#[async_trait::async_trait]
impl crate::backend::FleetAdmin for LocalHub {
    async fn create_device(&self, device: DeviceRecord) -> Result<()> {
        LocalHub::create_device(self, device)
    }

    async fn device(&self, id: &str) -> Result<DeviceRecord> {
        self.with_registry(|r| r.device(id).cloned())
            .ok_or_else(|| Error::NotFound {
                what: "device",
                id: id.to_string(),
            })
    }

    async fn set_device_enabled(&self, id: &str, enabled: bool) -> Result<()> {
        LocalHub::set_device_enabled(self, id, enabled).map(|_| ())
    }

    async fn register_ca(&self, ca: &Certificate) -> Result<()> {
        LocalHub::register_ca(self, ca)
    }

    async fn set_ca_status(&self, ca: &Certificate, status: CaStatus) -> Result<()> {
        LocalHub::set_ca_status(self, ca, status).map(|_| ())
    }

    async fn add_crl(&self, crl: Crl) -> Result<()> {
        LocalHub::add_crl(self, crl).map(|_| ())
    }

    async fn register_certificate(
        &self,
        certificate: &Certificate,
        device: &str,
    ) -> Result<String> {
        LocalHub::register_certificate(self, certificate.clone(), device)
    }

    async fn set_certificate_state(&self, id: &str, state: CertificateState) -> Result<()> {
        LocalHub::set_certificate_state(self, id, state).map(|_| ())
    }

    async fn put_policy(&self, name: &str, document: &PolicyDocument) -> Result<u32> {
        LocalHub::put_policy(self, name, document)
    }

    async fn attach_policy(&self, name: &str, target: AttachTarget) -> Result<()> {
        LocalHub::attach_policy(self, name, target)
    }

    async fn detach_policy(&self, name: &str, target: &AttachTarget) -> Result<()> {
        LocalHub::detach_policy(self, name, target)
    }
}
