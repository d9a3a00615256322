//! End-to-end provisioning throughput on the local hub beside raw PKI issuance, in the same
//! run, printed as a ratio.
//!
//! `cargo bench --bench lifecycle`
//!
//! - **claim flow**: `LIFECYCLE_BENCH_DEVICES` devices (default 1,000), each a
//!   [`ClaimProvisioner`] run: a new P-256 key on the "device", a CSR, a mutual-TLS connection
//!   with the shared claim certificate, CreateCertificateFromCsr and RegisterThing (template,
//!   hook, registry insert with certificate and policy attachment) — `LIFECYCLE_BENCH_CONCURRENCY`
//!   (default 16) devices at a time, over real loopback sockets.
//! - **raw issuance** (the baseline): the same cryptographic work without the flow — key
//!   generation, CSR, CSR verification and certificate issuance by the CA — sequentially in
//!   this process (what `benches/pki.rs` measures as "CSR parse+verify+issue", plus keygen and
//!   CSR building).
//!
//! - **rotation campaign**: `LIFECYCLE_BENCH_CAMPAIGN_DEVICES` devices (default 100), each a
//!   `DeviceClient` over mTLS with its own `CredentialStore` (on disk, in a temporary
//!   directory) and a `RotationAgent`; one campaign (waves of 16, 16 at a time) rotates them
//!   all: command → key → CSR → certificate → stage → switch → confirm → commit → twin report.
//!   Reported in devices per second beside raw issuance (run once, after the rounds).
//!
//! Rounds alternate (`LIFECYCLE_BENCH_ROUNDS`, default 3); medians are reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetkit::device::{DeviceClient, Endpoint, NativeDialect};
use fleetkit::identity::{CredentialStore, Credentials, DeviceId, SoftwareKey};
use fleetkit::lifecycle::agent::RotationAgent;
use fleetkit::lifecycle::campaign::{Campaign, CampaignBackend, CampaignPlan, Selector};
use fleetkit::lifecycle::provision::{ClaimProvisioner, ProvisionRequest, Provisioner};
use fleetkit::local::dialect::{NativeHubDialect, ProvisioningTemplate};
use fleetkit::local::{DeviceRecord, LocalHub};
use fleetkit::pki::{CaOptions, CertificateAuthority, DeviceCertOptions, build_csr};
use fleetkit::policy::{AttachTarget, builtin};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// Provisions `devices` devices through the claim flow; returns devices per second.
async fn claim_flow(round: usize, devices: usize, concurrency: usize) -> f64 {
    let template = ProvisioningTemplate::new("bench", "dev-{Serial}")
        .expect("template")
        .with_policy("device")
        .in_group("fleet");
    let hub = LocalHub::builder()
        .dialect(NativeHubDialect::new().with_provisioning_template(template))
        .start()
        .await
        .expect("hub");
    hub.put_policy("device", &builtin::native_device())
        .expect("policy");
    hub.put_policy("claim", &builtin::provisioning_claim("bench"))
        .expect("policy");
    hub.create_device(DeviceRecord::new("factory-claim"))
        .expect("claim device");
    hub.attach_policy("claim", AttachTarget::Device("factory-claim".into()))
        .expect("attach");
    let claim = hub.issue_device_credential("factory-claim").expect("claim");
    let endpoint = Endpoint::new(
        "localhost",
        hub.mqtt_addr().port(),
        vec![hub.ca_certificate().der().clone()],
    );
    let provisioner = Arc::new(ClaimProvisioner::new(endpoint, claim, "bench"));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let provisioner = provisioner.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= devices {
                    break;
                }
                let serial = format!("r{round}n{i}");
                let key = Arc::new(SoftwareKey::generate_p256().expect("key"));
                let request = ProvisionRequest::with_device_key(
                    DeviceId::new(format!("dev-{serial}")).expect("id"),
                    key,
                )
                .parameter("Serial", &serial);
                provisioner.provision(&request).await.expect("provisioned");
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    let rate = devices as f64 / start.elapsed().as_secs_f64();
    let made = hub.with_registry(|r| {
        (0..devices)
            .filter(|i| r.device(&format!("dev-r{round}n{i}")).is_some())
            .count()
    });
    assert_eq!(made, devices, "every device must be in the registry");
    hub.shutdown().await;
    rate
}

/// The same cryptographic work, without the flow; returns devices per second.
fn raw_issuance(ca: &CertificateAuthority, devices: usize) -> f64 {
    let start = Instant::now();
    for i in 0..devices {
        let id = DeviceId::new(format!("raw-{i}")).expect("id");
        let key = Arc::new(SoftwareKey::generate_p256().expect("key"));
        let csr = build_csr(key, &id).expect("csr");
        let csr = fleetkit::pki::DeviceCsr::from_pem(&csr.to_pem()).expect("parse");
        std::hint::black_box(
            ca.issue_for_csr(&id, &csr, &DeviceCertOptions::default())
                .expect("issued"),
        );
    }
    devices as f64 / start.elapsed().as_secs_f64()
}

/// Rotates `devices` devices in one campaign; returns devices per second (campaign run only,
/// set-up excluded).
async fn campaign(devices: usize) -> f64 {
    let hub = Arc::new(LocalHub::builder().start().await.expect("hub"));
    hub.put_policy("device", &builtin::native_device())
        .expect("policy");
    hub.attach_policy("device", AttachTarget::Group("fleet".into()))
        .expect("attach");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fleet = Vec::new();
    for i in 0..devices {
        let name = format!("dev-{i:04}");
        hub.create_device(DeviceRecord::new(&name).in_group("fleet"))
            .expect("device");
        let credential = hub.issue_device_credential(&name).expect("credential");
        let store = Arc::new(CredentialStore::open(dir.path().join(&name)).expect("store"));
        store
            .stage(&Credentials::X509(credential.clone()))
            .expect("stage");
        store.commit().expect("commit");
        let client = Arc::new(
            DeviceClient::builder(
                NativeDialect::new("localhost", hub.mqtt_addr().port(), hub.ca_certificate()),
                DeviceId::new(&name).expect("id"),
            )
            .credential(credential)
            .connect_timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connect"),
        );
        let agent = RotationAgent::new(client.clone(), store);
        let commands = client.commands().expect("commands");
        tokio::spawn(async move { agent.run(commands).await });
        fleet.push(client);
    }
    let plan = CampaignPlan::new(
        "bench",
        Selector::all().in_group("fleet"),
        dir.path().join("c.json"),
    )
    .with_canary(8)
    .with_wave_size(16)
    .with_max_concurrency(16)
    .with_failure_threshold(0.05, 20)
    .with_per_device_timeout(Duration::from_secs(30))
    .with_poll_interval(Duration::from_millis(10));
    let backend: Arc<dyn CampaignBackend> = hub.clone();
    let mut campaign = Campaign::create(backend, plan).await.expect("campaign");
    let start = Instant::now();
    let report = campaign.run().await.expect("run");
    let rate = devices as f64 / start.elapsed().as_secs_f64();
    assert_eq!(report.counts.succeeded, devices, "{:?}", report.counts);
    for client in fleet {
        client.shutdown(Duration::ZERO).await;
    }
    rate
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selecting nothing else is ignored.
    let devices = env("LIFECYCLE_BENCH_DEVICES", 1000);
    let concurrency = env("LIFECYCLE_BENCH_CONCURRENCY", 16);
    let rounds = env("LIFECYCLE_BENCH_ROUNDS", 3);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ca = CertificateAuthority::new_root(&CaOptions::new("bench CA")).expect("ca");
    let mut flow = Vec::new();
    let mut raw = Vec::new();
    println!("provisioning {devices} devices per round, {concurrency} at a time, {rounds} rounds");
    for round in 0..rounds {
        let f = runtime.block_on(claim_flow(round, devices, concurrency));
        let r = raw_issuance(&ca, devices);
        println!(
            "round {round}: claim flow {f:>8.0} devices/s   raw issuance {r:>8.0} devices/s   ratio {:.2}",
            f / r
        );
        flow.push(f);
        raw.push(r);
        std::thread::sleep(Duration::from_millis(200));
    }
    let (f, r) = (median(flow), median(raw));
    println!(
        "median: claim flow {f:.0} devices/s, raw issuance {r:.0} devices/s → flow/raw = {:.2}",
        f / r
    );
    let campaign_devices = env("LIFECYCLE_BENCH_CAMPAIGN_DEVICES", 100);
    if campaign_devices > 0 {
        let c = runtime.block_on(campaign(campaign_devices));
        let r = raw_issuance(&ca, campaign_devices.max(200));
        println!(
            "rotation campaign: {campaign_devices} devices at {c:.1} devices/s; raw issuance now {r:.0} devices/s → campaign/raw = {:.3}",
            c / r
        );
    }
}
