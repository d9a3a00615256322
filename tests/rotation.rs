//! Certificate rotation on the local hub over mTLS: the happy path keeps the running client's
//! queue and subscriptions; a fail point after *every* step, then a restart, always ends with
//! a device that connects; a refused new certificate rolls back; a real child process killed
//! with SIGKILL mid-rotation recovers; and a device can only renew its own identity.
#![cfg(feature = "local")]

use std::sync::Arc;
use std::time::Duration;

use fleetkit::Error;
use fleetkit::device::{ConnectionState, DeviceClient, NativeDialect, Telemetry};
use fleetkit::identity::{CredentialStore, Credentials, DeviceId, SoftwareKey, X509Credential};
use fleetkit::lifecycle::rotation::{Recovery, RotationStep, Rotator, recover};
use fleetkit::local::{CertificateState, DeviceRecord, LocalHub};
use fleetkit::pki::build_csr;
use fleetkit::policy::{AttachTarget, builtin};

const DEVICE: &str = "dev-1";
const WAIT: Duration = Duration::from_secs(10);

async fn hub() -> LocalHub {
    let hub = LocalHub::builder().start().await.unwrap();
    hub.put_policy("device", &builtin::native_device()).unwrap();
    hub.attach_policy("device", AttachTarget::Group("fleet".into()))
        .unwrap();
    hub.create_device(DeviceRecord::new(DEVICE).in_group("fleet"))
        .unwrap();
    hub
}

/// A store whose active credential is a fresh one for the device.
fn store_with_credential(
    hub: &LocalHub,
    dir: &std::path::Path,
) -> (CredentialStore, X509Credential) {
    let cred = hub.issue_device_credential(DEVICE).unwrap();
    let store = CredentialStore::open(dir).unwrap();
    store.stage(&Credentials::X509(cred.clone())).unwrap();
    store.commit().unwrap();
    (store, cred)
}

async fn connect(
    port: u16,
    ca: &fleetkit::pki::Certificate,
    cred: X509Credential,
) -> fleetkit::Result<DeviceClient> {
    DeviceClient::builder(
        NativeDialect::new("localhost", port, ca),
        DeviceId::new(DEVICE).unwrap(),
    )
    .credential(cred)
    .backoff(
        fleetkit::protocol::BackoffConfig::new()
            .with_base(Duration::from_millis(20))
            .with_cap(Duration::from_millis(200)),
    )
    .connect_timeout(Duration::from_secs(5))
    .connect()
    .await
}

fn cert_state(hub: &LocalHub, id: &str) -> CertificateState {
    hub.with_registry(|r| r.certificate(id).unwrap().state)
}

fn certificates_of(hub: &LocalHub, device: &str) -> Vec<String> {
    hub.with_registry(|r| {
        r.certificates_of(device)
            .iter()
            .map(|c| c.id.clone())
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_running_client_its_queue_and_subscriptions() {
    let hub = hub().await;
    let dir = tempfile::tempdir().unwrap();
    let (store, old) = store_with_credential(&hub, dir.path());
    let port = hub.mqtt_addr().port();
    let client = connect(port, hub.ca_certificate(), old.clone())
        .await
        .unwrap();
    let mut commands = client.commands().unwrap();
    let mut cloud = hub.subscribe("devices/+/telemetry").unwrap();
    // Messages queued just before the rotation arrive after it.
    let receipts: Vec<_> = (0..20)
        .map(|i| {
            client
                .queue_telemetry(Telemetry::new(format!("m{i}")))
                .unwrap()
        })
        .collect();
    let report = Rotator::new(&client, &store).rotate().await.unwrap();
    assert!(report.old_retired);
    assert_eq!(report.old_certificate_id, old.leaf().fingerprint_sha256());
    assert_eq!(
        cert_state(&hub, &report.old_certificate_id),
        CertificateState::Inactive
    );
    assert_eq!(
        cert_state(&hub, &report.new_certificate_id),
        CertificateState::Active
    );
    let Credentials::X509(active) = store.load().unwrap() else {
        unreachable!()
    };
    assert_eq!(
        active.leaf().fingerprint_sha256(),
        report.new_certificate_id
    );
    for r in receipts {
        tokio::time::timeout(WAIT, r.acknowledged())
            .await
            .unwrap()
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        let m = tokio::time::timeout(WAIT, cloud.recv())
            .await
            .unwrap()
            .unwrap();
        let s = String::from_utf8(m.payload.to_vec()).unwrap();
        if !got.contains(&s) {
            got.push(s);
        }
    }
    assert_eq!(got, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // Subscriptions survived: a command after the rotation arrives.
    tokio::time::timeout(WAIT, async {
        while hub.send_command(DEVICE, "ping", "1").await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let c = tokio::time::timeout(WAIT, commands.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.name, "ping");
    // The old credential no longer gets in.
    let err = connect(port, hub.ca_certificate(), old).await.unwrap_err();
    assert!(
        matches!(err, Error::Unauthenticated(_) | Error::Revoked(_)),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_any_step_ends_with_a_working_credential() {
    for step in RotationStep::ALL {
        let hub = hub().await;
        let dir = tempfile::tempdir().unwrap();
        let (store, old) = store_with_credential(&hub, dir.path());
        let port = hub.mqtt_addr().port();
        let ca = hub.ca_certificate().clone();
        let client = connect(port, &ca, old.clone()).await.unwrap();
        let err = Rotator::new(&client, &store)
            .on_step(move |s| {
                if s == step {
                    Err(Error::Precondition(format!("fail point after {s:?}")))
                } else {
                    Ok(())
                }
            })
            .rotate()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Precondition(_)), "{step:?}: {err:?}");
        // The "crash": the process's client is gone; a new process opens the store.
        drop(client);
        let store = CredentialStore::open(dir.path()).unwrap();
        let (client, recovery) = recover(&store, |cred| connect(port, &ca, cred))
            .await
            .unwrap_or_else(|e| panic!("{step:?}: no working credential after the crash: {e}"));
        assert!(
            matches!(client.state(), ConnectionState::Connected { .. }),
            "{step:?}"
        );
        client
            .send_telemetry(Telemetry::new("alive"))
            .await
            .unwrap();
        // The store now holds exactly one credential in use, and it is the one connected.
        assert!(
            store
                .load_slot(fleetkit::identity::Slot::Pending)
                .unwrap()
                .is_none()
        );
        let Credentials::X509(active) = store.load().unwrap() else {
            unreachable!()
        };
        assert_eq!(
            cert_state(&hub, &active.leaf().fingerprint_sha256()),
            CertificateState::Active,
            "{step:?}"
        );
        match step {
            RotationStep::KeyGenerated | RotationStep::CertificateIssued => {
                assert_eq!(recovery, Recovery::Clean, "{step:?}");
                assert_eq!(
                    active.leaf().fingerprint_sha256(),
                    old.leaf().fingerprint_sha256()
                );
            }
            RotationStep::Staged | RotationStep::Switched | RotationStep::Confirmed => {
                assert!(
                    matches!(recovery, Recovery::Completed { old_retired: true }),
                    "{step:?}: {recovery:?}"
                );
                assert_ne!(
                    active.leaf().fingerprint_sha256(),
                    old.leaf().fingerprint_sha256()
                );
                assert_eq!(
                    cert_state(&hub, &old.leaf().fingerprint_sha256()),
                    CertificateState::Inactive
                );
            }
            RotationStep::Committed => {
                assert_eq!(recovery, Recovery::Clean, "{step:?}");
                assert_ne!(
                    active.leaf().fingerprint_sha256(),
                    old.leaf().fingerprint_sha256()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_new_certificate_rolls_back_to_the_old_one() {
    let hub = Arc::new(hub().await);
    let dir = tempfile::tempdir().unwrap();
    let (store, old) = store_with_credential(&hub, dir.path());
    let old_id = old.leaf().fingerprint_sha256();
    let client = connect(hub.mqtt_addr().port(), hub.ca_certificate(), old)
        .await
        .unwrap();
    let h = hub.clone();
    let old_for_hook = old_id.clone();
    let err = Rotator::new(&client, &store)
        .on_step(move |s| {
            if s == RotationStep::Staged {
                // The fleet revokes the new certificate before the device tries it.
                for id in certificates_of(&h, DEVICE) {
                    if id != old_for_hook {
                        h.set_certificate_state(&id, CertificateState::Revoked)
                            .unwrap();
                    }
                }
            }
            Ok(())
        })
        .rotate()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Revoked(_) | Error::Unauthenticated(_)),
        "{err:?}"
    );
    assert!(matches!(client.state(), ConnectionState::Connected { .. }));
    client
        .send_telemetry(Telemetry::new("still me"))
        .await
        .unwrap();
    let Credentials::X509(active) = store.load().unwrap() else {
        unreachable!()
    };
    assert_eq!(active.leaf().fingerprint_sha256(), old_id);
    assert!(
        store
            .load_slot(fleetkit::identity::Slot::Pending)
            .unwrap()
            .is_none()
    );
    assert_eq!(cert_state(&hub, &old_id), CertificateState::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_can_only_renew_its_own_identity() {
    let hub = hub().await;
    hub.create_device(DeviceRecord::new("dev-2").in_group("fleet"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_store, old) = store_with_credential(&hub, dir.path());
    let client = connect(hub.mqtt_addr().port(), hub.ca_certificate(), old.clone())
        .await
        .unwrap();
    let key = Arc::new(SoftwareKey::generate_p256().unwrap());
    let csr = build_csr(key, &DeviceId::new("dev-2").unwrap()).unwrap();
    let err = client.request_certificate(&csr.to_pem()).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    // Garbage instead of a CSR.
    let err = client.request_certificate("not a CSR").await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    // A confirmation must come over the new certificate: over the old one it is refused.
    let key = Arc::new(SoftwareKey::generate_p256().unwrap());
    let csr = build_csr(key, &DeviceId::new(DEVICE).unwrap()).unwrap();
    let issued = client.request_certificate(&csr.to_pem()).await.unwrap();
    let err = client
        .confirm_certificate(&issued.certificate_id, &old.leaf().fingerprint_sha256())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err:?}");
    assert_eq!(
        cert_state(&hub, &old.leaf().fingerprint_sha256()),
        CertificateState::Active
    );
    assert!(certificates_of(&hub, "dev-2").is_empty());
}

// --- A real process killed with SIGKILL mid-rotation -----------------------------------------

/// Child side: rotates and freezes at `FLEETKIT_ROTATION_PAUSE` (printing PAUSED), or
/// recovers and reports. Does nothing unless run as a child by the test below.
#[test]
fn rotation_child() {
    let Ok(mode) = std::env::var("FLEETKIT_ROTATION_CHILD") else {
        return;
    };
    let port: u16 = std::env::var("FLEETKIT_HUB_PORT").unwrap().parse().unwrap();
    let ca = fleetkit::pki::Certificate::from_pem(
        &std::fs::read_to_string(std::env::var("FLEETKIT_HUB_CA").unwrap()).unwrap(),
    )
    .unwrap();
    let store = CredentialStore::open(std::env::var("FLEETKIT_STORE").unwrap()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        match mode.as_str() {
            "rotate" => {
                let pause = std::env::var("FLEETKIT_ROTATION_PAUSE").unwrap();
                let Credentials::X509(active) = store.load().unwrap() else {
                    unreachable!()
                };
                let client = connect(port, &ca, active).await.unwrap();
                let _ = Rotator::new(&client, &store)
                    .on_step(move |s| {
                        if format!("{s:?}") == pause {
                            println!("PAUSED");
                            use std::io::Write;
                            std::io::stdout().flush().unwrap();
                            loop {
                                std::thread::sleep(Duration::from_secs(60));
                            }
                        }
                        Ok(())
                    })
                    .rotate()
                    .await;
            }
            _ => {
                let (client, recovery) = recover(&store, |c| connect(port, &ca, c)).await.unwrap();
                client.send_telemetry(Telemetry::new("back")).await.unwrap();
                println!("RECOVERED {recovery:?}");
            }
        }
    });
}

async fn run_child(mode: &str, pause: &str, env: &[(&str, String)]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "rotation_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("FLEETKIT_ROTATION_CHILD", mode)
    .env("FLEETKIT_ROTATION_PAUSE", pause)
    .stdout(std::process::Stdio::piped())
    .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

async fn wait_line(child: &mut tokio::process::Child, prefix: &str) -> String {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.as_mut().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest prints "test rotation_child ... " on the same line first.
            if let Some(at) = line.find(prefix) {
                return line[at..].to_string();
            }
        }
        panic!("child ended without {prefix}");
    })
    .await
    .expect("child too slow")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_rotation_recovers_on_restart() {
    for (pause, expect) in [
        ("Staged", "Completed"),
        ("Switched", "Completed"),
        ("KeyGenerated", "Clean"),
    ] {
        let hub = hub().await;
        let dir = tempfile::tempdir().unwrap();
        let (store, old) = store_with_credential(&hub, &dir.path().join("store"));
        drop(store);
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, hub.ca_certificate().to_pem()).unwrap();
        let env = [
            ("FLEETKIT_HUB_PORT", hub.mqtt_addr().port().to_string()),
            ("FLEETKIT_HUB_CA", ca_path.display().to_string()),
            (
                "FLEETKIT_STORE",
                dir.path().join("store").display().to_string(),
            ),
        ];
        let mut child = run_child("rotate", pause, &env).await;
        wait_line(&mut child, "PAUSED").await;
        child.start_kill().unwrap(); // SIGKILL
        let status = child.wait().await.unwrap();
        assert!(!status.success());
        let mut child = run_child("recover", pause, &env).await;
        let line = wait_line(&mut child, "RECOVERED").await;
        assert!(line.contains(expect), "{pause}: {line}");
        assert!(child.wait().await.unwrap().success());
        let store = CredentialStore::open(dir.path().join("store")).unwrap();
        let Credentials::X509(active) = store.load().unwrap() else {
            unreachable!()
        };
        assert_eq!(
            cert_state(&hub, &active.leaf().fingerprint_sha256()),
            CertificateState::Active
        );
        if expect == "Completed" {
            assert_eq!(
                cert_state(&hub, &old.leaf().fingerprint_sha256()),
                CertificateState::Inactive
            );
        }
    }
}
