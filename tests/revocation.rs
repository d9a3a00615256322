//! Revocation on the local hub over mTLS: revoking an intermediate CA disconnects exactly the
//! devices under it (and the audit lists them until they are re-provisioned); a CRL published
//! by the PKI cuts off exactly the certificates on it; the hub's inventory feeds Device
//! Defender's certificate checks.
#![cfg(feature = "local")]

use std::sync::Arc;
use std::time::Duration;

use fleetkit::Error;
use fleetkit::device::{ConnectionState, DeviceClient, NativeDialect, Telemetry};
use fleetkit::identity::{DeviceId, Signer, SoftwareKey, X509Credential};
use fleetkit::lifecycle::audit::{AuditConfig, CertificateCheck};
use fleetkit::local::{CaStatus, CertificateState, DeviceRecord, LocalHub};
use fleetkit::pki::{
    CaOptions, CertificateAuthority, CrlOptions, DeviceCertOptions, Revocation, RevocationReason,
};
use fleetkit::policy::{AttachTarget, PolicyDocument, builtin};

const WAIT: Duration = Duration::from_secs(10);

fn credential(ca: &CertificateAuthority, device: &str) -> X509Credential {
    let key = Arc::new(SoftwareKey::generate_p256().unwrap());
    let cert = ca
        .issue(
            &DeviceId::new(device).unwrap(),
            key.public_key_spki(),
            &DeviceCertOptions::default(),
        )
        .unwrap();
    let mut chain = vec![cert.der().clone()];
    chain.extend(ca.chain_for_devices().iter().map(|c| c.der().clone()));
    X509Credential::new(chain, key).unwrap()
}

struct Fleet {
    hub: LocalHub,
    a: CertificateAuthority,
    b: CertificateAuthority,
    creds: Vec<(String, X509Credential)>,
}

/// Root → intermediates A and B; devices a1, a2 under A and b1 under B.
async fn fleet() -> Fleet {
    let root = CertificateAuthority::new_root(&CaOptions::new("Root").with_path_len(1)).unwrap();
    let a = root
        .new_intermediate(&CaOptions::new("Intermediate A"))
        .unwrap();
    let b = root
        .new_intermediate(&CaOptions::new("Intermediate B"))
        .unwrap();
    let hub = LocalHub::builder().start().await.unwrap();
    for ca in [&root, &a, &b] {
        hub.register_ca(ca.certificate()).unwrap();
    }
    hub.put_policy("device", &builtin::native_device()).unwrap();
    hub.attach_policy("device", AttachTarget::Group("fleet".into()))
        .unwrap();
    let mut creds = Vec::new();
    for (device, ca) in [("dev-a1", &a), ("dev-a2", &a), ("dev-b1", &b)] {
        hub.create_device(DeviceRecord::new(device).in_group("fleet"))
            .unwrap();
        let cred = credential(ca, device);
        hub.register_certificate(cred.leaf().clone(), device)
            .unwrap();
        creds.push((device.to_string(), cred));
    }
    Fleet { hub, a, b, creds }
}

async fn connect(
    hub: &LocalHub,
    device: &str,
    cred: &X509Credential,
) -> fleetkit::Result<DeviceClient> {
    DeviceClient::builder(
        NativeDialect::new("localhost", hub.mqtt_addr().port(), hub.ca_certificate()),
        DeviceId::new(device).unwrap(),
    )
    .credential(cred.clone())
    .backoff(
        fleetkit::protocol::BackoffConfig::new()
            .with_base(Duration::from_millis(20))
            .with_cap(Duration::from_millis(200)),
    )
    .connect()
    .await
}

async fn wait_refused(client: &DeviceClient) {
    let mut states = client.state_changes();
    tokio::time::timeout(
        WAIT,
        states.wait_for(|s| matches!(s, ConnectionState::Disconnected { refused: true, .. })),
    )
    .await
    .expect("not refused in time")
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_intermediate_cuts_off_exactly_its_devices_until_reprovisioned() {
    let f = fleet().await;
    let mut clients = Vec::new();
    for (device, cred) in &f.creds {
        clients.push(connect(&f.hub, device, cred).await.unwrap());
    }
    let mut under_a: Vec<String> = f
        .hub
        .devices_under_ca(f.a.certificate())
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    under_a.sort();
    assert_eq!(under_a, ["dev-a1", "dev-a2"]);
    let closed = f
        .hub
        .set_ca_status(f.a.certificate(), CaStatus::Revoked)
        .unwrap();
    assert_eq!(closed, 2);
    wait_refused(&clients[0]).await;
    wait_refused(&clients[1]).await;
    assert_eq!(f.hub.connected_clients(), vec!["dev-b1".to_string()]);
    clients[2]
        .send_telemetry(Telemetry::new("unaffected"))
        .await
        .unwrap();
    // A fresh connection under A is refused up front.
    let err = connect(&f.hub, "dev-a1", &f.creds[0].1).await.unwrap_err();
    assert!(
        matches!(err, Error::Unauthenticated(_) | Error::Revoked(_)),
        "{err:?}"
    );

    // The audit names the revoked intermediate and exactly the devices still active under it.
    let findings = f.hub.audit(&AuditConfig::default());
    let revoked: Vec<_> = findings
        .iter()
        .filter(|x| x.check == CertificateCheck::IntermediateCaRevokedForActiveDeviceCertificates)
        .collect();
    assert_eq!(revoked.len(), 1, "{findings:#?}");
    let mut devices: Vec<&str> = revoked[0]
        .affected
        .iter()
        .map(|(_, d)| d.as_str())
        .collect();
    devices.sort();
    assert_eq!(devices, ["dev-a1", "dev-a2"]);

    // Re-provisioning: new certificates from B, old ones revoked; the running clients switch.
    for (i, (device, old)) in f.creds.iter().enumerate().take(2) {
        let new = credential(&f.b, device);
        f.hub
            .register_certificate(new.leaf().clone(), device)
            .unwrap();
        f.hub
            .set_certificate_state(&old.leaf().fingerprint_sha256(), CertificateState::Revoked)
            .unwrap();
        clients[i].switch_credential(&new).await.unwrap();
        clients[i]
            .send_telemetry(Telemetry::new("back under B"))
            .await
            .unwrap();
    }
    let findings = f.hub.audit(&AuditConfig::default());
    assert!(
        findings
            .iter()
            .all(|x| x.check != CertificateCheck::IntermediateCaRevokedForActiveDeviceCertificates),
        "{findings:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_from_the_pki_cuts_off_exactly_the_certificates_on_it() {
    let f = fleet().await;
    let a1 = connect(&f.hub, "dev-a1", &f.creds[0].1).await.unwrap();
    let a2 = connect(&f.hub, "dev-a2", &f.creds[1].1).await.unwrap();
    let crl =
        f.a.issue_crl(&CrlOptions::new(
            1,
            vec![Revocation::of(
                f.creds[0].1.leaf(),
                RevocationReason::KeyCompromise,
            )],
        ))
        .unwrap();
    let closed = f.hub.add_crl(crl).unwrap();
    assert_eq!(closed, 1);
    wait_refused(&a1).await;
    a2.send_telemetry(Telemetry::new("still here"))
        .await
        .unwrap();
    // The registry still says ACTIVE: the audit reports the mismatch.
    let findings = f.hub.audit(&AuditConfig::default());
    assert!(
        findings.iter().any(
            |x| x.check == CertificateCheck::RevokedDeviceCertificateStillActive
                && x.devices.contains(&"dev-a1".to_string())
        ),
        "{findings:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_inventory_shows_shared_certificates_and_conflicting_client_ids() {
    let f = fleet().await;
    // A permissive policy on purpose (any client id), so sharing and conflicts can happen.
    f.hub
        .put_policy(
            "loose",
            &PolicyDocument::from_json(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#,
            )
            .unwrap(),
        )
        .unwrap();
    f.hub
        .attach_policy("loose", AttachTarget::Group("fleet".into()))
        .unwrap();
    let raw = |client_id: &str, cred: &X509Credential| {
        let ep = fleetkit::device::Endpoint::new(
            "localhost",
            f.hub.mqtt_addr().port(),
            vec![f.hub.ca_certificate().der().clone()],
        );
        let mut options = rumqttc::MqttOptions::new(client_id, ep.host.clone(), ep.port);
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(
                fleetkit::device::tls_config(&ep, Some(cred)).unwrap(),
            ),
        ));
        rumqttc::AsyncClient::new(options, 4)
    };
    // dev-a1's certificate in two connections at once.
    let (_c1, mut e1) = raw("clone-1", &f.creds[0].1);
    let (_c2, mut e2) = raw("clone-2", &f.creds[0].1);
    // dev-a2 and dev-b1 fighting over one client id.
    let (_c3, mut e3) = raw("shared-id", &f.creds[1].1);
    for el in [&mut e1, &mut e2, &mut e3] {
        assert!(matches!(
            el.poll().await.unwrap(),
            rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))
        ));
    }
    let (_c4, mut e4) = raw("shared-id", &f.creds[2].1);
    assert!(matches!(
        e4.poll().await.unwrap(),
        rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))
    ));
    let findings = f.hub.audit(&AuditConfig::default());
    let checks: Vec<CertificateCheck> = findings.iter().map(|x| x.check).collect();
    assert!(
        checks.contains(&CertificateCheck::DeviceCertificateShared),
        "{findings:#?}"
    );
    assert!(
        checks.contains(&CertificateCheck::ConflictingClientIds),
        "{findings:#?}"
    );
    drop((e1, e2, e3, e4));
}
