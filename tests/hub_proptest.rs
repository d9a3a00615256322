//! Property tests of the local hub's MQTT packet loop, in process over `tokio::io::duplex`
//! (`LocalHub::serve_stream`): the stable-toolchain counterpart of `fuzz/fuzz_targets/hub_packets.rs`.
//!
//! - Arbitrary bytes (random, or valid packets with random bytes mixed in) after a valid CONNECT
//!   never panic the hub; once the client closes, the serve task ends, the connection is
//!   unregistered and its clean session's subscriptions are gone.
//! - Random *valid* packet sequences get protocol-correct answers, checked step by step against
//!   a reference model of the client's subscriptions.
#![cfg(feature = "local")]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use fleetkit::local::{DeviceRecord, LocalHub};
use fleetkit::pki::Certificate;
use fleetkit::policy::{AttachTarget, PolicyDocument};
use proptest::prelude::*;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    Connect, Packet, PubAck, Publish, Subscribe, SubscribeFilter, SubscribeReasonCode, Unsubscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const DEVICE: &str = "prop-dev";
const OPEN_POLICY: &str = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}"#;
/// How long one step may take before it counts as a hang.
const STEP: Duration = Duration::from_secs(2);

/// One hub (and the runtime it lives on) per test function, shared by its cases.
struct Fixture {
    rt: Runtime,
    hub: LocalHub,
    leaf: Certificate,
    next_client: AtomicU64,
}

impl Fixture {
    fn get(cell: &'static OnceLock<Fixture>) -> &'static Fixture {
        cell.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("tokio runtime");
            let (hub, leaf) = rt.block_on(async {
                let hub = LocalHub::builder().start().await.expect("hub starts");
                hub.put_policy("open", &PolicyDocument::from_json(OPEN_POLICY).unwrap())
                    .unwrap();
                hub.create_device(DeviceRecord::new(DEVICE)).unwrap();
                hub.attach_policy("open", AttachTarget::Device(DEVICE.into()))
                    .unwrap();
                let cred = hub.issue_device_credential(DEVICE).unwrap();
                (hub, cred.leaf().clone())
            });
            Fixture {
                rt,
                hub,
                leaf,
                next_client: AtomicU64::new(1),
            }
        })
    }

    /// A client id no earlier case used.
    fn client_id(&self) -> String {
        format!(
            "{DEVICE}-{}",
            self.next_client.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Starts serving a new in-memory connection; returns the client's halves and the task.
    fn open(
        &'static self,
    ) -> (
        ReadHalf<DuplexStream>,
        WriteHalf<DuplexStream>,
        JoinHandle<()>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(self.hub.serve_stream(server, vec![self.leaf.clone()]));
        let (rd, wr) = tokio::io::split(client);
        (rd, wr, serve)
    }
}

fn encode(packets: &[Packet]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for p in packets {
        p.write(&mut buf, usize::MAX).expect("encodes");
    }
    buf.to_vec()
}

/// CONNECT with a clean session and a keep-alive no case lasts long enough to reach.
fn connect(client_id: &str) -> Packet {
    let mut c = Connect::new(client_id);
    c.keep_alive = 60;
    Packet::Connect(c)
}

/// Waits for the serve task: it must end within [`STEP`], without panicking.
async fn finished(serve: JoinHandle<()>) -> Result<(), TestCaseError> {
    match timeout(STEP, serve).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.is_panic() => Err(TestCaseError::fail(format!(
            "the hub panicked: {:?}",
            e.into_panic()
                .downcast_ref::<String>()
                .map(String::as_str)
                .unwrap_or("(non-string payload)")
        ))),
        Ok(Err(e)) => Err(TestCaseError::fail(format!("serve task failed: {e}"))),
        Err(_) => Err(TestCaseError::fail(format!(
            "serve task still running {STEP:?} after the client closed"
        ))),
    }
}

/// Decodes everything the hub sent; fails on bytes that are not whole packets.
fn decode_all(bytes: &[u8]) -> Result<Vec<Packet>, TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while !buf.is_empty() {
        match Packet::read(&mut buf, usize::MAX) {
            Ok(p) => out.push(p),
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "the hub sent something that is not a packet ({e}) after {out:?}"
                )));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Topic names: 1 to 3 levels from a small alphabet (never `$`, never wildcards).
fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c", ""]), 1..=3)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("non-empty", |t| !t.is_empty())
}

/// Valid topic filters over the same alphabet: `+` anywhere, `#` only as the last level.
fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "+", ""]), 0..=3),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            levels.join("/")
        })
        .prop_filter("non-empty", |f| !f.is_empty())
}

fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// A valid packet a client may send after CONNECT.
#[derive(Clone, Debug)]
enum Op {
    Subscribe(u16, Vec<(String, u8)>),
    /// topic, QoS (0 or 1), packet id (QoS 1), payload
    Publish(String, u8, u16, Vec<u8>),
    Unsubscribe(u16, Vec<String>),
    PingReq,
    PubAck(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..=u16::MAX, prop::collection::vec((filter(), 0..=2u8), 1..=3))
            .prop_map(|(id, f)| Op::Subscribe(id, f)),
        5 => (topic(), 0..=1u8, 1..=u16::MAX, prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(t, q, id, p)| Op::Publish(t, q, id, p)),
        2 => (1..=u16::MAX, prop::collection::vec(filter(), 1..=3))
            .prop_map(|(id, f)| Op::Unsubscribe(id, f)),
        1 => Just(Op::PingReq),
        1 => any::<u16>().prop_map(Op::PubAck),
    ]
}

impl Op {
    fn packet(&self) -> Packet {
        match self {
            Op::Subscribe(id, filters) => Packet::Subscribe(Subscribe {
                pkid: *id,
                filters: filters
                    .iter()
                    .map(|(f, q)| SubscribeFilter::new(f.clone(), qos_of(*q)))
                    .collect(),
            }),
            Op::Publish(topic, q, id, payload) => {
                let mut p = Publish::new(topic.as_str(), qos_of(*q), payload.clone());
                if *q > 0 {
                    p.pkid = *id;
                }
                Packet::Publish(p)
            }
            Op::Unsubscribe(id, filters) => Packet::Unsubscribe(Unsubscribe {
                pkid: *id,
                topics: filters.clone(),
            }),
            Op::PingReq => Packet::PingReq,
            Op::PubAck(id) => Packet::PubAck(PubAck::new(*id)),
        }
    }
}

/// Bytes for the robustness property: valid packets, raw bytes, and packets with a byte changed.
fn noisy_stream() -> impl Strategy<Value = Vec<u8>> {
    let chunk = prop_oneof![
        3 => op().prop_map(|o| encode(&[o.packet()])),
        2 => prop::collection::vec(any::<u8>(), 0..24),
        2 => (op(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(o, at, b)| {
            let mut bytes = encode(&[o.packet()]);
            let i = at.index(bytes.len());
            bytes[i] = b;
            bytes
        }),
        1 => Just(encode(&[Packet::Disconnect])),
    ];
    prop::collection::vec(chunk, 0..12).prop_map(|chunks| chunks.concat())
}

// ---------------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------------

/// MQTT 3.1.1 §4.7 matching for `$`-free topics, level by level.
fn reference_matches(filter: &str, topic: &str) -> bool {
    fn go(f: &[&str], t: &[&str]) -> bool {
        match (f.split_first(), t.split_first()) {
            (Some((&"#", _)), _) => true,
            (Some((&"+", fr)), Some((_, tr))) => go(fr, tr),
            (Some((fl, fr)), Some((tl, tr))) => fl == tl && go(fr, tr),
            (None, None) => true,
            _ => false,
        }
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    go(&f, &t)
}

/// What the hub must send in answer to one packet.
#[derive(Debug, PartialEq)]
enum Expect {
    PubAck(u16),
    SubAck(u16, Vec<SubscribeReasonCode>),
    UnsubAck(u16),
    PingResp,
    /// A delivery back to the client: topic, payload, QoS.
    Delivery(String, Vec<u8>, QoS),
}

impl Expect {
    fn matches(&self, p: &Packet) -> bool {
        match (self, p) {
            (Expect::PubAck(id), Packet::PubAck(a)) => a.pkid == *id,
            (Expect::SubAck(id, codes), Packet::SubAck(a)) => {
                a.pkid == *id && a.return_codes == *codes
            }
            (Expect::UnsubAck(id), Packet::UnsubAck(a)) => a.pkid == *id,
            (Expect::PingResp, Packet::PingResp) => true,
            (Expect::Delivery(topic, payload, qos), Packet::Publish(p)) => {
                p.topic == *topic
                    && p.payload[..] == payload[..]
                    && p.qos == *qos
                    && !p.retain
                    && !p.dup
                    && (p.qos == QoS::AtMostOnce || p.pkid != 0)
            }
            _ => false,
        }
    }
}

/// The client's subscriptions: filter → granted QoS (QoS 2 is granted as 1).
#[derive(Default, Debug)]
struct Model {
    subscriptions: BTreeMap<String, u8>,
}

impl Model {
    fn step(&mut self, op: &Op) -> Vec<Expect> {
        match op {
            Op::Subscribe(id, filters) => {
                let mut codes = Vec::new();
                for (f, q) in filters {
                    let granted = (*q).min(1);
                    self.subscriptions.insert(f.clone(), granted);
                    codes.push(SubscribeReasonCode::Success(qos_of(granted)));
                }
                vec![Expect::SubAck(*id, codes)]
            }
            Op::Publish(topic, q, id, payload) => {
                let mut out = Vec::new();
                if *q == 1 {
                    out.push(Expect::PubAck(*id));
                }
                // One delivery per client, at the highest QoS of its matching subscriptions.
                let best = self
                    .subscriptions
                    .iter()
                    .filter(|(f, _)| reference_matches(f, topic))
                    .map(|(_, &g)| g)
                    .max();
                if let Some(g) = best {
                    out.push(Expect::Delivery(
                        topic.clone(),
                        payload.clone(),
                        qos_of(g.min(*q)),
                    ));
                }
                out
            }
            Op::Unsubscribe(id, filters) => {
                for f in filters {
                    self.subscriptions.remove(f);
                }
                vec![Expect::UnsubAck(*id)]
            }
            Op::PingReq => vec![Expect::PingResp],
            Op::PubAck(_) => Vec::new(),
        }
    }
}

/// The client side of a lockstep conversation: decodes packets and acknowledges QoS 1
/// deliveries at once, as a client library would.
struct Client {
    rd: ReadHalf<DuplexStream>,
    wr: WriteHalf<DuplexStream>,
    buf: BytesMut,
}

impl Client {
    async fn send(&mut self, packet: &Packet) -> Result<(), TestCaseError> {
        self.wr
            .write_all(&encode(std::slice::from_ref(packet)))
            .await
            .map_err(|e| TestCaseError::fail(format!("write {packet:?}: {e}")))
    }

    async fn next(&mut self) -> Result<Packet, TestCaseError> {
        loop {
            match Packet::read(&mut self.buf, usize::MAX) {
                Ok(p) => return Ok(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(TestCaseError::fail(format!("hub sent garbage: {e}"))),
            }
            let n = timeout(STEP, self.rd.read_buf(&mut self.buf))
                .await
                .map_err(|_| TestCaseError::fail("no answer from the hub"))?
                .map_err(|e| TestCaseError::fail(format!("read: {e}")))?;
            if n == 0 {
                return Err(TestCaseError::fail("the hub closed the connection"));
            }
        }
    }

    /// Reads until every expectation is met, in any order; fails on anything else.
    async fn expect(&mut self, mut expected: Vec<Expect>, after: &Op) -> Result<(), TestCaseError> {
        while !expected.is_empty() {
            let p = self.next().await.map_err(|e| {
                TestCaseError::fail(format!("{e} after {after:?}, still expecting {expected:?}"))
            })?;
            let Some(i) = expected.iter().position(|e| e.matches(&p)) else {
                return Err(TestCaseError::fail(format!(
                    "unexpected {p:?} after {after:?}, expecting {expected:?}"
                )));
            };
            expected.swap_remove(i);
            if let Packet::Publish(p) = &p
                && p.qos == QoS::AtLeastOnce
            {
                self.send(&Packet::PubAck(PubAck::new(p.pkid))).await?;
            }
        }
        Ok(())
    }
}

static NOISE_HUB: OnceLock<Fixture> = OnceLock::new();
static VALID_HUB: OnceLock<Fixture> = OnceLock::new();

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES raises it for a deeper run.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        .. ProptestConfig::default()
    })]

    /// Whatever follows a valid CONNECT, the hub does not panic, answers only with whole
    /// packets (CONNACK first), and once the client has closed, the serve task ends and the
    /// connection and its clean session are gone.
    #[test]
    fn arbitrary_bytes_after_connect(noise in noisy_stream()) {
        let f = Fixture::get(&NOISE_HUB);
        f.rt.block_on(async {
            let (mut rd, mut wr, serve) = f.open();
            let mut input = encode(&[connect(&f.client_id())]);
            input.extend_from_slice(&noise);
            let replies = timeout(STEP, async {
                let write = async {
                    // The hub may close first (a protocol violation): not a failure.
                    let _ = wr.write_all(&input).await;
                    let _ = wr.shutdown().await;
                };
                let read = async {
                    let mut buf = Vec::new();
                    let _ = rd.read_to_end(&mut buf).await;
                    buf
                };
                tokio::join!(write, read).1
            })
            .await;
            drop((rd, wr));
            finished(serve).await?;
            if let Ok(replies) = replies {
                let packets = decode_all(&replies)?;
                prop_assert!(
                    matches!(packets.first(), Some(Packet::ConnAck(a))
                        if a.code == rumqttc::mqttbytes::v4::ConnectReturnCode::Success),
                    "first answer is not CONNACK 0: {:?}", packets.first()
                );
                for p in &packets[1..] {
                    prop_assert!(
                        matches!(p, Packet::Publish(_) | Packet::PubAck(_) | Packet::SubAck(_)
                            | Packet::UnsubAck(_) | Packet::PingResp),
                        "a server does not send {:?}", p
                    );
                }
            }
            prop_assert_eq!(f.hub.connection_count(), 0);
            prop_assert_eq!(f.hub.subscription_count(), 0);
            Ok(())
        })?;
    }

    /// Valid packets get protocol-correct answers: PUBACK per QoS 1 PUBLISH, SUBACK with one
    /// code per filter, UNSUBACK, PINGRESP, and every message published to a topic the client
    /// is subscribed to comes back once, at the lower of the two QoS — and nothing else comes.
    #[test]
    fn valid_sequences_get_correct_answers(ops in prop::collection::vec(op(), 1..40)) {
        let f = Fixture::get(&VALID_HUB);
        f.rt.block_on(async {
            let (rd, wr, serve) = f.open();
            let mut client = Client { rd, wr, buf: BytesMut::new() };
            client.send(&connect(&f.client_id())).await?;
            match client.next().await? {
                Packet::ConnAck(a) => prop_assert_eq!(
                    a.code, rumqttc::mqttbytes::v4::ConnectReturnCode::Success
                ),
                other => prop_assert!(false, "expected CONNACK, got {:?}", other),
            }
            let mut model = Model::default();
            for op in &ops {
                client.send(&op.packet()).await?;
                let expected = model.step(op);
                client.expect(expected, op).await?;
            }
            // A last PINGREQ flushes out anything the hub sent beyond what the model expects.
            client.send(&Packet::PingReq).await?;
            client.expect(vec![Expect::PingResp], &Op::PingReq).await?;
            client.send(&Packet::Disconnect).await?;
            let _ = client.wr.shutdown().await;
            let mut rest = Vec::new();
            timeout(STEP, client.rd.read_to_end(&mut rest))
                .await
                .map_err(|_| TestCaseError::fail("the hub did not close after DISCONNECT"))?
                .map_err(|e| TestCaseError::fail(format!("read: {e}")))?;
            client.buf.extend_from_slice(&rest);
            prop_assert!(client.buf.is_empty(), "sent after DISCONNECT: {:?}", decode_all(&client.buf));
            drop(client);
            finished(serve).await?;
            prop_assert_eq!(f.hub.connection_count(), 0);
            prop_assert_eq!(f.hub.subscription_count(), 0);
            Ok(())
        })?;
    }
}

/// The model itself: matching per §4.7 on the examples of the specification.
#[test]
fn reference_matching_examples() {
    for (filter, topic, want) in [
        ("a/#", "a", true),
        ("a/#", "a/b/c", true),
        ("a/+", "a/", true),
        ("a/+", "a", false),
        ("+/+", "/a", true),
        ("+", "/a", false),
        ("#", "a//b", true),
        ("a//b", "a//b", true),
        ("a/b", "a/b/c", false),
    ] {
        assert_eq!(
            reference_matches(filter, topic),
            want,
            "{filter} vs {topic}"
        );
    }
}

/// Retained messages sent in answer to a SUBSCRIBE respect the in-flight window like every
/// other QoS 1 delivery: the rest wait for PUBACKs.
///
/// Regression: the SUBSCRIBE handler once sent every matching retained message at once, so a
/// client that did not acknowledge got them all, and with 65,536 or more `allocate_pkid` found
/// every packet id in flight and spun forever.
#[test]
fn retained_on_subscribe_respects_the_inflight_window() {
    const WINDOW: usize = 4;
    const RETAINED: usize = 10;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut limits = fleetkit::local::Limits::default();
        limits.inflight_window = WINDOW;
        let hub = LocalHub::builder().limits(limits).start().await.unwrap();
        hub.put_policy("open", &PolicyDocument::from_json(OPEN_POLICY).unwrap())
            .unwrap();
        hub.create_device(DeviceRecord::new(DEVICE)).unwrap();
        hub.attach_policy("open", AttachTarget::Device(DEVICE.into()))
            .unwrap();
        let leaf = hub.issue_device_credential(DEVICE).unwrap().leaf().clone();
        let pipe = || {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let (rd, wr) = tokio::io::split(client);
            let client = Client {
                rd,
                wr,
                buf: BytesMut::new(),
            };
            (client, server)
        };

        // A publisher leaves RETAINED retained QoS 1 messages.
        let (mut publisher, server) = pipe();
        let serve = hub.serve_stream(server, vec![leaf.clone()]);
        let publishing = async {
            publisher.send(&connect("publisher")).await?;
            for i in 0..RETAINED {
                let mut p = Publish::new(format!("r/{i}"), QoS::AtLeastOnce, vec![1]);
                p.pkid = i as u16 + 1;
                p.retain = true;
                publisher.send(&Packet::Publish(p)).await?;
            }
            publisher.send(&Packet::Disconnect).await?;
            let mut rest = Vec::new();
            publisher.rd.read_to_end(&mut rest).await.unwrap();
            Ok::<(), TestCaseError>(())
        };
        let (published, ()) = tokio::join!(publishing, serve);
        published.unwrap();

        // A subscriber that does not acknowledge may have at most WINDOW of them in flight.
        let (mut subscriber, server) = pipe();
        let serve = hub.serve_stream(server, vec![leaf.clone()]);
        let subscribing = async {
            subscriber.send(&connect("subscriber")).await?;
            subscriber
                .send(&Packet::Subscribe(Subscribe::new("r/#", QoS::AtLeastOnce)))
                .await?;
            subscriber.send(&Packet::PingReq).await?;
            let mut unacked = Vec::new();
            loop {
                match subscriber.next().await? {
                    Packet::Publish(p) => unacked.push(p.pkid),
                    Packet::PingResp => break,
                    _ => {}
                }
            }
            assert!(
                unacked.len() <= WINDOW,
                "{} QoS 1 messages in flight, window {WINDOW}",
                unacked.len()
            );
            // Acknowledging releases the rest.
            let mut received = unacked.len();
            while received < RETAINED {
                for id in unacked.drain(..) {
                    subscriber.send(&Packet::PubAck(PubAck::new(id))).await?;
                }
                if let Packet::Publish(p) = subscriber.next().await? {
                    unacked.push(p.pkid);
                    received += 1;
                }
            }
            subscriber.send(&Packet::Disconnect).await?;
            Ok::<(), TestCaseError>(())
        };
        let (subscribed, ()) = tokio::join!(subscribing, serve);
        subscribed.unwrap();
    });
}
