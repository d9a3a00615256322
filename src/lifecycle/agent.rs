//! The device side of a rotation campaign: a [`RotationAgent`] that acts on `rotate` commands.
//!
//! The fleet ([`Campaign`](crate::lifecycle::campaign::Campaign)) sends the device a command
//! named [`ROTATE_COMMAND`] whose payload is a [`RotationRequest`] (`{"campaign": "<id>",
//! "attempt": <n>}`). The agent runs the crash-safe [`Rotator`] and reports the outcome in the
//! device's twin, reported section, under [`REPORT_KEY`]:
//!
//! ```json
//! {"rotation": {"campaign": "renew-2026", "attempt": 1, "status": "succeeded",
//!               "certificateId": "3f…", "error": null}}
//! ```
//!
//! `status` is `in_progress` while the rotation runs, then `succeeded` or `failed` (with
//! `error`). The fleet side reads it back from the twin, matching campaign *and* attempt, so a
//! report left over from an earlier attempt is never taken for the answer to a new one.
//!
//! Rotations never overlap: a second `rotate` waits for the first. A `rotate` for a campaign
//! the agent already completed successfully is answered again (same certificate id, the new
//! attempt number) without rotating a second time — as long as that certificate is still the
//! one in use — so a redelivered command or a campaign resumed after a lost report or a crash
//! does not rotate twice. That memory lives in the agent (the last few campaigns): after a
//! device restart a repeated command rotates again, which is harmless.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::rotation::{RotationStep, Rotator, StepHook};
use crate::device::{Command, DeviceClient};
use crate::identity::CredentialStore;
use crate::{Error, Result};

/// The command name that asks a device to rotate its certificate.
pub const ROTATE_COMMAND: &str = "rotate";

/// The key of the reported twin section the agent writes its outcome under.
pub const REPORT_KEY: &str = "rotation";

/// How many completed campaigns the agent remembers (to answer repeats without rotating).
const REMEMBERED: usize = 32;

/// How often the agent tries to report an outcome before giving up (the fleet then sees a
/// timeout, and a retry gets the remembered answer).
const REPORT_TRIES: u32 = 5;

/// What a `rotate` command carries.
///
/// ```
/// use fleetkit::lifecycle::agent::RotationRequest;
/// let request = RotationRequest::new("renew-2026", 1);
/// let payload = request.to_payload();
/// assert_eq!(RotationRequest::from_payload(&payload)?, request);
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RotationRequest {
    /// The campaign asking.
    pub campaign: String,
    /// Which attempt of the campaign for this device (1 for the first; a resumed campaign
    /// retrying a device sends the next number). Absent in the payload means 0.
    #[serde(default)]
    pub attempt: u32,
}

impl RotationRequest {
    /// A request of `campaign`, attempt `attempt`.
    pub fn new(campaign: impl Into<String>, attempt: u32) -> Self {
        RotationRequest {
            campaign: campaign.into(),
            attempt,
        }
    }

    /// The command payload (JSON).
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a rotation request serializes")
    }

    /// Parses a command payload.
    pub fn from_payload(payload: &[u8]) -> Result<Self> {
        let request: RotationRequest = serde_json::from_slice(payload).map_err(|e| {
            Error::invalid(
                "rotate command",
                format!("expected {{\"campaign\": \"<id>\"}}: {e}"),
            )
        })?;
        if request.campaign.is_empty() {
            return Err(Error::invalid("rotate command", "empty campaign id"));
        }
        Ok(request)
    }

    /// `None` if `command` is not a rotation command; otherwise its parsed request.
    pub fn from_command(command: &Command) -> Option<Result<Self>> {
        (command.name == ROTATE_COMMAND).then(|| Self::from_payload(&command.payload))
    }
}

/// Where a device's rotation for a campaign stands, as reported in its twin.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationStatus {
    /// The agent received the request and is rotating.
    InProgress,
    /// The device now uses a new certificate.
    Succeeded,
    /// The rotation failed; the device still uses its old certificate (the rotation rolled
    /// back) unless `error` says otherwise.
    Failed,
}

/// The device's answer to a [`RotationRequest`]: the value of [`REPORT_KEY`] in its reported
/// twin.
///
/// ```
/// use fleetkit::lifecycle::agent::{RotationOutcome, RotationRequest, RotationStatus};
/// let request = RotationRequest::new("renew-2026", 2);
/// let outcome = RotationOutcome::succeeded(&request, "3f00");
/// let patch = outcome.to_patch();
/// assert_eq!(patch["rotation"]["status"], "succeeded");
/// assert_eq!(patch["rotation"]["certificateId"], "3f00");
/// let reported = patch.as_object().unwrap();
/// assert_eq!(RotationOutcome::from_reported(reported).unwrap()?, outcome);
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationOutcome {
    /// The campaign.
    pub campaign: String,
    /// The attempt it answers.
    #[serde(default)]
    pub attempt: u32,
    /// Where it stands.
    pub status: RotationStatus,
    /// The certificate the device uses now (when succeeded).
    pub certificate_id: Option<String>,
    /// Why it failed (when failed).
    pub error: Option<String>,
}

impl RotationOutcome {
    /// The request is being worked on.
    pub fn in_progress(request: &RotationRequest) -> Self {
        RotationOutcome {
            campaign: request.campaign.clone(),
            attempt: request.attempt,
            status: RotationStatus::InProgress,
            certificate_id: None,
            error: None,
        }
    }

    /// The device uses certificate `certificate_id` now.
    pub fn succeeded(request: &RotationRequest, certificate_id: impl Into<String>) -> Self {
        RotationOutcome {
            status: RotationStatus::Succeeded,
            certificate_id: Some(certificate_id.into()),
            ..Self::in_progress(request)
        }
    }

    /// The rotation failed with `error`.
    pub fn failed(request: &RotationRequest, error: impl Into<String>) -> Self {
        RotationOutcome {
            status: RotationStatus::Failed,
            error: Some(error.into()),
            ..Self::in_progress(request)
        }
    }

    /// Whether this outcome answers `campaign`, attempt `attempt`.
    pub fn answers(&self, campaign: &str, attempt: u32) -> bool {
        self.campaign == campaign && self.attempt == attempt
    }

    /// The reported-properties patch that records it: `{"rotation": {…}}`. Absent fields are
    /// explicit `null`s, so what an earlier report left there is deleted.
    pub fn to_patch(&self) -> Value {
        json!({ REPORT_KEY: serde_json::to_value(self).expect("an outcome serializes") })
    }

    /// Reads the outcome from a twin's reported section: `None` if there is none, an error if
    /// what is there is not an outcome.
    pub fn from_reported(reported: &Map<String, Value>) -> Option<Result<Self>> {
        reported.get(REPORT_KEY).map(|v| {
            serde_json::from_value(v.clone()).map_err(|e| {
                Error::invalid(
                    format!("reported.{REPORT_KEY}"),
                    format!("not a rotation outcome: {e}"),
                )
            })
        })
    }
}

/// Acts on `rotate` commands: rotates the device's certificate with the crash-safe
/// [`Rotator`] and reports the outcome in the twin. See the [module docs](self).
///
/// An application that has commands of its own either routes them itself with
/// [`handle`](Self::handle) (which says whether a command was the agent's), or lets
/// [`run_with`](Self::run_with) drain the stream and hand it the others.
///
/// ```no_run
/// # async fn f(client: fleetkit::device::DeviceClient, store: fleetkit::identity::CredentialStore)
/// #     -> fleetkit::Result<()> {
/// use std::sync::Arc;
/// use fleetkit::lifecycle::agent::RotationAgent;
///
/// let client = Arc::new(client);
/// let agent = RotationAgent::new(client.clone(), store);
/// let commands = client.commands()?;
/// // Rotation commands are the agent's; everything else goes to the application.
/// agent
///     .run_with(commands, |other| println!("command {}", other.name))
///     .await;
/// # Ok(()) }
/// ```
pub struct RotationAgent {
    client: Arc<DeviceClient>,
    store: Arc<CredentialStore>,
    hook: Option<StepHook>,
    /// Held while a rotation runs: rotations never overlap.
    busy: tokio::sync::Mutex<()>,
    /// Campaigns completed successfully, newest last: (campaign, certificate id).
    completed: Mutex<VecDeque<(String, String)>>,
}

impl std::fmt::Debug for RotationAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotationAgent")
            .field("device", self.client.device())
            .field("store", &self.store.dir())
            .finish_non_exhaustive()
    }
}

/// A rotation being handled by [`RotationAgent::run_with`].
type Handling<'a> = Pin<Box<dyn Future<Output = Option<RotationOutcome>> + Send + 'a>>;

impl RotationAgent {
    /// An agent rotating `client`'s credential, whose active credential is in `store`
    /// (a `CredentialStore` or an `Arc` of one).
    pub fn new(client: Arc<DeviceClient>, store: impl Into<Arc<CredentialStore>>) -> Self {
        RotationAgent {
            client,
            store: store.into(),
            hook: None,
            busy: tokio::sync::Mutex::new(()),
            completed: Mutex::new(VecDeque::new()),
        }
    }

    /// Calls `hook` after each rotation step (see [`Rotator::on_step`]: an error stops the
    /// rotation there, as a crash would).
    pub fn on_step(
        mut self,
        hook: impl Fn(RotationStep) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// The client the agent rotates.
    pub fn client(&self) -> &Arc<DeviceClient> {
        &self.client
    }

    /// The store holding the device's credentials.
    pub fn store(&self) -> &Arc<CredentialStore> {
        &self.store
    }

    /// Handles `command` if it is a rotation command: rotates (after any rotation already
    /// running), reports the outcome in the twin and returns it. `None` if the command is
    /// not the agent's. A malformed `rotate` command is answered with a failed outcome that
    /// is not reported (it names no campaign to report against).
    pub async fn handle(&self, command: &Command) -> Option<RotationOutcome> {
        let request = match RotationRequest::from_command(command)? {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(device = %self.client.device(), error = %e, "malformed rotate command");
                return Some(RotationOutcome::failed(
                    &RotationRequest::new("", 0),
                    e.to_string(),
                ));
            }
        };
        Some(self.rotate(&request).await)
    }

    /// Runs the rotation `request` asks for and reports its outcome (what
    /// [`handle`](Self::handle) does for a `rotate` command).
    pub async fn rotate(&self, request: &RotationRequest) -> RotationOutcome {
        let _running = self.busy.lock().await;
        // Answered from memory only while that certificate is still the one in use.
        if let Some(certificate_id) = self.completed_in(&request.campaign)
            && self.active_certificate_id().as_deref() == Some(certificate_id.as_str())
        {
            tracing::debug!(device = %self.client.device(), campaign = %request.campaign,
                "campaign already completed here; answering again");
            let outcome = RotationOutcome::succeeded(request, certificate_id);
            self.report(&outcome).await;
            return outcome;
        }
        // Best effort: tells the fleet the command arrived (a timeout then says the device hung
        // rather than never heard).
        if let Err(e) = self
            .client
            .twin()
            .report(RotationOutcome::in_progress(request).to_patch())
            .await
        {
            tracing::debug!(device = %self.client.device(), error = %e, "in-progress report failed");
        }
        let mut rotator = Rotator::new(&self.client, &self.store);
        if let Some(hook) = &self.hook {
            let hook = hook.clone();
            rotator = rotator.on_step(move |step| hook(step));
        }
        let outcome = match rotator.rotate().await {
            Ok(report) => {
                self.remember(&request.campaign, &report.new_certificate_id);
                RotationOutcome::succeeded(request, report.new_certificate_id)
            }
            Err(e) => {
                tracing::warn!(device = %self.client.device(), campaign = %request.campaign,
                    error = %e, "rotation failed");
                RotationOutcome::failed(request, e.to_string())
            }
        };
        self.report(&outcome).await;
        outcome
    }

    /// Handles every command of `commands` until the stream ends; commands that are not the
    /// agent's are dropped (logged). See [`run_with`](Self::run_with).
    pub async fn run(&self, commands: mpsc::Receiver<Command>) {
        self.run_with(commands, |c| {
            tracing::debug!(name = %c.name, "command ignored by the rotation agent");
        })
        .await;
    }

    /// Handles the rotation commands of `commands` and passes every other command to `other`
    /// as it arrives (also while a rotation runs), until the stream ends and the last rotation
    /// is done. Rotation commands run one after another, in order.
    pub async fn run_with<F>(&self, mut commands: mpsc::Receiver<Command>, mut other: F)
    where
        F: FnMut(Command) + Send,
    {
        let mut waiting: VecDeque<Command> = VecDeque::new();
        let mut current: Option<Handling<'_>> = None;
        let mut open = true;
        loop {
            if current.is_none()
                && let Some(command) = waiting.pop_front()
            {
                current = Some(Box::pin(async move { self.handle(&command).await }));
            }
            if current.is_none() && !open {
                return;
            }
            tokio::select! {
                received = commands.recv(), if open => match received {
                    Some(c) if c.name == ROTATE_COMMAND => waiting.push_back(c),
                    Some(c) => other(c),
                    None => open = false,
                },
                _ = async { current.as_mut().expect("guarded").await }, if current.is_some() => {
                    current = None;
                }
            }
        }
    }

    fn active_certificate_id(&self) -> Option<String> {
        match self.store.load() {
            Ok(crate::identity::Credentials::X509(c)) => Some(c.leaf().fingerprint_sha256()),
            _ => None,
        }
    }

    fn completed_in(&self, campaign: &str) -> Option<String> {
        self.completed
            .lock()
            .expect("agent lock")
            .iter()
            .rev()
            .find(|(c, _)| c == campaign)
            .map(|(_, id)| id.clone())
    }

    fn remember(&self, campaign: &str, certificate_id: &str) {
        let mut completed = self.completed.lock().expect("agent lock");
        completed.retain(|(c, _)| c != campaign);
        completed.push_back((campaign.to_string(), certificate_id.to_string()));
        while completed.len() > REMEMBERED {
            completed.pop_front();
        }
    }

    /// Reports `outcome`, retrying a few times (right after a rotation the client may still
    /// be reconnecting).
    async fn report(&self, outcome: &RotationOutcome) {
        let patch = outcome.to_patch();
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=REPORT_TRIES {
            match self.client.twin().report(patch.clone()).await {
                Ok(_) => return,
                Err(e) if attempt == REPORT_TRIES => {
                    tracing::warn!(device = %self.client.device(), campaign = %outcome.campaign,
                        error = %e, "could not report the rotation outcome");
                }
                Err(e) => {
                    tracing::debug!(device = %self.client.device(), error = %e, "report failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_reject_garbage() {
        let r = RotationRequest::new("c1", 3);
        assert_eq!(RotationRequest::from_payload(&r.to_payload()).unwrap(), r);
        // The minimal payload of the protocol: no attempt.
        assert_eq!(
            RotationRequest::from_payload(br#"{"campaign": "c1"}"#).unwrap(),
            RotationRequest::new("c1", 0)
        );
        for bad in [
            &b"not json"[..],
            br#"{"campaign": ""}"#,
            br#"{"attempt": 1}"#,
        ] {
            assert!(matches!(
                RotationRequest::from_payload(bad),
                Err(Error::InvalidInput { .. })
            ));
        }
        let other = Command {
            name: "reboot".into(),
            payload: bytes::Bytes::from_static(b"{}"),
            properties: Vec::new(),
        };
        assert!(RotationRequest::from_command(&other).is_none());
        let rotate = Command {
            name: ROTATE_COMMAND.into(),
            payload: bytes::Bytes::from(r.to_payload()),
            properties: Vec::new(),
        };
        assert_eq!(RotationRequest::from_command(&rotate).unwrap().unwrap(), r);
    }

    #[test]
    fn outcomes_clear_stale_fields_and_round_trip() {
        let r = RotationRequest::new("c1", 1);
        let failed = RotationOutcome::failed(&r, "boom");
        let patch = failed.to_patch();
        assert_eq!(patch["rotation"]["certificateId"], Value::Null);
        assert!(
            patch["rotation"]
                .as_object()
                .unwrap()
                .contains_key("certificateId")
        );
        assert_eq!(patch["rotation"]["status"], "failed");
        let back = RotationOutcome::from_reported(patch.as_object().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(back, failed);
        assert!(back.answers("c1", 1));
        assert!(!back.answers("c1", 2));
        assert!(!back.answers("c2", 1));
        assert!(RotationOutcome::from_reported(&Map::new()).is_none());
        let mut junk = Map::new();
        junk.insert(REPORT_KEY.into(), json!("yes"));
        assert!(RotationOutcome::from_reported(&junk).unwrap().is_err());
    }
}
