//! How bytes move between a device and its hub: the protocol pieces of the device's MQTT
//! client that need no network, so they can be tested exhaustively on their own.
//!
//! - [`Backoff`]: when to try reconnecting — capped exponential backoff with *full jitter*
//!   (AWS IoT Device SDK defaults: 1 s base, 120 s cap, reset after 30 s connected), so a fleet
//!   that lost its hub at once does not come back at once, and a connection that drops right
//!   after it is accepted does not make the device hammer the hub. Randomness is injectable
//!   through [`JitterSource`]; time is passed in, never read.
//! - [`OfflineQueue`]: what to send once connected — a queue of [`Outgoing`] messages bounded by
//!   count and payload bytes ([`QueueLimits`]), with a chosen [`Overflow`] policy, that keeps
//!   QoS 1 messages until they are acknowledged and puts them back first after a disconnect.
//!   Every message that leaves it undelivered is reported to the caller.
//!
//! Together, in the loop that owns the connection:
//!
//! ```
//! use std::time::Instant;
//! use fleetkit::protocol::{Backoff, OfflineQueue, Outgoing};
//!
//! let mut backoff = Backoff::default();
//! let mut queue = OfflineQueue::default();
//!
//! // Offline: the application's messages wait.
//! let _ = queue.push(Outgoing::new("dt/sensor-1/temp", "21.5", 1))?;
//!
//! // Connecting failed: wait a jittered, growing delay before the next try.
//! let _wait = backoff.next_delay();
//!
//! // Connected: send what waited; the PUBACK removes it.
//! backoff.connected(Instant::now());
//! while let Some(message) = queue.next_to_send() {
//!     let id = message.id();
//!     // client.publish(&message.message().topic, …) in the real loop.
//!     let _ = queue.acked(id);
//! }
//!
//! // Disconnected: unacknowledged QoS 1 messages go back to the head of the queue.
//! backoff.disconnected(Instant::now());
//! let _ = queue.requeue_inflight();
//! # Ok::<(), fleetkit::Error>(())
//! ```

mod backoff;
mod queue;

pub use backoff::{Backoff, BackoffConfig, JitterSource, SystemJitter};
pub use queue::{
    MessageId, OfflineQueue, Outgoing, Overflow, Pushed, QueueLimits, QueueStats, Queued, Requeued,
};
