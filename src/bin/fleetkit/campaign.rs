//! `fleetkit rotate --campaign`: a certificate rotation campaign over a running hub's fleet.
//!
//! The campaign is the library's [`Campaign`] — selection, canary and waves, failure threshold,
//! a resumable state file (JSON, replaced atomically, 0600) — over [`AdminCampaignBackend`],
//! which reaches the fleet through the hub's admin API: the candidates come from `GET
//! /v1/devices` and `GET /v1/certificates?state=active`, a device is asked to rotate with a
//! `rotate` command (`POST /v1/devices/{id}/commands/rotate`, the [`RotationRequest`] as the
//! payload), and its answer is the `rotation` section of its reported twin (`GET
//! /v1/devices/{id}/twin`), written by the device's
//! [`RotationAgent`](fleetkit::lifecycle::agent::RotationAgent).
//!
//! Exit status: 0 when every selected device rotated (or none was selected); [`ABORTED_EXIT`]
//! when the run aborted on the failure threshold; 1 (with `error: …`) when the run finished
//! with devices failed or timed out, or anything else went wrong. The report is printed in
//! every case where the campaign ran.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleetkit::lifecycle::agent::{ROTATE_COMMAND, RotationRequest};
use fleetkit::lifecycle::campaign::{
    Campaign, CampaignBackend, CampaignPlan, CampaignReport, DeviceInfo, DeviceOutcome,
    DeviceStatus, Phase, Progress, Selector,
};
use fleetkit::pki::Certificate;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::admin::{Client, pem_file, str_of};
use crate::pki::short;
use crate::{CliResult, Failure};

/// Exit status of `rotate --campaign` when the run aborted on its failure threshold.
pub(crate) const ABORTED_EXIT: u8 = 4;

/// How often outcomes are polled, at most and at least: a tenth of the per-device timeout
/// within these bounds (a device answers within a second or so when it is well).
const POLL_MAX: Duration = Duration::from_secs(2);
const POLL_MIN: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// The backend

/// A [`CampaignBackend`] over a running hub's admin API.
pub(crate) struct AdminCampaignBackend {
    client: Client,
}

impl std::fmt::Debug for AdminCampaignBackend {
    // The client holds the admin token: only the URL is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCampaignBackend")
            .field("url", &self.client.url().as_str())
            .finish_non_exhaustive()
    }
}

impl AdminCampaignBackend {
    pub(crate) fn new(client: Client) -> Self {
        AdminCampaignBackend { client }
    }
}

/// A failed admin call as the library's error. The campaign only shows its text (as a
/// device's failure reason, or as the reason `create` failed), after `unavailable: `; the
/// hub's own 503 message starts with that already.
fn api_error(f: Failure) -> fleetkit::Error {
    let message = f.into_message();
    fleetkit::Error::Unavailable(match message.strip_prefix("unavailable: ") {
        Some(rest) => rest.to_string(),
        None => message,
    })
}

/// A library error as the command's failure; an admin call's own message without the
/// `unavailable: ` that [`api_error`] put before it.
fn failure(e: fleetkit::Error) -> Failure {
    match e {
        fleetkit::Error::Unavailable(message) => Failure::new(message),
        other => Failure::from(other),
    }
}

#[async_trait]
impl CampaignBackend for AdminCampaignBackend {
    async fn candidates(&self, selector: &Selector) -> fleetkit::Result<Vec<DeviceInfo>> {
        // Two requests for the whole fleet: the devices, then every ACTIVE certificate.
        let devices = self.client.devices().await.map_err(api_error)?;
        let certificates = self
            .client
            .certificates("active")
            .await
            .map_err(api_error)?;
        let mut known: BTreeMap<String, (Vec<String>, bool)> = BTreeMap::new();
        for d in devices["devices"].as_array().into_iter().flatten() {
            let groups = d["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            let enabled = d["enabled"].as_bool().unwrap_or(false);
            known.insert(str_of(d, "id").to_string(), (groups, enabled));
        }
        let mut out: BTreeMap<String, DeviceInfo> = BTreeMap::new();
        for c in certificates["certificates"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let device = str_of(c, "device");
            if let Some(ids) = &selector.devices
                && !ids.iter().any(|id| id == device)
            {
                continue;
            }
            // A certificate of a device deleted meanwhile: nobody to rotate.
            let Some((groups, enabled)) = known.get(device) else {
                continue;
            };
            let certificate = Certificate::from_pem(str_of(c, "certificate_pem")).map_err(|e| {
                fleetkit::Error::invalid(
                    "certificate listing",
                    format!("certificate {} of {device}: {e}", str_of(c, "id")),
                )
            })?;
            out.entry(device.to_string())
                .or_insert_with(|| {
                    groups
                        .iter()
                        .fold(DeviceInfo::new(device), |d, g| d.with_group(g))
                        .with_enabled(*enabled)
                })
                .certificates
                .push(certificate);
        }
        Ok(out.into_values().collect())
    }

    async fn start_rotation(
        &self,
        device: &str,
        request: &RotationRequest,
    ) -> fleetkit::Result<()> {
        self.client
            .send_command(device, ROTATE_COMMAND, request.to_payload())
            .await
            .map(|_| ())
            .map_err(api_error)
    }

    async fn outcome(
        &self,
        device: &str,
        request: &RotationRequest,
    ) -> fleetkit::Result<Option<DeviceOutcome>> {
        let twin = self.client.twin(device).await.map_err(api_error)?;
        let empty = serde_json::Map::new();
        let reported = twin["reported"].as_object().unwrap_or(&empty);
        DeviceOutcome::from_reported(reported, request)
    }
}

// ---------------------------------------------------------------------------------------------
// The command

/// What `rotate --campaign` was asked.
pub(crate) struct CampaignOptions {
    pub(crate) id: String,
    pub(crate) state: PathBuf,
    pub(crate) resume: bool,
    pub(crate) expiring_days: Option<u32>,
    pub(crate) groups: Vec<String>,
    pub(crate) issuer_cas: Vec<String>,
    pub(crate) canary: Option<u32>,
    pub(crate) wave_size: Option<u32>,
    pub(crate) max_concurrency: Option<u32>,
    pub(crate) max_failure_ratio: Option<f64>,
    pub(crate) min_sample: Option<u32>,
    pub(crate) timeout_secs: Option<u64>,
}

/// `rotate --campaign`: creates (or resumes) the campaign, runs it with a progress bar, and
/// prints the report. See the module docs for the exit status.
pub(crate) async fn run(client: Client, o: CampaignOptions) -> CliResult<ExitCode> {
    let state = o.state.clone();
    let data = client.data().to_path_buf();
    let campaign = if o.resume {
        resume(client, &o).await?
    } else {
        create(client, &o).await?
    };
    let before = campaign.report();
    let plan = campaign.plan().clone();
    let todo = (before.counts.total - before.counts.succeeded) as u64;
    if before.counts.total == 0 {
        println!(
            "campaign {}: no device matches the selection; nothing to rotate",
            plan.id
        );
        return Ok(ExitCode::SUCCESS);
    }
    if before.runs == 0 {
        println!(
            "campaign {}: {} device(s) selected (state in {})",
            plan.id,
            before.counts.total,
            state.display()
        );
    } else {
        println!(
            "campaign {}: resuming (run {}), {todo} of {} device(s) left (state in {})",
            plan.id,
            before.runs + 1,
            before.counts.total,
            state.display()
        );
    }

    let bar = progress_bar(todo, &plan.id);
    let hook_bar = bar.clone();
    let timeout = plan.per_device_timeout;
    let mut campaign = campaign.on_progress(move |p| on_progress(&hook_bar, p, todo, timeout));
    // Ctrl-C drops the run: safe, its progress is on disk up to the last result.
    let outcome = tokio::select! {
        outcome = campaign.run() => outcome,
        _ = tokio::signal::ctrl_c() => {
            bar.abandon();
            return Err(Failure::new(format!(
                "interrupted; campaign {}'s progress is in {} (devices in flight are asked for \
                 their answer first when it is continued with --resume)",
                plan.id,
                state.display()
            )));
        }
    };
    bar.finish_and_clear();
    let report = outcome.map_err(|e| {
        Failure::new(format!(
            "campaign {} stopped: {} (its progress is in {}; continue with --resume)",
            plan.id,
            failure(e).into_message(),
            state.display()
        ))
    })?;
    drop(campaign);
    print_report(&report, &plan, &state, &data);

    if report.aborted.is_some() {
        return Ok(ExitCode::from(ABORTED_EXIT));
    }
    if !report.is_complete() {
        let c = report.counts;
        return Err(Failure::new(format!(
            "campaign {} is incomplete: {} of {} device(s) failed or timed out; fix them and \
             run it again with --resume",
            plan.id,
            c.failed + c.timed_out,
            c.total
        )));
    }
    Ok(ExitCode::SUCCESS)
}

async fn create(client: Client, o: &CampaignOptions) -> CliResult<Campaign> {
    if o.state.symlink_metadata().is_ok() {
        return Err(Failure::new(format!(
            "{} exists: it holds a campaign already; continue it with --resume, or give another \
             --state",
            o.state.display()
        )));
    }
    let mut selector = Selector::all();
    if let Some(days) = o.expiring_days {
        selector = selector.expiring_within_days(days.into());
    }
    for group in &o.groups {
        selector = selector.in_group(group);
    }
    for ca in &o.issuer_cas {
        selector = selector.issued_by(&issuer_ca(&client, ca).await?);
    }
    let timeout = Duration::from_secs(o.timeout_secs.unwrap_or(300));
    let mut plan = CampaignPlan::new(&o.id, selector, &o.state)
        .with_per_device_timeout(timeout)
        .with_poll_interval((timeout / 10).clamp(POLL_MIN, POLL_MAX));
    if let Some(n) = o.canary {
        plan = plan.with_canary(n as usize);
    }
    if let Some(n) = o.wave_size {
        plan = plan.with_wave_size(n as usize);
    }
    if let Some(n) = o.max_concurrency {
        plan = plan.with_max_concurrency(n as usize);
    }
    if o.max_failure_ratio.is_some() || o.min_sample.is_some() {
        let ratio = o
            .max_failure_ratio
            .unwrap_or(plan.threshold.max_failure_ratio);
        let sample = o
            .min_sample
            .map_or(plan.threshold.min_sample, |n| n as usize);
        plan = plan.with_failure_threshold(ratio, sample);
    }
    let backend: Arc<dyn CampaignBackend> = Arc::new(AdminCampaignBackend::new(client));
    Campaign::create(backend, plan).await.map_err(|e| match e {
        fleetkit::Error::AlreadyExists { .. } => Failure::new(format!(
            "{} exists: it holds a campaign already; continue it with --resume, or give another \
             --state",
            o.state.display()
        )),
        other => failure(other),
    })
}

async fn resume(client: Client, o: &CampaignOptions) -> CliResult<Campaign> {
    if !o.state.is_file() {
        return Err(Failure::new(format!(
            "no campaign state at {}; start the campaign without --resume first",
            o.state.display()
        )));
    }
    let backend: Arc<dyn CampaignBackend> = Arc::new(AdminCampaignBackend::new(client));
    let campaign = Campaign::resume(backend, &o.state).await.map_err(failure)?;
    if campaign.plan().id != o.id {
        return Err(Failure::new(format!(
            "{} holds campaign {:?}, not {:?}",
            o.state.display(),
            campaign.plan().id,
            o.id
        )));
    }
    Ok(campaign)
}

/// The CA `text` names: a file holding one CA certificate (PEM or DER), or the id of a CA the
/// hub has registered (SHA-256 fingerprint, hex, as `fleetkit ca list` prints it).
async fn issuer_ca(client: &Client, text: &str) -> CliResult<Certificate> {
    let path = Path::new(text);
    if path.is_file() {
        let pem = pem_file(path, |der| Ok(Certificate::from_der(der)?.to_pem()))?;
        let mut certs = Certificate::chain_from_pem(&pem)
            .map_err(|e| Failure::new(format!("{}: {e}", path.display())))?;
        if certs.len() != 1 {
            return Err(Failure::new(format!(
                "{} holds {} certificates; --issuer-ca takes one CA certificate (repeat the \
                 option for several)",
                path.display(),
                certs.len()
            )));
        }
        return Ok(certs.remove(0));
    }
    let id = text.trim().to_ascii_lowercase();
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::new(format!(
            "--issuer-ca {text:?} is neither a CA id (64 hex digits, as `fleetkit ca list` \
             prints) nor a certificate file"
        )));
    }
    let cas = client.cas().await?;
    let found = cas["cas"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| str_of(c, "id") == id)
        .ok_or_else(|| Failure::new(format!("the hub has no registered CA {id}")))?;
    Certificate::from_pem(str_of(found, "certificate_pem"))
        .map_err(|e| Failure::new(format!("the hub's CA {id}: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Output

/// A bar over the `todo` devices this run asks, drawn only when standard output is a terminal
/// (otherwise each result is a line of its own, see [`on_progress`]).
fn progress_bar(todo: u64, id: &str) -> ProgressBar {
    if !std::io::stdout().is_terminal() {
        return ProgressBar::with_draw_target(Some(todo), ProgressDrawTarget::hidden());
    }
    let style =
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::with_draw_target(Some(todo), ProgressDrawTarget::stdout())
        .with_style(style)
        .with_prefix(id.to_string());
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// The progress hook: advances the bar, or prints `[n/todo] device: status` when the bar is
/// hidden; failures are printed above a visible bar too.
fn on_progress(bar: &ProgressBar, p: &Progress, todo: u64, timeout: Duration) {
    bar.inc(1);
    let c = p.counts;
    bar.set_message(format!(
        "{} rotated, {} failed, {} timed out ({})",
        c.succeeded,
        c.failed,
        c.timed_out,
        phase_words(p.phase)
    ));
    let line = format!(
        "[{}/{todo}] {}: {}",
        bar.position(),
        p.device,
        status_words(&p.status, timeout)
    );
    if bar.is_hidden() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    } else if p.status.is_failure() {
        bar.println(line);
    }
}

fn phase_words(phase: Phase) -> String {
    match phase {
        Phase::Resume => "resuming".into(),
        Phase::Canary => "canary".into(),
        Phase::Wave(n) => format!("wave {n}"),
        _ => "running".into(),
    }
}

fn status_words(status: &DeviceStatus, timeout: Duration) -> String {
    match status {
        DeviceStatus::Succeeded => "succeeded".into(),
        DeviceStatus::Failed { reason } => format!("failed: {reason}"),
        DeviceStatus::TimedOut { acknowledged } => format!(
            "timed out after {}: {}",
            seconds(timeout),
            if *acknowledged {
                "the device acknowledged the request but reported no result"
            } else {
                "the device never answered (is its rotation agent running?)"
            }
        ),
        DeviceStatus::Skipped => "skipped (the run aborted)".into(),
        DeviceStatus::Pending => "pending".into(),
        DeviceStatus::InProgress => "in progress".into(),
        _ => "unknown".into(),
    }
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The final report: counts, the abort and its reason, and every device that failed or timed
/// out, with why.
fn print_report(report: &CampaignReport, plan: &CampaignPlan, state: &Path, data: &Path) {
    let c = report.counts;
    println!(
        "campaign {} (run {}): {} of {} device(s) rotated",
        report.id, report.runs, c.succeeded, c.total
    );
    let mut rows = vec![
        ("succeeded", c.succeeded),
        ("failed", c.failed),
        ("timed out", c.timed_out),
        ("skipped", c.skipped),
    ];
    if c.pending > 0 {
        rows.push(("pending", c.pending));
    }
    if c.in_progress > 0 {
        rows.push(("in progress", c.in_progress));
    }
    for (label, n) in rows {
        println!("  {label:<11} {n}");
    }
    match &report.aborted {
        Some(abort) => println!(
            "aborted{}: {}",
            if abort.during_canary {
                " in the canary"
            } else {
                ""
            },
            abort.reason
        ),
        None => println!("not aborted"),
    }
    let failed: Vec<_> = report
        .devices
        .iter()
        .filter(|d| d.status.is_failure())
        .collect();
    if !failed.is_empty() {
        println!("failed or timed out:");
        for d in failed {
            println!(
                "  {}  {}",
                d.device,
                status_words(&d.status, plan.per_device_timeout)
            );
        }
    }
    let rotated: Vec<_> = report
        .devices
        .iter()
        .filter(|d| d.status == DeviceStatus::Succeeded)
        .collect();
    if !rotated.is_empty() && rotated.len() <= 50 {
        println!("rotated:");
        for d in rotated {
            println!(
                "  {}  {} → {}",
                d.device,
                d.old_certificate_id.as_deref().map_or("?", short),
                d.new_certificate_id.as_deref().map_or("?", short)
            );
        }
    }
    if !report.is_complete() {
        println!(
            "state in {}; continue with `fleetkit rotate --campaign {} --data {} --state {} \
             --resume`",
            state.display(),
            report.id,
            data.display(),
            state.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetkit::lifecycle::agent::RotationOutcome;

    fn reported(outcome: &RotationOutcome) -> serde_json::Map<String, Value> {
        outcome.to_patch().as_object().unwrap().clone()
    }

    #[test]
    fn outcomes_answer_only_their_own_request() {
        let request = RotationRequest::new("c1", 2);
        assert_eq!(
            DeviceOutcome::from_reported(&serde_json::Map::new(), &request).unwrap(),
            None
        );
        let ok = RotationOutcome::succeeded(&request, "3f00");
        assert_eq!(
            DeviceOutcome::from_reported(&reported(&ok), &request).unwrap(),
            Some(DeviceOutcome::Succeeded {
                certificate_id: Some("3f00".into())
            })
        );
        // An earlier attempt, another campaign: not the answer.
        let stale = RotationOutcome::succeeded(&RotationRequest::new("c1", 1), "3f00");
        assert_eq!(
            DeviceOutcome::from_reported(&reported(&stale), &request).unwrap(),
            None
        );
        let other = RotationOutcome::succeeded(&RotationRequest::new("c2", 2), "3f00");
        assert_eq!(
            DeviceOutcome::from_reported(&reported(&other), &request).unwrap(),
            None
        );
        let failed = RotationOutcome::failed(&request, "refused");
        assert_eq!(
            DeviceOutcome::from_reported(&reported(&failed), &request).unwrap(),
            Some(DeviceOutcome::Failed {
                reason: "refused".into()
            })
        );
        let working = RotationOutcome::in_progress(&request);
        assert_eq!(
            DeviceOutcome::from_reported(&reported(&working), &request).unwrap(),
            Some(DeviceOutcome::InProgress)
        );
        let mut junk = serde_json::Map::new();
        junk.insert("rotation".into(), Value::from("yes"));
        assert!(DeviceOutcome::from_reported(&junk, &request).is_err());
    }

    #[test]
    fn statuses_read_as_words() {
        let t = Duration::from_secs(3);
        assert_eq!(status_words(&DeviceStatus::Succeeded, t), "succeeded");
        assert!(
            status_words(
                &DeviceStatus::TimedOut {
                    acknowledged: false
                },
                t
            )
            .starts_with("timed out after 3s: the device never answered")
        );
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5s");
    }
}
