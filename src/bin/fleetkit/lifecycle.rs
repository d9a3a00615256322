//! The credential lifecycle commands.
//!
//! - Device side, over MQTT with mutual TLS to the hub, keeping the device's credentials in a
//!   [`CredentialStore`]: `provision` (fleet provisioning by claim) and `rotate` (one
//!   crash-safe certificate rotation, finishing or undoing an interrupted one first).
//! - Fleet side, through a running hub's admin API: `revoke` (a device certificate, a CA, or a
//!   device's certificates) and `audit` (Device Defender's certificate checks).
//!
//! Private keys only ever go into the credential store (0600 files, replaced atomically) and
//! are never printed.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fleetkit::device::{DeviceClient, Endpoint, NativeDialect};
use fleetkit::identity::{
    CredentialStore, Credentials, DeviceId, Signer, Slot, SoftwareKey, X509Credential,
};
use fleetkit::lifecycle::provision::{ClaimProvisioner, ProvisionRequest, Provisioner};
use fleetkit::lifecycle::rotation::{Recovery, RotationStep, Rotator, recover};
use fleetkit::pki::Certificate;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::admin::{Client, count, pem_file, print_json, str_of};
use crate::{CliResult, Failure, files};

/// Exit status of `audit` when it finds something Critical or High.
pub(crate) const AUDIT_FINDINGS_EXIT: u8 = 3;

/// How long a device-side command waits for its last messages when it disconnects.
const DRAIN: Duration = Duration::from_secs(2);

/// An MQTT endpoint, `HOST:PORT`.
#[derive(Clone, Debug)]
pub(crate) struct HostPort {
    host: String,
    port: u16,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses `HOST:PORT`, `[IPv6]:PORT`, or either after `mqtts://` (as `hub start` prints it).
pub(crate) fn parse_host_port(text: &str) -> Result<HostPort, String> {
    let rest = text.strip_prefix("mqtts://").unwrap_or(text);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, port) = v6
            .split_once("]:")
            .ok_or_else(|| format!("{text:?} is not [IPV6]:PORT"))?;
        (host, port)
    } else {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
        if host.contains(':') {
            return Err(format!(
                "{text:?}: put an IPv6 address in brackets, [ADDRESS]:PORT"
            ));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(format!("{text:?} names no host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{text:?}: {port:?} is not a port number"))?;
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// The hub at `at`, whose server certificate must chain to a certificate in `ca_file`.
fn endpoint(at: &HostPort, ca_file: &Path) -> CliResult<Endpoint> {
    let text = files::read_text(ca_file)?;
    let cas = Certificate::chain_from_pem(&text)
        .map_err(|e| Failure::new(format!("{}: {e}", ca_file.display())))?;
    if cas.is_empty() {
        return Err(Failure::new(format!(
            "{} holds no certificate",
            ca_file.display()
        )));
    }
    let roots = cas.iter().map(|c| c.der().clone()).collect();
    Ok(Endpoint::new(&at.host, at.port, roots))
}

/// A certificate (chain, leaf first) and its private key, from PEM files.
fn read_credential(cert_file: &Path, key_file: &Path) -> CliResult<X509Credential> {
    let key_text = Zeroizing::new(files::read_text(key_file)?);
    let key = SoftwareKey::from_pem(&key_text)
        .map_err(|e| Failure::new(format!("{}: {e}", key_file.display())))?;
    let chain = pem_file(cert_file, |der| Ok(Certificate::from_der(der)?.to_pem()))?;
    X509Credential::from_pem(&chain, Arc::new(key)).map_err(|e| {
        Failure::new(format!(
            "{} and {}: {e}",
            cert_file.display(),
            key_file.display()
        ))
    })
}

/// The X.509 credential in `slot`, if any.
fn x509_slot(store: &CredentialStore, slot: Slot) -> CliResult<Option<X509Credential>> {
    let dir = store.dir().display();
    match store
        .load_slot(slot)
        .map_err(|e| Failure::new(format!("credential store {dir}: {e}")))?
    {
        None => Ok(None),
        Some(Credentials::X509(c)) => Ok(Some(c)),
        Some(_) => Err(Failure::new(format!(
            "credential store {dir}: the {slot} credential is not an X.509 certificate"
        ))),
    }
}

/// "the CN and id of a credential", for messages.
fn describe(credential: &X509Credential) -> String {
    let leaf = credential.leaf();
    format!(
        "{} (certificate {})",
        leaf.subject_common_name().unwrap_or("<no CN>"),
        leaf.fingerprint_sha256()
    )
}

// ---------------------------------------------------------------------------------------------
// provision

pub(crate) struct ProvisionOptions {
    pub(crate) endpoint: HostPort,
    pub(crate) ca: std::path::PathBuf,
    pub(crate) claim_cert: std::path::PathBuf,
    pub(crate) claim_key: std::path::PathBuf,
    pub(crate) template: String,
    /// `None`: the hub makes the key (`--service-key`).
    pub(crate) device_id: Option<String>,
    pub(crate) parameters: Vec<(String, String)>,
    pub(crate) store: std::path::PathBuf,
    pub(crate) force: bool,
}

/// `provision`: claim → operational identity, stored as the store's active credential.
pub(crate) async fn provision(o: ProvisionOptions) -> CliResult {
    // Everything that can be checked is checked before the hub is asked: provisioning creates
    // the device there, and a failure afterwards would leave it with a key nobody has.
    let endpoint = endpoint(&o.endpoint, &o.ca)?;
    let claim = read_credential(&o.claim_cert, &o.claim_key)?;
    let mut request = match &o.device_id {
        Some(id) => {
            let id = DeviceId::new(id.as_str())?;
            // Made here; only a CSR leaves the device.
            let key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256()?);
            ProvisionRequest::with_device_key(id, key)
        }
        None => ProvisionRequest::with_service_key(),
    };
    for (name, value) in &o.parameters {
        request = request.parameter(name, value);
    }
    if o.store.exists() && !o.store.is_dir() {
        return Err(Failure::new(format!(
            "{} exists and is not a directory",
            o.store.display()
        )));
    }
    let created = !o.store.exists();
    let store = CredentialStore::open(&o.store)
        .map_err(|e| Failure::new(format!("credential store {}: {e}", o.store.display())))?;
    let existing = [Slot::Active, Slot::Pending]
        .into_iter()
        .map(|slot| x509_slot(&store, slot).map(|c| c.map(|c| (slot, c))))
        .find_map(Result::transpose)
        .transpose()?;
    if let Some((slot, credential)) = existing
        && !o.force
    {
        return Err(Failure::new(format!(
            "{} already holds a credential ({slot}: {}); use --force to replace it (the active \
             one is kept as the previous credential)",
            o.store.display(),
            describe(&credential)
        )));
    }

    let provisioner = ClaimProvisioner::new(endpoint, claim, &o.template);
    let identity = match provisioner.provision(&request).await {
        Ok(identity) => identity,
        Err(e) => {
            if created {
                // Nothing was stored: leave no empty store behind.
                let _ = std::fs::remove_dir_all(&o.store);
            }
            return Err(Failure::new(format!(
                "provisioning at {} with template {:?} failed: {e}",
                o.endpoint, o.template
            )));
        }
    };
    identity.store(&store).map_err(|e| {
        Failure::new(format!(
            "provisioned as {} (certificate {}) but could not store the credential in {}: {e}",
            identity.device_id,
            identity.certificate_id,
            o.store.display()
        ))
    })?;
    println!("provisioned device {}", identity.device_id);
    println!("  certificate id  {}", identity.certificate_id);
    println!(
        "  expires         {}",
        identity.credential.leaf().not_after().date()
    );
    println!(
        "  key             {}",
        if o.device_id.is_some() {
            "made on this device (only a CSR was sent)"
        } else {
            "made by the hub"
        }
    );
    println!("  stored in       {} (active)", o.store.display());
    if !identity.configuration.is_empty() {
        println!(
            "  configuration   {}",
            Value::Object(identity.configuration.clone())
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// rotate

/// "KeyGenerated" → "key generated".
fn step_words(step: RotationStep) -> String {
    let name = format!("{step:?}");
    let mut words = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            words.push(' ');
        }
        words.extend(c.to_lowercase());
    }
    words
}

/// `rotate`: one rotation of the store's credential, over a connection as `device`.
pub(crate) async fn rotate(at: &HostPort, ca: &Path, store_dir: &Path, device: &str) -> CliResult {
    let endpoint = endpoint(at, ca)?;
    let device = DeviceId::new(device)?;
    if !store_dir.is_dir() {
        return Err(Failure::new(format!(
            "no credential store at {}; provision one first (`fleetkit provision … --store {}`)",
            store_dir.display(),
            store_dir.display()
        )));
    }
    let store = CredentialStore::open(store_dir)
        .map_err(|e| Failure::new(format!("credential store {}: {e}", store_dir.display())))?;
    let Some(active) = x509_slot(&store, Slot::Active)? else {
        return Err(Failure::new(format!(
            "the credential store at {} holds no active credential; provision one first",
            store_dir.display()
        )));
    };
    let pending = x509_slot(&store, Slot::Pending)?;
    if let Some(pending) = &pending {
        println!(
            "a rotation was interrupted: {} is pending in {}; recovering first",
            describe(pending),
            store_dir.display()
        );
    }

    let connect = |credential: X509Credential| {
        let builder = DeviceClient::builder(
            NativeDialect::with_endpoint(endpoint.clone()),
            device.clone(),
        )
        .credential(credential);
        async move { builder.connect().await }
    };
    let (client, recovery) = recover(&store, connect).await.map_err(|e| {
        Failure::new(format!(
            "cannot connect to {at} as {device} with the credential in {}: {e}",
            store_dir.display()
        ))
    })?;
    match recovery {
        Recovery::Clean => {}
        Recovery::Completed { old_retired } => {
            client.shutdown(DRAIN).await;
            let new = pending.map(|p| p.leaf().fingerprint_sha256());
            println!(
                "recovered: the hub accepts the pending certificate; the interrupted rotation is complete"
            );
            println!(
                "rotated {device}: {} → {}",
                active.leaf().fingerprint_sha256(),
                new.as_deref().unwrap_or("?")
            );
            retired_note(old_retired);
            println!("not rotating again (run the command once more for a new certificate)");
            return Ok(());
        }
        Recovery::RolledBack { reason } => {
            println!(
                "recovered: the hub refused the pending certificate ({reason}); discarded it and \
                 connected with the active one"
            );
        }
        other => println!("recovered: {other:?}"),
    }

    println!("rotating the certificate of {device}");
    let outcome = Rotator::new(&client, &store)
        .on_step(|step| {
            println!("  {}", step_words(step));
            Ok(())
        })
        .rotate()
        .await;
    client.shutdown(DRAIN).await;
    let report = outcome.map_err(|e| {
        Failure::new(format!(
            "rotation failed: {e} (the store at {} keeps a working credential; run the command \
             again to finish or retry)",
            store_dir.display()
        ))
    })?;
    println!(
        "rotated {device}: {} → {}",
        report.old_certificate_id, report.new_certificate_id
    );
    retired_note(report.old_retired);
    Ok(())
}

fn retired_note(old_retired: bool) {
    if old_retired {
        println!("the hub retired the old certificate (inactive)");
    } else {
        println!(
            "note: the hub did not confirm it retired the old certificate; it may still be \
             active (set it inactive with `fleetkit cert set-state ID inactive`)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// revoke

fn closed_text(v: &Value) -> String {
    match count(v, "connections_closed") {
        1 => "1 live connection closed".into(),
        n => format!("{n} live connections closed"),
    }
}

/// `revoke --cert ID`.
pub(crate) async fn revoke_certificate(client: &Client, id: &str) -> CliResult {
    let cert = client.certificate(id).await?;
    let device = str_of(&cert, "device");
    if str_of(&cert, "state") == "revoked" {
        println!("certificate {id} (device {device}) was already revoked");
        return Ok(());
    }
    let r = client.put_certificate_state(id, "revoked").await?;
    println!(
        "revoked certificate {id} (device {device}); {}",
        closed_text(&r)
    );
    Ok(())
}

/// The CA id `text` names: a registered CA's id (SHA-256 fingerprint, hex), or a file holding
/// the CA certificate (PEM or DER).
fn ca_id(text: &str) -> CliResult<String> {
    let path = Path::new(text);
    if path.is_file() {
        let pem = pem_file(path, |der| Ok(Certificate::from_der(der)?.to_pem()))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| Failure::new(format!("{}: {e}", path.display())))?;
        return Ok(cert.fingerprint_sha256());
    }
    let id = text.trim().to_ascii_lowercase();
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::new(format!(
            "--ca {text:?} is neither a CA id (64 hex digits, as `fleetkit ca list` prints) nor \
             a certificate file"
        )));
    }
    Ok(id)
}

/// `revoke --ca CA`: lists what it cuts off, then revokes it.
pub(crate) async fn revoke_ca(client: &Client, ca: &str) -> CliResult {
    let id = ca_id(ca)?;
    // Listed before the revocation: afterwards these devices can no longer connect.
    let under = client.ca_devices(&id).await?;
    let subject = str_of(&under["ca"], "subject").to_string();
    if under["ca"]["hub_ca"].as_bool().unwrap_or(false) {
        return Err(Failure::new(format!(
            "CA {id} is the hub's own CA: it issues every credential the hub hands out, and              revoking it cuts off all of them; if that is really meant, use `fleetkit ca              set-status {id} revoked`"
        )));
    }
    let certificates = under["certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if certificates.is_empty() {
        println!("no device certificate chains to CA {id} ({subject})");
    } else {
        println!(
            "device certificates under CA {id} ({subject}): {}",
            certificates.len()
        );
        for c in &certificates {
            println!(
                "  {}  {}  {}",
                str_of(c, "id"),
                str_of(c, "state"),
                str_of(c, "device")
            );
        }
    }
    if str_of(&under["ca"], "status") == "revoked" {
        println!("CA {id} was already revoked");
        return Ok(());
    }
    let r = client.put_ca_status(&id, "revoked").await?;
    println!("revoked CA {id}; {}", closed_text(&r));
    let mut active: Vec<&str> = certificates
        .iter()
        .filter(|c| str_of(c, "state") == "active")
        .map(|c| str_of(c, "device"))
        .collect();
    active.sort_unstable();
    active.dedup();
    if !active.is_empty() {
        println!(
            "{} device(s) had an active certificate under it and must be re-provisioned: {}",
            active.len(),
            active.join(", ")
        );
    }
    Ok(())
}

/// `revoke --device ID [--disable]`: revokes every certificate of the device not yet revoked;
/// with `disable`, first disables the device (refusing any credential it has).
pub(crate) async fn revoke_device(client: &Client, id: &str, disable: bool) -> CliResult {
    let device = client.device(id).await?;
    if disable {
        let r = client.disable_device(id).await?;
        println!("disabled device {id}; {}", closed_text(&r));
    }
    let certificates = device["certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut revoked = 0;
    for c in &certificates {
        let cert = str_of(c, "id");
        if str_of(c, "state") == "revoked" {
            continue;
        }
        let r = client.put_certificate_state(cert, "revoked").await?;
        println!("revoked certificate {cert}; {}", closed_text(&r));
        revoked += 1;
    }
    match (revoked, certificates.len()) {
        (0, 0) => println!("device {id} has no certificates"),
        (0, _) => println!("every certificate of device {id} was already revoked"),
        (n, _) => println!("revoked {n} certificate(s) of device {id}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// audit

/// `audit`: prints the findings; exit status [`AUDIT_FINDINGS_EXIT`] when one is Critical or
/// High, 0 otherwise.
pub(crate) async fn audit(client: &Client, expiring_days: u32, json: bool) -> CliResult<ExitCode> {
    let r = client.audit(expiring_days, expiring_days).await?;
    let findings = r["findings"].as_array().cloned().unwrap_or_default();
    let serious = findings
        .iter()
        .any(|f| matches!(str_of(f, "severity"), "CRITICAL" | "HIGH"));
    if json {
        print_json(&r);
    } else if findings.is_empty() {
        println!("no findings (expiry threshold {expiring_days} days)");
    } else {
        for f in &findings {
            println!("{}", str_of(f, "summary"));
        }
        let counts = &r["counts"];
        let summary: Vec<String> = ["critical", "high", "medium", "low"]
            .into_iter()
            .filter(|k| count(counts, k) > 0)
            .map(|k| format!("{} {k}", count(counts, k)))
            .collect();
        println!("{} finding(s): {}", findings.len(), summary.join(", "));
    }
    Ok(if serious {
        ExitCode::from(AUDIT_FINDINGS_EXIT)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_host_and_port() {
        let hp = parse_host_port("localhost:8883").unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("localhost", 8883));
        let hp = parse_host_port("mqtts://127.0.0.1:1883").unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("127.0.0.1", 1883));
        let hp = parse_host_port("[::1]:8883").unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("::1", 8883));
        assert_eq!(hp.to_string(), "[::1]:8883");
        for bad in [
            "localhost",
            ":8883",
            "host:0",
            "host:http",
            "::1:8883",
            "[::1]8883",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn steps_read_as_words() {
        assert_eq!(step_words(RotationStep::KeyGenerated), "key generated");
        assert_eq!(step_words(RotationStep::Committed), "committed");
    }

    #[test]
    fn a_ca_is_an_id_or_a_file() {
        let id = "AB".repeat(32);
        assert_eq!(ca_id(&id).unwrap(), id.to_ascii_lowercase());
        assert!(ca_id("abc").is_err());
        assert!(ca_id("/nonexistent/ca.pem").is_err());
    }
}
