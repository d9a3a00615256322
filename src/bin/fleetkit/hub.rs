//! `fleetkit hub start`: a local hub with its admin API, as a process.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleetkit::local::admin::AdminServer;
use fleetkit::local::{HubEvent, LocalHub};
use tokio::signal::unix::{SignalKind, signal};
use zeroize::Zeroizing;

use crate::admin::{ADMIN_FILE, AdminFile, CA_FILE};
use crate::files::{self, PRIVATE, PUBLIC};
use crate::{CliResult, Failure};

pub(crate) struct StartOptions {
    pub(crate) data: PathBuf,
    pub(crate) bind: SocketAddr,
    pub(crate) host_names: Vec<String>,
    pub(crate) websocket: bool,
    pub(crate) admin_bind: SocketAddr,
    pub(crate) quiet: bool,
}

/// Writes a line to standard output, ignoring a closed pipe: the hub must not stop (or panic)
/// because nobody reads its output any more.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Refuses to start when another hub serves this data directory: its admin.json names an
/// admin API that still accepts connections. A stale file (after a crash) is replaced.
async fn refuse_if_running(data: &Path) -> CliResult {
    let path = data.join(ADMIN_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let text = Zeroizing::new(text);
    let Ok(file) = serde_json::from_str::<AdminFile>(&text) else {
        return Ok(());
    };
    let Some(authority) = file
        .url
        .strip_prefix("https://")
        .map(|rest| rest.trim_end_matches('/'))
    else {
        return Ok(());
    };
    let Ok(addr) = authority.parse::<SocketAddr>() else {
        return Ok(());
    };
    let probe =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await;
    if matches!(probe, Ok(Ok(_))) {
        return Err(Failure::new(format!(
            "a hub (pid {}) is already running with data directory {} (admin API at {}); \
             stop it first",
            file.pid,
            data.display(),
            file.url
        )));
    }
    Ok(())
}

fn endpoint_host(addr: SocketAddr, host_names: &[String]) -> String {
    if addr.ip().is_unspecified() {
        let host = host_names.first().map_or("localhost", String::as_str);
        format!("{host}:{}", addr.port())
    } else {
        addr.to_string()
    }
}

pub(crate) async fn start(options: StartOptions) -> CliResult {
    let data = &options.data;
    // Early, so a bad --admin-bind fails before anything starts.
    if !options.admin_bind.ip().is_loopback() {
        return Err(Failure::new(format!(
            "invalid --admin-bind: {} is not a loopback address; the admin API only listens \
             on 127.0.0.1 or ::1",
            options.admin_bind
        )));
    }
    refuse_if_running(data).await?;
    // Installed before anything is printed: a signal that comes as soon as the endpoints are
    // known must stop the hub cleanly, not kill the process.
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|e| Failure::new(format!("cannot handle SIGINT: {e}")))?;
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| Failure::new(format!("cannot handle SIGTERM: {e}")))?;

    let mut builder = LocalHub::builder()
        .data_dir(data)
        .bind(options.bind)
        .websocket(options.websocket);
    for name in &options.host_names {
        builder = builder.host_name(name);
    }
    let hub = Arc::new(builder.start().await?);
    let data = std::fs::canonicalize(data)
        .map_err(|e| Failure::new(format!("{}: {e}", data.display())))?;
    let ca_path = data.join(CA_FILE);
    files::write(
        &ca_path,
        hub.ca_certificate().to_pem().as_bytes(),
        PUBLIC,
        true,
    )?;
    let admin = AdminServer::start(hub.clone(), options.admin_bind).await?;

    let mqtt = format!(
        "mqtts://{}",
        endpoint_host(hub.mqtt_addr(), &options.host_names)
    );
    let wss = hub
        .websocket_addr()
        .map(|a| format!("wss://{}/mqtt", endpoint_host(a, &options.host_names)));
    let admin_file = AdminFile {
        url: admin.url(),
        token: admin.token().expose_secret().to_string(),
        ca_file: ca_path.clone(),
        mqtt: mqtt.clone(),
        pid: std::process::id(),
    };
    let json = Zeroizing::new(
        serde_json::to_vec_pretty(&admin_file)
            .map_err(|e| Failure::new(format!("cannot encode {ADMIN_FILE}: {e}")))?,
    );
    drop(Zeroizing::new(admin_file.token));
    let admin_path = data.join(ADMIN_FILE);
    files::write(&admin_path, &json, PRIVATE, true)?;

    say(&format!("fleetkit hub running, data in {}", data.display()));
    say(&format!("  mqtts   {mqtt}"));
    if let Some(wss) = &wss {
        say(&format!("  wss     {wss}"));
    }
    say(&format!("  ca      {}", ca_path.display()));
    say(&format!(
        "  admin   {} (token in {})",
        admin.url(),
        admin_path.display()
    ));
    say("Press Ctrl-C to stop.");

    let events = (!options.quiet).then(|| tokio::spawn(print_events(hub.events())));

    let why = tokio::select! {
        _ = interrupt.recv() => "interrupted",
        _ = terminate.recv() => "terminated",
    };
    say(&format!("{why}; stopping"));
    // The token dies with this process: remove it first.
    let _ = std::fs::remove_file(&admin_path);
    admin.shutdown().await;
    if let Some(events) = events {
        events.abort();
    }
    // Admin requests still running on blocking threads hold the hub; give them a moment.
    let mut hub = hub;
    for _ in 0..100 {
        match Arc::try_unwrap(hub) {
            Ok(h) => {
                h.shutdown().await;
                say("stopped");
                return Ok(());
            }
            Err(shared) => {
                hub = shared;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Dropping it still closes connections and saves the state, best effort.
    drop(hub);
    say("stopped");
    Ok(())
}

async fn print_events(mut events: tokio::sync::broadcast::Receiver<HubEvent>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                say(&format!("  ({n} events not shown)"));
                continue;
            }
            Err(RecvError::Closed) => break,
        };
        let line = match &event {
            HubEvent::Connected {
                client_id,
                device,
                session_present,
            } => format!(
                "connected     {client_id} (device {device}{})",
                if *session_present {
                    ", session resumed"
                } else {
                    ""
                }
            ),
            HubEvent::Disconnected { client_id, reason } => {
                format!("disconnected  {client_id}: {reason}")
            }
            HubEvent::AuthFailure { client_id, reason } => {
                let who = if client_id.is_empty() {
                    "a client"
                } else {
                    client_id
                };
                format!("refused       {who}: {reason}")
            }
            HubEvent::PolicyDenied {
                client_id,
                explanation,
            } => format!("denied        {client_id}: {explanation}"),
            HubEvent::MessagesDropped { topic, subscribers } => {
                format!("dropped       a message on {topic} for {subscribers} subscriber(s)")
            }
            HubEvent::StatusChanged {
                what,
                connections_closed,
            } => format!("changed       {what} ({connections_closed} connection(s) closed)"),
            other => format!("event         {}", other.kind()),
        };
        say(&line);
    }
}
