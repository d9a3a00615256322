//! One client connection: CONNECT, authentication and authorization, then the packet loop.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::topic::{validate_topic_filter, validate_topic_name};
use super::{ConnectionEntry, Delivery, Session};
use crate::Error;
use crate::local::dialect::{
    Authenticated, DeniedPublish, DisconnectReason, Hello, Presence, Publisher, Qos2, Transport,
    UpgradeRequest,
};
use crate::local::hub::{HubEvent, Shared};
use crate::pki::Certificate;
use crate::policy::{ConnectAttributes, Principal, Request};

/// Why a connection ended (also reported as an event).
#[derive(Debug)]
pub(crate) enum Closed {
    Disconnect,
    Io(String),
    Protocol(String),
    /// CONNECT asked for an MQTT version this hub does not speak.
    ProtocolLevel(u8),
    KeepAlive,
    Killed,
    Denied(String),
    Shutdown,
}

impl Closed {
    fn abnormal(&self) -> bool {
        !matches!(self, Closed::Disconnect | Closed::Shutdown)
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Closed::Disconnect => "client sent DISCONNECT".into(),
            Closed::Io(e) => format!("I/O: {e}"),
            Closed::Protocol(e) => format!("protocol violation: {e}"),
            Closed::ProtocolLevel(l) => format!("unsupported MQTT protocol level {l}"),
            Closed::KeepAlive => "keep-alive expired".into(),
            Closed::Killed => "closed by the hub (credential or device status changed, or the client id was taken over)".into(),
            Closed::Denied(e) => format!("not authorized: {e}"),
            Closed::Shutdown => "hub shut down".into(),
        }
    }
}

struct Io<S> {
    stream: S,
    read: BytesMut,
    write: BytesMut,
    max: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    /// Reads the next packet. `Ok(None)` on a clean end of stream.
    async fn next(&mut self) -> Result<Option<Packet>, Closed> {
        loop {
            // The codec ignores the fixed header's flag bits; MQTT-2.2.2-2 says a wrong one is
            // a malformed packet.
            if let Some(&first) = self.read.first() {
                let required = match first >> 4 {
                    3 => None,                // PUBLISH: DUP, QoS, RETAIN
                    6 | 8 | 10 => Some(0x02), // PUBREL, SUBSCRIBE, UNSUBSCRIBE
                    _ => Some(0x00),
                };
                if required.is_some_and(|r| first & 0x0F != r) {
                    return Err(Closed::Protocol(format!(
                        "reserved flag bits {:#06b} in a packet of type {}",
                        first & 0x0F,
                        first >> 4
                    )));
                }
            }
            let before = self.read.len();
            match Packet::read(&mut self.read, self.max) {
                Ok(packet @ (Packet::PingReq | Packet::Disconnect))
                    if before - self.read.len() != 2 =>
                {
                    return Err(Closed::Protocol(format!(
                        "{packet:?} must have no variable header or payload"
                    )));
                }
                Ok(packet) => return Ok(Some(packet)),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(CodecError::InvalidProtocolLevel(level)) => {
                    return Err(Closed::ProtocolLevel(level));
                }
                Err(e) => return Err(Closed::Protocol(e.to_string())),
            }
            let n = self
                .stream
                .read_buf(&mut self.read)
                .await
                .map_err(|e| Closed::Io(e.to_string()))?;
            if n == 0 {
                return if self.read.is_empty() {
                    Ok(None)
                } else {
                    Err(Closed::Protocol("connection closed mid-packet".into()))
                };
            }
        }
    }

    /// Encodes `packet` into the write buffer; [`flush`](Self::flush) sends it. Batching the
    /// answers of one loop pass into one write saves a system call per packet.
    async fn queue(&mut self, packet: Packet) -> Result<(), Closed> {
        packet
            .write(&mut self.write, usize::MAX)
            .map_err(|e| Closed::Protocol(e.to_string()))?;
        if self.write.len() >= 64 * 1024 {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes out whatever is queued.
    async fn flush(&mut self) -> Result<(), Closed> {
        if self.write.is_empty() {
            return Ok(());
        }
        self.stream
            .write_all(&self.write)
            .await
            .map_err(|e| Closed::Io(e.to_string()))?;
        self.write.clear();
        self.stream
            .flush()
            .await
            .map_err(|e| Closed::Io(e.to_string()))
    }

    /// Queues `packet` and sends everything queued now.
    async fn send(&mut self, packet: Packet) -> Result<(), Closed> {
        self.queue(packet).await?;
        self.flush().await
    }

    /// Whether [`next`](Self::next) would return without reading the socket: a complete
    /// packet (or a malformed header to report) is already buffered.
    fn has_buffered(&self) -> bool {
        !self.read.is_empty()
            && !matches!(
                rumqttc::mqttbytes::check(self.read.iter(), self.max),
                Err(CodecError::InsufficientBytes(_))
            )
    }
}

fn to_qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn from_qos(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

/// Serves one connection until it ends. `chain` is the client's certificate chain (leaf first).
pub(crate) async fn serve<S>(
    shared: Arc<Shared>,
    stream: S,
    chain: Vec<Certificate>,
    transport: Transport,
    peer: Option<std::net::SocketAddr>,
    upgrade: Option<UpgradeRequest>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut io = Io {
        stream,
        read: BytesMut::with_capacity(1024),
        write: BytesMut::new(),
        max: shared.limits.max_packet_size,
    };
    let connect = match tokio::time::timeout(shared.limits.connect_timeout, io.next()).await {
        Ok(Ok(Some(Packet::Connect(c)))) if c.protocol == rumqttc::mqttbytes::Protocol::V4 => c,
        // MQTT-3.1.2-2: an unsupported level gets CONNACK 1, then the connection is closed.
        Ok(Ok(Some(Packet::Connect(_)))) | Ok(Err(Closed::ProtocolLevel(_))) => {
            refuse(&mut io, ConnectReturnCode::RefusedProtocolVersion).await;
            return;
        }
        Ok(Ok(Some(_))) => return, // first packet must be CONNECT: close silently (MQTT-3.1.0-1)
        _ => return,
    };
    // Authentication: the dialect decides who this is (by default a registered, active
    // certificate of an enabled device).
    let login = connect.login.as_ref();
    let admitted = {
        let hello = Hello {
            client_id: &connect.client_id,
            username: login.map(|l| l.username.as_str()),
            password: login.map(|l| l.password.as_str()),
            certificate: chain.first(),
            transport,
            upgrade: upgrade.as_ref(),
        };
        let registry = shared.registry.read().expect("registry lock");
        shared
            .dialect
            .authenticate(&hello, &registry)
            .and_then(|auth| {
                let (mut ctx, device, cert_id) = match auth {
                    Authenticated::Certificate { cert_id } => {
                        let record = registry.certificate(&cert_id).ok_or_else(|| {
                            Error::Unauthenticated(format!(
                                "certificate {cert_id} is not registered"
                            ))
                        })?;
                        (
                            registry.principal_context(record, &connect.client_id),
                            record.device.clone(),
                            cert_id,
                        )
                    }
                    Authenticated::Password { device } => (
                        registry.device_principal_context(&device, &connect.client_id)?,
                        device,
                        String::new(),
                    ),
                };
                ctx.connect = ConnectAttributes {
                    persistent_session: !connect.clean_session,
                    last_will: connect.last_will.is_some(),
                };
                Ok((
                    device,
                    cert_id,
                    Arc::new(registry.policies().principal(ctx)),
                ))
            })
    };
    let (device, cert_id, principal) = match admitted {
        Ok(v) => v,
        Err(e) => {
            shared.event(HubEvent::AuthFailure {
                client_id: connect.client_id.clone(),
                reason: e.to_string(),
            });
            refuse(&mut io, ConnectReturnCode::NotAuthorized).await;
            return;
        }
    };
    let client_id = connect.client_id.clone();
    // MQTT-1.5.3-2: no U+0000 in strings (the hub's own subscribers use it in their ids).
    if client_id.is_empty() || client_id.contains('\0') {
        refuse(&mut io, ConnectReturnCode::BadClientId).await;
        return;
    }
    // Authorization of the connection itself, and of the will it leaves behind.
    let mut denial = None;
    let decision = principal.authorize(&Request::connect(&client_id));
    if !decision.is_allowed() {
        denial = Some(decision.to_string());
    } else if let Some(will) = &connect.last_will {
        if validate_topic_name(&will.topic).is_err() || will.topic.starts_with('$') {
            denial = Some(format!("invalid will topic {:?}", will.topic));
        } else {
            let d = principal.authorize(&Request::publish(&will.topic));
            if !d.is_allowed() {
                denial = Some(format!("last will: {d}"));
            }
        }
    }
    if let Some(reason) = denial {
        shared.event(HubEvent::PolicyDenied {
            client_id: client_id.clone(),
            explanation: reason,
        });
        refuse(&mut io, ConnectReturnCode::NotAuthorized).await;
        return;
    }
    let will = connect.last_will.clone();
    let keep_alive = match connect.keep_alive {
        0 => None,
        k => Some(Duration::from_secs(u64::from(k.clamp(
            shared.limits.min_keep_alive,
            shared.limits.max_keep_alive,
        )))),
    };

    // Take over the session (closing any connection that holds the same client id).
    let conn_id = shared.next_connection_id();
    let kill = Arc::new(Notify::new());
    let (tx, mut rx) = mpsc::channel::<Delivery>(shared.limits.client_queue);
    let (session_present, mut backlog) = {
        let mut state = shared.broker.lock().expect("broker lock");
        let previous = state
            .sessions
            .get(&client_id)
            .and_then(|s| s.live.as_ref().map(|(id, _)| *id));
        if let Some(old) = previous
            && let Some(entry) = state.connections.get(&old)
        {
            entry.kill.notify_one();
            // Another identity taking this client id over is a conflict worth auditing.
            let before = format!("{} ({})", entry.device, short(&entry.cert_id));
            let now = format!("{device} ({})", short(&cert_id));
            if before != now {
                let mut takeovers = shared.takeovers.lock().expect("takeovers lock");
                let slot = takeovers.entry(client_id.clone()).or_default();
                slot.0.insert(before);
                slot.0.insert(now);
                slot.1 = slot.1.saturating_add(1);
            }
        }
        if connect.clean_session {
            state.subscriptions.remove_key(&client_id);
            state.sessions.remove(&client_id);
        }
        let present = state.sessions.contains_key(&client_id);
        let session = state
            .sessions
            .entry(client_id.clone())
            .or_insert_with(|| Session {
                live: None,
                persistent: !connect.clean_session,
                pending: Default::default(),
                principal: principal.clone(),
                cert_id: cert_id.clone(),
                device: device.clone(),
                internal: false,
            });
        session.live = Some((conn_id, tx.clone()));
        session.cert_id = cert_id.clone();
        session.device = device.clone();
        session.persistent = !connect.clean_session;
        session.principal = principal.clone();
        let backlog: Vec<Delivery> = session.pending.drain(..).collect();
        state.connections.insert(
            conn_id,
            ConnectionEntry {
                client_id: client_id.clone(),
                device: device.clone(),
                cert_id: cert_id.clone(),
                issuers: chain.iter().map(|c| c.issuer_der().to_vec()).collect(),
                kill: kill.clone(),
            },
        );
        (present, backlog)
    };
    if io
        .send(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            session_present,
        )))
        .await
        .is_err()
    {
        finish(
            &shared,
            conn_id,
            &client_id,
            None,
            Vec::new(),
            &Closed::Io("CONNACK".into()),
        );
        return;
    }
    shared.event(HubEvent::Connected {
        client_id: client_id.clone(),
        device: device.clone(),
        session_present,
    });
    let who = Who {
        client_id: client_id.clone(),
        device: device.clone(),
        cert_id: cert_id.clone(),
        peer,
        connection: conn_id,
        transport,
        clean_session: connect.clean_session,
    };
    shared.dialect.on_connected(&who.presence(), &shared.outbox);

    let mut conn = Conn {
        shared: shared.clone(),
        persistent: !connect.clean_session,
        client_id: client_id.clone(),
        device: device.clone(),
        cert_id: cert_id.clone(),
        principal,
        generation: shared.policy_generation(),
        inflight: Vec::new(),
        retained: Default::default(),
        next_pkid: 1,
    };
    // Redeliver what the session kept, oldest first.
    backlog.reverse();
    // Keep-alive counts from the last packet the *client* sent.
    let mut last_heard = Instant::now();
    let outcome = 'outer: loop {
        // Fill the in-flight window from the backlog, then from the live channel.
        while conn.inflight.len() < shared.limits.inflight_window {
            let next = match backlog.pop() {
                Some(d) => Some(d),
                None => match conn.retained.pop_front() {
                    Some(d) => Some(d),
                    None => rx.try_recv().ok(),
                },
            };
            let Some(d) = next else { break };
            if let Err(e) = conn.send_delivery(&mut io, d).await {
                break 'outer e;
            }
        }
        // One write for everything this pass produced.
        if let Err(e) = io.flush().await {
            break e;
        }
        let deadline = keep_alive.map(|k| last_heard + k.mul_f32(1.5));
        let room = conn.inflight.len() < shared.limits.inflight_window;
        tokio::select! {
            packet = io.next() => match packet {
                Ok(Some(packet)) => {
                    last_heard = Instant::now();
                    if let Err(e) = conn.handle(&mut io, packet).await {
                        break e;
                    }
                    // Handle whatever else the client pipelined before writing the answers.
                    while io.has_buffered() {
                        match io.next().await {
                            Ok(Some(packet)) => {
                                if let Err(e) = conn.handle(&mut io, packet).await {
                                    break 'outer e;
                                }
                            }
                            Ok(None) => break 'outer Closed::Io("connection closed without DISCONNECT".into()),
                            Err(e) => break 'outer e,
                        }
                    }
                }
                Ok(None) => break Closed::Io("connection closed without DISCONNECT".into()),
                Err(e) => break e,
            },
            Some(d) = rx.recv(), if room => {
                if let Err(e) = conn.send_delivery(&mut io, d).await {
                    break e;
                }
            }
            _ = kill.notified() => break Closed::Killed,
            _ = shared.stopped() => break Closed::Shutdown,
            _ = sleep_until(deadline) => break Closed::KeepAlive,
        }
    };
    // Whatever was sent and not acknowledged, or still queued, goes back to the session.
    let mut unacked: Vec<Delivery> = conn
        .inflight
        .drain(..)
        .map(|(_, mut d)| {
            d.dup = true;
            d
        })
        .collect();
    unacked.extend(backlog.into_iter().rev());
    unacked.extend(conn.retained.drain(..));
    rx.close();
    while let Ok(d) = rx.try_recv() {
        unacked.push(d);
    }
    let will = if outcome.abnormal() { will } else { None };
    let taken_over = finish(&shared, conn_id, &client_id, will, unacked, &outcome);
    let reason = match outcome {
        Closed::Disconnect => DisconnectReason::ClientInitiated,
        Closed::Io(_) => DisconnectReason::ConnectionLost,
        Closed::Protocol(_) | Closed::ProtocolLevel(_) => DisconnectReason::ClientError,
        Closed::KeepAlive => DisconnectReason::KeepAliveTimeout,
        Closed::Killed if taken_over => DisconnectReason::DuplicateClientId,
        Closed::Killed | Closed::Shutdown => DisconnectReason::ServerInitiated,
        Closed::Denied(_) => DisconnectReason::Unauthorized,
    };
    shared
        .dialect
        .on_disconnected(&who.presence(), reason, &shared.outbox);
    let _ = io.stream.shutdown().await;
}

/// A connection's identity, kept for the dialect's lifecycle hooks.
struct Who {
    client_id: String,
    device: String,
    cert_id: String,
    peer: Option<std::net::SocketAddr>,
    connection: u64,
    transport: Transport,
    clean_session: bool,
}

impl Who {
    fn presence(&self) -> Presence<'_> {
        Presence {
            client_id: &self.client_id,
            device: &self.device,
            cert_id: (!self.cert_id.is_empty()).then_some(self.cert_id.as_str()),
            peer: self.peer,
            connection: self.connection,
            transport: self.transport,
            clean_session: self.clean_session,
        }
    }
}

/// The first 12 characters of a certificate id (or "password" for none), for messages.
fn short(cert_id: &str) -> &str {
    if cert_id.is_empty() {
        "password"
    } else {
        &cert_id[..cert_id.len().min(12)]
    }
}

/// Answers CONNECT with a refusal (the connection is closed by the caller returning).
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(io: &mut Io<S>, code: ConnectReturnCode) {
    let _ = io.send(Packet::ConnAck(ConnAck::new(code, false))).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Unregisters the connection, keeps a persistent session's messages, publishes the will.
/// Returns whether another connection had taken the client id over.
fn finish(
    shared: &Shared,
    conn_id: u64,
    client_id: &str,
    will: Option<rumqttc::mqttbytes::v4::LastWill>,
    unacked: Vec<Delivery>,
    outcome: &Closed,
) -> bool {
    let taken_over;
    {
        let mut state = shared.broker.lock().expect("broker lock");
        state.connections.remove(&conn_id);
        taken_over = state
            .sessions
            .get(client_id)
            .and_then(|s| s.live.as_ref())
            .is_some_and(|(id, _)| *id != conn_id);
        let mut drop_session = false;
        if let Some(session) = state.sessions.get_mut(client_id)
            && session.live.as_ref().map(|(id, _)| *id) == Some(conn_id)
        {
            session.live = None;
            if session.persistent {
                for d in unacked.into_iter().filter(|d| d.qos == 1) {
                    if session.pending.len() < shared.limits.offline_queue {
                        session.pending.push_back(d);
                    }
                }
                shared.request_flush();
            } else {
                drop_session = true;
            }
        }
        if drop_session {
            state.sessions.remove(client_id);
            state.subscriptions.remove_key(&client_id.to_string());
        }
        if let Some(will) = will {
            let payload = will.message.clone();
            let qos = from_qos(will.qos).min(1);
            if will.retain {
                state.retain(&will.topic, &payload, qos);
            }
            let limits = shared.limits.clone();
            state.route(
                &will.topic,
                &payload,
                qos,
                &limits,
                |client, explanation| {
                    shared.event(HubEvent::PolicyDenied {
                        client_id: client.to_string(),
                        explanation,
                    })
                },
            );
        }
    }
    shared.event(HubEvent::Disconnected {
        client_id: client_id.to_string(),
        reason: outcome.describe(),
    });
    taken_over
}

struct Conn {
    shared: Arc<Shared>,
    /// The session outlives the connection (clean session off).
    persistent: bool,
    client_id: String,
    /// The registry device the client authenticated as.
    device: String,
    /// The certificate it authenticated with (empty for a password).
    cert_id: String,
    principal: Arc<Principal>,
    generation: u64,
    /// Sent QoS 1 deliveries awaiting PUBACK, by packet id.
    inflight: Vec<(u16, Delivery)>,
    /// Retained messages matched by a SUBSCRIBE, waiting for room in the window.
    retained: std::collections::VecDeque<Delivery>,
    next_pkid: u16,
}

impl Conn {
    /// The principal, re-resolved if policies changed since it was made.
    fn principal(&mut self) -> Arc<Principal> {
        let generation = self.shared.policy_generation();
        if generation != self.generation {
            let registry = self.shared.registry.read().expect("registry lock");
            let mut context = self.principal.context().clone();
            // The device's groups may have changed too.
            if let Some(device) = registry.device(&self.device) {
                context.groups = device.groups.clone();
            }
            let fresh = registry.policies().principal(context);
            drop(registry);
            self.principal = Arc::new(fresh);
            self.generation = generation;
            let mut state = self.shared.broker.lock().expect("broker lock");
            if let Some(session) = state.sessions.get_mut(&self.client_id) {
                session.principal = self.principal.clone();
            }
        }
        self.principal.clone()
    }

    fn deny(&self, explanation: String) {
        self.shared.event(HubEvent::PolicyDenied {
            client_id: self.client_id.clone(),
            explanation,
        });
    }

    async fn send_delivery<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        d: Delivery,
    ) -> Result<(), Closed> {
        let mut publish =
            Publish::from_bytes(d.topic.to_string(), to_qos(d.qos), d.payload.clone());
        publish.retain = d.retain;
        if d.qos == 1 {
            let pkid = self.allocate_pkid();
            publish.pkid = pkid;
            publish.dup = d.dup;
            self.inflight.push((pkid, d));
        }
        io.queue(Packet::Publish(publish)).await
    }

    fn allocate_pkid(&mut self) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.inflight.iter().any(|(p, _)| *p == id) {
                return id;
            }
        }
    }

    async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        packet: Packet,
    ) -> Result<(), Closed> {
        match packet {
            Packet::Publish(p) => self.publish(io, p).await,
            Packet::PubAck(ack) => {
                self.inflight.retain(|(id, _)| *id != ack.pkid);
                Ok(())
            }
            Packet::Subscribe(sub) => {
                let dialect = self.shared.dialect.clone();
                if let Some(max) = self.shared.limits.max_filters_per_subscribe
                    && sub.filters.len() > max
                {
                    return Err(Closed::Protocol(format!(
                        "{} topic filters in one SUBSCRIBE (at most {max})",
                        sub.filters.len()
                    )));
                }
                if dialect.qos2() == Qos2::Unanswered
                    && sub.filters.iter().any(|f| f.qos == QoS::ExactlyOnce)
                {
                    // AWS IoT Core: no SUBACK, nothing subscribed.
                    return Ok(());
                }
                let principal = self.principal();
                let mut codes = Vec::with_capacity(sub.filters.len());
                let mut granted = Vec::new();
                let wildcard_retained = dialect.retained_on_wildcard_subscribe();
                for f in &sub.filters {
                    if validate_topic_filter(&f.path).is_err()
                        || self.shared.limits.too_deep(&f.path)
                    {
                        codes.push(SubscribeReasonCode::Failure);
                        continue;
                    }
                    let decision = principal.authorize(&Request::subscribe(&f.path));
                    if !decision.is_allowed() {
                        self.deny(decision.to_string());
                        codes.push(SubscribeReasonCode::Failure);
                        continue;
                    }
                    // QoS 2 is granted as 1: the hub, like the clouds, does not do exactly-once.
                    let qos = from_qos(f.qos).min(1);
                    codes.push(SubscribeReasonCode::Success(to_qos(qos)));
                    granted.push((f.path.clone(), qos));
                }
                let retained = {
                    let mut state = self.shared.broker.lock().expect("broker lock");
                    let mut retained = Vec::new();
                    for (filter, qos) in &granted {
                        state
                            .subscriptions
                            .subscribe(filter, self.client_id.clone(), *qos);
                        if !wildcard_retained && (filter.contains('+') || filter.contains('#')) {
                            continue;
                        }
                        for (topic, (payload, rqos)) in &state.retained {
                            if super::topic::filter_matches(filter, topic)
                                && principal.authorize(&Request::receive(topic)).is_allowed()
                            {
                                retained.push(Delivery {
                                    topic: Arc::from(topic.as_str()),
                                    payload: payload.clone(),
                                    qos: (*rqos).min(*qos),
                                    retain: true,
                                    dup: false,
                                });
                            }
                        }
                    }
                    retained
                };
                io.queue(Packet::SubAck(SubAck::new(sub.pkid, codes)))
                    .await?;
                // Sent by the main loop, inside the in-flight window like everything else.
                self.retained.extend(retained);
                Ok(())
            }
            Packet::Unsubscribe(u) if u.topics.is_empty() => {
                Err(Closed::Protocol("UNSUBSCRIBE with no topic filter".into()))
            }
            Packet::Unsubscribe(unsub) => {
                {
                    let mut state = self.shared.broker.lock().expect("broker lock");
                    for t in &unsub.topics {
                        state.subscriptions.unsubscribe(t, &self.client_id);
                    }
                }
                if self.persistent {
                    self.shared.durable().await;
                }
                io.queue(Packet::UnsubAck(UnsubAck::new(unsub.pkid))).await
            }
            Packet::PingReq => io.queue(Packet::PingResp).await,
            Packet::Disconnect => Err(Closed::Disconnect),
            Packet::Connect(_) => Err(Closed::Protocol("second CONNECT".into())),
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
                Err(Closed::Protocol("QoS 2 is not supported".into()))
            }
            other => Err(Closed::Protocol(format!(
                "unexpected packet from a client: {other:?}"
            ))),
        }
    }

    async fn publish<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        p: Publish,
    ) -> Result<(), Closed> {
        if p.qos == QoS::ExactlyOnce {
            return match self.shared.dialect.qos2() {
                // AWS IoT Core: no PUBREC, the message goes nowhere.
                Qos2::Unanswered => Ok(()),
                _ => Err(Closed::Protocol(
                    "QoS 2 publish (not supported: connection closed, as Azure and GCP do)".into(),
                )),
            };
        }
        if let Err(e) = validate_topic_name(&p.topic) {
            return Err(Closed::Protocol(format!(
                "invalid topic {:?}: {e}",
                p.topic
            )));
        }
        if self.shared.limits.too_deep(&p.topic) {
            return Err(Closed::Protocol(format!(
                "topic {:?} has more levels than the hub allows",
                p.topic
            )));
        }
        if p.retain && p.topic.starts_with('$') {
            return Err(Closed::Protocol(format!(
                "retained publish to reserved topic {:?}",
                p.topic
            )));
        }
        let service = p.topic.starts_with('$') && self.shared.dialect.serves(&p.topic);
        if p.topic.starts_with('$') && !service {
            return Err(Closed::Protocol(format!(
                "publish to reserved topic {:?}, which no service of the {} dialect owns",
                p.topic,
                self.shared.dialect.name()
            )));
        }
        let principal = self.principal();
        let mut decision = principal.authorize(&Request::publish(&p.topic));
        if decision.is_allowed() && p.retain {
            decision = principal.authorize(&Request::retain_publish(&p.topic));
        }
        if !decision.is_allowed() {
            let explanation = decision.to_string();
            self.deny(explanation.clone());
            return match self.shared.dialect.denied_publish() {
                DeniedPublish::Disconnect => Err(Closed::Denied(explanation)),
                DeniedPublish::Drop => {
                    if p.qos == QoS::AtLeastOnce {
                        io.queue(Packet::PubAck(PubAck::new(p.pkid))).await?;
                    }
                    Ok(())
                }
            };
        }
        if service {
            let from = Publisher {
                client_id: &self.client_id,
                device: &self.device,
                cert_id: (!self.cert_id.is_empty()).then_some(self.cert_id.as_str()),
            };
            if let Err(e) =
                self.shared
                    .dialect
                    .on_publish(&from, &p.topic, &p.payload, &self.shared.outbox)
            {
                return Err(Closed::Protocol(format!(
                    "request on {:?} refused: {e}",
                    p.topic
                )));
            }
            if p.qos == QoS::AtLeastOnce {
                io.queue(Packet::PubAck(PubAck::new(p.pkid))).await?;
            }
            return Ok(());
        }
        let qos = from_qos(p.qos);
        let payload: Bytes = p.payload.clone();
        let routed = {
            let mut state = self.shared.broker.lock().expect("broker lock");
            if p.retain {
                state.retain(&p.topic, &payload, qos);
            }
            let limits = self.shared.limits.clone();
            let shared = self.shared.clone();
            state.route(&p.topic, &payload, qos, &limits, |client, explanation| {
                shared.event(HubEvent::PolicyDenied {
                    client_id: client.to_string(),
                    explanation,
                })
            })
        };
        if qos == 1 && routed.dropped > 0 {
            self.shared.event(HubEvent::MessagesDropped {
                topic: p.topic.clone(),
                subscribers: routed.dropped,
            });
        }
        // What the hub now promises to keep must be on disk before the client is told so.
        if qos == 1 && (p.retain || routed.queued > 0) {
            self.shared.durable().await;
        }
        if qos == 1 {
            io.queue(Packet::PubAck(PubAck::new(p.pkid))).await?;
        }
        Ok(())
    }
}
