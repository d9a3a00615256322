//! The official AWS IoT Device SDK v2 for Python (`awsiotsdk`, on the AWS Common Runtime)
//! against the local hub's AWS dialect: the proof that the dialect is AWS's, not ours.
//!
//! The SDK connects with mutual TLS (its username carries `?SDK=PythonV2&Version=…`),
//! subscribes through its own shadow client, reports, desires, is refused a stale version and
//! malformed JSON with AWS's codes, receives a delta caused by a cloud-side change, reads the
//! document back and uses a named shadow (`tests/python/aws_sdk_shadow.py`); and it runs
//! the Jobs flow with its own jobs client (`tests/python/aws_sdk_jobs.py`).
//!
//! Needs Python 3 with `awsiotsdk` (`python3 -m pip install awsiotsdk`; `.ci/run` installs it
//! in a virtual environment). The interpreter is `$FLEETKIT_PYTHON`, or `python3`. Without the
//! SDK this test fails: it never skips silently.
#![cfg(feature = "local")]

mod support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use fleetkit::local::dialect::aws::AwsHubDialect;
use fleetkit::local::{DeviceRecord, HubEvent, LocalHub};
use fleetkit::policy::{AttachTarget, builtin};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const THING: &str = "py-thing-1";

fn interpreter() -> String {
    let python = std::env::var("FLEETKIT_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .args(["-c", "import awsiot, awscrt"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run the Python interpreter {python:?}: {e}"));
    assert!(
        out.status.success(),
        "{python} cannot import the AWS IoT Device SDK: run `{python} -m pip install awsiotsdk` \
         (or set FLEETKIT_PYTHON to an interpreter that has it).\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

/// Runs `script` (in `tests/python/`) for `thing` of `hub` with `cred`: one JSON step line
/// per step on its stdout; when it prints the step `ready`, `on_ready` acts for the cloud
/// side and the script is told to go on. Returns every step by name; panics with the
/// script's stderr if it fails or takes over a minute.
async fn run_sdk_script<F, Fut>(
    script: &str,
    hub: &LocalHub,
    thing: &str,
    cred: &fleetkit::identity::X509Credential,
    on_ready: F,
) -> HashMap<String, Value>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let python = interpreter();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    support::write_tls_files(d, hub, cred);
    let script = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = tokio::process::Command::new(&python)
        .arg(script)
        .arg("localhost")
        .arg(hub.mqtt_addr().port().to_string())
        .arg(thing)
        .arg(d.join("cert.pem"))
        .arg(d.join("key.pem"))
        .arg(d.join("ca.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut steps: HashMap<String, Value> = HashMap::new();
    let mut on_ready = Some(on_ready);
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON step line ({e}): {line}"));
            let step = v["step"].as_str().unwrap().to_string();
            assert_ne!(step, "error", "the SDK script failed: {v}");
            if step == "ready"
                && let Some(act) = on_ready.take()
            {
                act().await;
                stdin.write_all(b"go\n").await.unwrap();
                stdin.flush().await.unwrap();
            }
            steps.insert(step, v);
        }
    })
    .await;
    let status = child.wait().await.unwrap();
    if outcome.is_err() || !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use tokio::io::AsyncReadExt as _;
            let _ = e.read_to_string(&mut err).await;
        }
        panic!("the SDK script did not finish: {status:?}\nsteps: {steps:?}\nstderr:\n{err}");
    }
    assert!(steps.contains_key("done"), "missing step done: {steps:?}");
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_shadow_flow() {
    let hub = LocalHub::builder()
        .dialect(AwsHubDialect::new())
        .start()
        .await
        .unwrap();
    hub.put_policy("device", &builtin::aws_device()).unwrap();
    hub.attach_policy("device", AttachTarget::Group("fleet".into()))
        .unwrap();
    hub.create_device(DeviceRecord::new(THING).in_group("fleet"))
        .unwrap();
    let cred = hub.issue_device_credential(THING).unwrap();
    let mut presence = hub
        .subscribe(&format!("$aws/events/presence/+/{THING}"))
        .unwrap();
    let mut events = hub.events();
    let steps = run_sdk_script("aws_sdk_shadow.py", &hub, THING, &cred, || async {
        // The cloud side desires a new interval: the device hears a delta.
        hub.update_desired(THING, json!({"interval": 30}), None)
            .await
            .unwrap();
    })
    .await;
    for step in ["connected", "subscribed", "done"] {
        assert!(steps.contains_key(step), "missing step {step}: {steps:?}");
    }

    // A shadow that does not exist yet.
    assert_eq!(steps["get_missing"]["code"], 404);
    // The report was accepted as version 1, with exactly what was reported.
    assert_eq!(steps["reported"]["version"], 1);
    assert_eq!(
        steps["reported"]["reported"],
        json!({"color": "red", "fw": "1.0"})
    );
    assert_eq!(
        steps["documents"]["current"],
        json!({"color": "red", "fw": "1.0"})
    );
    // Desired differs from reported only in colour: that is the delta.
    assert_eq!(steps["delta"]["version"], 2);
    assert_eq!(steps["delta"]["state"], json!({"color": "green"}));
    // AWS's refusals, as the SDK parsed them.
    assert_eq!(steps["stale"]["code"], 409);
    assert_eq!(steps["stale"]["message"], "Version conflict");
    assert_eq!(steps["malformed"]["code"], 400);
    assert_eq!(steps["malformed"]["message"], "Invalid JSON");
    // The cloud-side change arrived as a delta with the new version.
    assert_eq!(steps["cloud_delta"]["version"], 3);
    assert_eq!(
        steps["cloud_delta"]["state"],
        json!({"color": "green", "interval": 30})
    );
    assert_eq!(steps["get"]["version"], 3);
    assert_eq!(
        steps["get"]["desired"],
        json!({"color": "green", "fw": "1.0", "interval": 30})
    );
    assert_eq!(
        steps["get"]["reported"],
        json!({"color": "red", "fw": "1.0"})
    );
    assert_eq!(
        steps["get"]["delta"],
        json!({"color": "green", "interval": 30})
    );
    assert_eq!(steps["named"]["version"], 1);
    assert_eq!(steps["named"]["reported"], json!({"mode": "eco"}));

    // The hub agrees, and the classic shadow was not touched by the named one.
    let twin = hub.twin(THING).unwrap();
    assert_eq!(twin.version(), 3);
    assert_eq!(
        Value::Object(twin.reported().clone()),
        json!({"color": "red", "fw": "1.0"})
    );

    // Lifecycle events for the SDK's connection: connected, then a client-initiated
    // disconnect.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(5), presence.recv())
            .await
            .expect("presence events")
            .expect("subscription open");
        seen.push(serde_json::from_slice::<Value>(&m.payload).unwrap());
    }
    assert_eq!(seen[0]["eventType"], "connected");
    assert_eq!(seen[0]["clientId"], THING);
    assert_eq!(seen[1]["eventType"], "disconnected");
    assert_eq!(seen[1]["disconnectReason"], "CLIENT_INITIATED_DISCONNECT");
    assert_eq!(seen[1]["clientInitiatedDisconnect"], true);
    assert!(seen[1]["versionNumber"].as_u64() > seen[0]["versionNumber"].as_u64());

    // The SDK's CONNECT carried its metrics in the username and was admitted anyway: no
    // authentication failures on the way.
    while let Ok(e) = events.try_recv() {
        assert!(
            !matches!(
                e,
                HubEvent::AuthFailure { .. } | HubEvent::PolicyDenied { .. }
            ),
            "{e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_jobs_flow() {
    use fleetkit::local::dialect::aws::jobs::{JobSpec, JobStatus};
    let aws = std::sync::Arc::new(AwsHubDialect::new());
    let hub = LocalHub::builder()
        .dialect_shared(aws.clone())
        .start()
        .await
        .unwrap();
    hub.put_policy("device", &builtin::aws_device()).unwrap();
    hub.attach_policy("device", AttachTarget::Group("fleet".into()))
        .unwrap();
    let thing = "py-pump-1";
    hub.create_device(DeviceRecord::new(thing).in_group("fleet"))
        .unwrap();
    let cred = hub.issue_device_credential(thing).unwrap();
    let steps = run_sdk_script("aws_sdk_jobs.py", &hub, thing, &cred, || async {
        aws.create_job(JobSpec::new(
            "firmware-7",
            json!({"operation": "update", "url": "https://example.com/fw-7.bin"}),
            vec![thing.to_string()],
        ))
        .unwrap();
    })
    .await;
    assert_eq!(steps["notify_next"]["job_id"], "firmware-7");
    assert_eq!(steps["notify_next"]["status"], "QUEUED");
    assert_eq!(steps["started"]["job_id"], "firmware-7");
    assert_eq!(steps["started"]["status"], "IN_PROGRESS");
    assert_eq!(steps["started"]["version"], 2);
    assert_eq!(steps["started"]["document"]["operation"], "update");
    assert_eq!(steps["started"]["details"], json!({"step": "download"}));
    assert_eq!(steps["succeeded"]["status"], "SUCCEEDED");
    assert_eq!(steps["succeeded"]["version"], 3);
    assert_eq!(steps["stale"]["code"], "VersionMismatch");
    assert_eq!(steps["empty"]["execution"], false);
    assert!(steps.contains_key("done"));
    assert_eq!(
        aws.jobs().executions("firmware-7").unwrap(),
        vec![(thing.to_string(), JobStatus::Succeeded)]
    );
}
