//! The local hub under load beside Mosquitto 2.0, in the same run and under the same load
//! generator, printed as ratios.
//!
//! `cargo bench --bench hub` (needs the `mosquitto` broker: `apt-get install mosquitto`).
//!
//! Both brokers run as child processes of this bench, on free loopback ports, with mutual TLS
//! and authorization on, sharing one CA and the same device certificates (made with fleetkit's
//! PKI):
//!
//! - **fleetkit**: this binary re-executed with `FLEETKIT_BENCH_HUB_CHILD` set, running a
//!   [`LocalHub`] on that CA, with the devices registered and the policy [`POLICY`] attached to
//!   their group: connect as your own device id (`client/${fleetkit:DeviceId}*`), publish only
//!   under `fleet/${fleetkit:DeviceId}/…`, subscribe to and receive `fleet/…`.
//! - **mosquitto**: `mosquitto -c mosquitto.conf` with `require_certificate true`,
//!   `use_identity_as_username true` (the certificate's CN, which is the device id, becomes the
//!   user name) and the equivalent ACL file `pattern write fleet/%u/#`, `pattern read fleet/#`;
//!   `max_inflight_messages 32` (the hub's in-flight window), a large `max_queued_messages`,
//!   TCP_NODELAY like the hub, no persistence.
//!
//! **Throughput and latency.** [`PUBLISHERS`] rumqttc clients publish QoS 1, 256-byte payloads
//! (send timestamp, publisher, sequence number) to `fleet/<device>/data`; [`SUBSCRIBERS`]
//! rumqttc clients subscribe to `fleet/+/data` at QoS 1, so every message is delivered
//! [`SUBSCRIBERS`] times. The generator is closed-loop: each publisher keeps at most
//! `window` messages in the system (published and not yet received by every subscriber), so the
//! brokers' queues stay bounded (the hub drops QoS 1 for a clean session whose queue is full;
//! Mosquitto would queue without end) and the latency measured is that of a loaded but not
//! overrun broker. Latency is end to end (publish call → subscriber's event loop); throughput is
//! deliveries received per second, from the first publish to the last delivery. Runs alternate
//! hub, Mosquitto, hub, Mosquitto, …; the medians over the rounds are reported, with the CPU time
//! each broker process and this load generator used per delivery (µs/d: the figure least moved
//! by other work on the machine). Then the same alternation **paced**: each publisher sends at a
//! fixed rate (4,000 msgs/s in all, well below either broker's capacity), for the latency of a
//! broker that is not saturated.
//!
//! **Idle connections.** A fresh process of each broker, then [`IDLE`] mTLS connections (raw
//! tokio-rustls, full handshakes, one MQTT CONNECT each, CONNACK checked, keep-alive 600 s) all
//! held open; memory per connection is the broker process's VmRSS growth divided by the
//! connections held. They share one device certificate (`bench-idle`), each with its own client
//! id `bench-idle-<i>`, which the hub's policy allows. They are then closed and opened again: RSS
//! growing on the second pass would point at a leak (RSS not falling after closing is the
//! allocator keeping freed memory). The bench process raises its open-file limit for this
//! (re-executing itself under `sh -c 'ulimit -n 65536; …'`) and holds fewer connections, saying
//! so, if it cannot.
//!
//! Without `mosquitto` on the PATH the bench says so and exits with status 2.
//!
//! Goals from the issue: throughput ≥ 1.5× Mosquitto's with p99 no worse; 10,000 idle
//! connections held on a 2-core machine.
//!
//! Environment: `HUB_BENCH_MSGS` (messages per publisher, default 20,000), `HUB_BENCH_ROUNDS`
//! (default 3), `HUB_BENCH_WINDOW` (default 64), `HUB_BENCH_PACED_RATE` (msgs/s over all
//! publishers, default 4,000; 0 skips the paced runs), `HUB_BENCH_PACED_MSGS` (per publisher,
//! default 4,000), `HUB_BENCH_IDLE` (default 10,000; 0 skips). The whole bench takes about two
//! minutes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fleetkit::identity::{DeviceId, RcgenKey, Signer, SoftwareKey, X509Credential};
use fleetkit::local::{DeviceRecord, LocalHub};
use fleetkit::pki::{CaOptions, Certificate, CertificateAuthority, DeviceCertOptions};
use fleetkit::policy::{AttachTarget, PolicyDocument};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

/// Publishing clients.
const PUBLISHERS: usize = 4;
/// Subscribing clients, each on `fleet/+/data`: every message is delivered this many times.
const SUBSCRIBERS: usize = 4;
const PAYLOAD: usize = 256;
/// The hub's in-flight window; Mosquitto's `max_inflight_messages` and the publishers' too.
const INFLIGHT: u16 = 32;
/// Idle mTLS connections to hold.
const IDLE: usize = 10_000;
/// File descriptors kept free beyond one per idle connection.
const FD_HEADROOM: u64 = 512;
/// Handshakes in progress at once while opening the idle connections.
const HANDSHAKE_CONCURRENCY: usize = 64;
/// A run ends after this long even if not every message arrived…
const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// …or when nothing arrived for this long.
const STALL: Duration = Duration::from_secs(5);
const TOPIC_FILTER: &str = "fleet/+/data";

/// The fleetkit policy; [`MOSQUITTO_ACL`] is its Mosquitto equivalent.
const POLICY: &str = r#"{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${fleetkit:DeviceId}*"},
  {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/fleet/${fleetkit:DeviceId}/*"},
  {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/fleet/*"},
  {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/fleet/*"}
]}"#;
const MOSQUITTO_ACL: &str = "pattern write fleet/%u/#\npattern read fleet/#\n";

/// Set (to the PKI folder) when this binary runs as the hub child process.
const CHILD_ENV: &str = "FLEETKIT_BENCH_HUB_CHILD";
/// Set when this binary re-executed itself with a higher open-file limit.
const REEXEC_ENV: &str = "FLEETKIT_BENCH_HUB_REEXEC";
const IDLE_DEVICE: &str = "bench-idle";

type Stream = tokio_rustls::client::TlsStream<TcpStream>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        hub_child(Path::new(&dir));
        return;
    }
    // `cargo test --benches` runs bench targets without `--bench`: nothing to check here.
    if !std::env::args().any(|a| a == "--bench") {
        println!("hub bench: run it with `cargo bench --bench hub`");
        return;
    }
    let version = match Command::new("mosquitto").arg("-h").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("mosquitto")
            .trim()
            .to_string(),
        Err(e) => {
            eprintln!(
                "hub bench: cannot run `mosquitto` ({e}). This bench compares the hub with the \
                 Mosquitto 2.0 broker: install it with `apt-get install mosquitto`."
            );
            std::process::exit(2);
        }
    };
    let idle_wanted = env_usize("HUB_BENCH_IDLE", IDLE);
    let mut idle = idle_wanted;
    ensure_open_files(idle);
    // This process holds one socket per idle connection (and the brokers inherit its limit):
    // keep some descriptors for everything else rather than fail half-way.
    let limit = open_file_limit().unwrap_or(u64::MAX);
    if idle as u64 + FD_HEADROOM > limit {
        let capped = limit.saturating_sub(FD_HEADROOM) as usize;
        println!(
            "hub bench: the open-file limit is {limit} and could not be raised: \
             {capped} idle connections instead of {idle}"
        );
        idle = capped;
    }
    let config = Config {
        msgs: env_usize("HUB_BENCH_MSGS", 20_000).max(1),
        rounds: env_usize("HUB_BENCH_ROUNDS", 3).max(1),
        window: env_usize("HUB_BENCH_WINDOW", 64).max(1),
        idle,
        idle_wanted,
        pace: Duration::ZERO,
        paced_rate: env_usize("HUB_BENCH_PACED_RATE", 4_000),
        paced_msgs: env_usize("HUB_BENCH_PACED_MSGS", 4_000).max(1),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    runtime.block_on(bench(config, version));
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());
}

#[derive(Clone, Copy)]
struct Config {
    msgs: usize,
    rounds: usize,
    window: usize,
    /// Idle connections to open (capped by the open-file limit)…
    idle: usize,
    /// …and asked for.
    idle_wanted: usize,
    /// Time between two messages of one publisher (zero: as fast as the window allows).
    pace: Duration,
    /// Paced runs: messages per second over all publishers (0: none), and per publisher.
    paced_rate: usize,
    paced_msgs: usize,
}

// ---------------------------------------------------------------------------------------------
// Processes and /proc

/// Kills and reaps a child process when dropped (also on panic).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running broker process.
struct Broker {
    name: &'static str,
    port: u16,
    /// The hub child's command pipe (closing it ends the child) and its answers.
    control: Option<(ChildStdin, BufReader<ChildStdout>)>,
    process: ChildGuard,
}

impl Broker {
    fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// The hub child's live connection count (None for Mosquitto).
    fn hub_connections(&mut self) -> Option<usize> {
        let (stdin, stdout) = self.control.as_mut()?;
        writeln!(stdin, "count").ok()?;
        stdin.flush().ok()?;
        let mut line = String::new();
        stdout.read_line(&mut line).ok()?;
        line.trim().strip_prefix("count ")?.parse().ok()
    }
}

/// The soft open-file limit, from /proc/self/limits.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Makes sure this process (and so the brokers it starts) may open `idle` sockets and then
/// some; if not, re-executes itself under `sh -c 'ulimit -n 65536; exec …'`.
fn ensure_open_files(idle: usize) {
    let need = idle as u64 + FD_HEADROOM;
    // "unlimited" (or unreadable) needs nothing.
    let limit = open_file_limit().unwrap_or(u64::MAX);
    if limit >= need {
        return;
    }
    if std::env::var_os(REEXEC_ENV).is_some() {
        eprintln!(
            "hub bench: the open-file limit is {limit} (< {need}); \
             fewer idle connections may be held"
        );
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let err = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@""#)
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(REEXEC_ENV, "1")
        .exec();
    eprintln!("hub bench: could not re-execute with a higher open-file limit: {err}");
}

/// A process's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A process's user + system CPU time (all threads), in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15; USER_HZ is 100 on Linux.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Waits until something accepts TCP connections on `port`, or the process exits.
fn wait_for_port(port: u16, process: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = process.try_wait() {
            panic!(
                "the broker exited ({status}) before listening on {port}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on port {port} after 15 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// PKI shared by both brokers

struct Pki {
    dir: tempfile::TempDir,
    /// TLS client configurations by device id (CA-rooted trust, the device's certificate).
    clients: Vec<(String, Arc<rustls::ClientConfig>)>,
}

impl Pki {
    fn client(&self, device: &str) -> Arc<rustls::ClientConfig> {
        self.clients
            .iter()
            .find(|(d, _)| d == device)
            .map(|(_, c)| c.clone())
            .expect("known device")
    }
}

fn device_names() -> Vec<String> {
    let mut names: Vec<String> = (0..PUBLISHERS).map(|i| format!("pub-{i}")).collect();
    names.extend((0..SUBSCRIBERS).map(|i| format!("sub-{i}")));
    names.push(IDLE_DEVICE.to_string());
    names
}

/// One root CA; a certificate and key for every device; Mosquitto's server certificate; all
/// written as PEM into a temporary folder the hub child reads too.
fn make_pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca_key = SoftwareKey::generate_p256().expect("CA key");
    std::fs::write(
        d.join("ca.key"),
        ca_key.to_pkcs8_pem().expect("pem").as_bytes(),
    )
    .unwrap();
    let ca = CertificateAuthority::new_root_with_key(
        &CaOptions::new("fleetkit bench CA").with_organization("fleetkit"),
        Arc::new(ca_key),
    )
    .expect("CA");
    std::fs::write(d.join("ca.pem"), ca.certificate().to_pem()).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.certificate().der().clone()).unwrap();
    let mut clients = Vec::new();
    let mut listing = String::new();
    for name in device_names() {
        let key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256().unwrap());
        let cert = ca
            .issue(
                &DeviceId::new(&name).unwrap(),
                key.public_key_spki(),
                &DeviceCertOptions::default(),
            )
            .unwrap();
        std::fs::write(d.join(format!("{name}.pem")), cert.to_pem()).unwrap();
        listing.push_str(&name);
        listing.push('\n');
        let mut chain = vec![cert.der().clone()];
        chain.extend(ca.chain_for_devices().iter().map(|c| c.der().clone()));
        let credential = X509Credential::new(chain, key).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_client_cert_resolver(Arc::new(
            fleetkit::identity::ClientIdentity::new(&credential).unwrap(),
        ));
        // Every connection makes a full handshake, certificate checks included.
        config.resumption = rustls::client::Resumption::disabled();
        clients.push((name, Arc::new(config)));
    }
    std::fs::write(d.join("devices.txt"), listing).unwrap();

    // Mosquitto's server certificate, from the same CA.
    let server_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(2);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = rcgen::Issuer::from_ca_cert_der(
        ca.certificate().der(),
        RcgenKey::new(ca.signer().clone()).unwrap(),
    )
    .unwrap();
    let server = params.signed_by(&server_key, &issuer).unwrap();
    std::fs::write(d.join("server.pem"), server.pem()).unwrap();
    std::fs::write(d.join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(d.join("acl"), MOSQUITTO_ACL).unwrap();
    Pki { dir, clients }
}

// ---------------------------------------------------------------------------------------------
// The two brokers

fn start_mosquitto(pki: &Pki, tag: &str) -> Broker {
    let d = pki.dir.path();
    let port = free_port();
    let conf = d.join(format!("mosquitto-{tag}.conf"));
    let p = |f: &str| d.join(f).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings false\n\
             allow_anonymous false\n\
             acl_file {acl}\n\
             persistence false\n\
             max_inflight_messages {INFLIGHT}\n\
             max_queued_messages 1000000\n\
             set_tcp_nodelay true\n\
             connection_messages false\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             user root\n\
             listener {port} 127.0.0.1\n\
             cafile {ca}\n\
             certfile {cert}\n\
             keyfile {key}\n\
             require_certificate true\n\
             use_identity_as_username true\n",
            acl = p("acl"),
            ca = p("ca.pem"),
            cert = p("server.pem"),
            key = p("server.key"),
        ),
    )
    .unwrap();
    let log_path = d.join(format!("mosquitto-{tag}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("mosquitto");
    wait_for_port(port, &mut child, &log_path);
    Broker {
        name: "mosquitto",
        port,
        control: None,
        process: ChildGuard(child),
    }
}

fn start_hub(pki: &Pki) -> Broker {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .env(CHILD_ENV, pki.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("hub child");
    let stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut process = ChildGuard(child);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the hub child did not start: {line:?}"));
    wait_for_port(port, &mut process.0, Path::new("/dev/null"));
    Broker {
        name: "fleetkit",
        port,
        control: Some((stdin, stdout)),
        process,
    }
}

/// The hub child: a `LocalHub` on the bench CA with the bench devices and policy. Prints
/// `port <n>`, then answers `count` with `count <live connections>`; exits when stdin closes.
fn hub_child(dir: &Path) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("bench PKI file");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let ca = CertificateAuthority::from_pem(&read("ca.pem"), &read("ca.key"), "").unwrap();
        let hub = LocalHub::builder().ca(ca).start().await.unwrap();
        hub.put_policy("bench", &PolicyDocument::from_json(POLICY).unwrap())
            .unwrap();
        hub.attach_policy("bench", AttachTarget::Group("bench".into()))
            .unwrap();
        for name in read("devices.txt").lines() {
            hub.create_device(DeviceRecord::new(name).in_group("bench"))
                .unwrap();
            let cert = Certificate::from_pem(&read(&format!("{name}.pem"))).unwrap();
            hub.register_certificate(cert, name).unwrap();
        }
        let mut out = std::io::stdout();
        writeln!(out, "port {}", hub.mqtt_addr().port()).unwrap();
        out.flush().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(command) = rx.recv().await {
            if command.trim() == "count" {
                writeln!(out, "count {}", hub.connection_count()).unwrap();
                out.flush().unwrap();
            }
        }
        hub.shutdown().await;
    });
}

// ---------------------------------------------------------------------------------------------
// The load generator

struct RunResult {
    deliveries: u64,
    expected: u64,
    elapsed: Duration,
    /// Sorted end-to-end latencies, in microseconds.
    latencies: Vec<u32>,
    duplicates: u64,
    broker_cpu: f64,
    generator_cpu: f64,
    error: Option<String>,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.deliveries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1);
        f64::from(self.latencies[i]) / 1000.0
    }
}

fn mqtt_options(broker: &Broker, pki: &Pki, client_id: &str) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, "localhost", broker.port);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        pki.client(client_id),
    )));
    opts.set_clean_session(true);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(INFLIGHT);
    opts
}

fn client(broker: &Broker, pki: &Pki, client_id: &str, cap: usize) -> (AsyncClient, EventLoop) {
    let (client, mut ev) = AsyncClient::new(mqtt_options(broker, pki, client_id), cap);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    ev.set_network_options(net);
    (client, ev)
}

/// Polls until CONNACK (accepted).
async fn connected(ev: &mut EventLoop, who: &str) -> Result<(), String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                return if ack.code == rumqttc::ConnectReturnCode::Success {
                    Ok(())
                } else {
                    Err(format!("{who}: CONNACK {:?}", ack.code))
                };
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("{who}: {e}")),
            Err(_) => return Err(format!("{who}: no CONNACK within 15 s")),
        }
    }
}

/// Sends DISCONNECT and drives the event loop until the connection ends (at most 1 s).
async fn disconnect(client: &AsyncClient, ev: &mut EventLoop) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while ev.poll().await.is_ok() {}
    })
    .await;
}

/// Payload: send time (ns since `base`), publisher index, sequence number, filler.
fn payload(base: Instant, publisher: usize, seq: usize) -> Vec<u8> {
    let mut p = vec![0x5a; PAYLOAD];
    p[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
    p[8..12].copy_from_slice(&(publisher as u32).to_le_bytes());
    p[12..16].copy_from_slice(&(seq as u32).to_le_bytes());
    p
}

/// (send time, publisher, sequence number) from a payload made by [`payload`].
fn parse_payload(p: &[u8]) -> (u64, usize, usize) {
    let word = |r: std::ops::Range<usize>| u32::from_le_bytes(p[r].try_into().unwrap()) as usize;
    (
        u64::from_le_bytes(p[..8].try_into().unwrap()),
        word(8..12),
        word(12..16),
    )
}

fn micros(ns: u64) -> u32 {
    (ns / 1000).min(u64::from(u32::MAX)) as u32
}

struct SubscriberOut {
    latencies: Vec<u32>,
    duplicates: u64,
}

/// One run: subscribers connect and subscribe, publishers connect, then every publisher sends
/// `msgs` messages through a window of `window` undelivered messages.
async fn load_run(broker: &Broker, pki: &Pki, config: &Config) -> RunResult {
    let base = Instant::now();
    let msgs = config.msgs;
    let pace = config.pace;
    let per_subscriber = PUBLISHERS * msgs;
    let expected = (per_subscriber * SUBSCRIBERS) as u64;
    let windows: Arc<Vec<Semaphore>> = Arc::new(
        (0..PUBLISHERS)
            .map(|_| Semaphore::new(config.window))
            .collect(),
    );
    // How many subscribers received each message; the last one reopens the window.
    let arrivals: Arc<Vec<AtomicU8>> =
        Arc::new((0..per_subscriber).map(|_| AtomicU8::new(0)).collect());
    let delivered = Arc::new(AtomicU64::new(0));
    let last_delivery = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (go_tx, go_rx) = watch::channel(false);

    let mut subscribers: JoinSet<Result<SubscriberOut, String>> = JoinSet::new();
    let mut ready = Vec::new();
    for s in 0..SUBSCRIBERS {
        let id = format!("sub-{s}");
        let (client, mut ev) = client(broker, pki, &id, 16);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        ready.push(ready_rx);
        let (windows, arrivals, delivered, last_delivery) = (
            windows.clone(),
            arrivals.clone(),
            delivered.clone(),
            last_delivery.clone(),
        );
        let mut stop = stop_rx.clone();
        subscribers.spawn(async move {
            let setup = async {
                connected(&mut ev, &id).await?;
                client
                    .subscribe(TOPIC_FILTER, QoS::AtLeastOnce)
                    .await
                    .map_err(|e| e.to_string())?;
                loop {
                    match tokio::time::timeout(Duration::from_secs(15), ev.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                            return match ack.return_codes.first() {
                                Some(SubscribeReasonCode::Success(QoS::AtLeastOnce)) => Ok(()),
                                other => Err(format!("{id}: SUBACK {other:?}")),
                            };
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(format!("{id}: {e}")),
                        Err(_) => return Err(format!("{id}: no SUBACK within 15 s")),
                    }
                }
            };
            let setup = setup.await;
            let failed = setup.clone().err();
            let _ = ready_tx.send(setup);
            if let Some(e) = failed {
                return Err(e);
            }
            let mut seen = vec![false; per_subscriber];
            let mut out = SubscriberOut {
                latencies: Vec::with_capacity(per_subscriber),
                duplicates: 0,
            };
            loop {
                tokio::select! {
                    event = ev.poll() => match event {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let now = base.elapsed().as_nanos() as u64;
                            let (sent, publisher, seq) = parse_payload(&p.payload);
                            let i = publisher * msgs + seq;
                            if std::mem::replace(&mut seen[i], true) {
                                out.duplicates += 1;
                                continue;
                            }
                            out.latencies.push(micros(now.saturating_sub(sent)));
                            let before = arrivals[i].fetch_add(1, Ordering::AcqRel);
                            if usize::from(before) + 1 == SUBSCRIBERS {
                                windows[publisher].add_permits(1);
                            }
                            delivered.fetch_add(1, Ordering::Relaxed);
                            last_delivery.fetch_max(now, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if *stop.borrow() {
                                break;
                            }
                            return Err(format!("{id}: {e}"));
                        }
                    },
                    _ = stop.changed() => break,
                }
            }
            disconnect(&client, &mut ev).await;
            Ok(out)
        });
    }
    let mut error = None;
    for r in ready {
        if let Ok(Err(e)) | Err(e) = r.await.map_err(|e| e.to_string()) {
            error.get_or_insert(e);
        }
    }

    let mut publishers: JoinSet<Result<(), String>> = JoinSet::new();
    let mut pub_ready = Vec::new();
    for p in 0..PUBLISHERS {
        let id = format!("pub-{p}");
        let (client, mut ev) = client(broker, pki, &id, config.window + 8);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        pub_ready.push(ready_rx);
        // Event loop.
        let mut stop = stop_rx.clone();
        let poll_client = client.clone();
        publishers.spawn(async move {
            let setup = connected(&mut ev, &id).await;
            let failed = setup.clone().err();
            let _ = ready_tx.send(setup);
            if let Some(e) = failed {
                return Err(e);
            }
            loop {
                tokio::select! {
                    event = ev.poll() => if let Err(e) = event {
                        if *stop.borrow() {
                            break;
                        }
                        return Err(format!("{id}: {e}"));
                    },
                    _ = stop.changed() => break,
                }
            }
            disconnect(&poll_client, &mut ev).await;
            Ok(())
        });
        // Sender.
        let windows = windows.clone();
        let mut go = go_rx.clone();
        publishers.spawn(async move {
            let _ = go.wait_for(|go| *go).await;
            let topic = format!("fleet/pub-{p}/data");
            // Paced publishers start staggered across one gap.
            let first = tokio::time::Instant::now() + pace * p as u32 / PUBLISHERS as u32;
            for seq in 0..msgs {
                if !pace.is_zero() {
                    tokio::time::sleep_until(first + pace * seq as u32).await;
                }
                match windows[p].acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => break, // closed: the run is over
                }
                if client
                    .publish(
                        topic.as_str(),
                        QoS::AtLeastOnce,
                        false,
                        payload(base, p, seq),
                    )
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(())
        });
    }
    for r in pub_ready {
        if let Ok(Err(e)) | Err(e) = r.await.map_err(|e| e.to_string()) {
            error.get_or_insert(e);
        }
    }

    let broker_pid = broker.pid().to_string();
    let cpu_before = (cpu_seconds(&broker_pid), cpu_seconds("self"));
    let start = base.elapsed().as_nanos() as u64;
    let started = Instant::now();
    if error.is_none() {
        let _ = go_tx.send(true);
        let mut last = (0, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let n = delivered.load(Ordering::Relaxed);
            if n >= expected {
                break;
            }
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() > STALL {
                error = Some(format!(
                    "stalled: nothing delivered for {} s",
                    STALL.as_secs()
                ));
                break;
            }
            if started.elapsed() > RUN_DEADLINE {
                error = Some(format!("deadline of {} s reached", RUN_DEADLINE.as_secs()));
                break;
            }
        }
    }
    let cpu_after = (cpu_seconds(&broker_pid), cpu_seconds("self"));
    let end = last_delivery.load(Ordering::Relaxed).max(start + 1);
    let _ = stop_tx.send(true);
    for w in windows.iter() {
        w.close();
    }
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut duplicates = 0;
    while let Some(r) = subscribers.join_next().await {
        match r.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(out) => {
                latencies.extend(out.latencies);
                duplicates += out.duplicates;
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    while let Some(r) = publishers.join_next().await {
        if let Err(e) = r.map_err(|e| e.to_string()).and_then(|r| r) {
            error.get_or_insert(e);
        }
    }
    latencies.sort_unstable();
    RunResult {
        deliveries: delivered.load(Ordering::Relaxed),
        expected,
        elapsed: Duration::from_nanos(end - start),
        latencies,
        duplicates,
        broker_cpu: cpu_after.0 - cpu_before.0,
        generator_cpu: cpu_after.1 - cpu_before.1,
        error,
    }
}

// ---------------------------------------------------------------------------------------------
// Idle connections

struct Held {
    streams: Vec<Stream>,
    failed: usize,
    first_error: Option<String>,
    elapsed: Duration,
    cipher: Option<String>,
}

/// One idle client: TCP, a full mTLS handshake, CONNECT, CONNACK 0.
async fn idle_connection(
    port: u16,
    connector: TlsConnector,
    client_id: String,
) -> Result<Stream, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let mut connect = rumqttc::mqttbytes::v4::Connect::new(client_id);
    connect.keep_alive = 600;
    let mut buf = BytesMut::new();
    connect.write(&mut buf).map_err(|e| e.to_string())?;
    tls.write_all(&buf)
        .await
        .map_err(|e| format!("CONNECT: {e}"))?;
    tls.flush().await.map_err(|e| format!("CONNECT: {e}"))?;
    let mut ack = [0u8; 4];
    tls.read_exact(&mut ack)
        .await
        .map_err(|e| format!("CONNACK: {e}"))?;
    if ack[0] != 0x20 || ack[1] != 2 || ack[3] != 0 {
        return Err(format!("CONNACK {ack:02x?}"));
    }
    Ok(tls)
}

async fn hold_idle(broker: &Broker, pki: &Pki, n: usize) -> Held {
    let connector = TlsConnector::from(pki.client(IDLE_DEVICE));
    let gate = Arc::new(Semaphore::new(HANDSHAKE_CONCURRENCY));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let connector = connector.clone();
        let port = broker.port;
        set.spawn(async move {
            let r = tokio::time::timeout(
                Duration::from_secs(30),
                idle_connection(port, connector, format!("{IDLE_DEVICE}-{i}")),
            )
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
            drop(permit);
            r
        });
    }
    let mut held = Held {
        streams: Vec::with_capacity(n),
        failed: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        cipher: None,
    };
    while let Some(r) = set.join_next().await {
        match r.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(s) => {
                if held.cipher.is_none() {
                    let c = s.get_ref().1;
                    held.cipher = Some(format!(
                        "{:?} {:?}",
                        c.protocol_version().unwrap(),
                        c.negotiated_cipher_suite().unwrap().suite()
                    ));
                }
                held.streams.push(s);
            }
            Err(e) => {
                held.failed += 1;
                held.first_error.get_or_insert(e);
            }
        }
    }
    held.elapsed = started.elapsed();
    held
}

struct IdleResult {
    held: usize,
    wanted: usize,
    failed: usize,
    first_error: Option<String>,
    rss_before_kib: u64,
    rss_held_kib: u64,
    rss_closed_kib: u64,
    /// Held again after closing the first set: growth here would be a leak.
    held_again: usize,
    rss_held_again_kib: u64,
    /// The hub's own count of live connections while they were held, and after closing.
    hub_count: Option<usize>,
    hub_count_closed: Option<usize>,
    seconds: f64,
    cipher: Option<String>,
}

impl IdleResult {
    fn kib_per_connection(&self) -> f64 {
        if self.held == 0 {
            return f64::NAN;
        }
        (self.rss_held_kib as f64 - self.rss_before_kib as f64) / self.held as f64
    }
}

/// Closes the held connections and waits until the broker noticed (the hub says when).
async fn close_all(broker: &mut Broker, streams: Vec<Stream>) {
    drop(streams);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if broker.hub_connections().is_none_or(|c| c == 0) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Holds `n` idle connections, measures, closes them, then holds and closes them again.
async fn idle_test(broker: &mut Broker, pki: &Pki, n: usize) -> IdleResult {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = broker.pid();
    let rss_before_kib = rss_kib(pid);
    let held = hold_idle(broker, pki, n).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_held_kib = rss_kib(pid);
    let hub_count = broker.hub_connections();
    let count = held.streams.len();
    close_all(broker, held.streams).await;
    let rss_closed_kib = rss_kib(pid);
    let hub_count_closed = broker.hub_connections();
    let again = hold_idle(broker, pki, n).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_held_again_kib = rss_kib(pid);
    let held_again = again.streams.len();
    close_all(broker, again.streams).await;
    IdleResult {
        held: count,
        wanted: n,
        failed: held.failed,
        first_error: held.first_error.or(again.first_error),
        rss_before_kib,
        rss_held_kib,
        rss_closed_kib,
        held_again,
        rss_held_again_kib,
        hub_count,
        hub_count_closed,
        seconds: held.elapsed.as_secs_f64(),
        cipher: held.cipher,
    }
}

// ---------------------------------------------------------------------------------------------
// The bench

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

fn print_run(round: &str, name: &str, r: &RunResult) {
    let per_delivery = |cpu: f64| cpu * 1e6 / r.deliveries.max(1) as f64;
    println!(
        "{:<6} {:<10} {:>13.0} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>13.2} {:>13.2}{}",
        round,
        name,
        r.rate(),
        r.rate() / SUBSCRIBERS as f64,
        r.percentile_ms(0.50),
        r.percentile_ms(0.99),
        r.latencies
            .last()
            .map_or(f64::NAN, |&m| f64::from(m) / 1000.0),
        per_delivery(r.broker_cpu),
        per_delivery(r.generator_cpu),
        match (&r.error, r.duplicates) {
            (Some(e), _) => format!(
                "  INCOMPLETE {}/{} delivered: {e}",
                r.deliveries, r.expected
            ),
            (None, 0) => String::new(),
            (None, d) => format!("  ({d} duplicates)"),
        }
    );
}

async fn bench(config: Config, version: String) {
    let pki = make_pki();
    println!(
        "== fleetkit hub vs {version}: QoS 1 over mTLS with authorization on (policy / ACL)\n\
         {PUBLISHERS} publishers -> {SUBSCRIBERS} subscribers on {TOPIC_FILTER}, {PAYLOAD} B \
         payloads, {} msgs per publisher ({} deliveries per run), window {} undelivered msgs per \
         publisher, {} rounds; load average before: {} on {} CPUs",
        config.msgs,
        config.msgs * PUBLISHERS * SUBSCRIBERS,
        config.window,
        config.rounds,
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    // (broker, paced, result)
    let mut results: Vec<(&'static str, bool, RunResult)> = Vec::new();
    {
        let hub = start_hub(&pki);
        let mosquitto = start_mosquitto(&pki, "load");
        println!(
            "{:<6} {:<10} {:>13} {:>10} {:>8} {:>8} {:>8} {:>13} {:>13}",
            "round",
            "broker",
            "deliveries/s",
            "msgs/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "broker µs/d",
            "client µs/d"
        );
        // A short unreported warm-up of each broker (first connections, allocator, caches).
        let warm = Config {
            msgs: (config.msgs / 10).max(1),
            ..config
        };
        for broker in [&hub, &mosquitto] {
            let r = load_run(broker, &pki, &warm).await;
            if r.error.is_some() {
                print_run("warmup", broker.name, &r);
            }
        }
        for round in 1..=config.rounds {
            for broker in [&hub, &mosquitto] {
                let r = load_run(broker, &pki, &config).await;
                print_run(&round.to_string(), broker.name, &r);
                results.push((broker.name, false, r));
            }
        }
        if config.paced_rate > 0 {
            let paced = Config {
                msgs: config.paced_msgs,
                pace: Duration::from_secs_f64(PUBLISHERS as f64 / config.paced_rate as f64),
                ..config
            };
            println!(
                "-- paced: {} msgs/s offered ({} deliveries/s), {} msgs per publisher",
                config.paced_rate,
                config.paced_rate * SUBSCRIBERS,
                config.paced_msgs
            );
            for round in 1..=config.rounds {
                for broker in [&hub, &mosquitto] {
                    let r = load_run(broker, &pki, &paced).await;
                    print_run(&format!("p{round}"), broker.name, &r);
                    results.push((broker.name, true, r));
                }
            }
        }
    }

    let mut idle: Vec<(&'static str, IdleResult)> = Vec::new();
    if config.idle > 0 {
        println!(
            "\n== {} idle mTLS connections per broker \
             (fresh broker processes; held, closed, held again)",
            config.idle
        );
        for hub_first in [true, false] {
            let mut broker = if hub_first {
                start_hub(&pki)
            } else {
                start_mosquitto(&pki, "idle")
            };
            let r = idle_test(&mut broker, &pki, config.idle).await;
            let mib = |k: u64| k as f64 / 1024.0;
            println!(
                "{:<10} held {}/{} in {:.1} s ({}){}: RSS {:.1} MiB idle -> {:.1} MiB held -> \
                 {:.1} MiB closed{} -> {:.1} MiB held again ({} held){}",
                broker.name,
                r.held,
                r.wanted,
                r.seconds,
                r.cipher.as_deref().unwrap_or("-"),
                r.hub_count
                    .map(|c| format!(", hub counts {c} live"))
                    .unwrap_or_default(),
                mib(r.rss_before_kib),
                mib(r.rss_held_kib),
                mib(r.rss_closed_kib),
                r.hub_count_closed
                    .map(|c| format!(" ({c} live)"))
                    .unwrap_or_default(),
                mib(r.rss_held_again_kib),
                r.held_again,
                r.first_error
                    .as_ref()
                    .map(|e| format!("; {} failed, first: {e}", r.failed))
                    .unwrap_or_default()
            );
            idle.push((broker.name, r));
        }
    }

    // Summary.
    struct Summary {
        rate: f64,
        p50: f64,
        p99: f64,
        cpu: f64,
        runs: usize,
        complete: bool,
    }
    let summary = |name: &str, paced: bool| {
        let runs: Vec<&RunResult> = results
            .iter()
            .filter(|(n, p, _)| *n == name && *p == paced)
            .map(|(_, _, r)| r)
            .collect();
        Summary {
            rate: median(runs.iter().map(|r| r.rate()).collect()),
            p50: median(runs.iter().map(|r| r.percentile_ms(0.50)).collect()),
            p99: median(runs.iter().map(|r| r.percentile_ms(0.99)).collect()),
            cpu: median(
                runs.iter()
                    .map(|r| r.broker_cpu * 1e6 / r.deliveries.max(1) as f64)
                    .collect(),
            ),
            runs: runs.len(),
            complete: runs.iter().all(|r| r.error.is_none()),
        }
    };
    let idle_of = |name: &str| {
        idle.iter()
            .find(|(n, _)| *n == name)
            .map_or((f64::NAN, 0), |(_, r)| (r.kib_per_connection(), r.held))
    };
    println!(
        "\n== Summary (medians over {} rounds; ratio = fleetkit / mosquitto)",
        config.rounds
    );
    println!(
        "{:<17} {:>13} {:>10} {:>8} {:>8} {:>12} {:>14} {:>10}",
        "broker",
        "deliveries/s",
        "msgs/s",
        "p50 ms",
        "p99 ms",
        "broker µs/d",
        "KiB/idle conn",
        "idle held"
    );
    let row = |label: &str, s: &Summary, idle: Option<(f64, usize)>| {
        let (kib, held) = idle.map_or(("-".to_string(), "-".to_string()), |(k, h)| {
            (format!("{k:.1}"), h.to_string())
        });
        println!(
            "{label:<17} {:>13.0} {:>10.0} {:>8.2} {:>8.2} {:>12.2} {kib:>14} {held:>10}",
            s.rate,
            s.rate / SUBSCRIBERS as f64,
            s.p50,
            s.p99,
            s.cpu,
        );
    };
    let ratio = |label: &str, h: &Summary, m: &Summary, kib: Option<f64>| {
        let kib = kib.map_or("-".to_string(), |k| format!("{k:.2}"));
        println!(
            "{label:<17} {:>13.2} {:>10.2} {:>8.2} {:>8.2} {:>12.2} {kib:>14}",
            h.rate / m.rate,
            h.rate / m.rate,
            h.p50 / m.p50,
            h.p99 / m.p99,
            h.cpu / m.cpu,
        );
    };
    let (hub, mq) = (summary("fleetkit", false), summary("mosquitto", false));
    let (hub_idle, mq_idle) = (idle_of("fleetkit"), idle_of("mosquitto"));
    let shown = |i: (f64, usize)| (config.idle > 0).then_some(i);
    row("fleetkit", &hub, shown(hub_idle));
    row("mosquitto", &mq, shown(mq_idle));
    ratio("ratio", &hub, &mq, shown(hub_idle).map(|h| h.0 / mq_idle.0));
    let (hub_paced, mq_paced) = (summary("fleetkit", true), summary("mosquitto", true));
    if hub_paced.runs > 0 {
        row("fleetkit paced", &hub_paced, None);
        row("mosquitto paced", &mq_paced, None);
        ratio("ratio paced", &hub_paced, &mq_paced, None);
    }
    let complete = [&hub, &mq, &hub_paced, &mq_paced]
        .iter()
        .all(|s| s.complete);
    if !complete {
        println!("(some runs were incomplete: see the rounds above)");
    }
    println!(
        "goal: throughput >= 1.5x mosquitto: {} ({:.2}x)",
        yes(hub.complete && mq.complete && hub.rate >= 1.5 * mq.rate),
        hub.rate / mq.rate
    );
    // No paced runs (NaN) is no objection.
    let paced_ok = hub_paced.runs == 0 || hub_paced.p99 <= mq_paced.p99;
    println!(
        "goal: p99 no worse than mosquitto: {} (full load {:.2} ms vs {:.2} ms{})",
        yes(complete && hub.p99 <= mq.p99 && paced_ok),
        hub.p99,
        mq.p99,
        if hub_paced.runs > 0 {
            format!("; paced {:.2} ms vs {:.2} ms", hub_paced.p99, mq_paced.p99)
        } else {
            String::new()
        }
    );
    if config.idle_wanted > 0 {
        println!(
            "goal: {} idle mTLS connections held by the hub: {} ({} held)",
            config.idle_wanted,
            yes(hub_idle.1 >= config.idle_wanted),
            hub_idle.1
        );
    }
    println!(
        "(µs/d: CPU time of the broker process, all threads, per delivery. The load generator \
         shares the CPUs with the broker, so on a busy machine throughput and latency move more \
         than µs/d does; load average now: {})",
        load_average()
    );
}
