//! Certificate rotation, device side: a crash-safe state machine.
//!
//! ```text
//! new key ─► CSR ─► new certificate over the current connection ─► stage (pending slot)
//!   ─► switch the running client to it (test-connect) ─► confirm over the new connection
//!   (the service retires the old certificate) ─► commit (pending becomes active)
//! ```
//!
//! Any failure **before** the switch succeeds rolls back: the client goes back to the old
//! credential and the pending slot is discarded. Once the hub has accepted the new
//! credential, the rotation only goes forward — the old certificate may already be retired,
//! so going back could leave the device with nothing that works.
//!
//! Progress lives in the [`CredentialStore`]: the pending slot *is* the journal. After a crash,
//! [`recover`] finishes or undoes the interrupted rotation: it tries the pending credential
//! first (if the hub accepts it, the rotation is completed: confirm and commit); if the hub
//! refuses it, it is discarded and the active one is used. Either way the device ends with a
//! working credential. The running [`DeviceClient`] keeps its offline queue, subscriptions and
//! streams across the switch.

use std::future::Future;
use std::sync::Arc;

use crate::device::DeviceClient;
use crate::identity::{CredentialStore, Credentials, Signer, Slot, SoftwareKey, X509Credential};
use crate::pki::build_csr;
use crate::{Error, Result};

/// The steps of a rotation, in order (each is done when named).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RotationStep {
    /// The new key exists (on the device).
    KeyGenerated,
    /// The service issued the new certificate (active alongside the old one).
    CertificateIssued,
    /// The new credential is in the store's pending slot.
    Staged,
    /// The running client is connected with the new credential.
    Switched,
    /// The service retired the old certificate.
    Confirmed,
    /// The new credential is the store's active one.
    Committed,
}

impl RotationStep {
    /// Every step, in order.
    pub const ALL: [RotationStep; 6] = [
        RotationStep::KeyGenerated,
        RotationStep::CertificateIssued,
        RotationStep::Staged,
        RotationStep::Switched,
        RotationStep::Confirmed,
        RotationStep::Committed,
    ];
}

/// What a finished rotation did.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationReport {
    /// The certificate the device used before.
    pub old_certificate_id: String,
    /// The certificate it uses now.
    pub new_certificate_id: String,
    /// Whether the service confirmed it retired the old certificate (if not, the old one is
    /// still active at the service; the device no longer uses it).
    pub old_retired: bool,
}

/// A hook called after each step (progress reporting; tests use it to inject failures).
pub type StepHook = Arc<dyn Fn(RotationStep) -> Result<()> + Send + Sync>;

/// Rotates a connected device's certificate. See the [module docs](self).
///
/// ```no_run
/// # async fn f(client: &fleetkit::device::DeviceClient, store: &fleetkit::identity::CredentialStore) -> fleetkit::Result<()> {
/// use fleetkit::lifecycle::rotation::Rotator;
/// let report = Rotator::new(client, store).rotate().await?;
/// println!("now using {}", report.new_certificate_id);
/// # Ok(()) }
/// ```
pub struct Rotator<'a> {
    client: &'a DeviceClient,
    store: &'a CredentialStore,
    hook: Option<StepHook>,
    new_key: Option<Arc<dyn Signer>>,
}

impl std::fmt::Debug for Rotator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotator")
            .field("client", self.client)
            .field("store", &self.store.dir())
            .finish_non_exhaustive()
    }
}

impl<'a> Rotator<'a> {
    /// A rotation of `client`'s credential, whose active credential is in `store`.
    pub fn new(client: &'a DeviceClient, store: &'a CredentialStore) -> Self {
        Rotator {
            client,
            store,
            hook: None,
            new_key: None,
        }
    }

    /// Calls `hook` after each step; an error from it stops the rotation right there, as a
    /// crash would (nothing is cleaned up) — how the crash-safety tests put a fail point at
    /// every step.
    pub fn on_step(
        mut self,
        hook: impl Fn(RotationStep) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Uses `key` as the new key (default: a new software P-256 key). It must be exportable
    /// to be stored.
    pub fn with_new_key(mut self, key: Arc<dyn Signer>) -> Self {
        self.new_key = Some(key);
        self
    }

    fn step(&self, step: RotationStep) -> Result<()> {
        tracing::debug!(device = %self.client.device(), ?step, "rotation");
        match &self.hook {
            Some(hook) => hook(step),
            None => Ok(()),
        }
    }

    /// Runs the rotation.
    pub async fn rotate(&self) -> Result<RotationReport> {
        let Credentials::X509(old) = self.store.load()? else {
            return Err(Error::Precondition(
                "the active credential is not an X.509 certificate".into(),
            ));
        };
        if self.store.load_slot(Slot::Pending)?.is_some() {
            return Err(Error::Precondition(
                "a rotation is already in progress (a credential is pending): recover first".into(),
            ));
        }
        let old_id = old.leaf().fingerprint_sha256();
        let key: Arc<dyn Signer> = match &self.new_key {
            Some(k) => k.clone(),
            None => Arc::new(SoftwareKey::generate_p256()?),
        };
        self.step(RotationStep::KeyGenerated)?;

        let csr = build_csr(key.clone(), self.client.device())?;
        let issued = self.client.request_certificate(&csr.to_pem()).await?;
        let new = X509Credential::from_pem(&issued.chain_pem, key)?;
        if new.leaf().subject_common_name() != Some(self.client.device().as_str()) {
            return Err(Error::invalid(
                "certificate",
                "the service issued a certificate for another device id",
            ));
        }
        let new_id = new.leaf().fingerprint_sha256();
        self.step(RotationStep::CertificateIssued)?;

        self.store.stage(&Credentials::X509(new.clone()))?;
        self.step(RotationStep::Staged)?;

        if let Err(e) = self.client.switch_credential(&new).await {
            // Back to the credential that works; the pending one is discarded.
            let back = self.client.switch_credential(&old).await;
            self.store.rollback()?;
            back?;
            tracing::warn!(device = %self.client.device(), error = %e, "new certificate refused; rolled back");
            return Err(e);
        }
        self.step(RotationStep::Switched)?;

        // From here only forward: the new credential works.
        let mut old_retired = false;
        for _ in 0..3 {
            if self
                .client
                .confirm_certificate(&new_id, &old_id)
                .await
                .is_ok()
            {
                old_retired = true;
                break;
            }
        }
        self.step(RotationStep::Confirmed)?;

        self.store.commit()?;
        self.step(RotationStep::Committed)?;
        Ok(RotationReport {
            old_certificate_id: old_id,
            new_certificate_id: new_id,
            old_retired,
        })
    }
}

/// How [`recover`] found the store.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No rotation was in progress: connected with the active credential.
    Clean,
    /// An interrupted rotation's new credential works: it was confirmed and committed.
    Completed {
        /// Whether the service confirmed it retired the old certificate.
        old_retired: bool,
    },
    /// An interrupted rotation's new credential was refused: discarded, connected with the
    /// active one.
    RolledBack {
        /// Why the pending credential did not work.
        reason: String,
    },
}

/// Connects after a restart, finishing or undoing an interrupted rotation (see the
/// [module docs](self)). `connect` makes a client for a credential (the application's usual
/// builder).
pub async fn recover<F, Fut>(
    store: &CredentialStore,
    connect: F,
) -> Result<(DeviceClient, Recovery)>
where
    F: Fn(X509Credential) -> Fut,
    Fut: Future<Output = Result<DeviceClient>>,
{
    let Credentials::X509(active) = store.load()? else {
        return Err(Error::Precondition(
            "the active credential is not an X.509 certificate".into(),
        ));
    };
    let pending = match store.load_slot(Slot::Pending)? {
        Some(Credentials::X509(p)) => Some(p),
        Some(_) => {
            store.rollback()?;
            None
        }
        None => None,
    };
    let Some(pending) = pending else {
        return Ok((connect(active).await?, Recovery::Clean));
    };
    match connect(pending.clone()).await {
        Ok(client) => {
            let new_id = pending.leaf().fingerprint_sha256();
            let old_id = active.leaf().fingerprint_sha256();
            let mut old_retired = false;
            for _ in 0..3 {
                if client.confirm_certificate(&new_id, &old_id).await.is_ok() {
                    old_retired = true;
                    break;
                }
            }
            store.commit()?;
            Ok((client, Recovery::Completed { old_retired }))
        }
        Err(
            e @ (Error::Revoked(_)
            | Error::Unauthenticated(_)
            | Error::PermissionDenied(_)
            | Error::Expired(_)),
        ) => {
            store.rollback()?;
            let client = connect(active).await?;
            Ok((
                client,
                Recovery::RolledBack {
                    reason: e.to_string(),
                },
            ))
        }
        // The hub is unreachable: nothing can be decided; keep the pending credential.
        Err(e) => Err(e),
    }
}
