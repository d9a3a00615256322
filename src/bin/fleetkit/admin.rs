//! Commands that administer a running hub through its admin API.
//!
//! `fleetkit hub start` writes `DIR/admin.json` (0600): the API's URL, its bearer token and the
//! CA file that verifies its TLS certificate. Every command here reads it, checks the server
//! against that CA (never the system's roots), and sends the token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleetkit::pki::{Certificate, Crl};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::files::{self, PRIVATE, PUBLIC};
use crate::pki::{DEVICE_CERT, DEVICE_CHAIN, DEVICE_KEY, short};
use crate::{CliResult, Failure, HubDir};

/// The name of the file a running hub describes its admin API in.
pub(crate) const ADMIN_FILE: &str = "admin.json";
/// The name of the hub CA's certificate in the data directory.
pub(crate) const CA_FILE: &str = "ca.pem";

/// What `DIR/admin.json` holds.
#[derive(Serialize, Deserialize)]
pub(crate) struct AdminFile {
    /// Base URL of the admin API.
    pub(crate) url: String,
    /// The bearer token.
    pub(crate) token: String,
    /// The CA certificate that verifies the admin API's (and the MQTT endpoints') TLS.
    pub(crate) ca_file: PathBuf,
    /// The MQTT over TLS endpoint, for people reading the file.
    pub(crate) mqtt: String,
    /// The process id of the hub.
    pub(crate) pid: u32,
}

/// What a policy is attached to.
pub(crate) enum Target {
    Device(String),
    Certificate(String),
    Group(String),
    Scope(String),
}

impl Target {
    fn json(&self) -> Value {
        match self {
            Target::Device(v) => json!({ "device": v }),
            Target::Certificate(v) => json!({ "certificate": v }),
            Target::Group(v) => json!({ "group": v }),
            Target::Scope(v) => json!({ "scope": v }),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Device(v) => write!(f, "device {v}"),
            Target::Certificate(v) => write!(f, "certificate {v}"),
            Target::Group(v) => write!(f, "group {v}"),
            Target::Scope(v) => write!(f, "scope {v}"),
        }
    }
}

enum Body {
    None,
    Json(Value),
    /// A JSON document sent as it is (a policy: the hub's parser reports its errors).
    Raw(String),
    /// Opaque bytes (a command's payload).
    Bytes(Vec<u8>),
}

/// A client of one running hub's admin API.
pub(crate) struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    token: Zeroizing<String>,
    data: PathBuf,
}

/// Reads `DIR/admin.json` and prepares a client that verifies the hub with its CA file.
pub(crate) fn connect(hub: HubDir) -> CliResult<Client> {
    let data = crate::require_data(hub)?;
    let admin_path = data.join(ADMIN_FILE);
    let text = match std::fs::read_to_string(&admin_path) {
        Ok(t) => Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::new(format!(
                "no hub is running with data directory {} ({} is missing); start one with \
                 `fleetkit hub start --data {}`",
                data.display(),
                admin_path.display(),
                data.display()
            )));
        }
        Err(e) => {
            return Err(Failure::new(format!(
                "cannot read {}: {e}",
                admin_path.display()
            )));
        }
    };
    let file: AdminFile = serde_json::from_str(&text)
        .map_err(|e| Failure::new(format!("{} is unreadable: {e}", admin_path.display())))?;
    let token = Zeroizing::new(file.token);
    let base = reqwest::Url::parse(&file.url).map_err(|e| {
        Failure::new(format!(
            "{}: bad url {:?}: {e}",
            admin_path.display(),
            file.url
        ))
    })?;
    if base.scheme() != "https" {
        return Err(Failure::new(format!(
            "{}: the admin url must be https, not {}",
            admin_path.display(),
            base
        )));
    }
    let ca_file = if file.ca_file.is_absolute() {
        file.ca_file
    } else {
        data.join(file.ca_file)
    };
    let cas = Certificate::chain_from_pem(&files::read_text(&ca_file)?)
        .map_err(|e| Failure::new(format!("{}: {e}", ca_file.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in &cas {
        roots
            .add(ca.der().clone())
            .map_err(|e| Failure::new(format!("{}: {e}", ca_file.display())))?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Failure::new(format!("TLS configuration: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| Failure::new(format!("cannot set up the HTTP client: {}", chain(&e))))?;
    Ok(Client {
        http,
        base,
        token,
        data,
    })
}

/// An error with its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Reads a certificate or CRL file as PEM text; DER files are converted.
pub(crate) fn pem_file(
    path: &Path,
    der_to_pem: impl Fn(&[u8]) -> fleetkit::Result<String>,
) -> CliResult<String> {
    let bytes = files::read_bytes(path)?;
    match String::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN") => Ok(text),
        Ok(text) => der_to_pem(text.as_bytes()).map_err(|e| {
            Failure::new(format!(
                "{}: not PEM, and not DER either ({e})",
                path.display()
            ))
        }),
        Err(e) => {
            der_to_pem(e.as_bytes()).map_err(|e| Failure::new(format!("{}: {e}", path.display())))
        }
    }
}

pub(crate) fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

pub(crate) fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn count(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn closed(v: &Value) -> String {
    match count(v, "connections_closed") {
        0 => String::new(),
        1 => "; 1 live connection closed".into(),
        n => format!("; {n} live connections closed"),
    }
}

/// Prints rows as columns under a header.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = *w));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

impl Client {
    async fn call(&self, method: Method, path: &[&str], body: Body) -> CliResult<Value> {
        self.call_with_query(method, path, &[], body).await
    }

    async fn call_with_query(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        body: Body,
    ) -> CliResult<Value> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| Failure::new(format!("bad admin url {}", self.base)))?
            .clear()
            .push("v1")
            .extend(path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.token.as_str());
        request = match body {
            Body::None => request,
            Body::Json(v) => request.json(&v),
            Body::Raw(text) => request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(text),
            Body::Bytes(bytes) => request
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(bytes),
        };
        let response = request.send().await.map_err(|e| {
            Failure::new(format!(
                "cannot reach the hub's admin API at {} ({}); is `fleetkit hub start --data {}` \
                 running?",
                self.base,
                chain(&e),
                self.data.display()
            ))
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Failure::new(format!("reading the hub's answer: {}", chain(&e))))?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(Failure::new(format!(
                "the hub refused the token in {}; is it the hub that wrote it?",
                self.data.join(ADMIN_FILE).display()
            )));
        }
        Err(Failure::new(
            value
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("the hub answered {status}")),
        ))
    }

    pub(crate) async fn status(&self, json: bool) -> CliResult {
        let s = self.call(Method::GET, &["status"], Body::None).await?;
        if json {
            print_json(&s);
            return Ok(());
        }
        let ca = s.get("ca").cloned().unwrap_or(Value::Null);
        let rows = [
            ("mqtts", str_of(&s, "mqtt").to_string()),
            (
                "wss",
                s.get("websocket")
                    .and_then(Value::as_str)
                    .unwrap_or("off")
                    .to_string(),
            ),
            (
                "tcp",
                s.get("tcp")
                    .and_then(Value::as_str)
                    .unwrap_or("off")
                    .to_string(),
            ),
            ("admin", str_of(&s, "admin").to_string()),
            (
                "ca",
                format!("{} ({})", str_of(&ca, "subject"), short(str_of(&ca, "id"))),
            ),
            ("devices", count(&s, "devices").to_string()),
            ("certificates", count(&s, "certificates").to_string()),
            ("policies", count(&s, "policies").to_string()),
            ("cas", count(&s, "cas").to_string()),
            ("crls", count(&s, "crls").to_string()),
            ("connections", count(&s, "connections").to_string()),
            ("subscriptions", count(&s, "subscriptions").to_string()),
        ];
        for (k, v) in rows {
            println!("{k:<14} {v}");
        }
        Ok(())
    }

    pub(crate) async fn clients(&self, json: bool) -> CliResult {
        let c = self.call(Method::GET, &["clients"], Body::None).await?;
        if json {
            print_json(&c);
            return Ok(());
        }
        let clients = c
            .get("clients")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if clients.is_empty() {
            println!("no clients connected");
        }
        for client in clients {
            println!("{}", client.as_str().unwrap_or(""));
        }
        Ok(())
    }

    pub(crate) async fn create_device(
        &self,
        id: &str,
        attributes: &[(String, String)],
        groups: &[String],
        thing_type: Option<&str>,
        enabled: bool,
    ) -> CliResult {
        let attributes: serde_json::Map<String, Value> = attributes
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        let mut body =
            json!({ "id": id, "attributes": attributes, "groups": groups, "enabled": enabled });
        if let Some(t) = thing_type {
            body["thing_type"] = Value::from(t);
        }
        let d = self
            .call(Method::POST, &["devices"], Body::Json(body))
            .await?;
        println!(
            "created device {}{}",
            str_of(&d, "id"),
            if enabled { "" } else { " (disabled)" }
        );
        Ok(())
    }

    pub(crate) async fn list_devices(&self, json: bool) -> CliResult {
        let list = self.call(Method::GET, &["devices"], Body::None).await?;
        if json {
            print_json(&list);
            return Ok(());
        }
        let devices = list
            .get("devices")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if devices.is_empty() {
            println!("no devices");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = devices
            .iter()
            .map(|d| {
                vec![
                    str_of(d, "id").to_string(),
                    if d.get("enabled").and_then(Value::as_bool).unwrap_or(false) {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                    join_strings(d.get("groups")),
                    join_attributes(d.get("attributes")),
                ]
            })
            .collect();
        table(&["ID", "ENABLED", "GROUPS", "ATTRIBUTES"], &rows);
        Ok(())
    }

    pub(crate) async fn show_device(&self, id: &str, json: bool) -> CliResult {
        let d = self.call(Method::GET, &["devices", id], Body::None).await?;
        if json {
            print_json(&d);
            return Ok(());
        }
        println!("device      {}", str_of(&d, "id"));
        println!(
            "enabled     {}",
            if d.get("enabled").and_then(Value::as_bool).unwrap_or(false) {
                "yes"
            } else {
                "no"
            }
        );
        if let Some(t) = d.get("thing_type").and_then(Value::as_str) {
            println!("type        {t}");
        }
        println!("groups      {}", or_dash(join_strings(d.get("groups"))));
        println!(
            "attributes  {}",
            or_dash(join_attributes(d.get("attributes")))
        );
        println!("policies    {}", or_dash(join_strings(d.get("policies"))));
        let certs = d
            .get("certificates")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if certs.is_empty() {
            println!("certificates -");
        }
        for c in certs {
            println!(
                "certificate {}  {}  expires {}",
                str_of(&c, "id"),
                str_of(&c, "state"),
                str_of(&c, "not_after")
            );
        }
        Ok(())
    }

    pub(crate) async fn set_device_enabled(&self, id: &str, enabled: bool) -> CliResult {
        let action = if enabled { "enable" } else { "disable" };
        let r = self
            .call(Method::POST, &["devices", id, action], Body::None)
            .await?;
        println!("device {id} {action}d{}", closed(&r));
        Ok(())
    }

    pub(crate) async fn issue_credential(&self, id: &str, out: &Path, force: bool) -> CliResult {
        let paths = [DEVICE_CERT, DEVICE_CHAIN, DEVICE_KEY, CA_FILE].map(|n| out.join(n));
        // Checked before asking: the key exists only in the answer, so nothing may stop us
        // from writing it afterwards.
        files::refuse_existing(&paths, force)?;
        files::create_dir(out)?;
        let c = self
            .call(Method::POST, &["devices", id, "credentials"], Body::None)
            .await?;
        let key = Zeroizing::new(str_of(&c, "private_key_pem").to_string());
        if key.is_empty() {
            return Err(Failure::new("the hub's answer holds no private key"));
        }
        files::write(&out.join(DEVICE_KEY), key.as_bytes(), PRIVATE, force)?;
        files::write(
            &out.join(DEVICE_CERT),
            str_of(&c, "certificate_pem").as_bytes(),
            PUBLIC,
            force,
        )?;
        files::write(
            &out.join(DEVICE_CHAIN),
            str_of(&c, "chain_pem").as_bytes(),
            PUBLIC,
            force,
        )?;
        files::write(
            &out.join(CA_FILE),
            str_of(&c, "ca_pem").as_bytes(),
            PUBLIC,
            force,
        )?;
        println!("issued a credential for device {id} in {}", out.display());
        println!("  certificate id  {}", str_of(&c, "certificate_id"));
        println!("  expires         {}", str_of(&c, "not_after"));
        println!(
            "  files           {DEVICE_CERT}, {DEVICE_CHAIN}, {DEVICE_KEY} (private), {CA_FILE} (hub CA)"
        );
        Ok(())
    }

    pub(crate) async fn register_certificate(&self, device: &str, file: &Path) -> CliResult {
        let pem = pem_file(file, |der| Ok(Certificate::from_der(der)?.to_pem()))?;
        let c = self
            .call(
                Method::POST,
                &["certificates"],
                Body::Json(json!({ "device": device, "certificate_pem": pem })),
            )
            .await?;
        println!("registered certificate for device {device} (active)");
        println!("  id       {}", str_of(&c, "id"));
        println!("  subject  {}", str_of(&c, "subject"));
        Ok(())
    }

    pub(crate) async fn set_certificate_state(&self, id: &str, state: &str) -> CliResult {
        let r = self
            .call(
                Method::PUT,
                &["certificates", id, "state"],
                Body::Json(json!({ "state": state })),
            )
            .await?;
        println!("certificate {} is {state}{}", short(id), closed(&r));
        Ok(())
    }

    pub(crate) async fn show_certificate(&self, id: &str, json: bool) -> CliResult {
        let c = self
            .call(Method::GET, &["certificates", id], Body::None)
            .await?;
        if json {
            print_json(&c);
            return Ok(());
        }
        for key in [
            "id",
            "device",
            "state",
            "subject",
            "issuer",
            "serial",
            "not_before",
            "not_after",
        ] {
            println!("{key:<11} {}", str_of(&c, key));
        }
        Ok(())
    }

    pub(crate) async fn register_ca(&self, file: &Path) -> CliResult {
        let pem = pem_file(file, |der| Ok(Certificate::from_der(der)?.to_pem()))?;
        let c = self
            .call(
                Method::POST,
                &["cas"],
                Body::Json(json!({ "certificate_pem": pem })),
            )
            .await?;
        println!("registered CA {} (active)", str_of(&c, "subject"));
        println!("  id  {}", str_of(&c, "id"));
        Ok(())
    }

    pub(crate) async fn set_ca_status(&self, id: &str, status: &str) -> CliResult {
        let r = self
            .call(
                Method::PUT,
                &["cas", id, "status"],
                Body::Json(json!({ "status": status })),
            )
            .await?;
        println!("CA {} is {status}{}", short(id), closed(&r));
        Ok(())
    }

    pub(crate) async fn list_cas(&self, json: bool) -> CliResult {
        let list = self.call(Method::GET, &["cas"], Body::None).await?;
        if json {
            print_json(&list);
            return Ok(());
        }
        let cas = list
            .get("cas")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let rows: Vec<Vec<String>> = cas
            .iter()
            .map(|c| {
                let mut subject = str_of(c, "subject").to_string();
                if c.get("hub_ca").and_then(Value::as_bool).unwrap_or(false) {
                    subject.push_str(" (hub CA)");
                }
                vec![
                    str_of(c, "id").to_string(),
                    str_of(c, "status").to_string(),
                    str_of(c, "not_after").to_string(),
                    subject,
                ]
            })
            .collect();
        table(&["ID", "STATUS", "EXPIRES", "SUBJECT"], &rows);
        Ok(())
    }

    pub(crate) async fn add_crl(&self, file: &Path) -> CliResult {
        let pem = pem_file(file, |der| Ok(Crl::from_der(der)?.to_pem()))?;
        let r = self
            .call(
                Method::POST,
                &["crls"],
                Body::Json(json!({ "crl_pem": pem })),
            )
            .await?;
        println!(
            "added the CRL from {} ({} revoked){}",
            str_of(&r, "issuer"),
            count(&r, "entries"),
            closed(&r)
        );
        Ok(())
    }

    pub(crate) async fn put_policy(&self, name: &str, file: &Path) -> CliResult {
        let text = files::read_text(file)?;
        let r = self
            .call(Method::PUT, &["policies", name], Body::Raw(text))
            .await?;
        println!("stored policy {name} version {}", count(&r, "version"));
        Ok(())
    }

    pub(crate) async fn attach_policy(
        &self,
        name: &str,
        target: Target,
        attach: bool,
    ) -> CliResult {
        let action = if attach { "attach" } else { "detach" };
        self.call(
            Method::POST,
            &["policies", name, action],
            Body::Json(target.json()),
        )
        .await?;
        if attach {
            println!("attached policy {name} to {target}");
        } else {
            println!("detached policy {name} from {target}");
        }
        Ok(())
    }

    pub(crate) async fn list_policies(&self, json: bool) -> CliResult {
        let list = self.call(Method::GET, &["policies"], Body::None).await?;
        if json {
            print_json(&list);
            return Ok(());
        }
        let policies = list
            .get("policies")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if policies.is_empty() {
            println!("no policies");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = policies
            .iter()
            .map(|p| {
                let targets: Vec<String> = p
                    .get("targets")
                    .and_then(Value::as_array)
                    .map(|ts| ts.iter().map(target_text).collect())
                    .unwrap_or_default();
                vec![
                    str_of(p, "name").to_string(),
                    count(p, "default_version").to_string(),
                    or_dash(targets.join(", ")),
                ]
            })
            .collect();
        table(&["NAME", "VERSION", "ATTACHED TO"], &rows);
        Ok(())
    }

    pub(crate) async fn show_policy(&self, name: &str) -> CliResult {
        let p = self
            .call(Method::GET, &["policies", name], Body::None)
            .await?;
        print_json(p.get("document").unwrap_or(&Value::Null));
        Ok(())
    }
}

// Calls for the lifecycle commands (src/bin/fleetkit/lifecycle.rs): they return the hub's
// answer and leave the printing to the command.
impl Client {
    /// `GET /v1/certificates/{id}`.
    pub(crate) async fn certificate(&self, id: &str) -> CliResult<Value> {
        self.call(Method::GET, &["certificates", id], Body::None)
            .await
    }

    /// `PUT /v1/certificates/{id}/state`; the answer holds `connections_closed`.
    pub(crate) async fn put_certificate_state(&self, id: &str, state: &str) -> CliResult<Value> {
        self.call(
            Method::PUT,
            &["certificates", id, "state"],
            Body::Json(json!({ "state": state })),
        )
        .await
    }

    /// `GET /v1/devices/{id}`: the device with its certificates.
    pub(crate) async fn device(&self, id: &str) -> CliResult<Value> {
        self.call(Method::GET, &["devices", id], Body::None).await
    }

    /// `POST /v1/devices/{id}/disable`; the answer holds `connections_closed`.
    pub(crate) async fn disable_device(&self, id: &str) -> CliResult<Value> {
        self.call(Method::POST, &["devices", id, "disable"], Body::None)
            .await
    }

    /// `GET /v1/cas/{id}/devices`: the device certificates under a registered CA.
    pub(crate) async fn ca_devices(&self, id: &str) -> CliResult<Value> {
        self.call(Method::GET, &["cas", id, "devices"], Body::None)
            .await
    }

    /// `PUT /v1/cas/{id}/status`; the answer holds `connections_closed`.
    pub(crate) async fn put_ca_status(&self, id: &str, status: &str) -> CliResult<Value> {
        self.call(
            Method::PUT,
            &["cas", id, "status"],
            Body::Json(json!({ "status": status })),
        )
        .await
    }

    /// `GET /v1/audit` with both expiry thresholds.
    pub(crate) async fn audit(
        &self,
        device_expiry_days: u32,
        ca_expiry_days: u32,
    ) -> CliResult<Value> {
        self.call_with_query(
            Method::GET,
            &["audit"],
            &[
                ("device_expiry_days", device_expiry_days.to_string()),
                ("ca_expiry_days", ca_expiry_days.to_string()),
            ],
            Body::None,
        )
        .await
    }
}

// Calls for `rotate --campaign` (src/bin/fleetkit/campaign.rs).
impl Client {
    /// The admin API's base URL (for messages; it holds no secret).
    pub(crate) fn url(&self) -> &reqwest::Url {
        &self.base
    }

    /// The hub's data directory this client was made from.
    pub(crate) fn data(&self) -> &Path {
        &self.data
    }

    /// `GET /v1/devices`: every device, with its groups and whether it is enabled.
    pub(crate) async fn devices(&self) -> CliResult<Value> {
        self.call(Method::GET, &["devices"], Body::None).await
    }

    /// `GET /v1/certificates?state=…`: device certificates with their PEM.
    pub(crate) async fn certificates(&self, state: &str) -> CliResult<Value> {
        self.call_with_query(
            Method::GET,
            &["certificates"],
            &[("state", state.to_string())],
            Body::None,
        )
        .await
    }

    /// `GET /v1/cas`: the registered CAs, with their PEM.
    pub(crate) async fn cas(&self) -> CliResult<Value> {
        self.call(Method::GET, &["cas"], Body::None).await
    }

    /// `POST /v1/devices/{id}/commands/{name}` with `payload` as the body; the answer holds
    /// `sessions`.
    pub(crate) async fn send_command(
        &self,
        device: &str,
        name: &str,
        payload: Vec<u8>,
    ) -> CliResult<Value> {
        self.call(
            Method::POST,
            &["devices", device, "commands", name],
            Body::Bytes(payload),
        )
        .await
    }

    /// `GET /v1/devices/{id}/twin`.
    pub(crate) async fn twin(&self, device: &str) -> CliResult<Value> {
        self.call(Method::GET, &["devices", device, "twin"], Body::None)
            .await
    }
}

fn target_text(t: &Value) -> String {
    t.as_object()
        .and_then(|o| o.iter().next())
        .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("")))
        .unwrap_or_default()
}

fn join_strings(v: Option<&Value>) -> String {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn join_attributes(v: Option<&Value>) -> String {
    v.and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}
