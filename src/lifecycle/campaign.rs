//! Rotation campaigns, fleet side: rotate the certificates of many devices in a controlled way.
//!
//! A [`Campaign`] selects devices with a [`Selector`] (certificates expiring soon, a group, an
//! issuing CA, or a combination), then asks them to rotate — a small **canary** cohort first,
//! then **waves** — with at most `max_concurrency` devices in flight. Each device rotates
//! itself (its [`RotationAgent`](crate::lifecycle::agent::RotationAgent) runs the crash-safe
//! [`Rotator`](crate::lifecycle::rotation::Rotator)) and reports the outcome; a device that does
//! not answer within the per-device timeout counts as failed. When the failures of a run exceed
//! the [`FailureThreshold`], no further device is started: the campaign **aborts**, the devices
//! in flight finish, and the ones never started are [`Skipped`](DeviceStatus::Skipped).
//!
//! Progress lives in a JSON **state file**, replaced atomically before each batch of devices is
//! started and after every device's result. [`Campaign::resume`] continues from it after a
//! crash, a cancelled [`run`](Campaign::run) (dropping its future is safe) or an abort followed
//! by a fix: devices that succeeded are never asked again; devices that were in flight are
//! asked for their answer before being asked again; failed, timed-out and skipped devices are
//! retried (see [`Campaign::retry_failed`]). Every run starts with its own canary cohort, so a
//! resume after a fix proves the fix on a few devices before the waves go on; and the threshold
//! judges each run's own results, so the failures that aborted the previous run do not abort
//! the next one.
//!
//! The campaign is generic over a [`CampaignBackend`]: the local hub implements it with a
//! `rotate` command and the device's reported twin; a cloud backend would map the same three
//! operations onto its jobs service (a job execution per device, its status as the outcome).
//!
//! ```text
//!  select ─► state file ─► canary cohort ─(under threshold)─► wave 1 ─► wave 2 ─► … ─► report
//!                              │ after every result: failures / finished > threshold?
//!                              └────────────── abort: nothing new starts; the rest Skipped
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::agent::RotationRequest;
use crate::pki::Certificate;
use crate::{Error, Result};

/// The state file format this code reads and writes.
const FORMAT: u32 = 1;

/// How long [`Campaign::create`] and [`Campaign::resume`] wait for the campaign's lock (held by
/// another `Campaign` of it, or by the last write of one just dropped).
const LOCK_WAIT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Backend

/// What a campaign needs from a fleet backend.
///
/// The local hub implements it (feature `local`): `start_rotation` sends the device a
/// [`rotate`](crate::lifecycle::agent::ROTATE_COMMAND) command and `outcome` reads the
/// [`rotation`](crate::lifecycle::agent::REPORT_KEY) section of its reported twin. An AWS
/// backend would create a job execution and read its status.
#[async_trait]
pub trait CampaignBackend: Send + Sync + fmt::Debug {
    /// The devices that may match `selector`, each with its active certificates. A backend may
    /// narrow the list with what it can query cheaply (a group, say) or return its whole
    /// fleet: the campaign keeps only those [`Selector::matches`] accepts, so the selection
    /// rules are the same on every backend.
    async fn candidates(&self, selector: &Selector) -> Result<Vec<DeviceInfo>>;

    /// Asks `device` to rotate its certificate for `request`. An error means the request did
    /// not reach the device (it counts as that device's failure).
    async fn start_rotation(&self, device: &str, request: &RotationRequest) -> Result<()>;

    /// What `device` has answered to `request` so far: `None` if nothing yet. An answer to
    /// another campaign or an earlier attempt is not an answer to `request`.
    async fn outcome(
        &self,
        device: &str,
        request: &RotationRequest,
    ) -> Result<Option<DeviceOutcome>>;
}

/// A device's answer to a rotation request (see [`CampaignBackend::outcome`]).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceOutcome {
    /// The device received the request and is rotating.
    InProgress,
    /// The device uses a new certificate.
    Succeeded {
        /// The new certificate's id, if the device said.
        certificate_id: Option<String>,
    },
    /// The rotation failed.
    Failed {
        /// Why, as the device said.
        reason: String,
    },
}

impl DeviceOutcome {
    /// The answer to `request` in a device's reported twin properties (the `rotation`
    /// section a [`RotationAgent`](super::agent::RotationAgent) writes): `None` if the twin
    /// holds no answer to this campaign and attempt yet; an error for a malformed section.
    /// Every [`CampaignBackend`] that reads twins maps them with this.
    pub fn from_reported(
        reported: &serde_json::Map<String, serde_json::Value>,
        request: &RotationRequest,
    ) -> Result<Option<DeviceOutcome>> {
        use super::agent::{RotationOutcome, RotationStatus};
        let Some(outcome) = RotationOutcome::from_reported(reported) else {
            return Ok(None);
        };
        let outcome = outcome?;
        if !outcome.answers(&request.campaign, request.attempt) {
            return Ok(None);
        }
        Ok(Some(match outcome.status {
            RotationStatus::Succeeded => DeviceOutcome::Succeeded {
                certificate_id: outcome.certificate_id,
            },
            RotationStatus::Failed => DeviceOutcome::Failed {
                reason: outcome.error.unwrap_or_else(|| "no reason given".into()),
            },
            RotationStatus::InProgress => DeviceOutcome::InProgress,
        }))
    }
}

/// A device as a backend describes it to the selection.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// The device id.
    pub device: String,
    /// The groups it is directly in.
    pub groups: Vec<String>,
    /// Whether it may connect (a disabled device cannot rotate: never selected).
    pub enabled: bool,
    /// Its ACTIVE certificates (more than one only during a rotation).
    pub certificates: Vec<Certificate>,
}

impl DeviceInfo {
    /// An enabled device with no groups and no certificates.
    pub fn new(device: impl Into<String>) -> Self {
        DeviceInfo {
            device: device.into(),
            groups: Vec::new(),
            enabled: true,
            certificates: Vec::new(),
        }
    }

    /// Adds a group.
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self
    }

    /// Adds an active certificate.
    pub fn with_certificate(mut self, certificate: Certificate) -> Self {
        self.certificates.push(certificate);
        self
    }

    /// Sets whether the device is enabled.
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// The certificate selection looks at: the active one that expires last (while a rotation
    /// is half done, the new one).
    pub fn current_certificate(&self) -> Option<&Certificate> {
        self.certificates.iter().max_by_key(|c| c.not_after())
    }
}

// ---------------------------------------------------------------------------------------------
// Selection

/// An issuing CA a [`Selector`] matches, by the CA certificate (subject name and key id) or by
/// the issuer's distinguished name alone.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum IssuerMatch {
    /// Issued by this CA certificate: the leaf's issuer name is the CA's subject (DER) and,
    /// when both are present, its authority key id is the CA's subject key id.
    Ca {
        /// The CA's subject, DER, hex.
        subject_der: String,
        /// The CA's subject key id, hex, if it has one.
        key_id: Option<String>,
        /// The CA's SHA-256 fingerprint (for people reading the plan).
        fingerprint: String,
        /// The CA's subject, readable.
        subject: String,
    },
    /// The leaf's issuer distinguished name, as [`Certificate::issuer`] writes it.
    IssuerName {
        /// The distinguished name.
        name: String,
    },
}

impl IssuerMatch {
    /// Matches certificates `ca` issued.
    pub fn ca(ca: &Certificate) -> Self {
        IssuerMatch::Ca {
            subject_der: hex(ca.subject_der()),
            key_id: ca.subject_key_id().map(hex),
            fingerprint: ca.fingerprint_sha256(),
            subject: ca.subject().to_string(),
        }
    }

    /// Whether `leaf` was issued by this issuer.
    pub fn matches(&self, leaf: &Certificate) -> bool {
        match self {
            IssuerMatch::Ca {
                subject_der,
                key_id,
                ..
            } => {
                if hex(leaf.issuer_der()) != *subject_der {
                    return false;
                }
                match (leaf.authority_key_id(), key_id) {
                    (Some(aki), Some(ski)) => hex(aki) == *ski,
                    _ => true,
                }
            }
            IssuerMatch::IssuerName { name } => leaf.issuer() == name,
        }
    }
}

/// Which devices a campaign rotates. Each criterion set must hold (AND); within a list of
/// groups or issuers any one will do (OR). The empty selector takes every enabled device with
/// a valid certificate.
///
/// Criteria look at the device's [current certificate](DeviceInfo::current_certificate). A
/// certificate already expired is never selected: such a device cannot connect to rotate and
/// needs re-provisioning instead.
///
/// ```
/// use std::time::Duration;
/// use fleetkit::identity::{DeviceId, Signer, SoftwareKey};
/// use fleetkit::lifecycle::campaign::{DeviceInfo, Selector};
/// use fleetkit::pki::{CaOptions, CertificateAuthority, DeviceCertOptions};
///
/// let ca = CertificateAuthority::new_root(&CaOptions::new("Acme Devices 2024"))?;
/// let key = SoftwareKey::generate_p256()?;
/// let options = DeviceCertOptions::default().with_validity(Duration::from_secs(10 * 86_400));
/// let cert = ca.issue(&DeviceId::new("sensor-1")?, key.public_key_spki(), &options)?;
/// let device = DeviceInfo::new("sensor-1").with_group("line-2").with_certificate(cert);
///
/// let now = time::OffsetDateTime::now_utc();
/// let soon = Selector::all().expiring_within(Duration::from_secs(30 * 86_400));
/// assert!(soon.matches(&device, now));
/// assert!(soon.clone().in_group("line-2").issued_by(ca.certificate()).matches(&device, now));
/// assert!(!soon.in_group("line-3").matches(&device, now));
/// assert!(!Selector::all().expiring_within(Duration::from_secs(86_400)).matches(&device, now));
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Selector {
    /// Only certificates whose notAfter is within this long from now.
    pub expiring_within: Option<Duration>,
    /// Only devices directly in one of these groups (empty: any).
    pub groups: Vec<String>,
    /// Only certificates issued by one of these (empty: any).
    pub issuers: Vec<IssuerMatch>,
    /// Only these devices (`None`: any).
    pub devices: Option<Vec<String>>,
}

impl Selector {
    /// Every enabled device with a valid certificate.
    pub fn all() -> Self {
        Selector::default()
    }

    /// Only certificates that expire within `window` from now (and have not expired yet).
    pub fn expiring_within(mut self, window: Duration) -> Self {
        self.expiring_within = Some(window);
        self
    }

    /// [`expiring_within`](Self::expiring_within) `days` days.
    pub fn expiring_within_days(self, days: u64) -> Self {
        self.expiring_within(Duration::from_secs(days * 86_400))
    }

    /// Also accepts devices directly in `group` (the group criterion is the union of all
    /// groups given).
    pub fn in_group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self
    }

    /// Also accepts certificates issued by `ca` (the issuer criterion is the union of all
    /// issuers given).
    pub fn issued_by(mut self, ca: &Certificate) -> Self {
        self.issuers.push(IssuerMatch::ca(ca));
        self
    }

    /// Also accepts certificates whose issuer distinguished name is `name`.
    pub fn issuer_name(mut self, name: impl Into<String>) -> Self {
        self.issuers
            .push(IssuerMatch::IssuerName { name: name.into() });
        self
    }

    /// Only these devices.
    pub fn devices<I, S>(mut self, devices: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.devices = Some(devices.into_iter().map(Into::into).collect());
        self
    }

    /// Whether `device` is selected at time `now`.
    pub fn matches(&self, device: &DeviceInfo, now: OffsetDateTime) -> bool {
        if !device.enabled {
            return false;
        }
        if let Some(ids) = &self.devices
            && !ids.contains(&device.device)
        {
            return false;
        }
        if !self.groups.is_empty() && !device.groups.iter().any(|g| self.groups.contains(g)) {
            return false;
        }
        let Some(cert) = device.current_certificate() else {
            return false;
        };
        let not_after = cert.not_after();
        if not_after <= now {
            return false;
        }
        if let Some(window) = self.expiring_within {
            let window = time::Duration::try_from(window).unwrap_or(time::Duration::MAX);
            if now
                .checked_add(window)
                .is_some_and(|limit| not_after > limit)
            {
                return false;
            }
        }
        self.issuers.is_empty() || self.issuers.iter().any(|i| i.matches(cert))
    }
}

// ---------------------------------------------------------------------------------------------
// Plan

/// When a run of a campaign aborts: once at least `min_sample` devices have finished in the
/// run, as soon as `failures / finished` is **over** `max_failure_ratio`. Timeouts count as
/// failures.
///
/// At the end of the canary cohort the ratio is checked whatever the sample size: the canary
/// *is* the sample, and it must pass before any wave starts.
///
/// ```
/// use fleetkit::lifecycle::campaign::FailureThreshold;
/// let t = FailureThreshold::new(0.2, 10);
/// assert!(!t.exceeded(5, 9));   // too few results to judge
/// assert!(!t.exceeded(2, 10));  // 20 % is not over 20 %
/// assert!(t.exceeded(3, 10));
/// assert!(t.exceeded_at_gate(1, 4)); // the canary: 25 %
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FailureThreshold {
    /// The failure ratio (0.0–1.0) a run may reach without aborting.
    pub max_failure_ratio: f64,
    /// How many results a run needs before the ratio is judged (outside the canary gate).
    pub min_sample: usize,
}

impl FailureThreshold {
    /// Aborts when `failures / finished > max_failure_ratio` after `min_sample` results.
    pub fn new(max_failure_ratio: f64, min_sample: usize) -> Self {
        FailureThreshold {
            max_failure_ratio,
            min_sample,
        }
    }

    /// Whether a run with `failures` among `finished` results must abort.
    pub fn exceeded(&self, failures: usize, finished: usize) -> bool {
        finished >= self.min_sample.max(1) && self.over(failures, finished)
    }

    /// Whether a cohort that must pass as a whole (the canary) failed: the ratio over, with
    /// no minimum sample.
    pub fn exceeded_at_gate(&self, failures: usize, finished: usize) -> bool {
        finished > 0 && self.over(failures, finished)
    }

    fn over(&self, failures: usize, finished: usize) -> bool {
        // Both sides are correctly rounded, so a ratio exactly at the threshold ("2 of 10" and
        // 0.2) compares equal and does not abort.
        failures as f64 / finished as f64 > self.max_failure_ratio
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.max_failure_ratio) {
            return Err(Error::invalid(
                "failure threshold",
                format!("{} is not a ratio in 0.0..=1.0", self.max_failure_ratio),
            ));
        }
        Ok(())
    }
}

impl Default for FailureThreshold {
    /// 10 % after 10 results.
    fn default() -> Self {
        FailureThreshold::new(0.1, 10)
    }
}

/// How a campaign runs: what it selects, in which cohorts, how fast, when it gives up, and
/// where it keeps its state.
///
/// ```
/// use std::time::Duration;
/// use fleetkit::lifecycle::campaign::{CampaignPlan, Selector};
///
/// let plan = CampaignPlan::new("renew-2026-q1", Selector::all().expiring_within_days(30), "/var/lib/fleet/renew.json")
///     .with_canary(5)
///     .with_waves(vec![50, 500])       // then 500 at a time
///     .with_max_concurrency(32)
///     .with_failure_threshold(0.05, 20)
///     .with_per_device_timeout(Duration::from_secs(120));
/// assert_eq!(plan.waves, [50, 500]);
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CampaignPlan {
    /// The campaign id (1–64 of `A-Z a-z 0-9 - _`, as AWS job ids): devices report against it.
    pub id: String,
    /// Which devices.
    pub selector: Selector,
    /// How many devices form the canary cohort of each run (0: none). It must finish under the
    /// threshold before any wave starts.
    pub canary: usize,
    /// Wave sizes after the canary; the last size repeats. Empty: one wave of everything left.
    /// A wave finishes before the next starts.
    pub waves: Vec<usize>,
    /// At most this many devices in flight at once.
    pub max_concurrency: usize,
    /// When a run aborts.
    pub threshold: FailureThreshold,
    /// How long a device has to answer once asked; after that it has timed out (a failure).
    pub per_device_timeout: Duration,
    /// How often a device's outcome is polled.
    pub poll_interval: Duration,
    /// A pause after the canary and after each wave, to let problems show before going on.
    pub wave_pause: Duration,
    /// Where the campaign's state is kept (JSON, replaced atomically, mode 0600).
    pub state_file: PathBuf,
}

impl CampaignPlan {
    /// A plan with defaults: no canary, one wave, 16 devices in flight, abort over 10 %
    /// failures after 10 results, 5 minutes per device, outcomes polled every 2 s.
    pub fn new(id: impl Into<String>, selector: Selector, state_file: impl Into<PathBuf>) -> Self {
        CampaignPlan {
            id: id.into(),
            selector,
            canary: 0,
            waves: Vec::new(),
            max_concurrency: 16,
            threshold: FailureThreshold::default(),
            per_device_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
            wave_pause: Duration::ZERO,
            state_file: state_file.into(),
        }
    }

    /// The canary cohort's size.
    pub fn with_canary(mut self, devices: usize) -> Self {
        self.canary = devices;
        self
    }

    /// Wave sizes after the canary (the last one repeats).
    pub fn with_waves(mut self, sizes: Vec<usize>) -> Self {
        self.waves = sizes;
        self
    }

    /// Waves of `size` devices after the canary.
    pub fn with_wave_size(self, size: usize) -> Self {
        self.with_waves(vec![size])
    }

    /// At most `devices` in flight at once.
    pub fn with_max_concurrency(mut self, devices: usize) -> Self {
        self.max_concurrency = devices;
        self
    }

    /// Aborts a run when more than `max_failure_ratio` of its results are failures, once it
    /// has `min_sample` results.
    pub fn with_failure_threshold(mut self, max_failure_ratio: f64, min_sample: usize) -> Self {
        self.threshold = FailureThreshold::new(max_failure_ratio, min_sample);
        self
    }

    /// How long a device has to answer.
    pub fn with_per_device_timeout(mut self, timeout: Duration) -> Self {
        self.per_device_timeout = timeout;
        self
    }

    /// How often outcomes are polled.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The pause after the canary and after each wave.
    pub fn with_wave_pause(mut self, pause: Duration) -> Self {
        self.wave_pause = pause;
        self
    }

    /// Checks the plan; [`Error::InvalidInput`] names what is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.id.is_empty()
            || self.id.len() > 64
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::invalid(
                "campaign id",
                format!("{:?}: use 1-64 of A-Z a-z 0-9 - _", self.id),
            ));
        }
        if self.max_concurrency == 0 {
            return Err(Error::invalid("max_concurrency", "must be at least 1"));
        }
        if self.waves.contains(&0) {
            return Err(Error::invalid(
                "waves",
                "a wave must hold at least 1 device",
            ));
        }
        if self.per_device_timeout.is_zero() {
            return Err(Error::invalid("per_device_timeout", "must be positive"));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::invalid("poll_interval", "must be positive"));
        }
        self.threshold.validate()
    }

    /// The cohorts a run of `n` devices is cut into: the canary (if any), then the waves.
    fn cohorts(&self, n: usize) -> Vec<(Phase, std::ops::Range<usize>)> {
        let mut out = Vec::new();
        let mut at = self.canary.min(n);
        if at > 0 {
            out.push((Phase::Canary, 0..at));
        }
        let mut wave = 0;
        while at < n {
            let size = match self.waves.get(wave).or(self.waves.last()) {
                Some(&s) => s,
                None => n - at,
            };
            let end = at.saturating_add(size).min(n);
            wave += 1;
            out.push((Phase::Wave(wave), at..end));
            at = end;
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Report

/// Where one device of a campaign stands.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Not asked yet.
    Pending,
    /// Asked; no result yet (seen in the state file of a run that was interrupted).
    InProgress,
    /// The device uses a new certificate.
    Succeeded,
    /// The device answered that the rotation failed, or the request could not reach it.
    Failed {
        /// Why.
        reason: String,
    },
    /// No result within the per-device timeout.
    TimedOut {
        /// Whether the device had said it was working on it (else it never answered).
        acknowledged: bool,
    },
    /// Not started because the run aborted.
    Skipped,
}

impl DeviceStatus {
    /// Whether this is a failure for the threshold (failed or timed out).
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            DeviceStatus::Failed { .. } | DeviceStatus::TimedOut { .. }
        )
    }
}

/// One device's line in a [`CampaignReport`].
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceReport {
    /// The device.
    pub device: String,
    /// Where it stands.
    #[serde(flatten)]
    pub status: DeviceStatus,
    /// How many times it was asked (across runs).
    pub attempts: u32,
    /// The certificate it had when selected.
    pub old_certificate_id: Option<String>,
    /// When that certificate expires (Unix seconds).
    pub old_not_after: Option<i64>,
    /// The certificate it uses after succeeding, if it said.
    pub new_certificate_id: Option<String>,
}

impl DeviceReport {
    fn new(info: &DeviceInfo) -> Self {
        let current = info.current_certificate();
        DeviceReport {
            device: info.device.clone(),
            status: DeviceStatus::Pending,
            attempts: 0,
            old_certificate_id: current.map(Certificate::fingerprint_sha256),
            old_not_after: current.map(|c| c.not_after().unix_timestamp()),
            new_certificate_id: None,
        }
    }
}

/// How many devices are in each status.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// All devices of the campaign.
    pub total: usize,
    /// [`DeviceStatus::Pending`].
    pub pending: usize,
    /// [`DeviceStatus::InProgress`].
    pub in_progress: usize,
    /// [`DeviceStatus::Succeeded`].
    pub succeeded: usize,
    /// [`DeviceStatus::Failed`].
    pub failed: usize,
    /// [`DeviceStatus::TimedOut`].
    pub timed_out: usize,
    /// [`DeviceStatus::Skipped`].
    pub skipped: usize,
}

impl Counts {
    fn of<'a>(devices: impl IntoIterator<Item = &'a DeviceReport>) -> Self {
        let mut c = Counts::default();
        for d in devices {
            c.total += 1;
            match d.status {
                DeviceStatus::Pending => c.pending += 1,
                DeviceStatus::InProgress => c.in_progress += 1,
                DeviceStatus::Succeeded => c.succeeded += 1,
                DeviceStatus::Failed { .. } => c.failed += 1,
                DeviceStatus::TimedOut { .. } => c.timed_out += 1,
                DeviceStatus::Skipped => c.skipped += 1,
            }
        }
        c
    }
}

/// Why a run stopped starting devices.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Abort {
    /// In words.
    pub reason: String,
    /// Whether it was the canary cohort that failed.
    pub during_canary: bool,
    /// Failures in the run when it aborted.
    pub failures: usize,
    /// Results in the run when it aborted.
    pub finished: usize,
}

/// Where a campaign stands: every device's status, counts, and whether the last run aborted.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CampaignReport {
    /// The campaign id.
    pub id: String,
    /// How many runs there were (the first plus resumes).
    pub runs: u32,
    /// Every selected device, in the order they are asked.
    pub devices: Vec<DeviceReport>,
    /// How many in each status.
    pub counts: Counts,
    /// Why the last run aborted, if it did.
    pub aborted: Option<Abort>,
}

impl CampaignReport {
    /// One device's line.
    pub fn device(&self, device: &str) -> Option<&DeviceReport> {
        self.devices.iter().find(|d| d.device == device)
    }

    /// Whether every selected device succeeded.
    pub fn is_complete(&self) -> bool {
        self.counts.succeeded == self.counts.total
    }
}

/// Which cohort a device belongs to in a run.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Resolving devices a previous run left in flight.
    Resume,
    /// The canary cohort.
    Canary,
    /// Wave `n` (from 1).
    Wave(usize),
}

/// What the progress hook hears after every device result.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct Progress {
    /// The campaign.
    pub campaign: String,
    /// The device that just finished.
    pub device: String,
    /// Its result.
    pub status: DeviceStatus,
    /// The cohort it was in.
    pub phase: Phase,
    /// Counts over the whole campaign as saved with this result (results that came in at the
    /// same moment are saved together).
    pub counts: Counts,
}

/// A progress hook (see [`Campaign::on_progress`]).
pub type ProgressHook = Arc<dyn Fn(&Progress) + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// Campaign

/// The state file's content.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct State {
    format: u32,
    plan: CampaignPlan,
    created_at: i64,
    updated_at: i64,
    runs: u32,
    aborted: Option<Abort>,
    devices: Vec<DeviceReport>,
}

/// A rotation campaign over a fleet. See the [module docs](self).
///
/// ```no_run
/// # async fn f(hub: std::sync::Arc<fleetkit::local::LocalHub>) -> fleetkit::Result<()> {
/// use fleetkit::lifecycle::campaign::{Campaign, CampaignPlan, Selector};
///
/// let plan = CampaignPlan::new("renew-2026", Selector::all().expiring_within_days(30), "renew.json")
///     .with_canary(5)
///     .with_wave_size(100);
/// let mut campaign = Campaign::create(hub.clone(), plan)
///     .await?
///     .on_progress(|p| eprintln!("{}: {:?} ({}/{})", p.device, p.status, p.counts.succeeded, p.counts.total));
/// let report = campaign.run().await?;
/// if let Some(abort) = &report.aborted {
///     eprintln!("aborted: {}", abort.reason);
///     // … fix the fleet; then, in this process or a later one, from the state file:
///     let report = Campaign::resume(hub, "renew.json").await?.run().await?;
///     println!("{} of {} rotated", report.counts.succeeded, report.counts.total);
/// }
/// # Ok(()) }
/// ```
pub struct Campaign {
    backend: Arc<dyn CampaignBackend>,
    state: State,
    path: PathBuf,
    /// `<state file>.lock`, locked (flock) while this campaign or a write of its state is
    /// alive: one runner per campaign, across processes, and a write left running by a
    /// dropped `run` future never races the next runner's.
    lock: Arc<std::fs::File>,
    progress: Option<ProgressHook>,
    retry_failed: bool,
}

impl fmt::Debug for Campaign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Campaign")
            .field("id", &self.state.plan.id)
            .field("state_file", &self.path)
            .field("backend", &self.backend)
            .field("counts", &Counts::of(&self.state.devices))
            .finish_non_exhaustive()
    }
}

/// The result of one device's attempt, from its task.
struct Attempt {
    index: usize,
    status: DeviceStatus,
    new_certificate_id: Option<String>,
}

impl Campaign {
    /// Selects the devices (now), ordered by certificate expiry (soonest first), and writes
    /// the state file. [`Error::AlreadyExists`] if the state file exists: resume it instead.
    pub async fn create(backend: Arc<dyn CampaignBackend>, plan: CampaignPlan) -> Result<Self> {
        plan.validate()?;
        let path = plan.state_file.clone();
        let exists = || Error::AlreadyExists {
            what: "campaign state file",
            id: path.display().to_string(),
        };
        if path.exists() {
            return Err(exists());
        }
        let lock = lock(&path).await?;
        if path.exists() {
            return Err(exists());
        }
        let now = OffsetDateTime::now_utc();
        let mut selected: Vec<DeviceInfo> = backend
            .candidates(&plan.selector)
            .await?
            .into_iter()
            .filter(|d| plan.selector.matches(d, now))
            .collect();
        selected.sort_by(|a, b| {
            let expiry = |d: &DeviceInfo| d.current_certificate().map(|c| c.not_after());
            expiry(a)
                .cmp(&expiry(b))
                .then_with(|| a.device.cmp(&b.device))
        });
        selected.dedup_by(|a, b| a.device == b.device);
        let devices = selected.iter().map(DeviceReport::new).collect();
        let state = State {
            format: FORMAT,
            plan,
            created_at: now.unix_timestamp(),
            updated_at: now.unix_timestamp(),
            runs: 0,
            aborted: None,
            devices,
        };
        let mut campaign = Campaign {
            backend,
            state,
            path,
            lock,
            progress: None,
            retry_failed: true,
        };
        campaign.save().await?;
        Ok(campaign)
    }

    /// Continues the campaign whose state is in `state_file` (after a crash, a cancelled run
    /// or an abort). Its plan comes from the file; the devices are the ones selected when it
    /// was created. [`Error::Precondition`] if another `Campaign` (in this process or another)
    /// holds it.
    pub async fn resume(
        backend: Arc<dyn CampaignBackend>,
        state_file: impl AsRef<Path>,
    ) -> Result<Self> {
        let path = state_file.as_ref().to_path_buf();
        let lock = lock(&path).await?;
        let mut state = Self::read(&path)?;
        state.plan.state_file = path.clone();
        Ok(Campaign {
            backend,
            state,
            path,
            lock,
            progress: None,
            retry_failed: true,
        })
    }

    /// The report in a state file, without a backend (for a status command).
    pub fn load_report(state_file: impl AsRef<Path>) -> Result<CampaignReport> {
        Ok(Self::report_of(&Self::read(state_file.as_ref())?))
    }

    /// Calls `hook` after every device result (from the task running the campaign: keep it
    /// quick).
    pub fn on_progress(mut self, hook: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(hook));
        self
    }

    /// Whether a run asks failed and timed-out devices again (default `true`: a resume after
    /// a fix retries them). With `false` only pending, skipped and interrupted devices are
    /// asked.
    pub fn retry_failed(mut self, retry: bool) -> Self {
        self.retry_failed = retry;
        self
    }

    /// The plan.
    pub fn plan(&self) -> &CampaignPlan {
        &self.state.plan
    }

    /// Where the campaign stands now.
    pub fn report(&self) -> CampaignReport {
        Self::report_of(&self.state)
    }

    /// Runs the campaign until every device it asks has a result or the run aborts; returns
    /// the report. Errors are the state file's (the run stops at once: its progress is on disk
    /// up to the last result, so [`resume`](Self::resume) continues it). Dropping the future
    /// is safe the same way.
    pub async fn run(&mut self) -> Result<CampaignReport> {
        self.state.runs += 1;
        self.state.aborted = None;
        self.resolve_interrupted().await?;
        let queue: Vec<usize> = (0..self.state.devices.len())
            .filter(|&i| match self.state.devices[i].status {
                DeviceStatus::Pending | DeviceStatus::InProgress | DeviceStatus::Skipped => true,
                DeviceStatus::Failed { .. } | DeviceStatus::TimedOut { .. } => self.retry_failed,
                DeviceStatus::Succeeded => false,
            })
            .collect();
        self.save().await?;
        let cohorts = self.state.plan.cohorts(queue.len());
        let mut tally = Tally::default();
        let mut started: HashSet<usize> = HashSet::new();
        let last = cohorts.len();
        for (n, (phase, range)) in cohorts.into_iter().enumerate() {
            let cohort = &queue[range];
            self.run_cohort(phase, cohort, &mut tally, &mut started)
                .await?;
            let plan = &self.state.plan;
            if self.state.aborted.is_none()
                && phase == Phase::Canary
                && plan
                    .threshold
                    .exceeded_at_gate(tally.failures, tally.finished)
            {
                self.state.aborted = Some(Abort {
                    reason: format!(
                        "the canary failed: {} of {} devices failed (over {})",
                        tally.failures, tally.finished, plan.threshold.max_failure_ratio
                    ),
                    during_canary: true,
                    failures: tally.failures,
                    finished: tally.finished,
                });
            }
            if self.state.aborted.is_some() {
                break;
            }
            if n + 1 < last && !self.state.plan.wave_pause.is_zero() {
                tokio::time::sleep(self.state.plan.wave_pause).await;
            }
        }
        if self.state.aborted.is_some() {
            for &i in queue.iter().filter(|i| !started.contains(i)) {
                let d = &mut self.state.devices[i];
                // A device that failed in an earlier run keeps that result; only those never
                // tried, or skipped before, are skipped again.
                if !d.status.is_failure() {
                    d.status = DeviceStatus::Skipped;
                }
            }
        }
        self.save().await?;
        Ok(self.report())
    }

    /// Devices a previous run left in flight: if one answered (success) since, that is its
    /// result; otherwise it is asked again (with the next attempt number).
    async fn resolve_interrupted(&mut self) -> Result<()> {
        let mut heard = Vec::new();
        for i in 0..self.state.devices.len() {
            let d = &self.state.devices[i];
            if d.status != DeviceStatus::InProgress || d.attempts == 0 {
                continue;
            }
            let request = RotationRequest::new(self.state.plan.id.clone(), d.attempts);
            if let Ok(Some(DeviceOutcome::Succeeded { certificate_id })) =
                self.backend.outcome(&d.device, &request).await
            {
                self.apply(Attempt {
                    index: i,
                    status: DeviceStatus::Succeeded,
                    new_certificate_id: certificate_id,
                });
                heard.push(i);
            }
        }
        if !heard.is_empty() {
            self.save().await?;
            self.notify(Phase::Resume, &heard);
        }
        Ok(())
    }

    /// Runs one cohort: at most `max_concurrency` in flight; after each result, the threshold.
    /// On abort nothing new starts; the devices in flight finish.
    async fn run_cohort(
        &mut self,
        phase: Phase,
        cohort: &[usize],
        tally: &mut Tally,
        started: &mut HashSet<usize>,
    ) -> Result<()> {
        let mut next = cohort.iter().copied();
        let mut in_flight: JoinSet<Attempt> = JoinSet::new();
        // Results recorded in memory and not yet saved.
        let mut heard: Vec<usize> = Vec::new();
        loop {
            // Start what the concurrency allows.
            let mut batch = Vec::new();
            while self.state.aborted.is_none() && in_flight.len() + batch.len() < self.max() {
                let Some(i) = next.next() else { break };
                let d = &mut self.state.devices[i];
                d.attempts += 1;
                d.status = DeviceStatus::InProgress;
                d.new_certificate_id = None;
                started.insert(i);
                batch.push(i);
            }
            // One write records the results just in and the devices about to be asked: no
            // result reaches the progress hook before it is on disk, and no request leaves
            // before the file says it is in flight (so a crash cannot lose track of one).
            if !batch.is_empty() || !heard.is_empty() {
                self.save().await?;
            }
            self.notify(phase, &heard);
            heard.clear();
            for i in batch {
                let d = &self.state.devices[i];
                in_flight.spawn(attempt(
                    self.backend.clone(),
                    i,
                    d.device.clone(),
                    RotationRequest::new(self.state.plan.id.clone(), d.attempts),
                    self.state.plan.per_device_timeout,
                    self.state.plan.poll_interval,
                ));
            }
            let Some(first) = in_flight.join_next().await else {
                return Ok(());
            };
            // Results that are in at the same moment share one write.
            let mut joined = vec![first];
            while let Some(more) = in_flight.try_join_next() {
                joined.push(more);
            }
            for result in joined {
                let result = result.map_err(|e| {
                    Error::Unavailable(format!("a campaign task ended abnormally: {e}"))
                })?;
                let failure = result.status.is_failure();
                heard.push(self.apply(result));
                tally.finished += 1;
                tally.failures += usize::from(failure);
                let threshold = self.state.plan.threshold;
                if self.state.aborted.is_none()
                    && threshold.exceeded(tally.failures, tally.finished)
                {
                    self.state.aborted = Some(Abort {
                        reason: format!(
                            "{} of {} devices failed in this run (over {} after at least {})",
                            tally.failures,
                            tally.finished,
                            threshold.max_failure_ratio,
                            threshold.min_sample
                        ),
                        during_canary: phase == Phase::Canary,
                        failures: tally.failures,
                        finished: tally.finished,
                    });
                }
            }
        }
    }

    fn max(&self) -> usize {
        self.state.plan.max_concurrency
    }

    /// Records a device's result (in memory); returns its index.
    fn apply(&mut self, result: Attempt) -> usize {
        let d = &mut self.state.devices[result.index];
        d.status = result.status;
        if d.status == DeviceStatus::Succeeded {
            d.new_certificate_id = result.new_certificate_id;
        }
        result.index
    }

    /// Tells the progress hook about the results of `devices` (already saved).
    fn notify(&self, phase: Phase, devices: &[usize]) {
        let Some(hook) = &self.progress else { return };
        let counts = Counts::of(&self.state.devices);
        for &i in devices {
            let d = &self.state.devices[i];
            hook(&Progress {
                campaign: self.state.plan.id.clone(),
                device: d.device.clone(),
                status: d.status.clone(),
                phase,
                counts,
            });
        }
    }

    /// Writes the state file (atomically, 0600), off the runtime's worker threads: each write
    /// is two fsyncs.
    async fn save(&mut self) -> Result<()> {
        self.state.updated_at = OffsetDateTime::now_utc().unix_timestamp();
        let json = serde_json::to_vec_pretty(&self.state)
            .map_err(|e| Error::invalid("campaign state", e.to_string()))?;
        let (path, lock) = (self.path.clone(), self.lock.clone());
        tokio::task::spawn_blocking(move || {
            let written = crate::fsutil::write_atomic(&path, &json);
            drop(lock);
            written
        })
        .await
        .map_err(|e| Error::Unavailable(format!("the state file writer ended abnormally: {e}")))?
    }

    fn read(path: &Path) -> Result<State> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let probe: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            Error::invalid("campaign state file", format!("{}: {e}", path.display()))
        })?;
        match probe.get("format").and_then(serde_json::Value::as_u64) {
            Some(f) if f == u64::from(FORMAT) => {}
            Some(f) => {
                return Err(Error::NotSupported(format!(
                    "campaign state format {f} (this version reads {FORMAT})"
                )));
            }
            None => {
                return Err(Error::invalid(
                    "campaign state file",
                    format!("{}: no format version", path.display()),
                ));
            }
        }
        let state: State = serde_json::from_value(probe).map_err(|e| {
            Error::invalid("campaign state file", format!("{}: {e}", path.display()))
        })?;
        state.plan.validate()?;
        Ok(state)
    }

    fn report_of(state: &State) -> CampaignReport {
        CampaignReport {
            id: state.plan.id.clone(),
            runs: state.runs,
            devices: state.devices.clone(),
            counts: Counts::of(&state.devices),
            aborted: state.aborted.clone(),
        }
    }
}

/// Results within one run (the threshold judges a run, not the campaign's history: a resume
/// after a fix is not aborted by the failures that made the previous run abort).
#[derive(Default)]
struct Tally {
    finished: usize,
    failures: usize,
}

/// One device's attempt: ask, then poll for the answer until the timeout.
async fn attempt(
    backend: Arc<dyn CampaignBackend>,
    index: usize,
    device: String,
    request: RotationRequest,
    timeout: Duration,
    poll: Duration,
) -> Attempt {
    let deadline = Instant::now() + timeout;
    let mut acknowledged = false;
    let work = async {
        if let Err(e) = backend.start_rotation(&device, &request).await {
            return Some((
                DeviceStatus::Failed {
                    reason: format!("the request did not reach the device: {e}"),
                },
                None,
            ));
        }
        loop {
            tokio::time::sleep(poll).await;
            match backend.outcome(&device, &request).await {
                Ok(Some(DeviceOutcome::Succeeded { certificate_id })) => {
                    return Some((DeviceStatus::Succeeded, certificate_id));
                }
                Ok(Some(DeviceOutcome::Failed { reason })) => {
                    return Some((DeviceStatus::Failed { reason }, None));
                }
                Ok(Some(DeviceOutcome::InProgress)) => acknowledged = true,
                Ok(None) => {}
                Err(e) => tracing::debug!(%device, error = %e, "outcome not readable yet"),
            }
        }
    };
    let (status, new_certificate_id) = match tokio::time::timeout_at(deadline, work).await {
        Ok(Some(done)) => done,
        Ok(None) | Err(_) => (DeviceStatus::TimedOut { acknowledged }, None),
    };
    Attempt {
        index,
        status,
        new_certificate_id,
    }
}

/// Takes the campaign's lock (`<state file>.lock`), waiting up to [`LOCK_WAIT`].
async fn lock(state_file: &Path) -> Result<Arc<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut name = state_file
        .file_name()
        .ok_or_else(|| {
            Error::invalid(
                "state file",
                format!("{} names no file", state_file.display()),
            )
        })?
        .to_os_string();
    name.push(".lock");
    let path = state_file.with_file_name(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Arc::new(file)),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Precondition(format!(
                    "campaign {} is being run by someone else (lock {})",
                    state_file.display(),
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The local hub

#[cfg(feature = "local")]
#[async_trait]
impl CampaignBackend for crate::local::LocalHub {
    async fn candidates(&self, selector: &Selector) -> Result<Vec<DeviceInfo>> {
        Ok(self.with_registry(|r| {
            let mut devices: std::collections::BTreeMap<&str, DeviceInfo> = Default::default();
            for c in r.all_certificates() {
                if c.state != crate::local::CertificateState::Active {
                    continue;
                }
                if let Some(ids) = &selector.devices
                    && !ids.contains(&c.device)
                {
                    continue;
                }
                let Some(record) = r.device(&c.device) else {
                    continue;
                };
                devices
                    .entry(c.device.as_str())
                    .or_insert_with(|| DeviceInfo {
                        device: record.id.clone(),
                        groups: record.groups.clone(),
                        enabled: record.enabled,
                        certificates: Vec::new(),
                    })
                    .certificates
                    .push(c.certificate.clone());
            }
            devices.into_values().collect()
        }))
    }

    async fn start_rotation(&self, device: &str, request: &RotationRequest) -> Result<()> {
        self.send_command(device, super::agent::ROTATE_COMMAND, request.to_payload())
            .await
            .map(|_| ())
    }

    async fn outcome(
        &self,
        device: &str,
        request: &RotationRequest,
    ) -> Result<Option<DeviceOutcome>> {
        DeviceOutcome::from_reported(self.twin(device)?.reported(), request)
    }
}

#[cfg(test)]
mod tests;
