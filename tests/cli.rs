//! The `fleetkit` command-line tool end to end: the real binary in real processes, a hub on
//! real sockets, and tools nobody here wrote as the other side — openssl checks the PKI's
//! output, and Mosquitto's clients connect over mutual TLS with credentials the CLI issued.
#![cfg(feature = "cli")]

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

const BIN: &str = env!("CARGO_BIN_EXE_fleetkit");
/// Longest any one command may take before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(60);

/// Kills and reaps the child when dropped, so a failing test leaves no process behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A finished command.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion (killing it after [`DEADLINE`]).
fn run(cmd: &mut Command) -> Ran {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out: Output = match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{what} did not finish within {DEADLINE:?}");
        }
    };
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `fleetkit args…` (with no FLEETKIT_DATA from the environment).
fn fleetkit(args: &[&str]) -> Ran {
    run(Command::new(BIN).args(args).env_remove("FLEETKIT_DATA"))
}

/// Runs `fleetkit args… --data DIR` and expects success.
fn admin_ok(data: &Path, args: &[&str]) -> Ran {
    let ran = fleetkit(&[args, &["--data", data.to_str().unwrap()]].concat());
    assert!(ran.ok(), "fleetkit {args:?}: {ran:?}");
    ran
}

/// Runs `fleetkit args… --data DIR` and expects failure with exit code 1 and a one-line
/// `error: …` message; returns the message.
fn admin_fails(data: &Path, args: &[&str]) -> String {
    let ran = fleetkit(&[args, &["--data", data.to_str().unwrap()]].concat());
    assert_eq!(ran.code, Some(1), "fleetkit {args:?}: {ran:?}");
    assert!(
        ran.stderr.starts_with("error: "),
        "fleetkit {args:?}: {ran:?}"
    );
    ran.stderr.trim().to_string()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A `fleetkit hub start` process and what it printed.
struct Hub {
    child: ChildGuard,
    data: PathBuf,
    mqtt_port: u16,
    log: Arc<Mutex<String>>,
}

impl Hub {
    /// Starts a hub on free ports and waits until it prints its endpoints.
    fn start(data: &Path) -> Hub {
        let mut child = ChildGuard(
            Command::new(BIN)
                .args(["hub", "start", "--data", data.to_str().unwrap()])
                .args(["--bind", "127.0.0.1:0", "--admin-bind", "127.0.0.1:0"])
                .env_remove("FLEETKIT_DATA")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start fleetkit hub"),
        );
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        // Drain both pipes for the hub's whole life: a full pipe would stall it.
        for (pipe, tx) in [
            (
                Box::new(child.0.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                Some(tx),
            ),
            (Box::new(child.0.stderr.take().unwrap()), None),
        ] {
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                    if let Some(tx) = &tx {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        let started = Instant::now();
        let mqtt_port = loop {
            let left = DEADLINE.saturating_sub(started.elapsed());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.trim().strip_prefix("mqtts") {
                        let port = url.trim().rsplit(':').next().unwrap();
                        break port.parse::<u16>().unwrap();
                    }
                }
                Err(_) => panic!(
                    "the hub printed no mqtts endpoint:\n{}",
                    log.lock().unwrap()
                ),
            }
        };
        // It announces its endpoints only after admin.json is in place.
        assert!(data.join("admin.json").exists());
        Hub {
            child,
            data: data.to_path_buf(),
            mqtt_port,
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Stops it as Ctrl-C would and expects a clean exit.
    fn stop(mut self) {
        let pid = self.child.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .unwrap()
                .success()
        );
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the hub did not stop:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "hub exit {status:?}:\n{}", self.log());
        assert!(
            !self.data.join("admin.json").exists(),
            "admin.json (with its token) outlived the hub"
        );
    }
}

/// Mosquitto client arguments for a device credential written by `device issue-credential`.
fn mosquitto_args(port: u16, cred: &Path, client_id: &str) -> Vec<String> {
    let file = |n: &str| cred.join(n).to_str().unwrap().to_string();
    vec![
        "-h".into(),
        "localhost".into(),
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
        file("ca.pem"),
        "--cert".into(),
        file("device.pem"),
        "--key".into(),
        file("device.key"),
        "-i".into(),
        client_id.into(),
        "-V".into(),
        "mqttv311".into(),
    ]
}

/// `mosquitto_pub`s one QoS 1 message; whether the hub took it.
fn publish(port: u16, cred: &Path, topic: &str, message: &str) -> Ran {
    run(Command::new("mosquitto_pub")
        .args(mosquitto_args(port, cred, "sensor-1-pub"))
        .args(["-q", "1", "-t", topic, "-m", message]))
}

/// Waits until `hub clients` lists (or, with `present` false, no longer lists) `client_id`.
fn wait_for_client(data: &Path, client_id: &str, present: bool) {
    let started = Instant::now();
    loop {
        let ran = admin_ok(data, &["hub", "clients", "--json"]);
        let clients = json(&ran.stdout)["clients"].clone();
        let listed = clients
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str() == Some(client_id));
        if listed == present {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{client_id} still {} in {clients}",
            if present { "absent" } else { "present" }
        );
        thread::sleep(Duration::from_millis(100));
    }
}

const FLEET_POLICY: &str = r#"{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${fleetkit:DeviceId}*"},
  {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/fleet/${fleetkit:DeviceId}/*"},
  {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/fleet/*"},
  {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/fleet/*"}
]}"#;

fn device_ids(data: &Path) -> Vec<String> {
    let list = json(&admin_ok(data, &["device", "list", "--json"]).stdout);
    list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

/// Sends requests to the admin API directly, with reqwest, as a client that has the CA file
/// but not the token would.
fn raw_admin_requests(data: &Path) -> Vec<(u16, serde_json::Value)> {
    let admin = json(&std::fs::read_to_string(data.join("admin.json")).unwrap());
    let url = admin["url"].as_str().unwrap().to_string();
    let token = admin["token"].as_str().unwrap().to_string();
    let ca = std::fs::read(data.join("ca.pem")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let intruder = serde_json::json!({ "id": "intruder" });
        let requests = [
            http.post(format!("{url}/v1/devices"))
                .bearer_auth("not-the-token")
                .json(&intruder),
            http.post(format!("{url}/v1/devices")).json(&intruder),
            // The right token with one character changed.
            http.post(format!("{url}/v1/devices"))
                .bearer_auth(format!("{}x", &token[..token.len() - 1]))
                .json(&intruder),
            http.post(format!("{url}/v1/devices/sensor-1/disable"))
                .bearer_auth("not-the-token"),
            // The right token: proves the refusals above were about the token.
            http.get(format!("{url}/v1/status")).bearer_auth(&token),
        ];
        let mut answers = Vec::new();
        for request in requests {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.json::<serde_json::Value>().await.unwrap();
            answers.push((status, body));
        }
        answers
    })
}

#[test]
fn pki_init_and_issue_make_files_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca_s = ca.to_str().unwrap();
    let ran = fleetkit(&["pki", "init", "--out", ca_s, "--org", "Acme"]);
    assert!(ran.ok(), "{ran:?}");
    for key in ["root.key", "intermediate.key"] {
        assert_eq!(mode(&ca.join(key)), 0o600, "{key}");
    }
    for cert in ["root.pem", "intermediate.pem", "chain.pem"] {
        assert!(ca.join(cert).exists(), "{cert}");
    }

    // Existing files are never overwritten without --force, and a refused run changes nothing.
    let before = std::fs::read(ca.join("root.key")).unwrap();
    let again = fleetkit(&["pki", "init", "--out", ca_s]);
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(
        again.stderr.starts_with("error: ") && again.stderr.contains("--force"),
        "{again:?}"
    );
    assert_eq!(std::fs::read(ca.join("root.key")).unwrap(), before);

    // A device certificate from a new key.
    let dev = dir.path().join("dev");
    let dev_s = dev.to_str().unwrap();
    let ran = fleetkit(&[
        "pki", "issue", "--ca-dir", ca_s, "--device", "sensor-7", "--out", dev_s, "--days", "30",
    ]);
    assert!(ran.ok(), "{ran:?}");
    assert_eq!(mode(&dev.join("device.key")), 0o600);
    let verify = run(Command::new("openssl").current_dir(dir.path()).args([
        "verify",
        "-CAfile",
        "ca/root.pem",
        "-untrusted",
        "ca/intermediate.pem",
        "dev/device.pem",
    ]));
    assert!(verify.ok(), "openssl verify: {verify:?}");
    // And the chain file does the same job as -untrusted.
    let verify = run(Command::new("openssl").current_dir(dir.path()).args([
        "verify",
        "-CAfile",
        "ca/root.pem",
        "-untrusted",
        "dev/device-chain.pem",
        "dev/device.pem",
    ]));
    assert!(verify.ok(), "openssl verify with the chain: {verify:?}");
    let subject = run(Command::new("openssl").args([
        "x509",
        "-noout",
        "-subject",
        "-in",
        dev.join("device.pem").to_str().unwrap(),
    ]));
    assert!(
        subject.stdout.replace(" ", "").contains("CN=sensor-7"),
        "{subject:?}"
    );
    // The key belongs to the certificate.
    let cert_pub = run(Command::new("openssl").args([
        "x509",
        "-noout",
        "-pubkey",
        "-in",
        dev.join("device.pem").to_str().unwrap(),
    ]));
    let key_pub = run(Command::new("openssl").args([
        "pkey",
        "-pubout",
        "-in",
        dev.join("device.key").to_str().unwrap(),
    ]));
    assert!(cert_pub.ok() && key_pub.ok(), "{cert_pub:?} {key_pub:?}");
    assert_eq!(cert_pub.stdout, key_pub.stdout);

    // A device certificate for a CSR made by openssl: no key is written, the CSR's key is used.
    let csr_key = dir.path().join("csr.key");
    let csr = dir.path().join("csr.pem");
    let req = run(Command::new("openssl").args([
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        csr_key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
        "-subj",
        "/CN=sensor-8",
    ]));
    assert!(req.ok(), "{req:?}");
    let from_csr = dir.path().join("from-csr");
    let ran = fleetkit(&[
        "pki",
        "issue",
        "--ca-dir",
        ca_s,
        "--device",
        "sensor-8",
        "--out",
        from_csr.to_str().unwrap(),
        "--csr",
        csr.to_str().unwrap(),
    ]);
    assert!(ran.ok(), "{ran:?}");
    assert!(!from_csr.join("device.key").exists());
    let verify = run(Command::new("openssl").current_dir(dir.path()).args([
        "verify",
        "-CAfile",
        "ca/root.pem",
        "-untrusted",
        "ca/intermediate.pem",
        "from-csr/device.pem",
    ]));
    assert!(verify.ok(), "{verify:?}");
    let cert_pub = run(Command::new("openssl").args([
        "x509",
        "-noout",
        "-pubkey",
        "-in",
        from_csr.join("device.pem").to_str().unwrap(),
    ]));
    let csr_pub =
        run(Command::new("openssl").args(["pkey", "-pubout", "-in", csr_key.to_str().unwrap()]));
    assert_eq!(cert_pub.stdout, csr_pub.stdout);

    // A CSR for another device is refused and writes nothing.
    let other = dir.path().join("other");
    let ran = fleetkit(&[
        "pki",
        "issue",
        "--ca-dir",
        ca_s,
        "--device",
        "sensor-9",
        "--out",
        other.to_str().unwrap(),
        "--csr",
        csr.to_str().unwrap(),
    ]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.contains("sensor-8"), "{ran:?}");
    assert!(!other.join("device.pem").exists());

    // A bad device id is a clear error.
    let ran = fleetkit(&[
        "pki",
        "issue",
        "--ca-dir",
        ca_s,
        "--device",
        "no spaces",
        "--out",
        dev_s,
        "--force",
    ]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.contains("device id"), "{ran:?}");

    // --force replaces.
    let ran = fleetkit(&["pki", "init", "--out", ca_s, "--force"]);
    assert!(ran.ok(), "{ran:?}");
    assert_ne!(std::fs::read(ca.join("root.key")).unwrap(), before);
    assert_eq!(mode(&ca.join("root.key")), 0o600);
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let ran = fleetkit(&["device", "frobnicate"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    let ran = fleetkit(&["device", "list"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.stderr.contains("--data"), "{ran:?}");
    let ran = fleetkit(&[
        "cert",
        "set-state",
        "abc",
        "sideways",
        "--data",
        "/nonexistent",
    ]);
    assert_eq!(ran.code, Some(2), "{ran:?}");

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let ran = fleetkit(&["device", "list", "--data", data]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.contains("no hub is running"), "{ran:?}");

    // The admin API never listens beyond loopback.
    let ran = fleetkit(&[
        "hub",
        "start",
        "--data",
        data,
        "--bind",
        "127.0.0.1:0",
        "--admin-bind",
        "0.0.0.0:0",
    ]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.contains("loopback"), "{ran:?}");
}

#[test]
fn a_hub_started_from_the_shell_serves_mosquitto_and_obeys_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hub");
    let hub = Hub::start(&data);
    let port = hub.mqtt_port;
    assert_eq!(mode(&data.join("admin.json")), 0o600);
    let admin = std::fs::read_to_string(data.join("admin.json")).unwrap();
    let token = json(&admin)["token"].as_str().unwrap().to_string();
    assert!(token.len() >= 43, "{token}");
    assert!(
        !hub.log().contains(&token),
        "the token was printed:\n{}",
        hub.log()
    );

    // Set up a device with a policy.
    let ran = admin_ok(
        &data,
        &[
            "device", "create", "sensor-1", "--group", "fleet", "--attr", "site=lab",
        ],
    );
    assert!(ran.stdout.contains("sensor-1"), "{ran:?}");
    let policy = dir.path().join("fleet.json");
    std::fs::write(&policy, FLEET_POLICY).unwrap();
    let ran = admin_ok(&data, &["policy", "put", "fleet", policy.to_str().unwrap()]);
    assert!(ran.stdout.contains("version 1"), "{ran:?}");
    admin_ok(&data, &["policy", "attach", "fleet", "--group", "fleet"]);

    // Bad input: a clear message, exit 1, and nothing changed.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"Version": "2012-10-17", "Statement": ["#).unwrap();
    let message = admin_fails(
        &data,
        &["policy", "put", "broken", broken.to_str().unwrap()],
    );
    assert!(message.contains("invalid policy"), "{message}");
    let unknown_action = dir.path().join("unknown.json");
    std::fs::write(
        &unknown_action,
        r#"{"Statement": {"Effect": "Allow", "Action": "iot:Teleport", "Resource": "*"}}"#,
    )
    .unwrap();
    let message = admin_fails(
        &data,
        &["policy", "put", "fleet", unknown_action.to_str().unwrap()],
    );
    assert!(message.contains("iot:Teleport"), "{message}");
    let policies = json(&admin_ok(&data, &["policy", "list", "--json"]).stdout);
    assert_eq!(
        policies["policies"].as_array().unwrap().len(),
        1,
        "{policies}"
    );
    assert_eq!(policies["policies"][0]["default_version"], 1, "{policies}");
    let message = admin_fails(&data, &["device", "enable", "nosuch"]);
    assert_eq!(message, "error: device not found: nosuch");
    let message = admin_fails(&data, &["policy", "attach", "fleet", "--device", "nosuch"]);
    assert!(message.contains("device not found: nosuch"), "{message}");
    let message = admin_fails(&data, &["device", "create", "sensor-1"]);
    assert!(message.contains("already exists"), "{message}");
    let message = admin_fails(&data, &["device", "create", "x y"]);
    assert!(message.contains("device id"), "{message}");
    let message = admin_fails(
        &data,
        &[
            "device",
            "issue-credential",
            "nosuch",
            "--out",
            dir.path().join("nope").to_str().unwrap(),
        ],
    );
    assert!(message.contains("device not found"), "{message}");
    assert_eq!(device_ids(&data), ["sensor-1"]);

    // A request without the right token is refused and changes nothing.
    let answers = raw_admin_requests(&data);
    for (status, body) in &answers[..4] {
        assert_eq!(*status, 401, "{body}");
        assert_eq!(body["error"], "unauthenticated", "{body}");
    }
    assert_eq!(answers[4].0, 200, "{}", answers[4].1);
    assert_eq!(answers[4].1["devices"], 1, "{}", answers[4].1);
    assert_eq!(device_ids(&data), ["sensor-1"]);
    let device = json(&admin_ok(&data, &["device", "show", "sensor-1", "--json"]).stdout);
    assert_eq!(device["enabled"], true, "{device}");

    // A credential for the device, written where mosquitto can use it.
    let cred = dir.path().join("cred");
    let ran = admin_ok(
        &data,
        &[
            "device",
            "issue-credential",
            "sensor-1",
            "--out",
            cred.to_str().unwrap(),
        ],
    );
    assert_eq!(mode(&cred.join("device.key")), 0o600);
    let cert_id = ran
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate id"))
        .map(|id| id.trim().to_string())
        .unwrap_or_else(|| panic!("no certificate id in {ran:?}"));
    assert_eq!(cert_id.len(), 64, "{cert_id}");
    // The files are never overwritten, so the key cannot be lost to a second issue.
    let message = admin_fails(
        &data,
        &[
            "device",
            "issue-credential",
            "sensor-1",
            "--out",
            cred.to_str().unwrap(),
        ],
    );
    assert!(message.contains("--force"), "{message}");

    // An allowed publish reaches a subscriber, both Mosquitto clients over mutual TLS.
    let mut sub = ChildGuard(
        Command::new("mosquitto_sub")
            .args(mosquitto_args(port, &cred, "sensor-1-sub"))
            .args(["-t", "fleet/#", "-C", "1", "-W", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub (Debian package mosquitto-clients)"),
    );
    // Publish until the subscriber, whose SUBSCRIBE may still be on its way, has one.
    let started = Instant::now();
    let status = loop {
        let ran = publish(port, &cred, "fleet/sensor-1/temp", "21.5");
        assert!(ran.ok(), "mosquitto_pub: {ran:?}\nhub:\n{}", hub.log());
        if let Some(status) = sub.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "nothing received:\n{}",
            hub.log()
        );
        thread::sleep(Duration::from_millis(200));
    };
    let mut received = String::new();
    std::io::Read::read_to_string(sub.0.stdout.as_mut().unwrap(), &mut received).unwrap();
    assert!(
        status.success(),
        "mosquitto_sub {status:?}\nhub:\n{}",
        hub.log()
    );
    assert_eq!(received.trim(), "21.5");

    // A publish the policy does not allow closes the connection: mosquitto_pub reports it.
    // (QoS 1 so that it waits for the PUBACK that never comes.)
    let denied = publish(port, &cred, "fleet/sensor-2/temp", "spoofed");
    assert!(!denied.ok(), "a denied publish went through: {denied:?}");

    // Disabling the device closes its live connection and refuses new ones. (First the
    // connections above must be gone, so that the count below is the watcher's alone.)
    wait_for_client(&data, "sensor-1-pub", false);
    wait_for_client(&data, "sensor-1-sub", false);
    let watcher = ChildGuard(
        Command::new("mosquitto_sub")
            .args(mosquitto_args(port, &cred, "sensor-1-watch"))
            .args(["-t", "fleet/#", "-W", "120"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_client(&data, "sensor-1-watch", true);
    let ran = admin_ok(&data, &["device", "disable", "sensor-1"]);
    assert!(ran.stdout.contains("1 live connection closed"), "{ran:?}");
    wait_for_client(&data, "sensor-1-watch", false);
    let refused = publish(port, &cred, "fleet/sensor-1/temp", "while disabled");
    assert!(!refused.ok(), "a disabled device published: {refused:?}");
    admin_ok(&data, &["device", "enable", "sensor-1"]);
    let ran = publish(port, &cred, "fleet/sensor-1/temp", "enabled again");
    assert!(ran.ok(), "{ran:?}");
    drop(watcher);

    // Revoking the certificate refuses it for good.
    let ran = admin_ok(&data, &["cert", "set-state", &cert_id, "revoked"]);
    assert!(ran.stdout.contains("revoked"), "{ran:?}");
    let refused = publish(port, &cred, "fleet/sensor-1/temp", "after revocation");
    assert!(
        !refused.ok(),
        "a revoked certificate published: {refused:?}"
    );
    let message = admin_fails(&data, &["cert", "set-state", &cert_id, "active"]);
    assert!(message.contains("revoked"), "{message}");
    let cert = json(&admin_ok(&data, &["cert", "show", &cert_id, "--json"]).stdout);
    assert_eq!(cert["state"], "revoked", "{cert}");
    assert!(
        hub.log().to_lowercase().contains("revoked"),
        "the hub printed no refusal:\n{}",
        hub.log()
    );

    // Stop (Ctrl-C) and start again on the same data: the registry, the policy and the CA
    // survive; the revoked certificate stays revoked; a new credential works.
    let ca_before = std::fs::read(data.join("ca.pem")).unwrap();
    hub.stop();
    let message = admin_fails(&data, &["device", "list"]);
    assert!(message.contains("no hub is running"), "{message}");
    let hub = Hub::start(&data);
    let port = hub.mqtt_port;
    assert_eq!(std::fs::read(data.join("ca.pem")).unwrap(), ca_before);
    let admin_again = std::fs::read_to_string(data.join("admin.json")).unwrap();
    assert_ne!(
        json(&admin_again)["token"],
        json(&admin)["token"],
        "the token must be new on every start"
    );
    let device = json(&admin_ok(&data, &["device", "show", "sensor-1", "--json"]).stdout);
    assert_eq!(device["groups"], serde_json::json!(["fleet"]), "{device}");
    assert_eq!(device["attributes"]["site"], "lab", "{device}");
    assert_eq!(device["certificates"][0]["state"], "revoked", "{device}");
    let refused = publish(port, &cred, "fleet/sensor-1/temp", "after restart");
    assert!(
        !refused.ok(),
        "a revoked certificate came back: {refused:?}"
    );
    let cred2 = dir.path().join("cred2");
    admin_ok(
        &data,
        &[
            "device",
            "issue-credential",
            "sensor-1",
            "--out",
            cred2.to_str().unwrap(),
        ],
    );
    let ran = publish(port, &cred2, "fleet/sensor-1/temp", "new credential");
    assert!(ran.ok(), "{ran:?}\nhub:\n{}", hub.log());

    // A second hub on the same data directory is refused while this one runs.
    let ran = fleetkit(&[
        "hub",
        "start",
        "--data",
        data.to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
    ]);
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.contains("already running"), "{ran:?}");
    assert!(data.join("admin.json").exists());
    hub.stop();
}

// ---------------------------------------------------------------------------------------------
// Lifecycle commands: provision and rotate (device side), revoke and audit (fleet side).

use fleetkit::identity::{CredentialStore, Credentials, DeviceId, Signer as _, Slot, SoftwareKey};
use fleetkit::local::dialect::{NativeHubDialect, ProvisioningTemplate};
use fleetkit::local::{CertificateState, DeviceRecord, LocalHub};
use fleetkit::pki::DeviceCertOptions;
use fleetkit::policy::{AttachTarget, builtin};

/// Runs `fleetkit args…` and expects exit code 1 with a one-line `error: …`; returns it.
fn fails(args: &[&str]) -> String {
    let ran = fleetkit(args);
    assert_eq!(ran.code, Some(1), "fleetkit {args:?}: {ran:?}");
    assert!(
        ran.stderr.starts_with("error: ") && ran.stderr.trim().lines().count() == 1,
        "fleetkit {args:?}: {ran:?}"
    );
    ran.stderr.trim().to_string()
}

/// The value after `label` on the line that starts with it (after indentation).
fn field(ran: &Ran, label: &str) -> String {
    ran.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {label:?} in {ran:?}"))
}

/// The `old → new` certificate ids of a `rotated …: old → new` line.
fn rotated_ids(ran: &Ran) -> (String, String) {
    let line = ran
        .stdout
        .lines()
        .find(|l| l.starts_with("rotated "))
        .unwrap_or_else(|| panic!("no rotation reported: {ran:?}"));
    let (_, ids) = line.split_once(": ").unwrap();
    let (old, new) = ids.split_once(" → ").unwrap();
    (old.to_string(), new.to_string())
}

/// The store's active certificate id.
fn active_id(store: &Path) -> String {
    match CredentialStore::open(store).unwrap().load().unwrap() {
        Credentials::X509(c) => c.leaf().fingerprint_sha256(),
        other => panic!("not X.509: {other:?}"),
    }
}

/// Every file in the store is 0600 and every directory 0700; no key lies around elsewhere.
fn assert_private(store: &Path) {
    assert_eq!(mode(store), 0o700, "{}", store.display());
    for entry in std::fs::read_dir(store).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_private(&path);
        } else {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}

/// A hub in this process serving a provisioning template (the `hub start` command has no way
/// to configure one yet), with a claim credential and the hub CA written to files.
struct ClaimHub {
    runtime: tokio::runtime::Runtime,
    hub: Option<LocalHub>,
    dir: tempfile::TempDir,
    endpoint: String,
}

const TEMPLATE: &str = "thermostats";

impl ClaimHub {
    fn start() -> ClaimHub {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let template = ProvisioningTemplate::new(TEMPLATE, "thermostat-{SerialNumber}")
            .unwrap()
            .with_policy("device")
            .in_group("thermostats")
            .with_hook(|req| {
                if req.parameters["SerialNumber"] == "666" {
                    Err(fleetkit::Error::PermissionDenied(
                        "serial 666 is not on the allow-list".into(),
                    ))
                } else {
                    Ok(())
                }
            });
        let hub = runtime.block_on(async {
            LocalHub::builder()
                .dialect(NativeHubDialect::new().with_provisioning_template(template))
                .start()
                .await
                .unwrap()
        });
        hub.put_policy("device", &builtin::native_device()).unwrap();
        // The claim may use the template, and "ghost", which the hub does not have (to see
        // the hub's own answer for an unknown template).
        hub.put_policy("claim", &builtin::provisioning_claim(TEMPLATE))
            .unwrap();
        hub.put_policy("claim-ghost", &builtin::provisioning_claim("ghost"))
            .unwrap();
        hub.create_device(DeviceRecord::new("factory-claim"))
            .unwrap();
        for policy in ["claim", "claim-ghost"] {
            hub.attach_policy(policy, AttachTarget::Device("factory-claim".into()))
                .unwrap();
        }
        // The claim credential, written as a factory would: certificate chain and key files.
        let key = SoftwareKey::generate_p256().unwrap();
        let cert = hub
            .ca()
            .issue(
                &DeviceId::new("factory-claim").unwrap(),
                key.public_key_spki(),
                &DeviceCertOptions::default(),
            )
            .unwrap();
        hub.register_certificate(cert.clone(), "factory-claim")
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut chain = cert.to_pem();
        for c in hub.ca().chain_for_devices() {
            chain.push_str(&c.to_pem());
        }
        std::fs::write(dir.path().join("claim.pem"), chain).unwrap();
        key.write_pkcs8_pem(dir.path().join("claim.key")).unwrap();
        std::fs::write(dir.path().join("ca.pem"), hub.ca_certificate().to_pem()).unwrap();
        let endpoint = format!("localhost:{}", hub.mqtt_addr().port());
        ClaimHub {
            runtime,
            hub: Some(hub),
            dir,
            endpoint,
        }
    }

    fn hub(&self) -> &LocalHub {
        self.hub.as_ref().unwrap()
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// `fleetkit provision` with the claim, `extra` arguments and the store `store`.
    fn provision(&self, store: &str, extra: &[&str]) -> Ran {
        let (ca, cert, key, store) = (
            self.path("ca.pem"),
            self.path("claim.pem"),
            self.path("claim.key"),
            self.path(store),
        );
        let mut args = vec![
            "provision",
            "--endpoint",
            &self.endpoint,
            "--ca",
            &ca,
            "--claim-cert",
            &cert,
            "--claim-key",
            &key,
            "--store",
            &store,
        ];
        args.extend_from_slice(extra);
        fleetkit(&args)
    }

    /// `fleetkit rotate` of the credential in `store` for `device`.
    fn rotate(&self, store: &str, device: &str) -> Ran {
        let (ca, store) = (self.path("ca.pem"), self.path(store));
        fleetkit(&[
            "rotate",
            "--endpoint",
            &self.endpoint,
            "--ca",
            &ca,
            "--store",
            &store,
            "--device",
            device,
        ])
    }

    fn state(&self, cert_id: &str) -> CertificateState {
        self.hub()
            .with_registry(|r| r.certificate(cert_id).map(|c| c.state))
            .unwrap_or_else(|| panic!("certificate {cert_id} is not registered"))
    }

    fn has_device(&self, id: &str) -> bool {
        self.hub().with_registry(|r| r.device(id).is_some())
    }
}

impl Drop for ClaimHub {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.take() {
            self.runtime.block_on(hub.shutdown());
        }
    }
}

#[test]
fn provision_by_claim_then_rotate_against_a_hub_with_a_template() {
    let claim = ClaimHub::start();

    // A key made here, a CSR for the device id: the store gets the credential, 0600.
    let ran = claim.provision(
        "store",
        &[
            "--template",
            TEMPLATE,
            "--device-id",
            "thermostat-0042",
            "--param",
            "SerialNumber=0042",
        ],
    );
    assert!(ran.ok(), "{ran:?}");
    assert_eq!(field(&ran, "provisioned device"), "thermostat-0042");
    let cert_id = field(&ran, "certificate id");
    assert_eq!(cert_id.len(), 64, "{ran:?}");
    assert!(
        !format!("{}{}", ran.stdout, ran.stderr).contains("PRIVATE KEY"),
        "{ran:?}"
    );
    let store = claim.dir.path().join("store");
    assert_private(&store);
    assert_eq!(active_id(&store), cert_id);
    assert_eq!(claim.state(&cert_id), CertificateState::Active);
    claim.hub().with_registry(|r| {
        let d = r.device("thermostat-0042").expect("the device was created");
        assert_eq!(d.groups, ["thermostats"]);
    });

    // The store is not overwritten without --force, and the hub is not even asked.
    let again = claim.provision(
        "store",
        &[
            "--template",
            TEMPLATE,
            "--device-id",
            "thermostat-0043",
            "--param",
            "SerialNumber=0043",
        ],
    );
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(again.stderr.contains("--force"), "{again:?}");
    assert!(!claim.has_device("thermostat-0043"));

    // Refusals are typed and clear, and leave no store behind.
    let refused = claim.provision(
        "store-666",
        &[
            "--template",
            TEMPLATE,
            "--device-id",
            "thermostat-666",
            "--param",
            "SerialNumber=666",
        ],
    );
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.starts_with("error: ")
            && refused.stderr.contains("permission denied")
            && refused.stderr.contains("pre-provisioning hook")
            && refused.stderr.contains("serial 666"),
        "{refused:?}"
    );
    assert!(!claim.dir.path().join("store-666").exists());
    let unknown = claim.provision(
        "store-ghost",
        &[
            "--template",
            "ghost",
            "--device-id",
            "thermostat-0044",
            "--param",
            "SerialNumber=0044",
        ],
    );
    assert_eq!(unknown.code, Some(1), "{unknown:?}");
    assert!(
        unknown
            .stderr
            .contains("no provisioning template \"ghost\""),
        "{unknown:?}"
    );
    let not_allowed = claim.provision(
        "store-other",
        &[
            "--template",
            "other",
            "--device-id",
            "thermostat-0045",
            "--param",
            "SerialNumber=0045",
        ],
    );
    assert_eq!(not_allowed.code, Some(1), "{not_allowed:?}");
    assert!(
        not_allowed.stderr.contains("\"other\"")
            && not_allowed
                .stderr
                .contains("does not allow the provisioning topics"),
        "{not_allowed:?}"
    );
    let missing = claim.provision(
        "store-x",
        &[
            "--template",
            TEMPLATE,
            "--device-id",
            "thermostat-0046",
            "--param",
            "Serial=0046",
        ],
    );
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(
        missing.stderr.contains("SerialNumber is required"),
        "{missing:?}"
    );
    for id in ["666", "0044", "0045", "0046"] {
        assert!(!claim.has_device(&format!("thermostat-{id}")), "{id}");
    }
    // Usage: a device id or --service-key, not both.
    let both = claim.provision(
        "store-y",
        &["--template", TEMPLATE, "--device-id", "x", "--service-key"],
    );
    assert_eq!(both.code, Some(2), "{both:?}");

    // The hub makes the key: it is stored, never printed.
    let ran = claim.provision(
        "store-77",
        &[
            "--template",
            TEMPLATE,
            "--service-key",
            "--param",
            "SerialNumber=0077",
        ],
    );
    assert!(ran.ok(), "{ran:?}");
    assert_eq!(field(&ran, "provisioned device"), "thermostat-0077");
    assert!(
        !format!("{}{}", ran.stdout, ran.stderr).contains("PRIVATE KEY"),
        "{ran:?}"
    );
    let store77 = claim.dir.path().join("store-77");
    assert_private(&store77);
    assert_eq!(active_id(&store77), field(&ran, "certificate id"));

    // Rotation: every step printed, old → new, the old certificate retired at the hub, the
    // store's active credential replaced.
    let ran = claim.rotate("store", "thermostat-0042");
    assert!(ran.ok(), "{ran:?}");
    for step in [
        "key generated",
        "certificate issued",
        "staged",
        "switched",
        "confirmed",
        "committed",
    ] {
        assert!(
            ran.stdout.contains(&format!("  {step}\n")),
            "{step}: {ran:?}"
        );
    }
    let (old, new) = rotated_ids(&ran);
    assert_eq!(old, cert_id);
    assert_ne!(new, cert_id);
    assert_eq!(claim.state(&old), CertificateState::Inactive);
    assert_eq!(claim.state(&new), CertificateState::Active);
    assert_eq!(active_id(&store), new);
    assert_private(&store);

    // A rotation interrupted after staging a certificate the hub accepts: recovered (said so)
    // and completed, not rotated a second time.
    let pending = claim
        .hub()
        .issue_device_credential("thermostat-0042")
        .unwrap();
    let pending_id = pending.leaf().fingerprint_sha256();
    let opened = CredentialStore::open(&store).unwrap();
    opened.stage(&Credentials::X509(pending)).unwrap();
    let ran = claim.rotate("store", "thermostat-0042");
    assert!(ran.ok(), "{ran:?}");
    assert!(
        ran.stdout.contains("a rotation was interrupted")
            && ran.stdout.contains("recovering first")
            && ran.stdout.contains("the interrupted rotation is complete"),
        "{ran:?}"
    );
    assert_eq!(rotated_ids(&ran), (new.clone(), pending_id.clone()));
    assert_eq!(active_id(&store), pending_id);
    assert_eq!(claim.state(&new), CertificateState::Inactive);
    assert!(opened.load_slot(Slot::Pending).unwrap().is_none());

    // One whose staged certificate the hub refuses: discarded (said so), then a rotation.
    let refused = claim
        .hub()
        .issue_device_credential("thermostat-0042")
        .unwrap();
    claim
        .hub()
        .set_certificate_state(
            &refused.leaf().fingerprint_sha256(),
            CertificateState::Revoked,
        )
        .unwrap();
    opened.stage(&Credentials::X509(refused)).unwrap();
    let ran = claim.rotate("store", "thermostat-0042");
    assert!(ran.ok(), "{ran:?}");
    assert!(
        ran.stdout.contains("refused the pending certificate"),
        "{ran:?}"
    );
    let (old, newest) = rotated_ids(&ran);
    assert_eq!(old, pending_id);
    assert_eq!(active_id(&store), newest);
    assert_eq!(claim.state(&newest), CertificateState::Active);

    // Bad input: exit 1 and a clear message.
    let message = fails(&[
        "rotate",
        "--endpoint",
        &claim.endpoint,
        "--ca",
        &claim.path("ca.pem"),
        "--store",
        &claim.path("nowhere"),
        "--device",
        "thermostat-0042",
    ]);
    assert!(message.contains("no credential store at"), "{message}");
    assert!(!claim.dir.path().join("nowhere").exists());
    let message = fails(&[
        "provision",
        "--endpoint",
        &claim.endpoint,
        "--ca",
        &claim.path("ca.pem"),
        "--claim-cert",
        &claim.path("claim.pem"),
        "--claim-key",
        &claim.path("no-such.key"),
        "--template",
        TEMPLATE,
        "--device-id",
        "thermostat-0050",
        "--store",
        &claim.path("store-50"),
    ]);
    assert!(message.contains("no-such.key"), "{message}");
    let ran = fleetkit(&[
        "rotate",
        "--endpoint",
        "localhost",
        "--ca",
        "ca.pem",
        "--store",
        "s",
        "--device",
        "d",
    ]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.stderr.contains("HOST:PORT"), "{ran:?}");
}

/// Runs `fleetkit args… --data DIR` whatever its exit code.
fn on_hub(data: &Path, args: &[&str]) -> Ran {
    fleetkit(&[args, &["--data", data.to_str().unwrap()]].concat())
}

#[test]
fn revoke_and_audit_a_hub_started_from_the_shell() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hub");
    let hub = Hub::start(&data);
    let port = hub.mqtt_port;

    // A clean fleet: exit 0. Medium findings only (certificates expire within 400 days, since
    // they live 365) are printed, and still exit 0.
    let ran = on_hub(&data, &["audit"]);
    assert!(ran.ok(), "{ran:?}");
    assert!(ran.stdout.contains("no findings"), "{ran:?}");

    // Devices under an intermediate CA of our own, and one with a credential from the hub CA.
    let ca = dir.path().join("ca");
    let ran = fleetkit(&["pki", "init", "--out", ca.to_str().unwrap()]);
    assert!(ran.ok(), "{ran:?}");
    let intermediate = ca.join("intermediate.pem");
    admin_ok(
        &data,
        &["ca", "register", ca.join("root.pem").to_str().unwrap()],
    );
    admin_ok(&data, &["ca", "register", intermediate.to_str().unwrap()]);
    let policy = dir.path().join("fleet.json");
    std::fs::write(&policy, FLEET_POLICY).unwrap();
    admin_ok(&data, &["policy", "put", "fleet", policy.to_str().unwrap()]);
    admin_ok(&data, &["policy", "attach", "fleet", "--group", "fleet"]);
    for device in ["sensor-a", "sensor-b"] {
        admin_ok(&data, &["device", "create", device, "--group", "fleet"]);
        let out = dir.path().join(device);
        let ran = fleetkit(&[
            "pki",
            "issue",
            "--ca-dir",
            ca.to_str().unwrap(),
            "--device",
            device,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ran.ok(), "{ran:?}");
        admin_ok(
            &data,
            &[
                "cert",
                "register",
                "--device",
                device,
                out.join("device.pem").to_str().unwrap(),
            ],
        );
    }
    admin_ok(&data, &["device", "create", "sensor-1", "--group", "fleet"]);
    let cred = dir.path().join("cred");
    let ran = admin_ok(
        &data,
        &[
            "device",
            "issue-credential",
            "sensor-1",
            "--out",
            cred.to_str().unwrap(),
        ],
    );
    let cert_id = field(&ran, "certificate id");
    let ran = on_hub(&data, &["audit", "--expiring-days", "400"]);
    assert!(ran.ok(), "{ran:?}");
    assert!(
        ran.stdout
            .contains("MEDIUM DEVICE_CERTIFICATE_EXPIRING_CHECK device certificate"),
        "{ran:?}"
    );
    assert!(ran.stdout.contains("finding(s): 3 medium"), "{ran:?}");

    // Revoking a certificate closes its live connection and says how many.
    let watcher = ChildGuard(
        Command::new("mosquitto_sub")
            .args(mosquitto_args(port, &cred, "sensor-1-watch"))
            .args(["-t", "fleet/#", "-W", "120"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (Debian package mosquitto-clients)"),
    );
    wait_for_client(&data, "sensor-1-watch", true);
    let ran = admin_ok(&data, &["revoke", "--cert", &cert_id]);
    assert!(
        ran.stdout.contains(&format!(
            "revoked certificate {cert_id} (device sensor-1); 1 live connection closed"
        )),
        "{ran:?}"
    );
    wait_for_client(&data, "sensor-1-watch", false);
    drop(watcher);
    let refused = publish(port, &cred, "fleet/sensor-1/temp", "after revocation");
    assert!(
        !refused.ok(),
        "a revoked certificate published: {refused:?}"
    );
    let ran = admin_ok(&data, &["revoke", "--cert", &cert_id]);
    assert!(ran.stdout.contains("already revoked"), "{ran:?}");
    let message = admin_fails(&data, &["revoke", "--cert", "0000"]);
    assert_eq!(message, "error: certificate not found: 0000");

    // Revoking the intermediate lists the devices under it first, then revokes it.
    let ran = admin_ok(&data, &["revoke", "--ca", intermediate.to_str().unwrap()]);
    let listed = ran
        .stdout
        .find("device certificates under CA")
        .unwrap_or_else(|| panic!("nothing listed: {ran:?}"));
    let revoked = ran
        .stdout
        .find("revoked CA ")
        .unwrap_or_else(|| panic!("not revoked: {ran:?}"));
    assert!(listed < revoked, "{ran:?}");
    for device in ["sensor-a", "sensor-b"] {
        assert!(
            ran.stdout.contains(&format!("active  {device}\n")),
            "{ran:?}"
        );
    }
    assert!(
        ran.stdout
            .contains("must be re-provisioned: sensor-a, sensor-b"),
        "{ran:?}"
    );
    let cas = json(&admin_ok(&data, &["ca", "list", "--json"]).stdout);
    let intermediate_id = cas["cas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == "revoked")
        .map(|c| c["id"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no revoked CA in {cas}"));
    assert!(ran.stdout.contains(&intermediate_id), "{ran:?}");

    // The audit now fails (exit 3) on the revoked CA with active devices under it.
    let ran = on_hub(&data, &["audit"]);
    assert_eq!(ran.code, Some(3), "{ran:?}");
    assert!(ran.stderr.is_empty(), "{ran:?}");
    assert!(
        ran.stdout.contains(&format!(
            "CRITICAL INTERMEDIATE_CA_REVOKED_FOR_ACTIVE_DEVICE_CERTIFICATES_CHECK CA certificate \
             {intermediate_id} (sensor-a, sensor-b): "
        )),
        "{ran:?}"
    );
    let ran = on_hub(&data, &["audit", "--json"]);
    assert_eq!(ran.code, Some(3), "{ran:?}");
    let report = json(&ran.stdout);
    let finding = &report["findings"][0];
    assert_eq!(
        finding["check"],
        "INTERMEDIATE_CA_REVOKED_FOR_ACTIVE_DEVICE_CERTIFICATES_CHECK"
    );
    assert_eq!(finding["severity"], "CRITICAL");
    assert_eq!(finding["resource"]["kind"], "ca_certificate");
    assert_eq!(finding["resource"]["id"], intermediate_id.as_str());
    assert_eq!(
        finding["devices"],
        serde_json::json!(["sensor-a", "sensor-b"])
    );
    assert_eq!(
        finding["affected"].as_array().unwrap().len(),
        2,
        "{finding}"
    );
    assert_eq!(report["counts"]["critical"], 1, "{report}");

    // Revoking the devices' certificates (one also disabled) clears it: exit 0 again.
    let ran = admin_ok(&data, &["revoke", "--device", "sensor-a"]);
    assert!(
        ran.stdout
            .contains("revoked 1 certificate(s) of device sensor-a"),
        "{ran:?}"
    );
    let ran = admin_ok(&data, &["revoke", "--device", "sensor-b", "--disable"]);
    assert!(ran.stdout.contains("disabled device sensor-b"), "{ran:?}");
    assert!(
        ran.stdout
            .contains("revoked 1 certificate(s) of device sensor-b"),
        "{ran:?}"
    );
    let device = json(&admin_ok(&data, &["device", "show", "sensor-b", "--json"]).stdout);
    assert_eq!(device["enabled"], false, "{device}");
    assert_eq!(device["certificates"][0]["state"], "revoked", "{device}");
    let ran = on_hub(&data, &["audit"]);
    assert!(ran.ok(), "{ran:?}");

    // Bad input: exit 1 (or 2 for usage) and a clear message.
    let message = admin_fails(&data, &["revoke", "--ca", &"ab".repeat(32)]);
    assert!(message.contains("CA certificate not found"), "{message}");
    let message = admin_fails(
        &data,
        &["revoke", "--ca", data.join("ca.pem").to_str().unwrap()],
    );
    assert!(message.contains("the hub's own CA"), "{message}");
    let message = admin_fails(&data, &["revoke", "--ca", "nonsense"]);
    assert!(message.contains("neither a CA id"), "{message}");
    let message = admin_fails(&data, &["revoke", "--device", "nosuch"]);
    assert_eq!(message, "error: device not found: nosuch");
    let ran = on_hub(&data, &["revoke", "--cert", "x", "--ca", "y"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    let ran = on_hub(&data, &["revoke"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    let ran = on_hub(&data, &["audit", "--expiring-days", "-1"]);
    assert_eq!(ran.code, Some(2), "{ran:?}");
    hub.stop();
}

/// The value of the report row `label` (`  succeeded   5`) of a campaign's output.
fn report_count(ran: &Ran, label: &str) -> usize {
    ran.stdout
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix(label)?;
            rest.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no {label:?} row in {ran:?}"))
}

/// The ACTIVE certificate ids of `device`, as the hub lists them.
fn active_certificates(data: &Path, device: &str) -> Vec<String> {
    let d = json(&admin_ok(data, &["device", "show", device, "--json"]).stdout);
    d["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "active")
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

/// One device of a campaign's fleet, run in the test process against a `hub start` process:
/// its client and credential store (its agent runs on the test's runtime once started).
struct FleetDevice {
    client: Arc<fleetkit::device::DeviceClient>,
    store: Arc<CredentialStore>,
}

impl FleetDevice {
    /// Loads the credential `device issue-credential` wrote into `cred` into a new store and
    /// connects with it to the hub on `port`, trusting `ca`.
    async fn connect(
        device: &str,
        cred: &Path,
        store: &Path,
        port: u16,
        ca: &fleetkit::pki::Certificate,
    ) -> FleetDevice {
        use fleetkit::device::{DeviceClient, NativeDialect};
        use fleetkit::identity::X509Credential;
        let key = SoftwareKey::from_pem(&std::fs::read_to_string(cred.join("device.key")).unwrap())
            .unwrap();
        let chain = std::fs::read_to_string(cred.join("device-chain.pem")).unwrap();
        let credential = X509Credential::from_pem(&chain, Arc::new(key)).unwrap();
        let opened = CredentialStore::open(store).unwrap();
        opened
            .stage(&Credentials::X509(credential.clone()))
            .unwrap();
        opened.commit().unwrap();
        let client = DeviceClient::builder(
            NativeDialect::new("localhost", port, ca),
            DeviceId::new(device).unwrap(),
        )
        .credential(credential)
        .backoff(
            fleetkit::protocol::BackoffConfig::new()
                .with_base(Duration::from_millis(20))
                .with_cap(Duration::from_millis(200)),
        )
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{device}: {e}"));
        FleetDevice {
            client: Arc::new(client),
            store: Arc::new(opened),
        }
    }

    /// Starts its rotation agent on the current runtime.
    fn start_agent(&self) {
        let agent =
            fleetkit::lifecycle::agent::RotationAgent::new(self.client.clone(), self.store.clone());
        let commands = self.client.commands().unwrap();
        tokio::spawn(async move { agent.run(commands).await });
    }
}

#[test]
fn a_rotation_campaign_from_the_shell_times_out_a_silent_device_then_resumes() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hub");
    let hub = Hub::start(&data);
    let data_s = data.to_str().unwrap();
    let ca_file = data.join("ca.pem");

    // The fleet: six devices in group `fleet` with credentials from the hub, one in `lab`
    // that the selection leaves out; the native device policy on both groups.
    let policy = dir.path().join("device-policy.json");
    std::fs::write(&policy, builtin::native_device().to_json()).unwrap();
    admin_ok(
        &data,
        &["policy", "put", "device", policy.to_str().unwrap()],
    );
    for group in ["fleet", "lab"] {
        admin_ok(&data, &["policy", "attach", "device", "--group", group]);
    }
    let fleet: Vec<String> = (1..=6).map(|i| format!("cam-{i}")).collect();
    let mut original = std::collections::HashMap::new();
    for (device, group) in fleet
        .iter()
        .map(|d| (d.as_str(), "fleet"))
        .chain([("lab-1", "lab")])
    {
        admin_ok(&data, &["device", "create", device, "--group", group]);
        let cred = dir.path().join("cred").join(device);
        let ran = admin_ok(
            &data,
            &[
                "device",
                "issue-credential",
                device,
                "--out",
                cred.to_str().unwrap(),
            ],
        );
        original.insert(device.to_string(), field(&ran, "certificate id"));
    }

    // Each device a client in this process with its store; agents on all but cam-6, which is
    // connected (so the command reaches it) but never answers.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ca =
        fleetkit::pki::Certificate::from_pem(&std::fs::read_to_string(&ca_file).unwrap()).unwrap();
    let devices: Vec<FleetDevice> = runtime.block_on(async {
        let mut out = Vec::new();
        for device in &fleet {
            let d = FleetDevice::connect(
                device,
                &dir.path().join("cred").join(device),
                &dir.path().join("store").join(device),
                hub.mqtt_port,
                &ca,
            )
            .await;
            if device != "cam-6" {
                d.start_agent();
            }
            out.push(d);
        }
        out
    });
    let store_id = |i: usize| match devices[i].store.load().unwrap() {
        Credentials::X509(c) => c.leaf().fingerprint_sha256(),
        other => panic!("not X.509: {other:?}"),
    };

    // Run 1: five rotate, cam-6 times out. Not aborted (1 of 6 is under 0.5), but incomplete:
    // exit 1 with the report on stdout, one line per device (stdout is not a terminal here).
    let state = dir.path().join("c1.json");
    let state_s = state.to_str().unwrap();
    let ca_s = ca_file.to_str().unwrap();
    let campaign = [
        "rotate",
        "--campaign",
        "c1",
        "--data",
        data_s,
        "--state",
        state_s,
    ];
    let run1 = Instant::now();
    let ran = fleetkit(
        &[
            &campaign[..],
            &[
                "--timeout-secs",
                "3",
                "--max-failure-ratio",
                "0.5",
                "--min-sample",
                "2",
                "--expiring-days",
                "400",
                "--group",
                "fleet",
                "--issuer-ca",
                ca_s,
                "--canary",
                "1",
                "--wave-size",
                "2",
                "--max-concurrency",
                "2",
            ],
        ]
        .concat(),
    );
    eprintln!("run 1 took {:.1?}", run1.elapsed());
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(
        ran.stdout.starts_with("campaign c1: 6 device(s) selected"),
        "{ran:?}"
    );
    assert_eq!(report_count(&ran, "succeeded"), 5, "{ran:?}");
    assert_eq!(report_count(&ran, "timed out"), 1, "{ran:?}");
    assert_eq!(report_count(&ran, "failed"), 0, "{ran:?}");
    assert!(ran.stdout.contains("\nnot aborted\n"), "{ran:?}");
    for device in &fleet[..5] {
        assert!(
            ran.stdout.contains(&format!("] {device}: succeeded\n")),
            "{device}: {ran:?}"
        );
    }
    assert!(
        ran.stdout
            .contains("[6/6] cam-6: timed out after 3s: the device never answered"),
        "{ran:?}"
    );
    assert!(
        ran.stdout
            .contains("failed or timed out:\n  cam-6  timed out after 3s"),
        "{ran:?}"
    );
    assert!(!ran.stdout.contains("lab-1"), "{ran:?}");
    assert!(
        ran.stderr
            .starts_with("error: campaign c1 is incomplete: 1 of 6 device(s) failed or timed out"),
        "{ran:?}"
    );
    let admin_file = std::fs::read_to_string(data.join("admin.json")).unwrap();
    let token = json(&admin_file)["token"].as_str().unwrap().to_string();
    assert!(!ran.stdout.contains(&token) && !ran.stderr.contains(&token));
    assert_eq!(mode(&state), 0o600);
    let saved = json(&std::fs::read_to_string(&state).unwrap());
    assert_eq!(saved["devices"].as_array().unwrap().len(), 6, "{saved}");

    // The five rotated for real: a new certificate in the store, the only active one at the
    // hub; cam-6 still has its first.
    let mut rotated = std::collections::HashMap::new();
    for (i, device) in fleet.iter().enumerate() {
        let active = active_certificates(&data, device);
        if device == "cam-6" {
            assert_eq!(active, [original[device].clone()]);
            continue;
        }
        assert_eq!(active.len(), 1, "{device}: {active:?}");
        assert_ne!(active[0], original[device], "{device}");
        assert_eq!(store_id(i), active[0], "{device}");
        rotated.insert(device.clone(), active[0].clone());
    }

    // Started again without --resume: refused, the state untouched.
    let before = std::fs::read(&state).unwrap();
    let message = fails(&campaign);
    assert!(message.contains("--resume"), "{message}");
    assert_eq!(std::fs::read(&state).unwrap(), before);
    // The plan is the file's: options of a new campaign are a usage error with --resume, and
    // another campaign id is refused.
    let ran = fleetkit(&[&campaign[..], &["--resume", "--group", "lab"]].concat());
    assert_eq!(ran.code, Some(2), "{ran:?}");
    let message = fails(&[
        "rotate",
        "--campaign",
        "c9",
        "--data",
        data_s,
        "--state",
        state_s,
        "--resume",
    ]);
    assert!(message.contains("holds campaign \"c1\""), "{message}");

    // cam-6's agent starts; the resumed campaign asks only cam-6, and completes: exit 0.
    runtime.block_on(async { devices[5].start_agent() });
    let ran = fleetkit(&[&campaign[..], &["--resume"]].concat());
    assert!(ran.ok(), "{ran:?}");
    assert!(
        ran.stdout
            .starts_with("campaign c1: resuming (run 2), 1 of 6 device(s) left"),
        "{ran:?}"
    );
    assert!(ran.stdout.contains("[1/1] cam-6: succeeded\n"), "{ran:?}");
    assert!(
        ran.stdout
            .contains("campaign c1 (run 2): 6 of 6 device(s) rotated"),
        "{ran:?}"
    );
    assert_eq!(report_count(&ran, "succeeded"), 6, "{ran:?}");
    assert_eq!(report_count(&ran, "timed out"), 0, "{ran:?}");
    assert!(ran.stderr.is_empty(), "{ran:?}");
    // The other five were not rotated again; cam-6 was, once.
    for (i, device) in fleet.iter().enumerate() {
        let active = active_certificates(&data, device);
        assert_eq!(active.len(), 1, "{device}: {active:?}");
        assert_eq!(store_id(i), active[0], "{device}");
        match rotated.get(device) {
            Some(id) => assert_eq!(&active[0], id, "{device} was rotated again"),
            None => assert_ne!(active[0], original[device], "{device}"),
        }
    }
    let d6 = json(&admin_ok(&data, &["device", "show", "cam-6", "--json"]).stdout);
    assert_eq!(d6["certificates"].as_array().unwrap().len(), 2, "{d6}");
    // Resumed once more, a complete campaign has nothing left to do.
    let ran = fleetkit(&[&campaign[..], &["--resume"]].concat());
    assert!(ran.ok(), "{ran:?}");
    assert!(ran.stdout.contains("0 of 6 device(s) left"), "{ran:?}");

    // A canary that fails aborts the campaign: exit 4. lab-1 is not connected, so its
    // command reaches nobody (the hub's 503).
    let state2 = dir.path().join("c2.json");
    let ran = fleetkit(&[
        "rotate",
        "--campaign",
        "c2",
        "--data",
        data_s,
        "--state",
        state2.to_str().unwrap(),
        "--group",
        "lab",
        "--canary",
        "1",
        "--timeout-secs",
        "2",
    ]);
    assert_eq!(ran.code, Some(4), "{ran:?}");
    assert!(
        ran.stdout
            .contains("\naborted in the canary: the canary failed: 1 of 1"),
        "{ran:?}"
    );
    assert!(
        ran.stdout.contains(
            "  lab-1  failed: the request did not reach the device: unavailable: no session of \
             device lab-1 subscribes to its commands"
        ),
        "{ran:?}"
    );
    assert_eq!(mode(&state2), 0o600);

    runtime.block_on(async {
        for d in &devices {
            d.client.shutdown(Duration::from_millis(200)).await;
        }
    });
    drop(devices);
    hub.stop();
    eprintln!("campaign test took {:.1?}", started.elapsed());
}
