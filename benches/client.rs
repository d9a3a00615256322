//! Telemetry throughput of [`DeviceClient`] beside raw rumqttc doing the same publishes, in the
//! same run, printed as a ratio.
//!
//! `cargo bench --bench client`.
//!
//! Both sides publish to a [`LocalHub`] in this process (on its own tokio runtime, threads
//! `bench-hub`), a **fresh hub for every run**, with mutual TLS and the policy engine on: one
//! device `bench-device` in group `fleet`, the built-in
//! [`native_device`](fleetkit::policy::builtin::native_device) policy attached to the group, a
//! credential issued by the hub's CA. The clients run on a second runtime (threads
//! `bench-client`):
//!
//! - **fleetkit**: `DeviceClient` with the native dialect and its defaults (in-flight window
//!   64, persistent session, offline queue of 1,000 messages). Each message is
//!   [`queue_telemetry`](DeviceClient::queue_telemetry) and its [`Receipt`] is awaited.
//! - **rumqttc**: `AsyncClient` + `EventLoop` with the options `DeviceClient` gives its own
//!   rumqttc (in-flight 64, request channel 64 + 64, persistent session, keep-alive 30 s,
//!   manual acks, TCP_NODELAY) and the same TLS configuration
//!   ([`fleetkit::device::tls_config`]). A task calls `AsyncClient::publish` on
//!   `devices/bench-device/telemetry`; the bench polls the event loop, counting
//!   `Incoming::PubAck`.
//!
//! Each run sends [`PAYLOAD`]-byte payloads, QoS 1, `CLIENT_BENCH_MSGS` messages, timed from
//! the first publish to the last PUBACK. On both sides the producer runs at most [`AHEAD`]
//! messages ahead of the acknowledgements (a receipt, or a PUBACK, lets the next one go), so
//! both keep the 64-message window full without either holding an unbounded backlog. Before
//! the clock starts, each side connects and has one message acknowledged (for `DeviceClient`
//! this also means its subscriptions are in place).
//!
//! **QoS 0** (unless `CLIENT_BENCH_QOS0=0`): the same with QoS 0 messages, a receipt (or an
//! `Outgoing::Publish` event) letting the next one go, then one QoS 1 message as a fence: the
//! clock stops at its PUBACK, when the hub has taken every message before it.
//!
//! Runs alternate fleetkit, rumqttc, fleetkit, rumqttc, … for `CLIENT_BENCH_ROUNDS` rounds,
//! after an unreported warm-up of each. Printed: msgs/s per run, each round's ratio, and the CPU
//! time the client runtime's and the hub runtime's threads used per message (µs/msg); then the
//! medians, the ratio of the medians (fleetkit / rumqttc), the median of the rounds' ratios
//! (two runs back to back share the machine's load of the moment, so it moves less when other
//! work comes and goes) and every round's ratio.
//!
//! Goal from the issue: `DeviceClient` at ≥ 0.9× raw rumqttc's QoS 1 throughput.
//!
//! Environment: `CLIENT_BENCH_MSGS` (per run, default 100,000: 20,000 take about 0.1 s, too
//! short for a noisy machine), `CLIENT_BENCH_ROUNDS` (default 5), `CLIENT_BENCH_QOS0` (0 skips
//! the QoS 0 runs). The whole bench takes about 15 s on two cores.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetkit::device::{DeviceClient, Dialect, NativeDialect, Receipt, Telemetry};
use fleetkit::identity::{DeviceId, X509Credential};
use fleetkit::local::{DeviceRecord, LocalHub};
use fleetkit::pki::Certificate;
use fleetkit::policy::{AttachTarget, builtin};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

const DEVICE: &str = "bench-device";
const TOPIC: &str = "devices/bench-device/telemetry";
const PAYLOAD: usize = 256;
/// `DeviceClient`'s default in-flight window; raw rumqttc's `inflight` too.
const WINDOW: u16 = 64;
/// How far the producer may run ahead of the acknowledgements, on both sides (below the
/// offline queue's default of 1,000 messages, so nothing is evicted).
const AHEAD: usize = 256;
/// A run fails after this long.
const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// Client runtime threads: their CPU time is the client's.
const CLIENT_THREADS: &str = "bench-client";
/// Hub runtime threads.
const HUB_THREADS: &str = "bench-hub";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test --benches` runs bench targets without `--bench`: nothing to check here.
    if !std::env::args().any(|a| a == "--bench") {
        println!("client bench: run it with `cargo bench --bench client`");
        return;
    }
    let msgs = env_usize("CLIENT_BENCH_MSGS", 100_000).max(1);
    let rounds = env_usize("CLIENT_BENCH_ROUNDS", 5).max(1);
    let qos0 = env_usize("CLIENT_BENCH_QOS0", 1) != 0;
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("tokio runtime")
    };
    let bench = Bench {
        hub_rt: runtime(HUB_THREADS),
        client_rt: runtime(CLIENT_THREADS),
        msgs,
    };
    let started = Instant::now();
    println!(
        "== fleetkit DeviceClient vs raw rumqttc 0.25: telemetry to the local hub over mutual TLS, \
         policy on\n1 device, {PAYLOAD} B payloads, {msgs} msgs per run, in-flight window \
         {WINDOW}, producer at most {AHEAD} msgs ahead of the acknowledgements, a fresh hub per \
         run, {rounds} rounds; load average before: {} on {} CPUs",
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut summaries = Vec::new();
    for qos in [1u8, 0] {
        if qos == 0 && !qos0 {
            continue;
        }
        summaries.push((qos, bench.alternate(qos, rounds)));
    }

    println!("\n== Summary (medians over {rounds} rounds; ratio = fleetkit / rumqttc)");
    println!(
        "{:<4} {:>15} {:>15} {:>7} {:>12}  {:>22}  {:>22}  per-round ratios",
        "qos",
        "fleetkit msgs/s",
        "rumqttc msgs/s",
        "ratio",
        "round ratio",
        "client µs/msg fk / raw",
        "hub µs/msg fk / raw"
    );
    for (qos, s) in &summaries {
        println!(
            "{qos:<4} {:>15.0} {:>15.0} {:>7.2} {:>12.2}  {:>10.2} / {:<9.2}  {:>10.2} / {:<9.2}  {}",
            s.fleetkit.rate,
            s.raw.rate,
            s.fleetkit.rate / s.raw.rate,
            median(s.round_ratios.clone()),
            s.fleetkit.client_us,
            s.raw.client_us,
            s.fleetkit.hub_us,
            s.raw.hub_us,
            s.round_ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        if s.failures > 0 {
            println!("     ({} runs failed: see above)", s.failures);
        }
    }
    if let Some((_, s)) = summaries.iter().find(|(q, _)| *q == 1) {
        let ratio = s.fleetkit.rate / s.raw.rate;
        println!(
            "goal: DeviceClient >= 0.9x raw rumqttc at QoS 1: {} ({ratio:.2}x; median of the \
             rounds' ratios {:.2}x)",
            yes(s.failures == 0 && ratio >= 0.9),
            median(s.round_ratios.clone())
        );
    }
    println!(
        "(ratio: of the medians; round ratio: the median of the rounds' ratios. µs/msg: CPU time \
         of the client's runtime threads and of the hub's, per message; on loopback the sender's \
         write also pays for much of the receiver's TCP work. The hub, the client and anything \
         else on the machine share the CPUs: load average now {}.) Total bench time {:.0} s.",
        load_average(),
        started.elapsed().as_secs_f64()
    );
}

struct Bench {
    hub_rt: Runtime,
    client_rt: Runtime,
    msgs: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Fleetkit,
    Raw,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Fleetkit => "fleetkit",
            Side::Raw => "rumqttc",
        }
    }
}

/// One measured run.
struct Run {
    elapsed: Duration,
    /// CPU seconds of the client's and the hub's runtime threads during the timed part.
    client_cpu: f64,
    hub_cpu: f64,
}

/// What one side's medians came to.
struct Medians {
    rate: f64,
    client_us: f64,
    hub_us: f64,
}

struct Summary {
    fleetkit: Medians,
    raw: Medians,
    round_ratios: Vec<f64>,
    failures: usize,
}

/// What a run needs to connect: the hub's port and CA, the device's credential.
#[derive(Clone)]
struct Target {
    port: u16,
    ca: Certificate,
    credential: X509Credential,
}

impl Bench {
    /// Warm-up, then `rounds` × (fleetkit, rumqttc) at `qos`, each on a fresh hub.
    fn alternate(&self, qos: u8, rounds: usize) -> Summary {
        println!(
            "\n-- QoS {qos}{}",
            if qos == 0 {
                " (then one QoS 1 fence message: the clock stops at its PUBACK)"
            } else {
                ""
            }
        );
        println!(
            "{:<7} {:<9} {:>10} {:>10} {:>14} {:>11} {:>7}",
            "round", "client", "msgs/s", "ms", "client µs/msg", "hub µs/msg", "ratio"
        );
        let warm = (self.msgs / 10).max(1);
        for side in [Side::Fleetkit, Side::Raw] {
            if let Err(e) = self.run(side, qos, warm) {
                println!("{:<7} {:<9} FAILED: {e}", "warmup", side.name());
            }
        }
        let mut results: Vec<(Side, Run)> = Vec::new();
        let mut round_ratios = Vec::new();
        let mut failures = 0;
        for round in 1..=rounds {
            let mut rates = [f64::NAN; 2];
            for (i, side) in [Side::Fleetkit, Side::Raw].into_iter().enumerate() {
                match self.run(side, qos, self.msgs) {
                    Ok(r) => {
                        let per_msg = |cpu: f64| cpu * 1e6 / self.msgs as f64;
                        rates[i] = self.msgs as f64 / r.elapsed.as_secs_f64();
                        // The round's ratio, on its second line.
                        let ratio = match side {
                            Side::Raw if rates[0].is_finite() => {
                                format!(" {:>7.2}", rates[0] / rates[1])
                            }
                            _ => String::new(),
                        };
                        println!(
                            "{round:<7} {:<9} {:>10.0} {:>10.1} {:>14.2} {:>11.2}{ratio}",
                            side.name(),
                            rates[i],
                            r.elapsed.as_secs_f64() * 1e3,
                            per_msg(r.client_cpu),
                            per_msg(r.hub_cpu),
                        );
                        results.push((side, r));
                    }
                    Err(e) => {
                        failures += 1;
                        println!("{round:<7} {:<9} FAILED: {e}", side.name());
                    }
                }
            }
            round_ratios.push(rates[0] / rates[1]);
        }
        let medians = |side: Side| {
            let runs: Vec<&Run> = results
                .iter()
                .filter(|(s, _)| *s == side)
                .map(|(_, r)| r)
                .collect();
            let per_msg = |f: &dyn Fn(&Run) -> f64| {
                median(runs.iter().map(|r| f(r) * 1e6 / self.msgs as f64).collect())
            };
            Medians {
                rate: median(
                    runs.iter()
                        .map(|r| self.msgs as f64 / r.elapsed.as_secs_f64())
                        .collect(),
                ),
                client_us: per_msg(&|r| r.client_cpu),
                hub_us: per_msg(&|r| r.hub_cpu),
            }
        };
        Summary {
            fleetkit: medians(Side::Fleetkit),
            raw: medians(Side::Raw),
            round_ratios,
            failures,
        }
    }

    /// One run on a fresh hub.
    fn run(&self, side: Side, qos: u8, msgs: usize) -> Result<Run, String> {
        let (hub, target) = self.hub_rt.block_on(start_hub())?;
        let client = match side {
            Side::Fleetkit => self.on_client(fleetkit_run(target, qos, msgs)),
            Side::Raw => self.on_client(raw_run(target, qos, msgs)),
        };
        self.hub_rt.block_on(hub.shutdown());
        client
    }

    /// Runs `f` as a task of the client runtime (so that its CPU time is counted there), under
    /// [`RUN_DEADLINE`].
    fn on_client(
        &self,
        f: impl Future<Output = Result<Run, String>> + Send + 'static,
    ) -> Result<Run, String> {
        self.client_rt.block_on(async {
            match tokio::time::timeout(RUN_DEADLINE, tokio::spawn(f)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(format!("the run's task failed: {e}")),
                Err(_) => Err(format!("not done within {RUN_DEADLINE:?}")),
            }
        })
    }
}

/// A hub with the device registered under the native device policy, and its credential.
async fn start_hub() -> Result<(LocalHub, Target), String> {
    let err = |e: fleetkit::Error| format!("hub set-up: {e}");
    let hub = LocalHub::builder().start().await.map_err(err)?;
    hub.put_policy("device", &builtin::native_device())
        .map_err(err)?;
    hub.attach_policy("device", AttachTarget::Group("fleet".into()))
        .map_err(err)?;
    hub.create_device(DeviceRecord::new(DEVICE).in_group("fleet"))
        .map_err(err)?;
    let credential = hub.issue_device_credential(DEVICE).map_err(err)?;
    let target = Target {
        port: hub.mqtt_addr().port(),
        ca: hub.ca_certificate().clone(),
        credential,
    };
    Ok((hub, target))
}

fn payload() -> Bytes {
    Bytes::from(vec![0x5a; PAYLOAD])
}

/// CPU seconds used so far by this process's threads named `name` (from
/// `/proc/self/task/*/schedstat`, nanoseconds on the CPU).
fn thread_cpu(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let mut ns: u64 = 0;
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        ns += std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
    }
    ns as f64 / 1e9
}

/// Starts the clock and the CPU counters; [`Clock::stop`] reads them.
struct Clock {
    start: Instant,
    client: f64,
    hub: f64,
}

impl Clock {
    fn start() -> Self {
        Clock {
            client: thread_cpu(CLIENT_THREADS),
            hub: thread_cpu(HUB_THREADS),
            start: Instant::now(),
        }
    }

    fn stop(self) -> Run {
        let elapsed = self.start.elapsed();
        Run {
            elapsed,
            client_cpu: thread_cpu(CLIENT_THREADS) - self.client,
            hub_cpu: thread_cpu(HUB_THREADS) - self.hub,
        }
    }
}

/// `DeviceClient`: `queue_telemetry`, at most [`AHEAD`] receipts outstanding.
async fn fleetkit_run(target: Target, qos: u8, msgs: usize) -> Result<Run, String> {
    let err = |e: fleetkit::Error| format!("fleetkit: {e}");
    let dialect = NativeDialect::new("localhost", target.port, &target.ca);
    let client = DeviceClient::builder(dialect, DeviceId::new(DEVICE).map_err(err)?)
        .credential(target.credential)
        .connect()
        .await
        .map_err(err)?;
    let payload = payload();
    // The client subscribes as it connects: this PUBACK comes after the SUBACK.
    client
        .send_telemetry(Telemetry::new(payload.clone()))
        .await
        .map_err(err)?;

    let clock = Clock::start();
    let mut receipts: VecDeque<Receipt> = VecDeque::with_capacity(AHEAD + 1);
    for _ in 0..msgs {
        if receipts.len() >= AHEAD {
            let oldest = receipts.pop_front().expect("AHEAD > 0");
            oldest.acknowledged().await.map_err(err)?;
        }
        let receipt = client
            .queue_telemetry(Telemetry::new(payload.clone()).qos(qos))
            .map_err(err)?;
        receipts.push_back(receipt);
    }
    if qos == 0 {
        let fence = client
            .queue_telemetry(Telemetry::new(payload.clone()))
            .map_err(err)?;
        receipts.push_back(fence);
    }
    for receipt in receipts {
        receipt.acknowledged().await.map_err(err)?;
    }
    let run = clock.stop();

    let left = client.shutdown(Duration::from_secs(1)).await;
    if left > 0 {
        return Err(format!("fleetkit: {left} messages left at shutdown"));
    }
    Ok(run)
}

/// The options `DeviceClient` gives its rumqttc, for the same device and TLS configuration.
fn raw_options(target: &Target) -> Result<MqttOptions, String> {
    let dialect = NativeDialect::new("localhost", target.port, &target.ca);
    let tls = fleetkit::device::tls_config(dialect.endpoint(), Some(&target.credential))
        .map_err(|e| format!("rumqttc TLS: {e}"))?;
    let mut options = MqttOptions::new(DEVICE, "localhost", target.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_inflight(WINDOW)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    Ok(options)
}

/// Polls until the next PUBACK.
async fn puback(ev: &mut EventLoop) -> Result<(), String> {
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("rumqttc: {e}")),
        }
    }
}

/// Raw rumqttc: a task publishes (at most [`AHEAD`] ahead of the acknowledgements), this one
/// polls the event loop and counts PUBACKs.
async fn raw_run(target: Target, qos: u8, msgs: usize) -> Result<Run, String> {
    let (client, mut ev) = AsyncClient::new(raw_options(&target)?, usize::from(WINDOW) + 64);
    // As DeviceClient does.
    let mut network = ev.network_options();
    network.set_tcp_nodelay(true);
    ev.set_network_options(network);
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                break;
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return Err(format!("rumqttc: CONNACK {:?}", ack.code));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("rumqttc: {e}")),
        }
    }
    let payload = Vec::from(payload());
    client
        .publish(TOPIC, QoS::AtLeastOnce, false, payload.clone())
        .await
        .map_err(|e| format!("rumqttc: {e}"))?;
    puback(&mut ev).await?;

    let level = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let ahead = Arc::new(Semaphore::new(AHEAD));
    let clock = Clock::start();
    let producer = {
        let (client, ahead) = (client.clone(), ahead.clone());
        tokio::spawn(async move {
            for _ in 0..msgs {
                ahead.acquire().await.expect("never closed").forget();
                client.publish(TOPIC, level, false, payload.clone()).await?;
            }
            if qos == 0 {
                client
                    .publish(TOPIC, QoS::AtLeastOnce, false, payload)
                    .await?;
            }
            Ok::<_, rumqttc::ClientError>(())
        })
    };
    // QoS 1: every message's PUBACK; QoS 0: the fence's.
    let mut acks_left = if qos == 0 { 1 } else { msgs };
    while acks_left > 0 {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acks_left -= 1;
                if qos == 1 {
                    ahead.add_permits(1);
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == 0 => ahead.add_permits(1),
            Ok(_) => {}
            Err(e) => return Err(format!("rumqttc: {e}")),
        }
    }
    let run = clock.stop();

    match producer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("rumqttc: {e}")),
        Err(e) => return Err(format!("rumqttc producer: {e}")),
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while !matches!(
            ev.poll().await,
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
        ) {}
    })
    .await;
    Ok(run)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn yes(met: bool) -> &'static str {
    if met { "MET" } else { "NOT MET" }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
