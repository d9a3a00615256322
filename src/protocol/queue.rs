//! The offline queue: outgoing messages kept, within bounds, while the device cannot send them.
//!
//! A device loses its connection routinely (cellular dead zones, hub restarts, credential
//! rotation). Telemetry produced meanwhile waits here, bounded by message count *and* payload
//! bytes, because a device has little memory and an outage has no upper length. What happens when
//! the queue is full is the application's choice ([`Overflow`]); whatever it is, the caller is
//! told about every message that leaves the queue without being delivered.
//!
//! QoS 1 messages stay queued until the hub acknowledges them: sending moves a message to
//! *in flight*, where it still counts against the limits, and a disconnect puts in-flight QoS 1
//! messages back at the head of the line in their original order, as the AWS IoT Device SDK's
//! default `FAIL_QOS0_PUBLISH_ON_DISCONNECT` behaviour does. In-flight QoS 0 messages are dropped
//! then: their sender accepted at-most-once delivery.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use bytes::Bytes;

use crate::{Error, Result};

/// An outgoing MQTT message, before the queue assigns it an id.
///
/// ```
/// use fleetkit::protocol::Outgoing;
///
/// let reading = Outgoing::new("dt/sensor-1/temp", &b"21.5"[..], 1).with_retain(true);
/// assert_eq!(reading.qos, 1);
/// assert_eq!(reading.payload.len(), 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The topic to publish to.
    pub topic: String,
    /// The payload. `Bytes` so that queueing, sending and resending share one buffer.
    pub payload: Bytes,
    /// The MQTT quality of service: 0 (at most once) or 1 (at least once). The queue refuses
    /// anything else.
    pub qos: u8,
    /// Whether the hub should retain the message for later subscribers.
    pub retain: bool,
}

impl Outgoing {
    /// A message that is not retained.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, qos: u8) -> Self {
        Outgoing {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
        }
    }

    /// Sets whether the hub should retain the message.
    pub fn with_retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }
}

/// The id the queue gives a message: unique within one queue and increasing in push order.
///
/// Not the MQTT packet identifier, which is 16 bits, reused, and chosen by the MQTT client when
/// the message is actually sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(u64);

impl MessageId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A message in the queue, with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    id: MessageId,
    sends: u32,
    message: Outgoing,
}

impl Queued {
    /// The id the queue assigned at [`push`](OfflineQueue::push).
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The message.
    pub fn message(&self) -> &Outgoing {
        &self.message
    }

    /// How many times [`next_to_send`](OfflineQueue::next_to_send) has handed the message out:
    /// more than 1 means this is a resend after a disconnect.
    pub fn sends(&self) -> u32 {
        self.sends
    }

    /// The message, taking it out of the `Queued`.
    pub fn into_message(self) -> Outgoing {
        self.message
    }
}

/// How many messages and payload bytes an [`OfflineQueue`] may hold, in flight included.
///
/// ```
/// use fleetkit::protocol::QueueLimits;
///
/// let limits = QueueLimits::new().with_max_messages(100).with_max_bytes(64 * 1024);
/// limits.validate()?;
/// assert_eq!(limits.max_messages(), 100);
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    max_messages: usize,
    max_bytes: usize,
}

impl QueueLimits {
    /// The default message limit: 1000.
    pub const DEFAULT_MAX_MESSAGES: usize = 1000;
    /// The default payload limit: 1 MiB.
    pub const DEFAULT_MAX_BYTES: usize = 1 << 20;

    /// The defaults: 1000 messages, 1 MiB of payload.
    pub const fn new() -> Self {
        QueueLimits {
            max_messages: Self::DEFAULT_MAX_MESSAGES,
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }

    /// Sets the largest number of messages, queued and in flight together.
    pub const fn with_max_messages(mut self, max_messages: usize) -> Self {
        self.max_messages = max_messages;
        self
    }

    /// Sets the largest total payload size in bytes, queued and in flight together. It is also
    /// the largest single payload the queue accepts.
    pub const fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The message limit.
    pub const fn max_messages(&self) -> usize {
        self.max_messages
    }

    /// The payload byte limit.
    pub const fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Checks the limits: both must be at least 1.
    pub fn validate(&self) -> Result<()> {
        if self.max_messages == 0 {
            return Err(Error::invalid(
                "queue max_messages",
                "must be at least 1; a queue that holds nothing cannot hold a message in flight",
            ));
        }
        if self.max_bytes == 0 {
            return Err(Error::invalid("queue max_bytes", "must be at least 1 byte"));
        }
        Ok(())
    }
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`OfflineQueue::push`] does when a new message does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Make room by evicting the oldest waiting messages, QoS 0 before QoS 1, and report them
    /// in [`Pushed::Queued::evicted`]. Keeps the freshest data, for telemetry.
    ///
    /// Messages in flight are never evicted (the hub may already have them). A new QoS 0
    /// message never evicts a QoS 1 message: if waiting QoS 0 messages cannot make room, the new
    /// one is refused instead ([`Pushed::Refused`]).
    #[default]
    DropOldest,
    /// Refuse the new message and return it in [`Pushed::Refused`]; what is queued stays.
    DropNewest,
    /// Refuse the new message with [`Error::Unavailable`]: the caller must handle a full queue.
    Error,
}

/// What became of a message given to [`OfflineQueue::push`].
#[must_use = "a refused or evicted message is lost unless the caller reports it"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The message is queued under `id`.
    Queued {
        /// Its id.
        id: MessageId,
        /// The messages evicted to make room for it, oldest first ([`Overflow::DropOldest`]
        /// only; usually empty).
        evicted: Vec<Queued>,
    },
    /// The queue was full and the message was not queued; here it is back.
    Refused(Outgoing),
}

impl Pushed {
    /// The new message's id, if it was queued.
    pub fn id(&self) -> Option<MessageId> {
        match self {
            Pushed::Queued { id, .. } => Some(*id),
            Pushed::Refused(_) => None,
        }
    }
}

/// What [`OfflineQueue::requeue_inflight`] did with the messages in flight.
#[must_use = "dropped QoS 0 messages are lost unless the caller reports them"]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requeued {
    /// How many QoS 1 messages went back to the head of the queue.
    pub requeued: usize,
    /// The QoS 0 messages that were in flight and are now dropped, in send order.
    pub dropped: Vec<Queued>,
}

/// Counters over an [`OfflineQueue`]'s life.
///
/// At any time, `pushed == acked + evicted + dropped_qos0_on_disconnect + len()`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages accepted into the queue.
    pub pushed: u64,
    /// Messages handed out by [`next_to_send`](OfflineQueue::next_to_send), resends included.
    pub sent: u64,
    /// Messages removed by [`acked`](OfflineQueue::acked).
    pub acked: u64,
    /// Messages evicted to make room ([`Overflow::DropOldest`]).
    pub evicted: u64,
    /// New messages refused because the queue was full (any policy).
    pub refused: u64,
    /// In-flight QoS 1 messages put back by [`requeue_inflight`](OfflineQueue::requeue_inflight).
    pub requeued: u64,
    /// In-flight QoS 0 messages dropped by [`requeue_inflight`](OfflineQueue::requeue_inflight).
    pub dropped_qos0_on_disconnect: u64,
}

/// A bounded queue of outgoing messages for while the device is offline, with QoS 1
/// "keep until acknowledged" semantics.
///
/// The life of a message: [`push`](Self::push) → [`next_to_send`](Self::next_to_send) (now in
/// flight) → [`acked`](Self::acked) (gone). For QoS 1, call `acked` on the PUBACK; for QoS 0, as
/// soon as the MQTT client has written the PUBLISH. On a disconnect,
/// [`requeue_inflight`](Self::requeue_inflight) puts QoS 1 messages back for resending.
///
/// Messages leave in push order, except that requeued messages go first. The limits count
/// messages in flight too, and are never exceeded; payload bytes are counted, topics are not.
///
/// ```
/// use fleetkit::protocol::{OfflineQueue, Outgoing, Overflow, Pushed, QueueLimits};
///
/// let limits = QueueLimits::new().with_max_messages(2);
/// let mut queue = OfflineQueue::new(limits, Overflow::DropOldest)?;
/// let a = queue.push(Outgoing::new("t/a", "1", 1))?.id().unwrap();
/// let b = queue.push(Outgoing::new("t/b", "2", 1))?.id().unwrap();
///
/// // Connected: `a` goes out and waits for its PUBACK.
/// assert_eq!(queue.next_to_send().unwrap().id(), a);
///
/// // The connection drops before the PUBACK: `a` is back at the head of the line.
/// let requeued = queue.requeue_inflight();
/// assert_eq!(requeued.requeued, 1);
///
/// // The queue is full; a third message evicts the oldest waiting one, and says so.
/// match queue.push(Outgoing::new("t/c", "3", 1))? {
///     Pushed::Queued { evicted, .. } => assert_eq!(evicted[0].id(), a),
///     Pushed::Refused(_) => unreachable!(),
/// }
///
/// // Reconnected: `b` is sent and acknowledged.
/// let next = queue.next_to_send().unwrap().id();
/// assert_eq!(next, b);
/// assert!(queue.acked(next).is_some());
/// assert_eq!(queue.len(), 1);
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct OfflineQueue {
    limits: QueueLimits,
    overflow: Overflow,
    // Waiting messages, split by QoS so that eviction takes QoS 0 first in O(1); both are in id
    // order, and `next_to_send` takes the lower of the two heads, so the merge is push order.
    waiting_qos0: VecDeque<Queued>,
    waiting_qos1: VecDeque<Queued>,
    // Every id in flight is lower than every waiting id (messages leave from the head and
    // requeued ones go back to the head), so id order here is the original order too.
    inflight: BTreeMap<MessageId, Queued>,
    bytes: usize,
    next_id: u64,
    stats: QueueStats,
}

impl OfflineQueue {
    /// An empty queue with these limits and overflow policy.
    ///
    /// Fails with [`Error::InvalidInput`] if the limits do not
    /// [validate](QueueLimits::validate).
    pub fn new(limits: QueueLimits, overflow: Overflow) -> Result<Self> {
        limits.validate()?;
        Ok(Self::empty(limits, overflow))
    }

    fn empty(limits: QueueLimits, overflow: Overflow) -> Self {
        OfflineQueue {
            limits,
            overflow,
            waiting_qos0: VecDeque::new(),
            waiting_qos1: VecDeque::new(),
            inflight: BTreeMap::new(),
            bytes: 0,
            next_id: 1,
            stats: QueueStats::default(),
        }
    }

    /// Queues a message, or applies the [`Overflow`] policy if it does not fit.
    ///
    /// Errors, whatever the policy: [`Error::InvalidInput`] for a QoS other than 0 or 1
    /// (field `"qos"`) or a payload larger than the byte limit (field `"payload"`). With
    /// [`Overflow::Error`], a full queue is [`Error::Unavailable`].
    pub fn push(&mut self, message: Outgoing) -> Result<Pushed> {
        if message.qos > 1 {
            return Err(Error::invalid(
                "qos",
                format!(
                    "QoS {} is not supported; use 0 or 1 (AWS IoT Core has no QoS 2)",
                    message.qos
                ),
            ));
        }
        let size = message.payload.len();
        if size > self.limits.max_bytes {
            return Err(Error::invalid(
                "payload",
                format!(
                    "{size} bytes is more than the offline queue's limit of {} bytes",
                    self.limits.max_bytes
                ),
            ));
        }

        let mut evicted = Vec::new();
        if !self.fits(0, 0, size) {
            match self.overflow {
                Overflow::DropNewest => return Ok(self.refuse(message)),
                Overflow::Error => {
                    self.stats.refused += 1;
                    return Err(Error::Unavailable(format!(
                        "the offline queue is full ({} of {} messages, {} of {} payload bytes); \
                         {size} more bytes do not fit",
                        self.len(),
                        self.limits.max_messages,
                        self.bytes,
                        self.limits.max_bytes
                    )));
                }
                Overflow::DropOldest => match self.eviction_plan(message.qos, size) {
                    Some((qos0, qos1)) => {
                        evicted.reserve(qos0 + qos1);
                        for _ in 0..qos0 {
                            evicted.extend(self.waiting_qos0.pop_front());
                        }
                        for _ in 0..qos1 {
                            evicted.extend(self.waiting_qos1.pop_front());
                        }
                        // Report oldest first, whatever the QoS.
                        evicted.sort_by_key(|m| m.id);
                        for m in &evicted {
                            self.bytes -= m.message.payload.len();
                        }
                        self.stats.evicted += evicted.len() as u64;
                    }
                    None => return Ok(self.refuse(message)),
                },
            }
        }

        let id = MessageId(self.next_id);
        self.next_id += 1;
        self.bytes += size;
        self.stats.pushed += 1;
        let queued = Queued {
            id,
            sends: 0,
            message,
        };
        if queued.message.qos == 0 {
            self.waiting_qos0.push_back(queued);
        } else {
            self.waiting_qos1.push_back(queued);
        }
        debug_assert!(self.len() <= self.limits.max_messages);
        debug_assert!(self.bytes <= self.limits.max_bytes);
        Ok(Pushed::Queued { id, evicted })
    }

    /// Moves the oldest waiting message (requeued ones first) to in flight and returns it, or
    /// `None` if nothing is waiting.
    ///
    /// The message still counts against the limits until [`acked`](Self::acked) or
    /// [`requeue_inflight`](Self::requeue_inflight).
    pub fn next_to_send(&mut self) -> Option<&Queued> {
        let from_qos0 = match (self.waiting_qos0.front(), self.waiting_qos1.front()) {
            (Some(a), Some(b)) => a.id < b.id,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let mut queued = if from_qos0 {
            self.waiting_qos0.pop_front()
        } else {
            self.waiting_qos1.pop_front()
        }?;
        queued.sends = queued.sends.saturating_add(1);
        self.stats.sent += 1;
        let id = queued.id;
        Some(self.inflight.entry(id).or_insert(queued))
    }

    /// Removes a message in flight: its PUBACK arrived (QoS 1), or it was written out (QoS 0).
    ///
    /// Returns the message, or `None` if `id` is not in flight (a duplicate acknowledgement, or
    /// a message evicted or dropped earlier); nothing changes then.
    pub fn acked(&mut self, id: MessageId) -> Option<Queued> {
        let queued = self.inflight.remove(&id)?;
        self.bytes -= queued.message.payload.len();
        self.stats.acked += 1;
        Some(queued)
    }

    /// After a disconnect: in-flight QoS 1 messages go back to the head of the queue, in their
    /// original order, to be sent first; in-flight QoS 0 messages are dropped and returned.
    pub fn requeue_inflight(&mut self) -> Requeued {
        let mut result = Requeued::default();
        // In descending id order, so that pushing to the front restores ascending order.
        while let Some((_, queued)) = self.inflight.pop_last() {
            if queued.message.qos == 0 {
                self.bytes -= queued.message.payload.len();
                result.dropped.push(queued);
            } else {
                self.waiting_qos1.push_front(queued);
                result.requeued += 1;
            }
        }
        result.dropped.reverse();
        self.stats.requeued += result.requeued as u64;
        self.stats.dropped_qos0_on_disconnect += result.dropped.len() as u64;
        result
    }

    /// Messages held, waiting and in flight.
    pub fn len(&self) -> usize {
        self.waiting_qos0.len() + self.waiting_qos1.len() + self.inflight.len()
    }

    /// Whether the queue holds no message, waiting or in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages in flight: handed out by [`next_to_send`](Self::next_to_send), not yet acked.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Payload bytes held, waiting and in flight.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The limits.
    pub fn limits(&self) -> &QueueLimits {
        &self.limits
    }

    /// The overflow policy.
    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    /// The counters so far.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Whether `size` more bytes in one more message fit after freeing `freed_messages` and
    /// `freed_bytes`.
    fn fits(&self, freed_messages: usize, freed_bytes: usize, size: usize) -> bool {
        let messages = self.len() - freed_messages;
        let bytes = self.bytes - freed_bytes;
        messages < self.limits.max_messages && size <= self.limits.max_bytes - bytes
    }

    /// How many waiting QoS 0 and QoS 1 messages, from the head, must go for a message of `qos`
    /// and `size` to fit; `None` if evicting every allowed one is not enough.
    fn eviction_plan(&self, qos: u8, size: usize) -> Option<(usize, usize)> {
        let (mut messages, mut bytes) = (0, 0);
        for (n, m) in self.waiting_qos0.iter().enumerate() {
            messages += 1;
            bytes += m.message.payload.len();
            if self.fits(messages, bytes, size) {
                return Some((n + 1, 0));
            }
        }
        if qos == 0 {
            return None;
        }
        let qos0 = self.waiting_qos0.len();
        for (n, m) in self.waiting_qos1.iter().enumerate() {
            messages += 1;
            bytes += m.message.payload.len();
            if self.fits(messages, bytes, size) {
                return Some((qos0, n + 1));
            }
        }
        None
    }

    fn refuse(&mut self, message: Outgoing) -> Pushed {
        self.stats.refused += 1;
        Pushed::Refused(message)
    }

    /// Every message, in flight first, then waiting in send order (for tests).
    #[cfg(test)]
    fn ids_in_order(&self) -> Vec<(MessageId, u8, bool)> {
        let mut waiting: Vec<&Queued> =
            self.waiting_qos0.iter().chain(&self.waiting_qos1).collect();
        waiting.sort_by_key(|m| m.id);
        self.inflight
            .values()
            .map(|m| (m.id, m.message.qos, true))
            .chain(waiting.into_iter().map(|m| (m.id, m.message.qos, false)))
            .collect()
    }
}

impl Default for OfflineQueue {
    /// The default limits (1000 messages, 1 MiB) with [`Overflow::DropOldest`].
    fn default() -> Self {
        // The default limits are valid.
        Self::empty(QueueLimits::default(), Overflow::default())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn msg(topic: &str, size: usize, qos: u8) -> Outgoing {
        Outgoing::new(topic, vec![b'x'; size], qos)
    }

    fn queue(max_messages: usize, max_bytes: usize, overflow: Overflow) -> OfflineQueue {
        let limits = QueueLimits::new()
            .with_max_messages(max_messages)
            .with_max_bytes(max_bytes);
        OfflineQueue::new(limits, overflow).unwrap()
    }

    fn push_id(q: &mut OfflineQueue, m: Outgoing) -> MessageId {
        match q.push(m).unwrap() {
            Pushed::Queued { id, evicted } => {
                assert!(evicted.is_empty());
                id
            }
            Pushed::Refused(m) => panic!("refused {m:?}"),
        }
    }

    fn topics(evicted: &[Queued]) -> Vec<&str> {
        evicted.iter().map(|m| m.message().topic.as_str()).collect()
    }

    fn drain_topics(q: &mut OfflineQueue) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(m) = q.next_to_send() {
            let (id, topic) = (m.id(), m.message().topic.clone());
            out.push(topic);
            q.acked(id).unwrap();
        }
        out
    }

    #[test]
    fn defaults() {
        let q = OfflineQueue::default();
        assert_eq!(q.limits().max_messages(), 1000);
        assert_eq!(q.limits().max_bytes(), 1 << 20);
        assert_eq!(q.overflow(), Overflow::DropOldest);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
        q.limits().validate().unwrap();
    }

    #[test]
    fn invalid_limits_and_messages_are_rejected() {
        for (limits, field) in [
            (
                QueueLimits::new().with_max_messages(0),
                "queue max_messages",
            ),
            (QueueLimits::new().with_max_bytes(0), "queue max_bytes"),
        ] {
            let err = OfflineQueue::new(limits, Overflow::DropOldest).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidInput { field: f, .. } if f == field),
                "{err}"
            );
        }

        for overflow in [Overflow::DropOldest, Overflow::DropNewest, Overflow::Error] {
            let mut q = queue(10, 100, overflow);
            let err = q.push(msg("t", 101, 1)).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidInput { field, .. } if field == "payload"),
                "{err}"
            );
            let err = q.push(msg("t", 1, 2)).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidInput { field, .. } if field == "qos"),
                "{err}"
            );
            // Exactly the limit is fine, and nothing was counted for the refusals.
            push_id(&mut q, msg("t", 100, 1));
            assert_eq!(q.stats().refused, 0);
            assert_eq!(q.stats().pushed, 1);
        }
    }

    #[test]
    fn fifo_with_ids_increasing() {
        let mut q = queue(10, 1000, Overflow::DropOldest);
        let ids: Vec<MessageId> = (0..5)
            .map(|i| push_id(&mut q, msg(&format!("t/{i}"), 1, (i % 2) as u8)))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(drain_topics(&mut q), ["t/0", "t/1", "t/2", "t/3", "t/4"]);
        assert!(q.is_empty());
    }

    #[test]
    fn drop_oldest_evicts_qos0_first_and_reports() {
        let mut q = queue(4, 1000, Overflow::DropOldest);
        push_id(&mut q, msg("a1", 1, 1));
        push_id(&mut q, msg("b0", 1, 0));
        push_id(&mut q, msg("c1", 1, 1));
        push_id(&mut q, msg("d0", 1, 0));
        // A QoS 1 message takes the oldest QoS 0 one's place.
        let Pushed::Queued { evicted, .. } = q.push(msg("e1", 1, 1)).unwrap() else {
            panic!()
        };
        assert_eq!(topics(&evicted), ["b0"]);
        // Then the next QoS 0 one, then QoS 1 from the oldest.
        let Pushed::Queued { evicted, .. } = q.push(msg("f1", 1, 1)).unwrap() else {
            panic!()
        };
        assert_eq!(topics(&evicted), ["d0"]);
        let Pushed::Queued { evicted, .. } = q.push(msg("g1", 1, 1)).unwrap() else {
            panic!()
        };
        assert_eq!(topics(&evicted), ["a1"]);
        assert_eq!(q.stats().evicted, 3);
        assert_eq!(drain_topics(&mut q), ["c1", "e1", "f1", "g1"]);
    }

    #[test]
    fn drop_oldest_frees_enough_bytes_reporting_oldest_first() {
        let mut q = queue(100, 100, Overflow::DropOldest);
        push_id(&mut q, msg("a1", 30, 1));
        push_id(&mut q, msg("b0", 10, 0));
        push_id(&mut q, msg("c1", 30, 1));
        push_id(&mut q, msg("d0", 10, 0));
        assert_eq!(q.bytes(), 80);
        // 50 bytes need 30 freed: both QoS 0 (20) are not enough, so the oldest QoS 1 goes too.
        let Pushed::Queued { evicted, .. } = q.push(msg("e1", 50, 1)).unwrap() else {
            panic!()
        };
        assert_eq!(topics(&evicted), ["a1", "b0", "d0"]);
        assert_eq!(q.bytes(), 80);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn drop_oldest_new_qos0_never_evicts_qos1() {
        let mut q = queue(2, 1000, Overflow::DropOldest);
        push_id(&mut q, msg("a1", 1, 1));
        push_id(&mut q, msg("b0", 1, 0));
        let Pushed::Queued { evicted, .. } = q.push(msg("c0", 1, 0)).unwrap() else {
            panic!()
        };
        assert_eq!(topics(&evicted), ["b0"]);
        let Pushed::Queued { evicted, .. } = q.push(msg("d1", 1, 1)).unwrap() else {
            panic!()
        };
        assert_eq!(topics(&evicted), ["c0"]);
        // Now only QoS 1 is waiting: a QoS 0 message is refused, nothing is evicted.
        let Pushed::Refused(back) = q.push(msg("e0", 1, 0)).unwrap() else {
            panic!()
        };
        assert_eq!(back.topic, "e0");
        assert_eq!(q.stats().refused, 1);
        assert_eq!(drain_topics(&mut q), ["a1", "d1"]);
    }

    #[test]
    fn drop_oldest_never_evicts_in_flight() {
        let mut q = queue(2, 1000, Overflow::DropOldest);
        push_id(&mut q, msg("a1", 1, 1));
        push_id(&mut q, msg("b1", 1, 1));
        q.next_to_send().unwrap();
        q.next_to_send().unwrap();
        // Everything is in flight: nothing can be evicted, so the new message is refused.
        assert!(matches!(
            q.push(msg("c1", 1, 1)).unwrap(),
            Pushed::Refused(_)
        ));
        assert_eq!(q.len(), 2);
        assert_eq!(q.inflight_len(), 2);
        // Evicting all waiting messages is not tried when it would not be enough.
        let mut q = queue(10, 100, Overflow::DropOldest);
        push_id(&mut q, msg("a1", 60, 1));
        push_id(&mut q, msg("b0", 20, 0));
        q.next_to_send().unwrap();
        assert!(matches!(
            q.push(msg("c1", 50, 1)).unwrap(),
            Pushed::Refused(_)
        ));
        assert_eq!(q.len(), 2);
        assert_eq!(q.stats().evicted, 0);
    }

    #[test]
    fn drop_newest_refuses_and_keeps_the_queue() {
        let mut q = queue(2, 1000, Overflow::DropNewest);
        push_id(&mut q, msg("a0", 1, 0));
        push_id(&mut q, msg("b1", 1, 1));
        let Pushed::Refused(back) = q.push(msg("c1", 1, 1)).unwrap() else {
            panic!()
        };
        assert_eq!(back, msg("c1", 1, 1));
        assert_eq!(q.stats().refused, 1);
        assert_eq!(q.stats().evicted, 0);
        // After one is acked there is room again.
        let id = q.next_to_send().unwrap().id();
        q.acked(id).unwrap();
        push_id(&mut q, msg("c1", 1, 1));
        assert_eq!(drain_topics(&mut q), ["b1", "c1"]);
    }

    #[test]
    fn error_policy_returns_a_typed_error() {
        let mut q = queue(10, 10, Overflow::Error);
        push_id(&mut q, msg("a1", 8, 1));
        let err = q.push(msg("b1", 3, 1)).unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("offline queue is full"), "{err}");
        assert_eq!(q.stats().refused, 1);
        assert_eq!(q.len(), 1);
        // What fits still goes in.
        push_id(&mut q, msg("b1", 2, 1));
        assert_eq!(q.bytes(), 10);
    }

    #[test]
    fn requeue_puts_qos1_back_in_order_and_drops_qos0() {
        let mut q = queue(10, 1000, Overflow::DropOldest);
        for (topic, qos) in [
            ("a1", 1),
            ("b0", 0),
            ("c1", 1),
            ("d0", 0),
            ("e1", 1),
            ("f1", 1),
        ] {
            push_id(&mut q, msg(topic, 2, qos));
        }
        // Four go out; `c1` is acked; the connection drops.
        let sent: Vec<MessageId> = (0..4).map(|_| q.next_to_send().unwrap().id()).collect();
        q.acked(sent[2]).unwrap();
        assert_eq!(q.inflight_len(), 3);
        let requeued = q.requeue_inflight();
        assert_eq!(requeued.requeued, 1);
        assert_eq!(topics(&requeued.dropped), ["b0", "d0"]);
        assert_eq!(q.inflight_len(), 0);
        assert_eq!(q.len(), 3);
        assert_eq!(q.bytes(), 6);
        // New messages queue behind the requeued one.
        push_id(&mut q, msg("g0", 2, 0));
        let first = q.next_to_send().unwrap();
        assert_eq!(first.message().topic, "a1");
        assert_eq!(first.sends(), 2);
        let first = first.id();
        q.acked(first).unwrap();
        assert_eq!(drain_topics(&mut q), ["e1", "f1", "g0"]);
        let stats = q.stats();
        assert_eq!(stats.requeued, 1);
        assert_eq!(stats.dropped_qos0_on_disconnect, 2);
        assert_eq!(stats.pushed, 7);
        assert_eq!(stats.sent, 8);
        assert_eq!(stats.acked, 5);
    }

    #[test]
    fn requeue_keeps_original_order_across_several_disconnects() {
        let mut q = queue(10, 1000, Overflow::DropOldest);
        for i in 0..6 {
            push_id(&mut q, msg(&format!("m{i}"), 1, 1));
        }
        q.next_to_send().unwrap();
        q.next_to_send().unwrap();
        let _ = q.requeue_inflight();
        q.next_to_send().unwrap();
        let third = q.next_to_send().unwrap().id(); // m1 again
        q.next_to_send().unwrap(); // m2
        q.acked(third).unwrap();
        let _ = q.requeue_inflight();
        assert_eq!(drain_topics(&mut q), ["m0", "m2", "m3", "m4", "m5"]);
    }

    #[test]
    fn acking_unknown_or_waiting_ids_changes_nothing() {
        let mut q = queue(10, 1000, Overflow::DropOldest);
        let a = push_id(&mut q, msg("a", 5, 1));
        assert!(q.acked(a).is_none(), "waiting, not in flight");
        assert!(q.acked(MessageId(999)).is_none());
        q.next_to_send().unwrap();
        assert_eq!(q.acked(a).unwrap().into_message().topic, "a");
        assert!(q.acked(a).is_none(), "duplicate PUBACK");
        assert_eq!(q.stats().acked, 1);
        assert!(q.is_empty());
        assert!(q.next_to_send().is_none());
    }

    #[test]
    fn byte_accounting() {
        let mut q = queue(100, 100, Overflow::DropNewest);
        let a = push_id(&mut q, msg("a", 40, 1));
        push_id(&mut q, msg("b", 0, 0));
        push_id(&mut q, msg("c", 60, 0));
        assert_eq!((q.len(), q.bytes()), (3, 100));
        // Full on bytes, but an empty payload still fits the count.
        push_id(&mut q, msg("d", 0, 1));
        assert!(matches!(
            q.push(msg("e", 1, 1)).unwrap(),
            Pushed::Refused(_)
        ));
        // In flight still counts.
        q.next_to_send().unwrap();
        assert_eq!(q.bytes(), 100);
        q.acked(a).unwrap();
        assert_eq!(q.bytes(), 60);
        q.next_to_send().unwrap();
        q.next_to_send().unwrap(); // c, QoS 0
        let requeued = q.requeue_inflight();
        assert_eq!(topics(&requeued.dropped), ["b", "c"]);
        assert_eq!((q.len(), q.bytes()), (1, 0));
    }

    // ----- model-based property test ------------------------------------------------------

    #[derive(Debug, Clone)]
    enum Op {
        Push { qos: u8, size: usize },
        Send,
        Ack(usize),
        AckUnknown,
        Requeue,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..=1, prop_oneof![0usize..8, 0usize..40]).prop_map(|(qos, size)| Op::Push { qos, size }),
            4 => Just(Op::Send),
            3 => any::<usize>().prop_map(Op::Ack),
            1 => Just(Op::AckUnknown),
            1 => Just(Op::Requeue),
        ]
    }

    fn overflow() -> impl Strategy<Value = Overflow> {
        prop_oneof![
            Just(Overflow::DropOldest),
            Just(Overflow::DropNewest),
            Just(Overflow::Error)
        ]
    }

    /// A deliberately naive model: one list of (id, qos, size, in flight) in send order.
    #[derive(Default)]
    struct Model {
        messages: Vec<(MessageId, u8, usize, bool)>,
        next_id: u64,
    }

    impl Model {
        fn count(&self) -> usize {
            self.messages.len()
        }
        fn bytes(&self) -> usize {
            self.messages.iter().map(|m| m.2).sum()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_operations_keep_the_invariants(
            max_messages in 1usize..12,
            max_bytes in 1usize..120,
            overflow in overflow(),
            ops in proptest::collection::vec(op(), 0..150),
        ) {
            let mut q = queue(max_messages, max_bytes, overflow);
            let mut model = Model { next_id: 1, ..Model::default() };
            // Fates of QoS 1 messages.
            let mut pushed_qos1 = BTreeSet::new();
            let mut acked = BTreeSet::new();
            let mut evicted = BTreeSet::new();
            let mut sent_order: Vec<MessageId> = Vec::new();

            for op in ops {
                match op {
                    Op::Push { qos, size } => {
                        let result = q.push(msg("t", size, qos));
                        if size > max_bytes {
                            prop_assert!(result.is_err());
                            continue;
                        }
                        let fits = |count: usize, bytes: usize| {
                            count < max_messages && bytes + size <= max_bytes
                        };
                        let mut to_evict = Vec::new();
                        let mut ok = fits(model.count(), model.bytes());
                        if !ok && overflow == Overflow::DropOldest {
                            // Waiting candidates in order: QoS 0 oldest first, then QoS 1.
                            let candidates: Vec<usize> = (0..model.messages.len())
                                .filter(|&i| !model.messages[i].3 && model.messages[i].1 == 0)
                                .chain((0..model.messages.len()).filter(|&i| {
                                    qos == 1 && !model.messages[i].3 && model.messages[i].1 == 1
                                }))
                                .collect();
                            let (mut count, mut bytes) = (model.count(), model.bytes());
                            for i in candidates {
                                to_evict.push(i);
                                count -= 1;
                                bytes -= model.messages[i].2;
                                if fits(count, bytes) {
                                    ok = true;
                                    break;
                                }
                            }
                            if !ok {
                                to_evict.clear();
                            }
                        }
                        match result {
                            Ok(Pushed::Queued { id, evicted: gone }) => {
                                prop_assert!(ok);
                                prop_assert_eq!(id, MessageId(model.next_id));
                                to_evict.sort_unstable();
                                let expected: Vec<MessageId> =
                                    to_evict.iter().map(|&i| model.messages[i].0).collect();
                                let got: Vec<MessageId> = gone.iter().map(Queued::id).collect();
                                prop_assert_eq!(&got, &expected);
                                for g in &gone {
                                    if g.message().qos == 1 {
                                        evicted.insert(g.id());
                                    }
                                }
                                for &i in to_evict.iter().rev() {
                                    model.messages.remove(i);
                                }
                                model.messages.push((id, qos, size, false));
                                model.next_id += 1;
                                if qos == 1 {
                                    pushed_qos1.insert(id);
                                }
                            }
                            Ok(Pushed::Refused(back)) => {
                                prop_assert!(!ok);
                                prop_assert!(overflow != Overflow::Error);
                                prop_assert_eq!(back.payload.len(), size);
                            }
                            Err(e) => {
                                prop_assert!(!ok);
                                prop_assert_eq!(overflow, Overflow::Error);
                                prop_assert!(matches!(e, Error::Unavailable(_)));
                            }
                        }
                    }
                    Op::Send => {
                        let expected = model.messages.iter_mut().find(|m| !m.3);
                        match (q.next_to_send(), expected) {
                            (Some(got), Some(m)) => {
                                prop_assert_eq!(got.id(), m.0);
                                m.3 = true;
                                sent_order.push(m.0);
                            }
                            (None, None) => {}
                            (got, m) => prop_assert!(false, "sent {:?}, model {:?}", got, m),
                        }
                    }
                    Op::Ack(pick) => {
                        let inflight: Vec<usize> =
                            (0..model.messages.len()).filter(|&i| model.messages[i].3).collect();
                        if inflight.is_empty() {
                            continue;
                        }
                        let i = inflight[pick % inflight.len()];
                        let (id, qos, ..) = model.messages.remove(i);
                        prop_assert_eq!(q.acked(id).map(|m| m.id()), Some(id));
                        if qos == 1 {
                            acked.insert(id);
                        }
                    }
                    Op::AckUnknown => {
                        let before = (q.len(), q.bytes(), q.stats());
                        // An id never issued, and a waiting one: neither is in flight.
                        prop_assert!(q.acked(MessageId(model.next_id + 1_000)).is_none());
                        if let Some(m) = model.messages.iter().find(|m| !m.3) {
                            prop_assert!(q.acked(m.0).is_none());
                        }
                        prop_assert_eq!(before, (q.len(), q.bytes(), q.stats()));
                    }
                    Op::Requeue => {
                        let requeued = q.requeue_inflight();
                        let dropped: Vec<MessageId> = model
                            .messages
                            .iter()
                            .filter(|m| m.3 && m.1 == 0)
                            .map(|m| m.0)
                            .collect();
                        let back = model.messages.iter().filter(|m| m.3 && m.1 == 1).count();
                        prop_assert_eq!(
                            requeued.dropped.iter().map(Queued::id).collect::<Vec<_>>(),
                            dropped
                        );
                        prop_assert_eq!(requeued.requeued, back);
                        // In flight were the head of the list; QoS 1 ones stay there.
                        model.messages.retain(|m| !(m.3 && m.1 == 0));
                        for m in &mut model.messages {
                            m.3 = false;
                        }
                    }
                }

                // Limits, and the model's accounting.
                prop_assert!(q.len() <= max_messages);
                prop_assert!(q.bytes() <= max_bytes);
                prop_assert_eq!(q.len(), model.count());
                prop_assert_eq!(q.bytes(), model.bytes());
                prop_assert_eq!(q.is_empty(), model.count() == 0);
                prop_assert_eq!(q.inflight_len(), model.messages.iter().filter(|m| m.3).count());
                let order = q.ids_in_order();
                let expected: Vec<(MessageId, u8, bool)> =
                    model.messages.iter().map(|m| (m.0, m.1, m.3)).collect();
                prop_assert_eq!(&order, &expected);
                // Ids increase along the queue: FIFO, with requeued messages in original order.
                prop_assert!(order.windows(2).all(|w| w[0].0 < w[1].0));
                let stats = q.stats();
                prop_assert_eq!(
                    stats.pushed,
                    stats.acked + stats.evicted + stats.dropped_qos0_on_disconnect + q.len() as u64
                );
                prop_assert_eq!(stats.sent, sent_order.len() as u64);
                // Every QoS 1 message pushed is acked, still held, or reported evicted: exactly one.
                let held: BTreeSet<MessageId> =
                    order.iter().filter(|m| m.1 == 1).map(|m| m.0).collect();
                prop_assert!(acked.is_disjoint(&held));
                prop_assert!(acked.is_disjoint(&evicted));
                prop_assert!(held.is_disjoint(&evicted));
                let accounted: BTreeSet<MessageId> =
                    acked.iter().chain(&held).chain(&evicted).copied().collect();
                prop_assert_eq!(&accounted, &pushed_qos1);
            }
        }
    }
}
