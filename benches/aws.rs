//! The AWS backend against named baselines, in the same process, printed as ratios.
//!
//! `cargo bench --bench aws --features aws`
//!
//! 1. **Shadow round trips** — `DeviceClient` with `fleetkit::aws`'s dialect reporting to its
//!    Device Shadow on a hub speaking AWS's dialect (AWS's documents, delta and metadata,
//!    `/update/accepted` + `/update/documents` published per update), against the
//!    **baseline**: the same client with the native dialect reporting its twin to the native
//!    dialect. One device, mutual TLS, policy on, no data directory; each report waits for
//!    its answer (a sequential round trip), [`REPORTS`] reports per run; a fresh hub and
//!    client per run; runs alternate AWS, native, … for `AWS_BENCH_ROUNDS` rounds (default 5)
//!    after a warm-up of each.
//! 2. **SigV4 verification** — the hub's hand-written verifier (`auth::sigv4::Verifier` on
//!    ring) checking a signed control-plane request, against the **baseline**: the official
//!    `aws-sigv4` crate signing that request (`auth::sigv4::sign_headers`). Both compute one
//!    canonical request and one HMAC chain; [`SIGNATURES`] per run, alternating rounds.
//!
//! Printed: each run, then the medians and the ratio of the medians (AWS / baseline).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleetkit::auth::sigv4::{AwsCredentials, SignedRequest, Verifier, sign_headers};
use fleetkit::aws::{AwsIot, AwsTransport};
use fleetkit::device::{DeviceClient, Dialect, NativeDialect};
use fleetkit::identity::DeviceId;
use fleetkit::local::dialect::aws::AwsHubDialect;
use fleetkit::local::{DeviceRecord, LocalHub};
use fleetkit::policy::{AttachTarget, builtin};
use serde_json::json;

/// Reports per shadow run.
const REPORTS: usize = 2_000;
/// Signatures per SigV4 run.
const SIGNATURES: usize = 20_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Reports/s for one run: a fresh hub and client, `REPORTS` sequential reports.
async fn shadow_run(aws: bool) -> f64 {
    let builder = if aws {
        LocalHub::builder().dialect(AwsHubDialect::new())
    } else {
        LocalHub::builder()
    };
    let hub = builder.start().await.expect("hub");
    let policy = if aws {
        builtin::aws_device()
    } else {
        builtin::native_device()
    };
    hub.put_policy("device", &policy).unwrap();
    hub.attach_policy("device", AttachTarget::Group("fleet".into()))
        .unwrap();
    hub.create_device(DeviceRecord::new("bench-1").in_group("fleet"))
        .unwrap();
    let credential = hub.issue_device_credential("bench-1").unwrap();
    let dialect: Arc<dyn Dialect> = if aws {
        Arc::new(
            AwsIot::builder()
                .region("us-east-1")
                .endpoint("localhost")
                .transport(AwsTransport::MqttAlpn443)
                .port(hub.mqtt_addr().port())
                .root_ca(hub.ca_certificate())
                .jobs(false)
                .build()
                .unwrap()
                .dialect(),
        )
    } else {
        Arc::new(NativeDialect::new(
            "localhost",
            hub.mqtt_addr().port(),
            hub.ca_certificate(),
        ))
    };
    let client = DeviceClient::builder_shared(dialect, DeviceId::new("bench-1").unwrap())
        .credential(credential)
        .connect()
        .await
        .expect("connect");
    let twin = client.twin();
    twin.report(json!({"warm": true})).await.unwrap();
    let started = Instant::now();
    for i in 0..REPORTS {
        twin.report(json!({"seq": i, "temperature": 20.0 + (i % 10) as f64}))
            .await
            .unwrap();
    }
    let rate = REPORTS as f64 / started.elapsed().as_secs_f64();
    client.shutdown(Duration::from_secs(2)).await;
    hub.shutdown().await;
    rate
}

/// Operations/s for one SigV4 run: verifying (`verify = true`) or signing.
fn sigv4_run(verify: bool) -> f64 {
    let credentials =
        AwsCredentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
    let url = "https://iot.us-east-1.amazonaws.com/things/pump-7";
    let body = br#"{"attributePayload":{"attributes":{"site":"north"}}}"#;
    let base = vec![
        (
            "host".to_string(),
            "iot.us-east-1.amazonaws.com".to_string(),
        ),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    let now = SystemTime::now();
    let signed = sign_headers(
        &credentials,
        "us-east-1",
        "iot",
        "POST",
        url,
        &base,
        body,
        now,
    )
    .expect("sign");
    let mut headers = base.clone();
    headers.extend(signed);
    let verifier = Verifier::with_credentials("us-east-1", ["iot"], [credentials.clone()]);
    let at = time::OffsetDateTime::from(now);
    let started = Instant::now();
    for _ in 0..SIGNATURES {
        if verify {
            let request = SignedRequest {
                method: "POST",
                path: "/things/pump-7",
                query: "",
                headers: &headers,
                body,
            };
            std::hint::black_box(verifier.verify(&request, at).expect("valid"));
        } else {
            std::hint::black_box(
                sign_headers(
                    &credentials,
                    "us-east-1",
                    "iot",
                    "POST",
                    url,
                    &base,
                    body,
                    now,
                )
                .expect("sign"),
            );
        }
    }
    SIGNATURES as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("aws bench: run it with `cargo bench --bench aws --features aws`");
        return;
    }
    let rounds: usize = std::env::var("AWS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    println!(
        "== shadow round trips: fleetkit::aws → hub AWS dialect vs baseline native twin → hub \
         native dialect ({REPORTS} sequential reports per run, mutual TLS, policy on)"
    );
    rt.block_on(shadow_run(true));
    rt.block_on(shadow_run(false));
    let (mut aws, mut native) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let a = rt.block_on(shadow_run(true));
        let n = rt.block_on(shadow_run(false));
        println!(
            "round {round}: aws {a:>8.0} reports/s   native {n:>8.0} reports/s   ratio {:.2}",
            a / n
        );
        aws.push(a);
        native.push(n);
    }
    let (a, n) = (median(aws), median(native));
    println!(
        "median: aws {a:.0} reports/s, native (baseline) {n:.0} reports/s → {:.2}×",
        a / n
    );

    println!(
        "== SigV4: hub verifier (ring) vs baseline aws-sigv4 signing the same request \
         ({SIGNATURES} per run)"
    );
    sigv4_run(true);
    sigv4_run(false);
    let (mut verify, mut sign) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let v = sigv4_run(true);
        let s = sigv4_run(false);
        println!(
            "round {round}: verify {v:>9.0}/s   aws-sigv4 sign {s:>9.0}/s   ratio {:.2}",
            v / s
        );
        verify.push(v);
        sign.push(s);
    }
    let (v, s) = (median(verify), median(sign));
    println!(
        "median: verify {v:.0}/s, aws-sigv4 sign (baseline) {s:.0}/s → {:.2}×",
        v / s
    );
}
