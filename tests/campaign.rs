//! A rotation campaign over 200 real devices on one local hub: each a `DeviceClient` over
//! mutual TLS with its own `CredentialStore` and a `RotationAgent`. Some devices fail for
//! real (an agent that is not running times out; a new certificate revoked by the fleet while
//! the device tries it is refused and rolled back). The failure threshold aborts the campaign
//! and skips the rest; after the fix, a resumed campaign — interrupted once more and resumed
//! from its state file by a new `Campaign` object — finishes without rotating any device twice.
#![cfg(feature = "local")]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetkit::device::{DeviceClient, NativeDialect};
use fleetkit::identity::{
    CredentialStore, Credentials, DeviceId, Signer, SoftwareKey, X509Credential,
};
use fleetkit::lifecycle::agent::{REPORT_KEY, RotationAgent, RotationRequest, RotationStatus};
use fleetkit::lifecycle::campaign::{
    Campaign, CampaignBackend, CampaignPlan, DeviceStatus, Phase, Selector,
};
use fleetkit::lifecycle::rotation::RotationStep;
use fleetkit::local::{CertificateState, DeviceRecord, LocalHub};
use fleetkit::pki::{CaOptions, CertificateAuthority, DeviceCertOptions};
use fleetkit::policy::{AttachTarget, builtin};
use fleetkit::protocol::BackoffConfig;

const DEVICES: usize = 200;
const DAY: u64 = 86_400;

fn id(i: usize) -> String {
    format!("dev-{i:03}")
}

/// The hub with the native device policy on group `fleet`.
async fn hub() -> Arc<LocalHub> {
    let hub = LocalHub::builder().start().await.unwrap();
    hub.put_policy("device", &builtin::native_device()).unwrap();
    hub.attach_policy("device", AttachTarget::Group("fleet".into()))
        .unwrap();
    hub.attach_policy("device", AttachTarget::Group("lab".into()))
        .unwrap();
    Arc::new(hub)
}

/// Registers `device` in `group` with a certificate from `ca` valid `days` days; returns the
/// credential.
fn enroll(
    hub: &LocalHub,
    ca: &CertificateAuthority,
    device: &str,
    group: &str,
    days: u64,
) -> X509Credential {
    hub.create_device(DeviceRecord::new(device).in_group(group))
        .unwrap();
    let key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256().unwrap());
    let cert = ca
        .issue(
            &DeviceId::new(device).unwrap(),
            key.public_key_spki(),
            &DeviceCertOptions::default().with_validity(Duration::from_secs(days * DAY)),
        )
        .unwrap();
    hub.register_certificate(cert.clone(), device).unwrap();
    let mut chain = vec![cert.der().clone()];
    chain.extend(ca.chain_for_devices().iter().map(|c| c.der().clone()));
    X509Credential::new(chain, key).unwrap()
}

async fn connect(hub: &LocalHub, device: &str, cred: X509Credential) -> DeviceClient {
    DeviceClient::builder(
        NativeDialect::new("localhost", hub.mqtt_addr().port(), hub.ca_certificate()),
        DeviceId::new(device).unwrap(),
    )
    .credential(cred)
    .backoff(
        BackoffConfig::new()
            .with_base(Duration::from_millis(20))
            .with_cap(Duration::from_millis(200)),
    )
    .request_timeout(Duration::from_secs(10))
    .connect_timeout(Duration::from_secs(20))
    .connect()
    .await
    .unwrap_or_else(|e| panic!("{device}: {e}"))
}

/// One device of the fleet: its client, its store, and the certificate it started with.
struct Device {
    client: Arc<DeviceClient>,
    store: Arc<CredentialStore>,
    original: String,
}

impl Device {
    fn active(&self) -> String {
        let Credentials::X509(c) = self.store.load().unwrap() else {
            unreachable!()
        };
        c.leaf().fingerprint_sha256()
    }
}

/// Sets up enrolled device `i` with `cred`: its store, and a connected client.
async fn device(hub: Arc<LocalHub>, dir: &Path, i: usize, cred: X509Credential) -> Device {
    let device = id(i);
    let original = cred.leaf().fingerprint_sha256();
    let dir = dir.join(&device);
    let c = cred.clone();
    let store = tokio::task::spawn_blocking(move || {
        let store = CredentialStore::open(dir).unwrap();
        store.stage(&Credentials::X509(c)).unwrap();
        store.commit().unwrap();
        store
    })
    .await
    .unwrap();
    let client = connect(&hub, &device, cred).await;
    Device {
        client: Arc::new(client),
        store: Arc::new(store),
        original,
    }
}

/// The device's ACTIVE certificates at the hub, and how many it has in all.
fn hub_certificates(hub: &LocalHub, device: &str) -> (Vec<String>, usize) {
    hub.with_registry(|r| {
        let all = r.certificates_of(device);
        (
            all.iter()
                .filter(|c| c.state == CertificateState::Active)
                .map(|c| c.id.clone())
                .collect(),
            all.len(),
        )
    })
}

/// Starts `device`'s agent; with `sabotage` on, the fleet revokes the new certificate as soon
/// as the device has staged it (the hub then refuses it and the device rolls back).
fn start_agent(hub: &Arc<LocalHub>, d: &Device, name: &str, sabotage: Option<Arc<AtomicBool>>) {
    let mut agent = RotationAgent::new(d.client.clone(), d.store.clone());
    if let Some(on) = sabotage {
        let (hub, name, original) = (hub.clone(), name.to_string(), d.original.clone());
        agent = agent.on_step(move |step| {
            if step == RotationStep::Staged && on.load(Ordering::SeqCst) {
                for c in hub_certificates(&hub, &name).0 {
                    if c != original {
                        hub.set_certificate_state(&c, CertificateState::Revoked)
                            .unwrap();
                    }
                }
            }
            Ok(())
        });
    }
    let commands = d.client.commands().unwrap();
    tokio::spawn(async move { agent.run(commands).await });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_over_200_devices_aborts_on_failures_and_resumes_after_the_fix() {
    let hub = hub().await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Instant::now();

    // Devices the selection must leave out: a long certificate, another group, another CA.
    let other_ca = CertificateAuthority::new_root(&CaOptions::new("Other Vendor CA")).unwrap();
    hub.register_ca(other_ca.certificate()).unwrap();
    for i in 0..5 {
        enroll(&hub, hub.ca(), &format!("long-{i}"), "fleet", 400);
        enroll(&hub, hub.ca(), &format!("lab-{i}"), "lab", 20);
        enroll(&hub, &other_ca, &format!("other-{i}"), "fleet", 20);
    }

    // The fleet: 200 devices enrolled in order (so their certificates expire in that order),
    // then connected 16 at a time.
    let credentials: Vec<X509Credential> = (0..DEVICES)
        .map(|i| enroll(&hub, hub.ca(), &id(i), "fleet", 20))
        .collect();
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, cred) in credentials.into_iter().enumerate() {
        let (hub, gate, dir) = (hub.clone(), gate.clone(), dir.path().to_path_buf());
        tasks.spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            (i, device(hub, &dir, i, cred).await)
        });
    }
    let mut fleet: HashMap<usize, Device> = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let (i, d) = r.unwrap();
        fleet.insert(i, d);
    }
    assert_eq!(hub.connection_count(), DEVICES);

    // Plan: canary 8, then waves of 16 with 16 in flight (a wave starts all at once, so an
    // abort inside a wave skips exactly the later waves). Cohorts: 0..8, 8..24, 24..40,
    // 40..56, 56..72 (wave 4), …
    let no_agent = [60, 61, 62];
    let refused = [64, 65, 66];
    let sabotage = Arc::new(AtomicBool::new(true));
    for (&i, d) in &fleet {
        if no_agent.contains(&i) {
            continue;
        }
        let s = refused.contains(&i).then(|| sabotage.clone());
        start_agent(&hub, d, &id(i), s);
    }
    eprintln!(
        "setup: {DEVICES} devices connected with agents in {:.1?}",
        setup.elapsed()
    );

    let state_file = dir.path().join("campaign.json");
    let plan = CampaignPlan::new(
        "renew-2026",
        Selector::all()
            .expiring_within_days(30)
            .in_group("fleet")
            .issued_by(hub.ca_certificate()),
        &state_file,
    )
    .with_canary(8)
    .with_wave_size(16)
    .with_max_concurrency(16)
    .with_failure_threshold(0.05, 20)
    .with_per_device_timeout(Duration::from_secs(6))
    .with_poll_interval(Duration::from_millis(25));
    let phases = Arc::new(Mutex::new(Vec::new()));
    let p = phases.clone();
    let backend: Arc<dyn CampaignBackend> = hub.clone();
    let mut campaign = Campaign::create(backend.clone(), plan)
        .await
        .unwrap()
        .on_progress(move |progress| {
            p.lock()
                .unwrap()
                .push((progress.device.clone(), progress.phase))
        });

    // The selection: exactly the 200, soonest expiry first (ties by id: here, id order).
    let selection = campaign.report().devices;
    assert!(
        selection
            .windows(2)
            .all(|w| w[0].old_not_after <= w[1].old_not_after)
    );
    let selected: Vec<String> = selection.iter().map(|d| d.device.clone()).collect();
    assert_eq!(selected, (0..DEVICES).map(id).collect::<Vec<_>>());

    // Run 1: aborts in wave 4.
    let started = Instant::now();
    let report = campaign.run().await.unwrap();
    let run1 = started.elapsed();
    eprintln!(
        "run 1: {} rotated, {} failed, {} timed out, {} skipped in {:.2?} ({:.1} devices/s, including the {:?} timeouts)",
        report.counts.succeeded,
        report.counts.failed,
        report.counts.timed_out,
        report.counts.skipped,
        run1,
        report.counts.succeeded as f64 / run1.as_secs_f64(),
        campaign.plan().per_device_timeout,
    );
    let abort = report.aborted.clone().expect("the campaign should abort");
    assert!(!abort.during_canary);
    // It aborted at the first result that took the run over 5 % (which one depends on the
    // order wave 4's results came in: 3 failures of 59 at the soonest, 4 of 70 at the latest).
    assert!(
        abort.failures as f64 / abort.finished as f64 > 0.05,
        "{abort:?}"
    );
    assert!(
        (abort.failures - 1) as f64 / (abort.finished - 1) as f64 <= 0.05,
        "{abort:?}"
    );
    assert!((3..=4).contains(&abort.failures), "{abort:?}");
    assert!((59..=72).contains(&abort.finished), "{abort:?}");
    assert_eq!(report.counts.total, DEVICES);
    assert_eq!(report.counts.succeeded, 66);
    assert_eq!(report.counts.failed, 3);
    assert_eq!(report.counts.timed_out, 3);
    assert_eq!(report.counts.skipped, DEVICES - 72);
    assert_eq!(report.counts.pending + report.counts.in_progress, 0);
    for i in no_agent {
        assert_eq!(
            report.device(&id(i)).unwrap().status,
            DeviceStatus::TimedOut {
                acknowledged: false
            },
            "{}",
            id(i)
        );
    }
    for i in refused {
        let d = &fleet[&i];
        match &report.device(&id(i)).unwrap().status {
            DeviceStatus::Failed { reason } => assert!(
                reason.contains("revoked") || reason.contains("unauthenticated"),
                "{}: {reason}",
                id(i)
            ),
            other => panic!("{}: {other:?}", id(i)),
        }
        // Rolled back: still on its original certificate, which is still active.
        assert_eq!(d.active(), d.original);
        assert_eq!(hub_certificates(&hub, &id(i)).0, vec![d.original.clone()]);
        // And it said so in its twin.
        let twin = hub.twin(&id(i)).unwrap();
        assert_eq!(twin.reported()[REPORT_KEY]["status"], "failed");
    }
    let mut run1_certificates = HashMap::new();
    for i in 0..DEVICES {
        let d = &fleet[&i];
        let line = report.device(&id(i)).unwrap();
        if i < 72 && !no_agent.contains(&i) && !refused.contains(&i) {
            assert_eq!(line.status, DeviceStatus::Succeeded, "{}", id(i));
            let new = line.new_certificate_id.clone().unwrap();
            assert_ne!(new, d.original);
            assert_eq!(d.active(), new, "{}: store", id(i));
            assert_eq!(hub_certificates(&hub, &id(i)).0, vec![new.clone()]);
            run1_certificates.insert(i, new);
        } else if i >= 72 {
            assert_eq!(line.status, DeviceStatus::Skipped, "{}", id(i));
            assert_eq!(line.attempts, 0);
            assert_eq!(d.active(), d.original, "{}: skipped but rotated", id(i));
            assert_eq!(hub_certificates(&hub, &id(i)).1, 1);
        }
    }
    {
        let phases = phases.lock().unwrap();
        let canary: Vec<&String> = phases
            .iter()
            .filter(|(_, p)| *p == Phase::Canary)
            .map(|(d, _)| d)
            .collect();
        assert_eq!(canary.len(), 8);
        assert!(phases.iter().all(|(_, p)| *p != Phase::Wave(5)));
    }
    // The selection left the others alone.
    for i in 0..5 {
        for d in [
            format!("long-{i}"),
            format!("lab-{i}"),
            format!("other-{i}"),
        ] {
            assert_eq!(hub_certificates(&hub, &d).1, 1, "{d}");
        }
    }
    drop(campaign);

    // The fix: the missing agents start; the fleet stops revoking. (The missing agents find
    // the first run's command waiting and rotate for it; the retry is then answered without a
    // second rotation.)
    sabotage.store(false, Ordering::SeqCst);
    for i in no_agent {
        start_agent(&hub, &fleet[&i], &id(i), None);
    }

    // Run 2, from the state file by a new object — and "killed" after 45 results, in the
    // middle of a wave.
    let results = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_tx = Mutex::new(Some(stop_tx));
    let r = results.clone();
    let mut campaign = Campaign::resume(backend.clone(), &state_file)
        .await
        .unwrap()
        .on_progress(move |_| {
            if r.fetch_add(1, Ordering::SeqCst) + 1 >= 45
                && let Some(tx) = stop_tx.lock().unwrap().take()
            {
                let _ = tx.send(());
            }
        });
    let started = Instant::now();
    tokio::select! {
        biased;
        _ = stop_rx => {}
        _ = campaign.run() => panic!("run 2 should have been interrupted"),
    }
    let run2 = started.elapsed();
    drop(campaign);
    let interrupted = Campaign::load_report(&state_file).unwrap();
    assert_eq!(interrupted.runs, 2);
    assert!(interrupted.aborted.is_none());
    assert!(
        interrupted.counts.succeeded >= 66 + 45,
        "{:?}",
        interrupted.counts
    );
    eprintln!(
        "run 2 (interrupted): {} more rotated in {:.2?}, {} left in flight",
        interrupted.counts.succeeded - 66,
        run2,
        interrupted.counts.in_progress
    );

    // Run 3: another new object from the file finishes the campaign. Devices left in flight
    // are asked for their answer first.
    let resolved = Arc::new(AtomicUsize::new(0));
    let r = resolved.clone();
    let started = Instant::now();
    let report = Campaign::resume(backend.clone(), &state_file)
        .await
        .unwrap()
        .on_progress(move |p| {
            if p.phase == Phase::Resume {
                r.fetch_add(1, Ordering::SeqCst);
            }
        })
        .run()
        .await
        .unwrap();
    let run3 = started.elapsed();
    eprintln!(
        "run 3: {} of the devices left in flight had answered; the others were asked again",
        resolved.load(Ordering::SeqCst)
    );
    let rotated3 = report.counts.succeeded - interrupted.counts.succeeded;
    eprintln!(
        "run 3: {} more rotated in {:.2?} ({:.1} devices/s)",
        rotated3,
        run3,
        rotated3 as f64 / run3.as_secs_f64()
    );
    let clean = (report.counts.succeeded - 66) as f64 / (run2 + run3).as_secs_f64();
    eprintln!(
        "throughput without failures (runs 2 and 3): {clean:.1} devices rotated per second \
         ({} devices, 16 in flight, 2 cores)",
        report.counts.succeeded - 66
    );
    assert!(report.is_complete(), "{:?}", report.counts);
    assert!(report.aborted.is_none());
    assert_eq!(report.runs, 3);
    assert_eq!(Campaign::load_report(&state_file).unwrap(), report);

    for i in 0..DEVICES {
        let d = &fleet[&i];
        let line = report.device(&id(i)).unwrap();
        assert_eq!(line.status, DeviceStatus::Succeeded, "{}", id(i));
        let new = line.new_certificate_id.clone().unwrap();
        // Store, hub and report agree on the one certificate in use.
        assert_eq!(d.active(), new, "{}", id(i));
        let (active, all) = hub_certificates(&hub, &id(i));
        assert_eq!(active, vec![new.clone()], "{}", id(i));
        // Rotated exactly once: the original plus the new one (plus, for the refused ones,
        // the certificate revoked in run 1).
        let expected = if refused.contains(&i) { 3 } else { 2 };
        assert_eq!(all, expected, "{}: rotated more than once", id(i));
        if let Some(first) = run1_certificates.get(&i) {
            // Succeeded in run 1: not asked again, certificate unchanged.
            assert_eq!(&new, first, "{}", id(i));
            assert_eq!(line.attempts, 1, "{}", id(i));
        }
        // The twin holds the outcome of the attempt that counted.
        let twin = hub.twin(&id(i)).unwrap();
        let outcome = &twin.reported()[REPORT_KEY];
        assert_eq!(outcome["status"], "succeeded");
        assert_eq!(outcome["campaign"], "renew-2026");
        assert_eq!(outcome["attempt"], line.attempts);
        assert_eq!(outcome["certificateId"], new.as_str());
    }
    for i in no_agent.iter().chain(&refused) {
        assert_eq!(report.device(&id(*i)).unwrap().attempts, 2, "{}", id(*i));
    }
    // The devices still work with their new certificates.
    for i in [0, 63, 64, 150, 199] {
        fleet[&i]
            .client
            .send_telemetry(fleetkit::device::Telemetry::new("after"))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_rotates_once_per_campaign_and_never_twice_at_once() {
    let hub = hub().await;
    let dir = tempfile::tempdir().unwrap();
    let cred = enroll(&hub, hub.ca(), &id(0), "fleet", 20);
    let d = device(hub.clone(), dir.path(), 0, cred).await;
    let agent = Arc::new(RotationAgent::new(d.client.clone(), d.store.clone()));
    // Two requests of the same campaign at once (a redelivery while the first runs), and one
    // of another campaign.
    let requests = [
        RotationRequest::new("c1", 1),
        RotationRequest::new("c1", 2),
        RotationRequest::new("c2", 1),
    ];
    let (a, b, c) = tokio::join!(
        agent.rotate(&requests[0]),
        agent.rotate(&requests[1]),
        agent.rotate(&requests[2]),
    );
    assert_eq!(a.status, RotationStatus::Succeeded, "{a:?}");
    assert_eq!(b.status, RotationStatus::Succeeded, "{b:?}");
    assert_eq!(c.status, RotationStatus::Succeeded, "{c:?}");
    // c1 rotated once (both answers name the same certificate), c2 once more.
    assert_eq!(a.certificate_id, b.certificate_id);
    assert_ne!(a.certificate_id, c.certificate_id);
    assert_eq!(hub_certificates(&hub, &id(0)).1, 3);
    assert_eq!(Some(d.active()), c.certificate_id);
    let twin = hub.twin(&id(0)).unwrap();
    assert_eq!(twin.reported()[REPORT_KEY]["campaign"], "c2");

    // Through the command stream: other commands go to the application, also while a
    // rotation runs.
    let others = Arc::new(Mutex::new(Vec::new()));
    let o = others.clone();
    let commands = d.client.commands().unwrap();
    let runner = agent.clone();
    let task = tokio::spawn(async move {
        runner
            .run_with(commands, |c| o.lock().unwrap().push(c.name))
            .await
    });
    hub.send_command(&id(0), "rotate", RotationRequest::new("c3", 1).to_payload())
        .await
        .unwrap();
    hub.send_command(&id(0), "reboot", "{}").await.unwrap();
    // A malformed rotate command is not reported (it names no campaign).
    hub.send_command(&id(0), "rotate", "garbage").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let twin = hub.twin(&id(0)).unwrap();
        if twin.reported()[REPORT_KEY]["campaign"] == "c3"
            && twin.reported()[REPORT_KEY]["status"] == "succeeded"
            && !others.lock().unwrap().is_empty()
        {
            break;
        }
        assert!(Instant::now() < deadline, "no outcome for c3");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*others.lock().unwrap(), ["reboot"]);
    assert_eq!(hub_certificates(&hub, &id(0)).1, 4);
    task.abort();
}
