//! fleetkit in one run, offline: an embedded hub, a CA hierarchy, a device with a
//! least-privilege policy talking over mutual TLS — telemetry, a command, the twin, a direct
//! method — then a policy denial with its explanation, and a revocation that drops the live
//! connection and refuses the reconnect.
//!
//! Run it with `cargo run --example quickstart`.

use std::sync::Arc;
use std::time::Duration;

use fleetkit::device::{ConnectionState, DeviceClient, MethodResponse, NativeDialect, Telemetry};
use fleetkit::identity::{DeviceId, SoftwareKey, X509Credential};
use fleetkit::local::{CertificateState, DeviceRecord, HubEvent, LocalHub};
use fleetkit::pki::{CaOptions, CertificateAuthority, DeviceCertOptions, build_csr};
use fleetkit::policy::{AttachTarget, builtin};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn step(n: u32, text: &str) {
    println!("\n{n}. {text}");
}

/// Waits for `what` or fails the example with a clear message.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The factory: the device makes its key and a CSR; the issuing CA signs it.
fn manufacture(id: &DeviceId, issuing: &CertificateAuthority) -> fleetkit::Result<X509Credential> {
    let key = Arc::new(SoftwareKey::generate_p256()?);
    let csr = build_csr(key.clone(), id)?;
    let cert = issuing.issue_for_csr(id, &csr, &DeviceCertOptions::default())?;
    let mut chain = vec![cert.der().clone()];
    chain.extend(issuing.chain_for_devices().iter().map(|c| c.der().clone()));
    X509Credential::new(chain, key)
}

#[tokio::main]
async fn main() -> fleetkit::Result<()> {
    println!("fleetkit quickstart — everything below runs offline, over real TLS sockets.");

    step(
        1,
        "A CA hierarchy for the fleet, and a local hub that trusts it",
    );
    let root = CertificateAuthority::new_root(&CaOptions::new("Acme Root CA").with_path_len(1))?;
    let issuing = root.new_intermediate(&CaOptions::new("Acme Devices CA"))?;
    let hub = LocalHub::builder().start().await?;
    hub.register_ca(root.certificate())?;
    hub.register_ca(issuing.certificate())?;
    println!("   hub: mqtts://localhost:{}", hub.mqtt_addr().port());
    println!(
        "   device CAs: {} → {}",
        root.certificate().subject(),
        issuing.certificate().subject()
    );

    step(2, "Two thermostats, each confined to its own topics");
    hub.put_policy("thermostat", &builtin::native_device())?;
    let mut credentials = Vec::new();
    for name in ["thermostat-1", "thermostat-2"] {
        let id = DeviceId::new(name)?;
        let credential = manufacture(&id, &issuing)?;
        hub.create_device(DeviceRecord::new(name).in_group("thermostats"))?;
        hub.register_certificate(credential.leaf().clone(), name)?;
        println!(
            "   {name}: key made on the device, certificate {}…",
            &credential.leaf().fingerprint_sha256()[..16]
        );
        credentials.push(credential);
    }
    hub.attach_policy("thermostat", AttachTarget::Group("thermostats".into()))?;

    step(3, "thermostat-1 connects over mutual TLS");
    let dialect = NativeDialect::new("localhost", hub.mqtt_addr().port(), hub.ca_certificate());
    let device = DeviceClient::builder(dialect.clone(), DeviceId::new("thermostat-1")?)
        .credential(credentials[0].clone())
        .connect()
        .await?;
    println!("   state: {:?}", device.state());

    step(4, "Telemetry: the device sends, the cloud side receives");
    let mut cloud = hub.subscribe("devices/+/telemetry/#")?;
    device
        .send_telemetry(Telemetry::json(&json!({"temp": 21.5}))?.property("unit", "C"))
        .await?;
    let m = within("telemetry", cloud.recv())
        .await
        .expect("hub running");
    println!(
        "   cloud got {} on {}",
        String::from_utf8_lossy(&m.payload),
        m.topic
    );

    step(5, "A command from the cloud");
    let mut commands = device.commands()?;
    let mut desired = device.twin().desired_changes()?;
    device.on_method("reboot", |args| async move {
        MethodResponse::ok(json!({"rebooting_in_s": args["delay"].as_u64().unwrap_or(0)}))
    });
    hub.send_command("thermostat-1", "set-mode", "eco").await?;
    let c = within("a command", commands.recv())
        .await
        .expect("client running");
    println!(
        "   device got command {:?}: {}",
        c.name,
        String::from_utf8_lossy(&c.payload)
    );

    step(
        6,
        "The twin: the device reports, the cloud changes desired, the device reacts",
    );
    let v = device
        .twin()
        .report(json!({"firmware": "1.4.2", "interval_s": 60}))
        .await?;
    println!("   reported firmware and interval → twin version {v}");
    hub.update_desired("thermostat-1", json!({"interval_s": 15}), None)
        .await?;
    let change = within("a desired change", desired.recv())
        .await
        .expect("client running");
    println!(
        "   device sees desired {} (version {})",
        serde_json::Value::Object(change.patch.clone()),
        change.version
    );
    let v = device
        .twin()
        .report(json!({"interval_s": change.patch["interval_s"]}))
        .await?;
    let twin = hub.twin("thermostat-1")?;
    println!(
        "   device applied it → version {v}; delta now {}",
        twin.delta()
            .map(|d| serde_json::Value::Object(d).to_string())
            .unwrap_or_else(|| "empty (in sync)".into())
    );

    step(7, "A direct method, answered by the device");
    let answer = hub
        .invoke_method("thermostat-1", "reboot", json!({"delay": 5}), WAIT)
        .await?;
    println!("   reboot → {} {}", answer.status, answer.payload);

    step(
        8,
        "A denial: thermostat-2's firmware tries to send as thermostat-1",
    );
    let mut events = hub.events();
    let mut options =
        rumqttc::MqttOptions::new("thermostat-2", "localhost", hub.mqtt_addr().port());
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(fleetkit::device::tls_config(
            fleetkit::device::Dialect::endpoint(&dialect),
            Some(&credentials[1]),
        )?),
    ));
    let (rogue, mut rogue_loop) = rumqttc::AsyncClient::new(options, 10);
    rogue
        .publish(
            "devices/thermostat-1/telemetry",
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"temp": 99}"#,
        )
        .await
        .expect("queued");
    within("the hub to close the rogue connection", async {
        while rogue_loop.poll().await.is_ok() {}
    })
    .await;
    let explanation = within("the denial event", async {
        loop {
            if let Ok(HubEvent::PolicyDenied {
                client_id,
                explanation,
            }) = events.recv().await
                && client_id == "thermostat-2"
            {
                return explanation;
            }
        }
    })
    .await;
    println!("   the hub closed its connection. Why:\n   {explanation}");
    assert!(
        cloud.try_recv().is_none(),
        "the spoofed reading got through"
    );
    println!("   nothing reached the cloud.");

    step(
        9,
        "Revocation: thermostat-1's certificate is revoked while it is connected",
    );
    let mut states = device.state_changes();
    let closed = hub.set_certificate_state(
        &credentials[0].leaf().fingerprint_sha256(),
        CertificateState::Revoked,
    )?;
    println!("   live connections dropped at once: {closed}");
    let refused = within("the refused reconnect", async {
        loop {
            states.changed().await.expect("client running");
            if let ConnectionState::Disconnected {
                reason,
                refused: true,
                ..
            } = states.borrow_and_update().clone()
            {
                return reason;
            }
        }
    })
    .await;
    println!("   reconnect refused: {refused}");
    device.shutdown(Duration::ZERO).await;

    println!(
        "\nDone: one device program, a hub that enforces least privilege, and a lifecycle you can test offline."
    );
    Ok(())
}
