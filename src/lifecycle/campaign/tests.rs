//! Selection, threshold arithmetic, cohorts, and the campaign engine over a scripted backend
//! (the flow over real devices and a real hub is `tests/campaign.rs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::identity::{DeviceId, Signer, SoftwareKey};
use crate::pki::{CaOptions, CertificateAuthority, DeviceCertOptions};

const DAY: u64 = 86_400;

fn issue(ca: &CertificateAuthority, device: &str, days: u64) -> Certificate {
    let key = SoftwareKey::generate_p256().unwrap();
    ca.issue(
        &DeviceId::new(device).unwrap(),
        key.public_key_spki(),
        &DeviceCertOptions::default().with_validity(Duration::from_secs(days * DAY)),
    )
    .unwrap()
}

fn ca(name: &str) -> CertificateAuthority {
    CertificateAuthority::new_root(&CaOptions::new(name)).unwrap()
}

// --- threshold -------------------------------------------------------------------------------

#[test]
fn threshold_waits_for_the_minimum_sample_and_is_strictly_over() {
    let t = FailureThreshold::new(0.2, 10);
    // Under the sample: never, however bad.
    assert!(!t.exceeded(9, 9));
    assert!(!t.exceeded(0, 0));
    // Exactly at the ratio does not abort; one more failure does.
    assert!(!t.exceeded(2, 10));
    assert!(t.exceeded(3, 10));
    assert!(!t.exceeded(20, 100));
    assert!(t.exceeded(21, 100));
    // Ratios that are not exact in binary still compare as decimals would.
    let t = FailureThreshold::new(0.3, 1);
    assert!(!t.exceeded(3, 10));
    assert!(t.exceeded(4, 10));
    let t = FailureThreshold::new(0.1, 1);
    assert!(!t.exceeded(1, 10));
    assert!(!t.exceeded(10, 100));
    assert!(t.exceeded(11, 100));
    // 0.0: any failure; 1.0: never.
    let zero = FailureThreshold::new(0.0, 5);
    assert!(!zero.exceeded(0, 5));
    assert!(!zero.exceeded(1, 4));
    assert!(zero.exceeded(1, 5));
    let one = FailureThreshold::new(1.0, 1);
    assert!(!one.exceeded(7, 7));
    // min_sample 0 behaves as 1 (no division by zero).
    let t = FailureThreshold::new(0.5, 0);
    assert!(!t.exceeded(0, 0));
    assert!(t.exceeded(1, 1));
}

#[test]
fn the_canary_gate_ignores_the_minimum_sample() {
    let t = FailureThreshold::new(0.2, 50);
    assert!(!t.exceeded_at_gate(0, 0));
    assert!(!t.exceeded_at_gate(1, 5)); // 20 %
    assert!(t.exceeded_at_gate(1, 4)); // 25 %
    assert!(!t.exceeded(1, 4)); // outside the gate, too few results
}

#[test]
fn thresholds_outside_0_1_are_refused() {
    for bad in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
        let plan = CampaignPlan::new("c", Selector::all(), "/tmp/x").with_failure_threshold(bad, 1);
        assert!(
            matches!(plan.validate(), Err(Error::InvalidInput { .. })),
            "{bad}"
        );
    }
}

// --- plan ------------------------------------------------------------------------------------

#[test]
fn cohorts_are_canary_then_waves_with_the_last_size_repeating() {
    let ranges = |plan: &CampaignPlan, n| {
        plan.cohorts(n)
            .into_iter()
            .map(|(p, r)| (p, r.len()))
            .collect::<Vec<_>>()
    };
    let plan = CampaignPlan::new("c", Selector::all(), "s")
        .with_canary(3)
        .with_waves(vec![5, 10]);
    assert_eq!(
        ranges(&plan, 31),
        [
            (Phase::Canary, 3),
            (Phase::Wave(1), 5),
            (Phase::Wave(2), 10),
            (Phase::Wave(3), 10),
            (Phase::Wave(4), 3)
        ]
    );
    assert_eq!(ranges(&plan, 2), [(Phase::Canary, 2)]);
    assert_eq!(ranges(&plan, 0), []);
    // No waves: everything after the canary at once.
    let plan = CampaignPlan::new("c", Selector::all(), "s").with_canary(1);
    assert_eq!(ranges(&plan, 10), [(Phase::Canary, 1), (Phase::Wave(1), 9)]);
    let plan = CampaignPlan::new("c", Selector::all(), "s");
    assert_eq!(ranges(&plan, 4), [(Phase::Wave(1), 4)]);
    // The cohorts cover the queue in order, without gaps.
    let plan = CampaignPlan::new("c", Selector::all(), "s")
        .with_canary(2)
        .with_wave_size(7);
    let mut at = 0;
    for (_, r) in plan.cohorts(40) {
        assert_eq!(r.start, at);
        at = r.end;
    }
    assert_eq!(at, 40);
}

#[test]
fn plans_are_validated() {
    let ok = CampaignPlan::new("renew_2026-q1", Selector::all(), "s");
    ok.validate().unwrap();
    for bad in [
        ok.clone().with_max_concurrency(0),
        ok.clone().with_waves(vec![10, 0]),
        ok.clone().with_per_device_timeout(Duration::ZERO),
        ok.clone().with_poll_interval(Duration::ZERO),
        CampaignPlan::new("", Selector::all(), "s"),
        CampaignPlan::new("a/b", Selector::all(), "s"),
        CampaignPlan::new("x".repeat(65), Selector::all(), "s"),
    ] {
        assert!(
            matches!(bad.validate(), Err(Error::InvalidInput { .. })),
            "{bad:?}"
        );
    }
}

// --- selection -------------------------------------------------------------------------------

#[test]
fn selects_certificates_expiring_within_n_days() {
    let ca = ca("Acme Devices");
    let now = OffsetDateTime::now_utc();
    let short = DeviceInfo::new("short").with_certificate(issue(&ca, "short", 2));
    let month = DeviceInfo::new("month").with_certificate(issue(&ca, "month", 25));
    let long = DeviceInfo::new("long").with_certificate(issue(&ca, "long", 400));
    let s = Selector::all().expiring_within_days(30);
    assert!(s.matches(&short, now));
    assert!(s.matches(&month, now));
    assert!(!s.matches(&long, now));
    let s = Selector::all().expiring_within_days(7);
    assert!(s.matches(&short, now));
    assert!(!s.matches(&month, now));
    // Later on, the long one comes into the window.
    let later = now + time::Duration::days(380);
    assert!(
        Selector::all()
            .expiring_within_days(30)
            .matches(&long, later)
    );
    // An expired certificate is not selected (that device cannot connect to rotate).
    let after_expiry = now + time::Duration::days(3);
    assert!(!Selector::all().matches(&short, after_expiry));
    assert!(!s.matches(&short, after_expiry));
    // A device without a certificate, or disabled, is never selected.
    assert!(!Selector::all().matches(&DeviceInfo::new("bare"), now));
    assert!(!Selector::all().matches(&short.clone().with_enabled(false), now));
}

#[test]
fn while_rotating_the_newer_certificate_counts() {
    let ca = ca("Acme Devices");
    let now = OffsetDateTime::now_utc();
    let old = issue(&ca, "dev-d", 2);
    let new = issue(&ca, "dev-d", 400);
    let d = DeviceInfo::new("dev-d")
        .with_certificate(old)
        .with_certificate(new.clone());
    assert_eq!(d.current_certificate(), Some(&new));
    assert!(!Selector::all().expiring_within_days(30).matches(&d, now));
}

#[test]
fn selects_by_group() {
    let ca = ca("Acme Devices");
    let now = OffsetDateTime::now_utc();
    let a = DeviceInfo::new("dev-a")
        .with_group("line-1")
        .with_certificate(issue(&ca, "dev-a", 10));
    let b = DeviceInfo::new("dev-b")
        .with_group("line-2")
        .with_group("eu")
        .with_certificate(issue(&ca, "dev-b", 10));
    let none = DeviceInfo::new("dev-c").with_certificate(issue(&ca, "dev-c", 10));
    let s = Selector::all().in_group("line-2");
    assert!(!s.matches(&a, now));
    assert!(s.matches(&b, now));
    assert!(!s.matches(&none, now));
    // Groups are a union.
    let s = Selector::all().in_group("line-1").in_group("eu");
    assert!(s.matches(&a, now) && s.matches(&b, now) && !s.matches(&none, now));
}

#[test]
fn selects_by_issuing_ca_not_just_its_name() {
    let old_ca = ca("Acme Devices");
    // Same name, different key: a re-keyed CA. Only the key id tells them apart.
    let rekeyed = ca("Acme Devices");
    let other = ca("Other Vendor");
    let root = ca("Acme Root");
    let intermediate = root
        .new_intermediate(&CaOptions::new("Acme Issuing"))
        .unwrap();
    let now = OffsetDateTime::now_utc();
    let by_old = DeviceInfo::new("dev-a").with_certificate(issue(&old_ca, "dev-a", 100));
    let by_rekeyed = DeviceInfo::new("dev-b").with_certificate(issue(&rekeyed, "dev-b", 100));
    let by_other = DeviceInfo::new("dev-c").with_certificate(issue(&other, "dev-c", 100));
    let by_intermediate =
        DeviceInfo::new("dev-d").with_certificate(issue(&intermediate, "dev-d", 100));

    let s = Selector::all().issued_by(old_ca.certificate());
    assert!(s.matches(&by_old, now));
    assert!(!s.matches(&by_rekeyed, now));
    assert!(!s.matches(&by_other, now));
    // The issuing CA is the intermediate, not the root above it.
    assert!(
        !Selector::all()
            .issued_by(root.certificate())
            .matches(&by_intermediate, now)
    );
    assert!(
        Selector::all()
            .issued_by(intermediate.certificate())
            .matches(&by_intermediate, now)
    );
    // By name alone both "Acme Devices" match.
    let s = Selector::all().issuer_name(old_ca.certificate().subject());
    assert!(s.matches(&by_old, now) && s.matches(&by_rekeyed, now));
    assert!(!s.matches(&by_other, now));
    // Issuers are a union.
    let s = Selector::all()
        .issued_by(old_ca.certificate())
        .issued_by(other.certificate());
    assert!(s.matches(&by_old, now) && s.matches(&by_other, now) && !s.matches(&by_rekeyed, now));
}

#[test]
fn criteria_combine_with_and() {
    let old_ca = ca("Acme Devices 2024");
    let new_ca = ca("Acme Devices 2026");
    let now = OffsetDateTime::now_utc();
    let device = |id: &str, group: &str, ca: &CertificateAuthority, days| {
        DeviceInfo::new(id)
            .with_group(group)
            .with_certificate(issue(ca, id, days))
    };
    let fleet = [
        device("hit", "eu", &old_ca, 5),
        device("wrong-group", "us", &old_ca, 5),
        device("wrong-ca", "eu", &new_ca, 5),
        device("not-expiring", "eu", &old_ca, 300),
    ];
    let s = Selector::all()
        .expiring_within_days(30)
        .in_group("eu")
        .issued_by(old_ca.certificate());
    let selected: Vec<&str> = fleet
        .iter()
        .filter(|d| s.matches(d, now))
        .map(|d| d.device.as_str())
        .collect();
    assert_eq!(selected, ["hit"]);
    // An explicit device list narrows further.
    let s = Selector::all().devices(["wrong-ca", "hit"]);
    let selected: Vec<&str> = fleet
        .iter()
        .filter(|d| s.matches(d, now))
        .map(|d| d.device.as_str())
        .collect();
    assert_eq!(selected, ["hit", "wrong-ca"]);
}

#[test]
fn selectors_survive_the_state_file() {
    let ca = ca("Acme Devices");
    let s = Selector::all()
        .expiring_within_days(30)
        .in_group("eu")
        .issued_by(ca.certificate())
        .issuer_name("CN=x")
        .devices(["dev-a"]);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<Selector>(&json).unwrap(), s);
}

// --- the engine over a scripted backend ------------------------------------------------------

#[derive(Clone, Debug)]
enum Script {
    /// Succeeds after the delay.
    Succeed,
    /// Answers failed.
    Fail,
    /// Acknowledges, never finishes.
    Hang,
    /// Never answers.
    Silent,
    /// The request cannot be delivered.
    Unreachable,
}

#[derive(Debug)]
struct Scripted {
    devices: Vec<DeviceInfo>,
    script: Mutex<HashMap<String, Script>>,
    /// Answers, by device: (request, outcome).
    answers: Arc<Mutex<HashMap<String, (RotationRequest, DeviceOutcome)>>>,
    /// Requests delivered, in order.
    asked: Mutex<Vec<(String, u32)>>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: AtomicUsize,
    delay: Duration,
}

impl Scripted {
    fn new(n: usize) -> Arc<Self> {
        let ca = ca("Acme Devices");
        let devices = (0..n)
            .map(|i| {
                let id = format!("d{i:03}");
                // Expiry order = numbering order.
                let cert = issue(&ca, &id, 10 + i as u64);
                DeviceInfo::new(id).with_certificate(cert)
            })
            .collect();
        Arc::new(Scripted {
            devices,
            script: Mutex::new(HashMap::new()),
            answers: Arc::new(Mutex::new(HashMap::new())),
            asked: Mutex::new(Vec::new()),
            in_flight: Arc::new(AtomicUsize::new(0)),
            most_in_flight: AtomicUsize::new(0),
            delay: Duration::from_millis(15),
        })
    }

    fn set(&self, device: &str, script: Script) {
        self.script
            .lock()
            .unwrap()
            .insert(device.to_string(), script);
    }

    fn asked(&self, device: &str) -> usize {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|(d, _)| d == device)
            .count()
    }
}

#[async_trait]
impl CampaignBackend for Scripted {
    async fn candidates(&self, _: &Selector) -> Result<Vec<DeviceInfo>> {
        Ok(self.devices.clone())
    }

    async fn start_rotation(&self, device: &str, request: &RotationRequest) -> Result<()> {
        let script = self
            .script
            .lock()
            .unwrap()
            .get(device)
            .cloned()
            .unwrap_or(Script::Succeed);
        if let Script::Unreachable = script {
            return Err(Error::Unavailable("no session".into()));
        }
        self.asked
            .lock()
            .unwrap()
            .push((device.to_string(), request.attempt));
        let outcome = match script {
            Script::Succeed => DeviceOutcome::Succeeded {
                certificate_id: Some(format!("new-{device}-{}", request.attempt)),
            },
            Script::Fail => DeviceOutcome::Failed {
                reason: "scripted failure".into(),
            },
            Script::Hang => DeviceOutcome::InProgress,
            Script::Silent | Script::Unreachable => return Ok(()),
        };
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        // The device works on its own, whatever becomes of the campaign's process.
        let (answers, in_flight, delay) =
            (self.answers.clone(), self.in_flight.clone(), self.delay);
        let (device, request) = (device.to_string(), request.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            answers.lock().unwrap().insert(device, (request, outcome));
        });
        Ok(())
    }

    async fn outcome(
        &self,
        device: &str,
        request: &RotationRequest,
    ) -> Result<Option<DeviceOutcome>> {
        Ok(self
            .answers
            .lock()
            .unwrap()
            .get(device)
            .filter(|(r, _)| r == request)
            .map(|(_, o)| o.clone()))
    }
}

fn fast(plan: CampaignPlan) -> CampaignPlan {
    plan.with_per_device_timeout(Duration::from_millis(300))
        .with_poll_interval(Duration::from_millis(5))
}

fn status_of(report: &CampaignReport, device: &str) -> DeviceStatus {
    report.device(device).unwrap().status.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_campaign_respects_concurrency_and_records_everything() {
    let backend = Scripted::new(40);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    let plan = fast(CampaignPlan::new("c1", Selector::all(), &path))
        .with_canary(3)
        .with_wave_size(10)
        .with_max_concurrency(4);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let mut campaign = Campaign::create(backend.clone(), plan)
        .await
        .unwrap()
        .on_progress(move |p| s.lock().unwrap().push((p.device.clone(), p.phase)));
    let report = campaign.run().await.unwrap();
    assert!(report.is_complete(), "{:?}", report.counts);
    assert_eq!(report.counts.total, 40);
    assert!(report.aborted.is_none());
    assert!(backend.most_in_flight.load(Ordering::SeqCst) <= 4);
    assert!(backend.most_in_flight.load(Ordering::SeqCst) >= 2);
    let d = report.device("d007").unwrap();
    assert_eq!(d.attempts, 1);
    assert_eq!(d.new_certificate_id.as_deref(), Some("new-d007-1"));
    assert!(d.old_certificate_id.is_some());
    // Soonest expiry first; the canary is the first three.
    let order: Vec<String> = report.devices.iter().map(|d| d.device.clone()).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 40);
    let canary: Vec<&str> = seen
        .iter()
        .filter(|(_, p)| *p == Phase::Canary)
        .map(|(d, _)| d.as_str())
        .collect();
    let mut canary_sorted = canary.clone();
    canary_sorted.sort();
    assert_eq!(canary_sorted, ["d000", "d001", "d002"]);
    assert!(seen.iter().any(|(_, p)| *p == Phase::Wave(4)));
    // The state file holds the same report, mode 0600.
    assert_eq!(Campaign::load_report(&path).unwrap(), report);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A second campaign on the same file is refused.
    let again = fast(CampaignPlan::new("c1", Selector::all(), &path));
    assert!(matches!(
        Campaign::create(backend, again).await,
        Err(Error::AlreadyExists { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_stops_before_any_wave() {
    let backend = Scripted::new(20);
    backend.set("d001", Script::Fail);
    let dir = tempfile::tempdir().unwrap();
    let plan = fast(CampaignPlan::new(
        "c1",
        Selector::all(),
        dir.path().join("s"),
    ))
    .with_canary(4)
    .with_failure_threshold(0.2, 10);
    let report = Campaign::create(backend.clone(), plan)
        .await
        .unwrap()
        .run()
        .await
        .unwrap();
    let abort = report.aborted.clone().unwrap();
    assert!(abort.during_canary, "{abort:?}");
    assert_eq!((abort.failures, abort.finished), (1, 4));
    assert_eq!(report.counts.succeeded, 3);
    assert_eq!(report.counts.failed, 1);
    assert_eq!(report.counts.skipped, 16);
    assert_eq!(backend.asked.lock().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_skips_the_rest_and_resume_retries_without_redoing_successes() {
    let backend = Scripted::new(30);
    // Devices 10..15 fail in different ways.
    backend.set("d010", Script::Fail);
    backend.set("d011", Script::Silent);
    backend.set("d012", Script::Hang);
    backend.set("d013", Script::Unreachable);
    backend.set("d014", Script::Fail);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let plan = fast(CampaignPlan::new("c1", Selector::all(), &path))
        .with_max_concurrency(1)
        .with_failure_threshold(0.2, 10);
    let report = Campaign::create(backend.clone(), plan)
        .await
        .unwrap()
        .run()
        .await
        .unwrap();
    // One at a time: 10 successes, then failures until 3 of 13 > 20 %.
    let abort = report.aborted.clone().unwrap();
    assert_eq!((abort.failures, abort.finished), (3, 13), "{abort:?}");
    assert!(!abort.during_canary);
    assert!(
        matches!(status_of(&report, "d010"), DeviceStatus::Failed { reason } if reason == "scripted failure")
    );
    assert_eq!(
        status_of(&report, "d011"),
        DeviceStatus::TimedOut {
            acknowledged: false
        }
    );
    assert_eq!(
        status_of(&report, "d012"),
        DeviceStatus::TimedOut { acknowledged: true }
    );
    for i in 13..30 {
        assert_eq!(
            status_of(&report, &format!("d{i:03}")),
            DeviceStatus::Skipped
        );
    }
    assert_eq!(report.counts.succeeded, 10);
    assert_eq!(report.counts.failed, 1);
    assert_eq!(report.counts.timed_out, 2);
    assert_eq!(report.counts.skipped, 17);

    // Fix the fleet; a new process resumes from the file.
    for d in ["d010", "d011", "d012", "d013", "d014"] {
        backend.set(d, Script::Succeed);
    }
    let report = Campaign::resume(backend.clone(), &path)
        .await
        .unwrap()
        .run()
        .await
        .unwrap();
    assert!(report.is_complete(), "{:?}", report);
    assert_eq!(report.runs, 2);
    for i in 0..10 {
        let d = format!("d{i:03}");
        assert_eq!(backend.asked(&d), 1, "{d} asked again");
        assert_eq!(report.device(&d).unwrap().attempts, 1);
    }
    assert_eq!(report.device("d010").unwrap().attempts, 2);
    assert_eq!(
        report.device("d010").unwrap().new_certificate_id.as_deref(),
        Some("new-d010-2")
    );
    assert_eq!(report.device("d020").unwrap().attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retry_failed_a_resume_only_finishes_the_rest() {
    let backend = Scripted::new(12);
    backend.set("d000", Script::Fail);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let plan = fast(CampaignPlan::new("c1", Selector::all(), &path))
        .with_max_concurrency(1)
        .with_failure_threshold(0.0, 1);
    let report = Campaign::create(backend.clone(), plan)
        .await
        .unwrap()
        .run()
        .await
        .unwrap();
    assert!(report.aborted.is_some());
    assert_eq!(report.counts.skipped, 11);
    backend.set("d000", Script::Succeed);
    let report = Campaign::resume(backend.clone(), &path)
        .await
        .unwrap()
        .retry_failed(false)
        .run()
        .await
        .unwrap();
    assert!(report.aborted.is_none());
    assert_eq!(report.counts.succeeded, 11);
    assert_eq!(report.counts.failed, 1);
    assert_eq!(backend.asked("d000"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_resumes_and_asks_in_flight_devices_for_their_answer_first() {
    let backend = Scripted::new(20);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let plan = fast(CampaignPlan::new("c1", Selector::all(), &path)).with_max_concurrency(5);
    let mut campaign = Campaign::create(backend.clone(), plan).await.unwrap();
    // "Kill" the run after a few results by dropping its future.
    let results = Arc::new(AtomicUsize::new(0));
    let r = results.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = Mutex::new(Some(tx));
    campaign = campaign.on_progress(move |_| {
        if r.fetch_add(1, Ordering::SeqCst) + 1 == 6
            && let Some(tx) = tx.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    });
    tokio::select! {
        biased;
        _ = rx => {}
        _ = campaign.run() => panic!("the run should have been interrupted"),
    }
    drop(campaign);
    let before = Campaign::load_report(&path).unwrap();
    assert!(before.counts.succeeded >= 6, "{:?}", before.counts);
    assert!(before.counts.in_progress > 0, "{:?}", before.counts);
    // Let the devices in flight finish answering, as real ones would.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let in_flight: Vec<String> = before
        .devices
        .iter()
        .filter(|d| d.status == DeviceStatus::InProgress)
        .map(|d| d.device.clone())
        .collect();
    // "In flight" in the file means "maybe asked": the run may have died between writing the
    // file and sending the request.
    let asked_before: Vec<String> = backend
        .asked
        .lock()
        .unwrap()
        .iter()
        .map(|(d, _)| d.clone())
        .collect();
    let report = Campaign::resume(backend.clone(), &path)
        .await
        .unwrap()
        .run()
        .await
        .unwrap();
    assert!(report.is_complete(), "{:?}", report.counts);
    for d in &in_flight {
        let attempts = report.device(d).unwrap().attempts;
        if asked_before.contains(d) {
            // Asked, and its answer was collected: not asked a second time.
            assert_eq!(attempts, 1, "{d}");
        } else {
            // Never asked: asked now, as the next attempt.
            assert_eq!(attempts, 2, "{d}");
        }
    }
    for d in &report.devices {
        assert_eq!(backend.asked(&d.device), 1, "{}", d.device);
    }
}

#[tokio::test]
async fn state_files_from_elsewhere_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new(0);
    let path = dir.path().join("s.json");
    std::fs::write(&path, "{not json").unwrap();
    assert!(matches!(
        Campaign::resume(backend.clone(), &path).await,
        Err(Error::InvalidInput { .. })
    ));
    std::fs::write(&path, r#"{"format": 99}"#).unwrap();
    assert!(matches!(
        Campaign::resume(backend.clone(), &path).await,
        Err(Error::NotSupported(_))
    ));
    assert!(matches!(
        Campaign::resume(backend, dir.path().join("missing")).await,
        Err(Error::Io { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runner_per_campaign() {
    let backend = Scripted::new(3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let first = Campaign::create(
        backend.clone(),
        fast(CampaignPlan::new("c1", Selector::all(), &path)),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(
        Campaign::resume(backend.clone(), &path).await,
        Err(Error::Precondition(_))
    ));
    assert!(started.elapsed() >= LOCK_WAIT);
    drop(first);
    let mut second = Campaign::resume(backend, &path).await.unwrap();
    assert!(second.run().await.unwrap().is_complete());
}
