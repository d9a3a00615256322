//! `fleetkit`: the command-line tool.
//!
//! - `fleetkit pki …` makes a CA hierarchy and device certificates offline, as files.
//! - `fleetkit hub start --data DIR` runs a local hub (MQTT over mutual TLS, optionally over
//!   WebSocket) with its admin API, until Ctrl-C.
//! - `fleetkit device|cert|ca|crl|policy|hub … --data DIR` administer that running hub through
//!   its admin API: the hub writes the API's address and token to `DIR/admin.json` (0600) and
//!   its CA to `DIR/ca.pem`, and these commands read them.
//! - `fleetkit provision|rotate` run on a device: fleet provisioning by claim and certificate
//!   rotation over MQTT with mutual TLS, the credentials kept in a credential store directory.
//! - `fleetkit revoke|audit --data DIR` are the fleet side of the lifecycle, through the admin
//!   API, and so is `fleetkit rotate --campaign ID --data DIR --state FILE`: a rotation
//!   campaign over the hub's devices, each rotating itself with its rotation agent.
//!
//! Failures print `error: <message>` on stderr and exit with 1; usage errors exit with 2.
//! `fleetkit audit` exits with 3 when it finds something Critical or High; `fleetkit rotate
//! --campaign` exits with 4 when the campaign aborted on its failure threshold (and with 1 when
//! it finished with devices failed or timed out).
#![forbid(unsafe_code)]

// The binary's root sits in src/bin/, its modules in src/bin/fleetkit/.
#[path = "fleetkit/admin.rs"]
mod admin;
#[path = "fleetkit/campaign.rs"]
mod campaign;
#[path = "fleetkit/files.rs"]
mod files;
#[path = "fleetkit/hub.rs"]
mod hub;
#[path = "fleetkit/lifecycle.rs"]
mod lifecycle;
#[path = "fleetkit/pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// A failure to report: the message after `error: `.
#[derive(Debug)]
pub(crate) struct Failure(String);

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Failure(message.into())
    }

    /// The message, for wrapping in another.
    pub(crate) fn into_message(self) -> String {
        self.0
    }
}

impl From<fleetkit::Error> for Failure {
    fn from(e: fleetkit::Error) -> Self {
        Failure(e.to_string())
    }
}

pub(crate) type CliResult<T = ()> = Result<T, Failure>;

/// Cloud-agnostic IoT fleet tooling: a PKI for devices, a local MQTT/TLS hub, and its
/// administration.
#[derive(Parser, Debug)]
#[command(name = "fleetkit", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a CA hierarchy and device certificates (offline, as files).
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Run a local hub, or ask a running one for its status and clients.
    Hub(HubArgs),
    /// Devices of a running hub.
    Device(Admin<DeviceCommand>),
    /// Device certificates of a running hub.
    Cert(Admin<CertCommand>),
    /// CA certificates a running hub trusts for devices.
    Ca(Admin<CaCommand>),
    /// Certificate revocation lists of a running hub.
    Crl(Admin<CrlCommand>),
    /// Policies of a running hub.
    Policy(Admin<PolicyCommand>),
    /// Device side: get an identity by fleet provisioning with a claim certificate, and keep
    /// it in a credential store.
    Provision(ProvisionArgs),
    /// Device side: rotate the certificate in a credential store (finishing or undoing an
    /// interrupted rotation first). Fleet side, with --campaign: rotate many devices of a
    /// running hub, canary first, then in waves.
    ///
    /// With --campaign, each selected device is sent a `rotate` command and answers in its
    /// twin (its rotation agent must run). Exit status: 0 when every selected device rotated;
    /// 4 when the campaign aborted on its failure threshold; 1 when devices failed or timed
    /// out without an abort, or on any other error. --resume continues from --state.
    Rotate(RotateArgs),
    /// Revoke a device certificate, a CA, or a device's certificates on a running hub; live
    /// connections are closed at once.
    Revoke(RevokeArgs),
    /// Audit a running hub's certificates (Device Defender's checks). Exit status 3 when a
    /// finding is Critical or High, 0 otherwise.
    Audit(AuditArgs),
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("key").required(true).args(["device_id", "service_key"])))]
struct ProvisionArgs {
    /// The hub's MQTT over TLS endpoint (`mqtts://` may lead, as `hub start` prints it).
    #[arg(long, value_name = "HOST:PORT", value_parser = lifecycle::parse_host_port)]
    endpoint: lifecycle::HostPort,
    /// CA certificate(s) the hub's server certificate chains to (PEM).
    #[arg(long, value_name = "CA.pem")]
    ca: PathBuf,
    /// The claim certificate, leaf first (PEM or DER).
    #[arg(long, value_name = "CERT.pem")]
    claim_cert: PathBuf,
    /// The claim certificate's private key (PEM).
    #[arg(long, value_name = "KEY.pem")]
    claim_key: PathBuf,
    /// The provisioning template to register with.
    #[arg(long, value_name = "NAME")]
    template: String,
    /// The device id to ask for: a key is made here and only a CSR is sent.
    #[arg(long, value_name = "ID")]
    device_id: Option<String>,
    /// Let the hub make the key (sent once over TLS) and the template name the device.
    #[arg(long)]
    service_key: bool,
    /// A template parameter (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_attribute)]
    parameters: Vec<(String, String)>,
    /// The credential store directory (created if missing; keys 0600).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Replace a credential the store already holds (the active one is kept as previous).
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct RotateArgs {
    /// The hub's MQTT over TLS endpoint (`mqtts://` may lead, as `hub start` prints it).
    #[arg(
        long,
        value_name = "HOST:PORT",
        value_parser = lifecycle::parse_host_port,
        required_unless_present = "campaign",
        conflicts_with = "campaign"
    )]
    endpoint: Option<lifecycle::HostPort>,
    /// CA certificate(s) the hub's server certificate chains to (PEM).
    #[arg(
        long,
        value_name = "CA.pem",
        required_unless_present = "campaign",
        conflicts_with = "campaign"
    )]
    ca: Option<PathBuf>,
    /// The credential store directory, as `provision` made it.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "campaign",
        conflicts_with = "campaign"
    )]
    store: Option<PathBuf>,
    /// The device id to connect as (also the MQTT client id: stop the device's own client
    /// first, or the two take the connection from each other).
    #[arg(
        long,
        value_name = "ID",
        required_unless_present = "campaign",
        conflicts_with = "campaign"
    )]
    device: Option<String>,
    #[command(flatten)]
    fleet: CampaignArgs,
}

/// `rotate --campaign`: the fleet side.
#[derive(Args, Debug)]
#[command(next_help_heading = "Campaign (fleet side)")]
struct CampaignArgs {
    /// Run a rotation campaign with this id (1-64 of A-Z a-z 0-9 - _) over the hub in --data;
    /// devices report against it.
    #[arg(long, value_name = "ID", requires = "state")]
    campaign: Option<String>,
    /// The campaign's state file (JSON, 0600, replaced atomically): created by a new campaign,
    /// read by --resume.
    #[arg(long, value_name = "FILE", requires = "campaign")]
    state: Option<PathBuf>,
    /// Continue the campaign in --state (after an abort, a failure or an interruption):
    /// devices that rotated are not asked again; the plan is the one in the file.
    #[arg(long, requires = "campaign")]
    resume: bool,
    #[command(flatten)]
    hub: HubDir,
    /// Only certificates expiring within N days.
    #[arg(
        long,
        value_name = "N",
        requires = "campaign",
        conflicts_with = "resume",
        value_parser = clap::value_parser!(u32).range(0..=36_500)
    )]
    expiring_days: Option<u32>,
    /// Only devices in this thing group (repeatable: any of them).
    #[arg(
        long = "group",
        value_name = "GROUP",
        requires = "campaign",
        conflicts_with = "resume"
    )]
    groups: Vec<String>,
    /// Only certificates issued by this CA: a certificate file or a registered CA's id
    /// (repeatable: any of them).
    #[arg(
        long = "issuer-ca",
        value_name = "FILE_OR_ID",
        requires = "campaign",
        conflicts_with = "resume"
    )]
    issuer_cas: Vec<String>,
    /// Devices in the canary cohort, which must pass before any wave starts [default: 0].
    #[arg(
        long,
        value_name = "N",
        requires = "campaign",
        conflicts_with = "resume"
    )]
    canary: Option<u32>,
    /// Devices per wave after the canary [default: all the rest in one wave].
    #[arg(
        long,
        value_name = "N",
        requires = "campaign",
        conflicts_with = "resume",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    wave_size: Option<u32>,
    /// Devices rotating at once at most [default: 16].
    #[arg(
        long,
        value_name = "N",
        requires = "campaign",
        conflicts_with = "resume",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_concurrency: Option<u32>,
    /// Abort when more than this ratio (0-1) of a run's results are failures (timeouts
    /// count) [default: 0.1].
    #[arg(
        long,
        value_name = "F",
        requires = "campaign",
        conflicts_with = "resume",
        value_parser = parse_ratio
    )]
    max_failure_ratio: Option<f64>,
    /// Results a run needs before the ratio is judged (the canary is always judged)
    /// [default: 10].
    #[arg(
        long,
        value_name = "N",
        requires = "campaign",
        conflicts_with = "resume"
    )]
    min_sample: Option<u32>,
    /// Seconds a device has to answer once asked; then it has timed out [default: 300].
    #[arg(
        long,
        value_name = "N",
        requires = "campaign",
        conflicts_with = "resume",
        value_parser = clap::value_parser!(u64).range(1..=604_800)
    )]
    timeout_secs: Option<u64>,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("what").required(true).args(["cert", "ca", "device"])))]
struct RevokeArgs {
    #[command(flatten)]
    hub: HubDir,
    /// A device certificate id.
    #[arg(long = "cert", value_name = "CERT_ID")]
    cert: Option<String>,
    /// A registered CA: its id, or a file holding its certificate. Lists the device
    /// certificates under it first.
    #[arg(long, value_name = "CA_ID_OR_FILE")]
    ca: Option<String>,
    /// A device: revokes every certificate it has.
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// Also disable the device, refusing any credential it has.
    #[arg(long, requires = "device", conflicts_with_all = ["cert", "ca"])]
    disable: bool,
}

#[derive(Args, Debug)]
struct AuditArgs {
    #[command(flatten)]
    hub: HubDir,
    /// Report device and CA certificates expiring within N days.
    #[arg(long, value_name = "N", default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=36_500))]
    expiring_days: u32,
    /// Print JSON (the exit status is the same).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum PkiCommand {
    /// Create a root CA and an issuing intermediate CA: root.pem, intermediate.pem, chain.pem
    /// and their keys root.key, intermediate.key (0600).
    Init {
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Organization (O) of both CAs, also used in their names.
        #[arg(long, value_name = "NAME")]
        org: Option<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a device certificate from the CA in --ca-dir: device.pem, device-chain.pem and,
    /// unless --csr is given, a new P-256 key device.key (0600).
    Issue {
        /// Directory made by `pki init` (intermediate.pem and .key, root.pem).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// The device id (the certificate's CN).
        #[arg(long, value_name = "ID")]
        device: String,
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Sign this PKCS#10 CSR (PEM) instead of generating a key.
        #[arg(long, value_name = "FILE")]
        csr: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, value_name = "N", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

/// The running hub's data directory, for commands that talk to it.
#[derive(Args, Debug)]
struct HubDir {
    /// The hub's data directory (holds admin.json and ca.pem).
    #[arg(long, value_name = "DIR", env = "FLEETKIT_DATA", global = true)]
    data: Option<PathBuf>,
}

/// A group of commands addressed to a running hub.
#[derive(Args, Debug)]
struct Admin<C: Subcommand> {
    #[command(flatten)]
    hub: HubDir,
    #[command(subcommand)]
    command: C,
}

#[derive(Args, Debug)]
struct HubArgs {
    #[command(flatten)]
    hub: HubDir,
    #[command(subcommand)]
    command: HubCommand,
}

#[derive(Subcommand, Debug)]
enum HubCommand {
    /// Run a hub until Ctrl-C, keeping its state in --data.
    Start {
        /// Where MQTT over TLS listens.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8883")]
        bind: SocketAddr,
        /// An extra name the server certificate covers (repeatable).
        #[arg(long = "host-name", value_name = "NAME")]
        host_names: Vec<String>,
        /// Also serve MQTT over WebSocket (WSS) on another port.
        #[arg(long)]
        websocket: bool,
        /// Where the admin API listens (loopback only).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        admin_bind: SocketAddr,
        /// Do not print connection and status events.
        #[arg(long)]
        quiet: bool,
    },
    /// Endpoints and counts of the running hub.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Client ids of the live MQTT connections.
    Clients {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DeviceCommand {
    /// Register a device.
    Create {
        /// The device id.
        id: String,
        /// An attribute, readable by policies (repeatable).
        #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_attribute)]
        attributes: Vec<(String, String)>,
        /// A thing group the device is in (repeatable).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Its thing type.
        #[arg(long = "type", value_name = "TYPE")]
        thing_type: Option<String>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// List devices.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a device with its certificates and policies.
    Show {
        /// The device id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let a device connect again.
    Enable {
        /// The device id.
        id: String,
    },
    /// Refuse a device's connections, closing the live ones.
    Disable {
        /// The device id.
        id: String,
    },
    /// Generate a key, issue its certificate from the hub CA and register it: writes
    /// device.pem, device-chain.pem, device.key (0600) and the hub's ca.pem into --out.
    IssueCredential {
        /// The device id.
        id: String,
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Register a device certificate (PEM or DER) as ACTIVE; prints its id.
    Register {
        /// The device it belongs to.
        #[arg(long, value_name = "ID")]
        device: String,
        /// The certificate file.
        file: PathBuf,
    },
    /// Change a device certificate's state; inactive and revoked close its live connections.
    SetState {
        /// The certificate id (SHA-256 fingerprint, hex).
        cert_id: String,
        /// The new state (revoked is permanent).
        state: Status,
    },
    /// Show a device certificate.
    Show {
        /// The certificate id.
        cert_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Register a CA certificate (PEM or DER) whose device certificates the hub accepts.
    Register {
        /// The CA certificate file.
        file: PathBuf,
    },
    /// Change a registered CA's status; inactive and revoked close the connections under it.
    SetStatus {
        /// The CA id (SHA-256 fingerprint, hex), as `ca register` and `ca list` print it.
        ca_id: String,
        /// The new status.
        status: Status,
    },
    /// List registered CAs.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum CrlCommand {
    /// Add a CRL (PEM or DER) signed by a registered CA.
    Add {
        /// The CRL file.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Store a policy (AWS IoT policy JSON) as a new version; prints the version.
    Put {
        /// The policy name.
        name: String,
        /// The policy document (`-` for standard input).
        file: PathBuf,
    },
    /// Attach a policy to a device, certificate, thing group or token scope.
    Attach {
        /// The policy name.
        name: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Detach a policy.
    Detach {
        /// The policy name.
        name: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List policies with their versions and targets.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a policy's document.
    Show {
        /// The policy name.
        name: String,
    },
}

/// Exactly one thing a policy is attached to.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct TargetArgs {
    /// A device id.
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// A certificate id.
    #[arg(long = "cert", value_name = "CERT_ID")]
    cert: Option<String>,
    /// A thing group.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// A token scope.
    #[arg(long, value_name = "SCOPE")]
    scope: Option<String>,
}

/// A certificate state or CA status.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Status {
    /// Accepted.
    Active,
    /// Refused for now.
    Inactive,
    /// Refused for good.
    Revoked,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Inactive => "inactive",
            Status::Revoked => "revoked",
        }
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a ratio from 0 to 1 (0.1 is 10 %)")),
    }
}

fn parse_attribute(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> CliResult<ExitCode> {
    match cli.command {
        Command::Audit(AuditArgs {
            hub,
            expiring_days,
            json,
        }) => lifecycle::audit(&admin::connect(hub)?, expiring_days, json).await,
        Command::Rotate(RotateArgs {
            fleet:
                CampaignArgs {
                    campaign: Some(id),
                    state: Some(state),
                    resume,
                    hub,
                    expiring_days,
                    groups,
                    issuer_cas,
                    canary,
                    wave_size,
                    max_concurrency,
                    max_failure_ratio,
                    min_sample,
                    timeout_secs,
                },
            ..
        }) => {
            let options = campaign::CampaignOptions {
                id,
                state,
                resume,
                expiring_days,
                groups,
                issuer_cas,
                canary,
                wave_size,
                max_concurrency,
                max_failure_ratio,
                min_sample,
                timeout_secs,
            };
            campaign::run(admin::connect(hub)?, options).await
        }
        command => run_command(command).await.map(|()| ExitCode::SUCCESS),
    }
}

async fn run_command(command: Command) -> CliResult {
    match command {
        Command::Pki(PkiCommand::Init { out, org, force }) => {
            pki::init(&out, org.as_deref(), force)
        }
        Command::Pki(PkiCommand::Issue {
            ca_dir,
            device,
            out,
            csr,
            days,
            force,
        }) => pki::issue(&ca_dir, &device, &out, csr.as_deref(), days, force),
        Command::Hub(HubArgs { hub, command }) => match command {
            HubCommand::Start {
                bind,
                host_names,
                websocket,
                admin_bind,
                quiet,
            } => {
                let data = require_data(hub)?;
                hub::start(hub::StartOptions {
                    data,
                    bind,
                    host_names,
                    websocket,
                    admin_bind,
                    quiet,
                })
                .await
            }
            HubCommand::Status { json } => admin::connect(hub)?.status(json).await,
            HubCommand::Clients { json } => admin::connect(hub)?.clients(json).await,
        },
        Command::Device(Admin { hub, command }) => {
            let client = admin::connect(hub)?;
            match command {
                DeviceCommand::Create {
                    id,
                    attributes,
                    groups,
                    thing_type,
                    disabled,
                } => {
                    client
                        .create_device(&id, &attributes, &groups, thing_type.as_deref(), !disabled)
                        .await
                }
                DeviceCommand::List { json } => client.list_devices(json).await,
                DeviceCommand::Show { id, json } => client.show_device(&id, json).await,
                DeviceCommand::Enable { id } => client.set_device_enabled(&id, true).await,
                DeviceCommand::Disable { id } => client.set_device_enabled(&id, false).await,
                DeviceCommand::IssueCredential { id, out, force } => {
                    client.issue_credential(&id, &out, force).await
                }
            }
        }
        Command::Cert(Admin { hub, command }) => {
            let client = admin::connect(hub)?;
            match command {
                CertCommand::Register { device, file } => {
                    client.register_certificate(&device, &file).await
                }
                CertCommand::SetState { cert_id, state } => {
                    client.set_certificate_state(&cert_id, state.as_str()).await
                }
                CertCommand::Show { cert_id, json } => {
                    client.show_certificate(&cert_id, json).await
                }
            }
        }
        Command::Ca(Admin { hub, command }) => {
            let client = admin::connect(hub)?;
            match command {
                CaCommand::Register { file } => client.register_ca(&file).await,
                CaCommand::SetStatus { ca_id, status } => {
                    client.set_ca_status(&ca_id, status.as_str()).await
                }
                CaCommand::List { json } => client.list_cas(json).await,
            }
        }
        Command::Crl(Admin { hub, command }) => {
            let client = admin::connect(hub)?;
            match command {
                CrlCommand::Add { file } => client.add_crl(&file).await,
            }
        }
        Command::Policy(Admin { hub, command }) => {
            let client = admin::connect(hub)?;
            match command {
                PolicyCommand::Put { name, file } => client.put_policy(&name, &file).await,
                PolicyCommand::Attach { name, target } => {
                    client.attach_policy(&name, target.into(), true).await
                }
                PolicyCommand::Detach { name, target } => {
                    client.attach_policy(&name, target.into(), false).await
                }
                PolicyCommand::List { json } => client.list_policies(json).await,
                PolicyCommand::Show { name } => client.show_policy(&name).await,
            }
        }
        Command::Provision(a) => {
            lifecycle::provision(lifecycle::ProvisionOptions {
                endpoint: a.endpoint,
                ca: a.ca,
                claim_cert: a.claim_cert,
                claim_key: a.claim_key,
                template: a.template,
                device_id: a.device_id,
                parameters: a.parameters,
                store: a.store,
                force: a.force,
            })
            .await
        }
        Command::Rotate(RotateArgs {
            endpoint: Some(endpoint),
            ca: Some(ca),
            store: Some(store),
            device: Some(device),
            ..
        }) => lifecycle::rotate(&endpoint, &ca, &store, &device).await,
        // clap requires all four without --campaign, --state with it, and run takes the
        // campaigns.
        Command::Rotate(_) => unreachable!("clap requires --endpoint, --ca, --store, --device"),
        Command::Revoke(a) => {
            let client = admin::connect(a.hub)?;
            match (a.cert, a.ca, a.device) {
                (Some(cert), ..) => lifecycle::revoke_certificate(&client, &cert).await,
                (_, Some(ca), _) => lifecycle::revoke_ca(&client, &ca).await,
                (_, _, Some(device)) => lifecycle::revoke_device(&client, &device, a.disable).await,
                // clap's group makes exactly one of them present.
                (None, None, None) => unreachable!("clap requires one of --cert, --ca, --device"),
            }
        }
        Command::Audit(_) => unreachable!("run handles audit: it has its own exit status"),
    }
}

impl From<TargetArgs> for admin::Target {
    fn from(t: TargetArgs) -> Self {
        match (t.device, t.cert, t.group, t.scope) {
            (Some(d), ..) => admin::Target::Device(d),
            (_, Some(c), ..) => admin::Target::Certificate(c),
            (_, _, Some(g), _) => admin::Target::Group(g),
            (_, _, _, Some(s)) => admin::Target::Scope(s),
            // clap's group makes exactly one of them present.
            (None, None, None, None) => unreachable!("clap requires one target"),
        }
    }
}

/// The `--data` directory, or a usage error (exit code 2) naming the option.
fn require_data(hub: HubDir) -> CliResult<PathBuf> {
    match hub.data {
        Some(d) => Ok(d),
        None => {
            use clap::CommandFactory as _;
            Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "the hub's data directory is required: pass --data DIR or set FLEETKIT_DATA",
                )
                .exit()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn attributes_are_key_value() {
        assert_eq!(
            parse_attribute("site=lab=1").unwrap(),
            ("site".into(), "lab=1".into())
        );
        assert!(parse_attribute("=x").is_err());
        assert!(parse_attribute("novalue").is_err());
    }
}
