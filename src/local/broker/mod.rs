//! The MQTT broker core: sessions, subscriptions, retained messages, routing.
//!
//! One [`BrokerState`] behind a mutex holds what connections share; each connection is a task
//! ([`connection`]) that owns its socket. Routing authorizes every delivery (`iot:Receive`) with
//! the subscriber's principal, and every queue is bounded.

pub(crate) mod connection;
pub(crate) mod topic;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use crate::policy::{Principal, Request};
use topic::SubscriptionTable;

/// Limits the broker enforces (per dialect; these are the native dialect's defaults).
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest MQTT packet accepted, in bytes (AWS: 128 KiB payload).
    pub max_packet_size: usize,
    /// QoS 1 messages sent to a client and not yet acknowledged.
    pub inflight_window: usize,
    /// Messages waiting for a connected client (beyond that, QoS 0 is dropped and QoS 1 too,
    /// with an event: memory never grows without bound).
    pub client_queue: usize,
    /// QoS 1 messages kept for a disconnected persistent session.
    pub offline_queue: usize,
    /// How long a new connection may take to send CONNECT.
    pub connect_timeout: std::time::Duration,
    /// Keep-alive values below this are raised to it (AWS: 30 s); 0 keeps "no keep-alive".
    pub min_keep_alive: u16,
    /// Largest keep-alive accepted (AWS: 1200 s).
    pub max_keep_alive: u16,
    /// Most topic filters in one SUBSCRIBE (AWS: 8); more closes the connection. `None`: no
    /// limit.
    pub max_filters_per_subscribe: Option<usize>,
    /// Most levels in a topic or filter (AWS: 8, that is 7 slashes, not counting a
    /// `$aws/rules/<rule>/` prefix). A deeper publish closes the connection; a deeper filter is
    /// refused in the SUBACK. `None`: no limit.
    pub max_topic_levels: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 128 * 1024 + 1024,
            inflight_window: 32,
            client_queue: 1024,
            offline_queue: 1000,
            connect_timeout: std::time::Duration::from_secs(10),
            min_keep_alive: 1,
            max_keep_alive: 1200,
            max_filters_per_subscribe: None,
            max_topic_levels: None,
        }
    }
}

impl Limits {
    /// Whether `topic` (a name or a filter) has more levels than allowed.
    pub(crate) fn too_deep(&self, topic: &str) -> bool {
        let Some(max) = self.max_topic_levels else {
            return false;
        };
        // AWS's Basic Ingest prefix does not count.
        let counted = match topic.strip_prefix("$aws/rules/") {
            Some(rest) => rest.split_once('/').map_or("", |(_, t)| t),
            None => topic,
        };
        counted.split('/').count() > max
    }
}

/// A message on its way to one subscriber.
#[derive(Clone, Debug)]
pub(crate) struct Delivery {
    pub(crate) topic: Arc<str>,
    pub(crate) payload: Bytes,
    /// 0 or 1.
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    /// Redelivery of a message sent before (sets DUP).
    pub(crate) dup: bool,
}

/// A live connection's handle, as the broker sees it.
pub(crate) struct ConnectionEntry {
    pub(crate) client_id: String,
    pub(crate) device: String,
    pub(crate) cert_id: String,
    /// DER issuer names of every certificate the client presented (for CA revocation).
    pub(crate) issuers: Vec<Vec<u8>>,
    pub(crate) kill: Arc<Notify>,
}

pub(crate) struct Session {
    /// The connection serving the session now: id and delivery channel.
    pub(crate) live: Option<(u64, mpsc::Sender<Delivery>)>,
    pub(crate) persistent: bool,
    /// QoS 1 messages waiting for the client to (re)connect.
    pub(crate) pending: VecDeque<Delivery>,
    /// Decides `iot:Receive` for deliveries (also while the client is offline).
    pub(crate) principal: Arc<Principal>,
    /// The certificate the session authenticated with (its principal is rebuilt from it after
    /// a restart); empty for a password-authenticated session.
    pub(crate) cert_id: String,
    /// The registry device the session belongs to.
    pub(crate) device: String,
    /// A subscriber inside the hub ([`LocalHub::subscribe`](crate::local::LocalHub::subscribe)):
    /// it stands for the cloud side, so deliveries to it are not policy-checked.
    pub(crate) internal: bool,
}

#[derive(Default)]
pub(crate) struct BrokerState {
    pub(crate) sessions: HashMap<String, Session>,
    pub(crate) subscriptions: SubscriptionTable<String>,
    pub(crate) retained: HashMap<String, (Bytes, u8)>,
    pub(crate) connections: HashMap<u64, ConnectionEntry>,
    /// Reused buffer for subscription matches.
    scratch: Vec<(String, u8)>,
}

/// What routing did with a message, for events and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Routed {
    pub(crate) delivered: usize,
    /// Queued for an offline persistent session: must be durable before the PUBACK.
    pub(crate) queued: usize,
    pub(crate) denied: usize,
    pub(crate) dropped: usize,
}

/// What happened to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handed {
    /// Given to the live connection.
    Live,
    /// Kept in the session's queue (persistent session, QoS 1).
    Queued,
    /// Dropped: QoS 0 to an offline client, or a full queue.
    Dropped,
}

impl BrokerState {
    /// Stores or clears a retained message (empty payload clears, as MQTT says).
    pub(crate) fn retain(&mut self, topic: &str, payload: &Bytes, qos: u8) {
        if payload.is_empty() {
            self.retained.remove(topic);
        } else {
            self.retained
                .insert(topic.to_string(), (payload.clone(), qos));
        }
    }

    /// Sends a published message to every subscriber allowed to receive it.
    /// `on_denied` is told about each subscriber the policy refused.
    pub(crate) fn route(
        &mut self,
        topic: &str,
        payload: &Bytes,
        qos: u8,
        limits: &Limits,
        mut on_denied: impl FnMut(&str, String),
    ) -> Routed {
        let mut routed = Routed::default();
        let mut matches = std::mem::take(&mut self.scratch);
        matches.clear();
        self.subscriptions.matches(topic, &mut matches);
        let shared_topic: Arc<str> = Arc::from(topic);
        for (client, sub_qos) in matches.drain(..) {
            let Some(session) = self.sessions.get_mut(&client) else {
                continue;
            };
            let decision = if session.internal {
                None
            } else {
                Some(session.principal.authorize(&Request::receive(topic)))
            };
            if let Some(decision) = decision.filter(|d| !d.is_allowed()) {
                routed.denied += 1;
                on_denied(&client, decision.to_string());
                continue;
            }
            let delivery = Delivery {
                topic: shared_topic.clone(),
                payload: payload.clone(),
                qos: qos.min(sub_qos),
                retain: false,
                dup: false,
            };
            match deliver(session, delivery, limits) {
                Handed::Live => routed.delivered += 1,
                Handed::Queued => routed.queued += 1,
                Handed::Dropped => routed.dropped += 1,
            }
        }
        self.scratch = matches;
        routed
    }
}

/// Hands a delivery to the session's connection, or queues it for a persistent session.
pub(crate) fn deliver(session: &mut Session, delivery: Delivery, limits: &Limits) -> Handed {
    if let Some((_, tx)) = &session.live {
        return match tx.try_send(delivery) {
            Ok(()) => Handed::Live,
            Err(mpsc::error::TrySendError::Full(d)) | Err(mpsc::error::TrySendError::Closed(d)) => {
                queue_offline(session, d, limits)
            }
        };
    }
    queue_offline(session, delivery, limits)
}

fn queue_offline(session: &mut Session, delivery: Delivery, limits: &Limits) -> Handed {
    if session.persistent && delivery.qos == 1 && session.pending.len() < limits.offline_queue {
        session.pending.push_back(delivery);
        Handed::Queued
    } else {
        Handed::Dropped
    }
}
