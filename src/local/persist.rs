//! The hub's data directory: registry, trust store, CA, retained messages and persistent sessions
//! survive a restart.
//!
//! ```text
//! <dir>/hub-ca.pem  hub-ca.key (0600)   the hub CA (server certificate and device issuing)
//! <dir>/registry.json                   devices, device certificates, policies, attachments
//! <dir>/trust.json                      registered CAs with status, CRLs
//! <dir>/broker.json                     retained messages, persistent sessions and their queues
//! ```
//!
//! Every file is replaced atomically (temp file, fsync, rename, fsync the directory). Admin
//! changes are written before the admin call returns. Broker state is written by a flusher task
//! that groups requests: a PUBACK for a message that was retained or queued for an offline
//! persistent session, and a SUBACK for a persistent session, are sent only after a flush that
//! includes them — acknowledged data survives a crash. (Messages in flight to a *connected*
//! client are saved when the hub shuts down cleanly, not after each send.)

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::broker::{BrokerState, Delivery, Session};
use super::registry::{Registry, RegistrySnapshot};
use super::tls::{CaStatus, TrustStore};
use crate::fsutil::write_atomic;
use crate::pki::{Certificate, CertificateAuthority, Crl};
use crate::policy::Partition;
use crate::{Error, Result};

const CA_CERT: &str = "hub-ca.pem";
const CA_KEY: &str = "hub-ca.key";
const REGISTRY: &str = "registry.json";
const TRUST: &str = "trust.json";
const BROKER: &str = "broker.json";

#[derive(Serialize, Deserialize, Default)]
struct TrustSnapshot {
    /// (CA certificate PEM, status as AWS writes it).
    cas: Vec<(String, String)>,
    crls: Vec<String>,
}

#[derive(Serialize, Deserialize, Default)]
struct BrokerSnapshot {
    /// (topic, base64 payload, QoS).
    retained: Vec<(String, String, u8)>,
    sessions: Vec<SessionSnapshot>,
}

#[derive(Serialize, Deserialize)]
struct SessionSnapshot {
    client_id: String,
    /// The certificate the session authenticated with: its principal is rebuilt from it.
    /// Empty for a password-authenticated session, whose principal comes from `device`.
    cert_id: String,
    /// The registry device (absent in files written before password authentication).
    #[serde(default)]
    device: String,
    subscriptions: Vec<(String, u8)>,
    /// (topic, base64 payload, QoS, DUP).
    pending: Vec<(String, String, u8, bool)>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A hub's data directory.
#[derive(Debug, Clone)]
pub(crate) struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// Opens (creating, 0700) the directory.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(DataDir {
            path: path.to_path_buf(),
        })
    }

    fn read(&self, name: &str) -> Result<Option<String>> {
        let path = self.path.join(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn write_json(&self, name: &str, value: &impl Serialize) -> Result<()> {
        let json = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::invalid(name, format!("cannot serialise: {e}")))?;
        write_atomic(&self.path.join(name), &json)
    }

    fn parse<T: for<'de> Deserialize<'de>>(&self, name: &str, text: &str) -> Result<T> {
        serde_json::from_str(text).map_err(|e| {
            Error::invalid(
                format!("{}", self.path.join(name).display()),
                format!("unreadable hub state: {e}"),
            )
        })
    }

    /// The saved hub CA, if any.
    pub(crate) fn load_ca(&self) -> Result<Option<CertificateAuthority>> {
        match (self.read(CA_CERT)?, self.read(CA_KEY)?) {
            (Some(cert), Some(key)) => Ok(Some(CertificateAuthority::from_pem(&cert, &key, "")?)),
            _ => Ok(None),
        }
    }

    /// Saves the hub CA: certificate first, key (0600) last.
    pub(crate) fn save_ca(&self, ca: &CertificateAuthority) -> Result<()> {
        let key = ca.signer().export_pkcs8_der()?;
        write_atomic(
            &self.path.join(CA_CERT),
            ca.certificate().to_pem().as_bytes(),
        )?;
        let pem = zeroize::Zeroizing::new(crate::identity::pem_encode("PRIVATE KEY", &key));
        write_atomic(&self.path.join(CA_KEY), pem.as_bytes())
    }

    pub(crate) fn load_registry(&self, partition: Partition) -> Result<Option<Registry>> {
        let Some(text) = self.read(REGISTRY)? else {
            return Ok(None);
        };
        let snapshot: RegistrySnapshot = self.parse(REGISTRY, &text)?;
        Registry::restore(partition, &snapshot).map(Some)
    }

    pub(crate) fn save_registry(&self, registry: &Registry) -> Result<()> {
        self.write_json(REGISTRY, &registry.snapshot())
    }

    /// Restores saved CAs and CRLs into `trust`; returns whether there was anything saved.
    pub(crate) fn load_trust(&self, trust: &TrustStore) -> Result<bool> {
        let Some(text) = self.read(TRUST)? else {
            return Ok(false);
        };
        let snapshot: TrustSnapshot = self.parse(TRUST, &text)?;
        for (pem, status) in &snapshot.cas {
            let status = match status.as_str() {
                "ACTIVE" => CaStatus::Active,
                "INACTIVE" => CaStatus::Inactive,
                "REVOKED" => CaStatus::Revoked,
                other => {
                    return Err(Error::invalid(
                        TRUST,
                        format!("unknown CA status {other:?}"),
                    ));
                }
            };
            trust.register_ca_with_status(Certificate::from_pem(pem)?, status)?;
        }
        for pem in &snapshot.crls {
            trust.add_crl(Crl::from_pem(pem)?)?;
        }
        Ok(true)
    }

    pub(crate) fn save_trust(&self, trust: &TrustStore) -> Result<()> {
        let snapshot = TrustSnapshot {
            cas: trust
                .cas()
                .into_iter()
                .map(|(c, s)| (c.to_pem(), s.as_str().to_string()))
                .collect(),
            crls: trust.crls().iter().map(Crl::to_pem).collect(),
        };
        self.write_json(TRUST, &snapshot)
    }

    /// Restores retained messages and persistent sessions. A session whose certificate is no
    /// longer registered is dropped (its owner could never resume it).
    pub(crate) fn load_broker(&self, registry: &Registry) -> Result<BrokerState> {
        let mut state = BrokerState::default();
        let Some(text) = self.read(BROKER)? else {
            return Ok(state);
        };
        let snapshot: BrokerSnapshot = self.parse(BROKER, &text)?;
        let decode = |s: &str| {
            b64()
                .decode(s)
                .map(bytes::Bytes::from)
                .map_err(|e| Error::invalid(BROKER, format!("bad payload: {e}")))
        };
        for (topic, payload, qos) in &snapshot.retained {
            state.retain(topic, &decode(payload)?, *qos);
        }
        for s in snapshot.sessions {
            let ctx = if s.cert_id.is_empty() {
                match registry.device_principal_context(&s.device, &s.client_id) {
                    Ok(ctx) => ctx,
                    Err(_) => continue,
                }
            } else {
                let Some(record) = registry.certificate(&s.cert_id) else {
                    continue;
                };
                registry.principal_context(record, &s.client_id)
            };
            let device = ctx.device_id.clone().unwrap_or_default();
            let principal = std::sync::Arc::new(registry.policies().principal(ctx));
            for (filter, qos) in &s.subscriptions {
                state
                    .subscriptions
                    .subscribe(filter, s.client_id.clone(), *qos);
            }
            let mut pending = std::collections::VecDeque::new();
            for (topic, payload, qos, dup) in &s.pending {
                pending.push_back(Delivery {
                    topic: topic.as_str().into(),
                    payload: decode(payload)?,
                    qos: *qos,
                    retain: false,
                    dup: *dup,
                });
            }
            state.sessions.insert(
                s.client_id.clone(),
                Session {
                    live: None,
                    persistent: true,
                    pending,
                    principal,
                    cert_id: s.cert_id,
                    device,
                    internal: false,
                },
            );
        }
        Ok(state)
    }

    /// Captures the broker's durable part (call with the broker lock held; cheap clones).
    pub(crate) fn capture_broker(state: &BrokerState) -> impl Serialize + use<> {
        let mut retained: Vec<(String, String, u8)> = state
            .retained
            .iter()
            .map(|(t, (p, q))| (t.clone(), b64().encode(p), *q))
            .collect();
        retained.sort();
        let mut sessions: Vec<SessionSnapshot> = state
            .sessions
            .iter()
            .filter(|(_, s)| s.persistent)
            .map(|(client, s)| SessionSnapshot {
                client_id: client.clone(),
                cert_id: s.cert_id.clone(),
                device: s.device.clone(),
                subscriptions: state.subscriptions.filters_of(client),
                pending: s
                    .pending
                    .iter()
                    .map(|d| (d.topic.to_string(), b64().encode(&d.payload), d.qos, d.dup))
                    .collect(),
            })
            .collect();
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        BrokerSnapshot { retained, sessions }
    }

    pub(crate) fn save_broker(&self, snapshot: &impl Serialize) -> Result<()> {
        self.write_json(BROKER, snapshot)
    }

    /// The file a dialect's service state lives in.
    fn dialect_file(dialect: &str) -> String {
        let safe: String = dialect
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("dialect-{safe}.json")
    }

    /// A dialect's saved service state (twins, …), if any.
    pub(crate) fn load_dialect(&self, dialect: &str) -> Result<Option<serde_json::Value>> {
        let name = Self::dialect_file(dialect);
        match self.read(&name)? {
            Some(text) => Ok(Some(self.parse(&name, &text)?)),
            None => Ok(None),
        }
    }

    /// Saves a dialect's service state atomically.
    pub(crate) fn save_dialect(&self, dialect: &str, state: &serde_json::Value) -> Result<()> {
        self.write_json(&Self::dialect_file(dialect), state)
    }
}
