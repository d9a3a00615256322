//! TLS for the local hub: which client certificates it trusts, how it checks them on every
//! handshake, its server configuration and its own server certificate.
//!
//! - [`TrustStore`]: the registered CA certificates with their [`CaStatus`], the CRLs, and an
//!   optional [`CertificateStatus`] hook through which the device registry rules on individual
//!   device certificates. It is shared (as `Arc<TrustStore>`) by the registry, which changes it,
//!   and the TLS layer, which reads it.
//! - `HubClientVerifier`: the rustls client-certificate verifier installed once in the hub's
//!   `ServerConfig`; it reads the trust store's *current* state on every handshake.
//! - `server_config` and `issue_server_certificate`: the hub's rustls configuration and its
//!   serverAuth certificate signed by the hub CA.
//!
//! Why a wrapper around rustls' `WebPkiClientVerifier`: that verifier is immutable, while the hub
//! registers CAs, changes their status and takes new CRLs as it runs. Every change to the trust
//! store therefore builds a fresh `WebPkiClientVerifier` (trust anchors = the ACTIVE CAs, plus the
//! CRLs) *before* committing anything, and swaps it in together with the change under one lock.
//! A handshake sees either the old state or the new one, never a mix, and a change that cannot
//! be built changes nothing. Connections that are already up are not re-checked here; the hub
//! does that when [`TrustStore::generation`] moves.
//!
//! Session resumption is turned off on the server: a resumed TLS session skips the
//! client-certificate check, so a device whose certificate was revoked could otherwise come back
//! on an old session ticket.

use std::cmp::Ordering;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName as TlsName};
use rustls::{RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use time::OffsetDateTime;

use crate::identity::{RcgenKey, Signer, SoftwareKey, TlsSigningKey};
use crate::pki::{Certificate, CertificateAuthority, Crl, KeyUsage};
use crate::{Error, Result};

pub use crate::backend::CaStatus;

/// A ruling on individual device certificates, consulted after the certificate chain verified.
///
/// The hub's device registry implements it: a certificate that is unknown, INACTIVE or REVOKED
/// in the registry is refused with `CertificateError::Revoked` or
/// `CertificateError::ApplicationVerificationFailure`, which the client sees as a TLS alert.
///
/// `check` runs inside the TLS handshake, on the task that drives the connection, and without
/// any lock of the [`TrustStore`] held (so it may call back into the store). Keep it fast and
/// non-blocking.
pub trait CertificateStatus: Send + Sync + fmt::Debug {
    /// Accepts (`Ok`) or refuses the authenticated device certificate `leaf`.
    fn check(&self, leaf: &Certificate) -> std::result::Result<(), CertificateError>;
}

/// The CA certificates, CRLs and device-certificate hook the hub authenticates devices with.
///
/// Share it as `Arc<TrustStore>`: every method takes `&self`, and each change takes effect for
/// the next TLS handshake of a hub that is already running. A change that fails leaves the
/// store as it was.
///
/// ```
/// use fleetkit::local::{CaStatus, TrustStore};
/// use fleetkit::pki::{CaOptions, CertificateAuthority, CrlOptions};
///
/// let ca = CertificateAuthority::new_root(&CaOptions::new("Acme Devices"))?;
/// let trust = TrustStore::new();
/// trust.register_ca(ca.certificate().clone())?;
/// trust.add_crl(ca.issue_crl(&CrlOptions::new(1, vec![]))?)?;
///
/// let id = ca.certificate().fingerprint_sha256();
/// trust.set_ca_status(&id, CaStatus::Inactive)?; // devices under it can no longer connect
/// assert_eq!(trust.cas()[0].1, CaStatus::Inactive);
/// assert_eq!(trust.generation(), 3);
/// # Ok::<(), fleetkit::Error>(())
/// ```
pub struct TrustStore {
    provider: Arc<CryptoProvider>,
    inner: RwLock<Inner>,
}

/// Everything behind the lock: the registered state and what was compiled from it.
struct Inner {
    registered: Registered,
    compiled: Arc<Compiled>,
    generation: u64,
}

/// What the registry told the store.
#[derive(Clone, Default)]
struct Registered {
    cas: Vec<CaEntry>,
    /// At most one CRL per issuer name: rustls-webpki consults the first CRL whose issuer name
    /// matches, so a second one for the same name would never be read (or, signed by another
    /// key of the same name, would fail every handshake under that name).
    crls: Vec<HeldCrl>,
}

#[derive(Clone)]
struct CaEntry {
    id: String,
    certificate: Certificate,
    status: CaStatus,
}

#[derive(Clone)]
struct HeldCrl {
    /// The DER subject of the registered CA whose key verified the CRL (= the CRL's issuer).
    issuer: Vec<u8>,
    crl: Crl,
}

/// What a handshake reads: one `Arc`, cloned under a short read lock.
struct Compiled {
    /// `None` when no CA is ACTIVE (rustls refuses to build a verifier without trust anchors).
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Non-ACTIVE CAs, by subject and key: a chain that presents one of them is refused even if
    /// it also reaches an ACTIVE anchor (an INACTIVE or REVOKED intermediate under an ACTIVE
    /// root).
    blocked: Arc<[BlockedCa]>,
    hook: Option<Arc<dyn CertificateStatus>>,
}

struct BlockedCa {
    subject: Vec<u8>,
    spki: Vec<u8>,
    status: CaStatus,
}

impl Default for TrustStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.read();
        f.debug_struct("TrustStore")
            .field("cas", &inner.registered.cas.len())
            .field(
                "active",
                &inner
                    .registered
                    .cas
                    .iter()
                    .filter(|c| c.status == CaStatus::Active)
                    .count(),
            )
            .field("crls", &inner.registered.crls.len())
            .field("status_hook", &inner.compiled.hook)
            .field("generation", &inner.generation)
            .finish()
    }
}

impl TrustStore {
    /// An empty store: no CA is trusted, so every client certificate is refused.
    pub fn new() -> Self {
        TrustStore {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            inner: RwLock::new(Inner {
                registered: Registered::default(),
                compiled: Arc::new(Compiled {
                    verifier: None,
                    blocked: Arc::from([]),
                    hook: None,
                }),
                generation: 0,
            }),
        }
    }

    /// Registers a CA certificate as ACTIVE. Its id is its
    /// [`fingerprint_sha256`](Certificate::fingerprint_sha256).
    ///
    /// Roots and intermediates can both be registered; a registered intermediate is a trust
    /// anchor of its own. Fails with [`Error::InvalidInput`] if `certificate` is not a CA
    /// (basicConstraints CA:TRUE, keyUsage keyCertSign when present) or cannot serve as a trust
    /// anchor, and with [`Error::AlreadyExists`] if it is registered already.
    pub fn register_ca(&self, certificate: Certificate) -> Result<()> {
        self.register_ca_with_status(certificate, CaStatus::Active)
    }

    /// Registers a CA certificate with the given status, for example INACTIVE to stage it
    /// before devices under it may connect. Fails like [`register_ca`](Self::register_ca).
    pub fn register_ca_with_status(
        &self,
        certificate: Certificate,
        status: CaStatus,
    ) -> Result<()> {
        certificate.ensure_ca()?;
        // Checked here too, not only when it is ACTIVE: a CA registered INACTIVE must not fail
        // later, when it is activated.
        RootCertStore::empty()
            .add(certificate.der().clone())
            .map_err(|e| {
                Error::invalid(
                    "CA certificate",
                    format!("{} cannot be a trust anchor: {e}", certificate.subject()),
                )
            })?;
        let id = certificate.fingerprint_sha256();
        self.update(|registered| {
            if registered.cas.iter().any(|c| c.id == id) {
                return Err(Error::AlreadyExists {
                    what: "CA certificate",
                    id: id.clone(),
                });
            }
            registered.cas.push(CaEntry {
                id: id.clone(),
                certificate,
                status,
            });
            Ok(true)
        })
    }

    /// Sets the status of the registered CA `id` (its SHA-256 fingerprint, lowercase hex).
    ///
    /// Fails with [`Error::NotFound`] if no such CA is registered. Setting the status it already
    /// has changes nothing.
    pub fn set_ca_status(&self, id: &str, status: CaStatus) -> Result<()> {
        self.update(|registered| {
            let entry = registered
                .cas
                .iter_mut()
                .find(|c| c.id == id)
                .ok_or_else(|| Error::NotFound {
                    what: "CA certificate",
                    id: id.to_owned(),
                })?;
            if entry.status == status {
                return Ok(false);
            }
            entry.status = status;
            Ok(true)
        })
    }

    /// Adds a CRL, after checking that a registered CA (of any status) signed it.
    ///
    /// The store holds one CRL per issuer: a CRL replaces the one it holds for the same issuer
    /// only if its CRL number is higher (or, when either lacks a number, if its thisUpdate is
    /// later); the newest list is authoritative, so a certificate missing from it is no longer
    /// revoked (as when a certificateHold is lifted). Adding the CRL already held changes
    /// nothing.
    ///
    /// Fails with [`Error::Unauthenticated`] if no registered CA signed it,
    /// [`Error::Precondition`] if it is not newer than the one held, and
    /// [`Error::InvalidInput`] if its issuer lacks keyUsage cRLSign or rustls cannot use it.
    /// An expired CRL (nextUpdate passed) is accepted: a stale list still revokes.
    pub fn add_crl(&self, crl: Crl) -> Result<()> {
        self.update(|registered| {
            let mut refusal = None;
            let issuer = registered.cas.iter().find(|c| {
                match crl.verify_signature(&c.certificate) {
                    Ok(()) => true,
                    Err(e) => {
                        // Keep the most telling reason: a CA of the right name whose key did not
                        // verify it, rather than "wrong name".
                        if c.certificate.subject() == crl.issuer() || refusal.is_none() {
                            refusal = Some(e);
                        }
                        false
                    }
                }
            });
            let Some(issuer) = issuer else {
                return Err(Error::Unauthenticated(format!(
                    "no registered CA signed the CRL issued by {}{}",
                    crl.issuer(),
                    refusal.map(|e| format!(" ({e})")).unwrap_or_default()
                )));
            };
            let usages = issuer.certificate.key_usage();
            if !usages.is_empty() && !usages.contains(&KeyUsage::CrlSign) {
                return Err(Error::invalid(
                    "crl",
                    format!(
                        "its issuer {} lacks keyUsage cRLSign, so TLS would reject it",
                        issuer.certificate.subject()
                    ),
                ));
            }
            let issuer_name = issuer.certificate.subject_der().to_vec();
            match registered.crls.iter_mut().find(|h| h.issuer == issuer_name) {
                None => registered.crls.push(HeldCrl {
                    issuer: issuer_name,
                    crl,
                }),
                Some(held) if held.crl.der() == crl.der() => return Ok(false),
                Some(held) => {
                    if !is_newer(&crl, &held.crl) {
                        return Err(Error::Precondition(format!(
                            "the CRL from {} (number {}, thisUpdate {}) is not newer than the \
                             one held (number {}, thisUpdate {})",
                            crl.issuer(),
                            crl_number(&crl),
                            crl.this_update(),
                            crl_number(&held.crl),
                            held.crl.this_update()
                        )));
                    }
                    held.crl = crl;
                }
            }
            Ok(true)
        })
    }

    /// The registered CA certificates with their status, in registration order.
    pub fn cas(&self) -> Vec<(Certificate, CaStatus)> {
        self.read()
            .registered
            .cas
            .iter()
            .map(|c| (c.certificate.clone(), c.status))
            .collect()
    }

    /// The registered CA `id` (its SHA-256 fingerprint) and its status, if registered.
    pub fn ca(&self, id: &str) -> Option<(Certificate, CaStatus)> {
        self.read()
            .registered
            .cas
            .iter()
            .find(|c| c.id == id)
            .map(|c| (c.certificate.clone(), c.status))
    }

    /// The CRLs held, one per issuer.
    pub fn crls(&self) -> Vec<Crl> {
        self.read()
            .registered
            .crls
            .iter()
            .map(|h| h.crl.clone())
            .collect()
    }

    /// Whether `certificate` is revoked: listed on the CRL held for its issuer, or a registered
    /// CA whose status is REVOKED.
    ///
    /// This is the revocation state alone; use a TLS handshake to ask whether a device may
    /// connect (it also needs an ACTIVE CA, a valid chain and the status hook's consent).
    pub fn is_revoked(&self, certificate: &Certificate) -> bool {
        let inner = self.read();
        let id = certificate.fingerprint_sha256();
        inner
            .registered
            .cas
            .iter()
            .any(|c| c.id == id && c.status == CaStatus::Revoked)
            || inner
                .registered
                .crls
                .iter()
                .any(|h| h.crl.is_revoked(certificate))
    }

    /// Sets the hook that rules on device certificates after their chain verified, replacing
    /// any previous one.
    pub fn set_status_hook(&self, hook: Arc<dyn CertificateStatus>) {
        self.replace_hook(Some(hook));
    }

    /// Removes the status hook: a verified chain is then enough.
    pub fn clear_status_hook(&self) {
        self.replace_hook(None);
    }

    fn replace_hook(&self, hook: Option<Arc<dyn CertificateStatus>>) {
        let mut inner = self.write();
        let current = &inner.compiled;
        inner.compiled = Arc::new(Compiled {
            verifier: current.verifier.clone(),
            blocked: current.blocked.clone(),
            hook,
        });
        inner.generation += 1;
    }

    /// A counter that increases with every change to the store (CA registered, status changed,
    /// CRL added, hook set). The hub re-checks its live connections when it moves.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// The crypto provider the store's verifiers use.
    pub(crate) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // Changes are committed by plain assignments after all fallible work, so a panic while
        // the lock was held cannot have left a half-applied state behind.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn current(&self) -> Arc<Compiled> {
        self.read().compiled.clone()
    }

    /// Applies `change` to a copy of the registered state, builds the verifier for it and only
    /// then commits both. `change` returns whether it changed anything.
    fn update(&self, change: impl FnOnce(&mut Registered) -> Result<bool>) -> Result<()> {
        let mut inner = self.write();
        let mut registered = inner.registered.clone();
        if !change(&mut registered)? {
            return Ok(());
        }
        let compiled = compile(&self.provider, &registered, inner.compiled.hook.clone())?;
        inner.registered = registered;
        inner.compiled = Arc::new(compiled);
        inner.generation += 1;
        Ok(())
    }
}

fn compile(
    provider: &Arc<CryptoProvider>,
    registered: &Registered,
    hook: Option<Arc<dyn CertificateStatus>>,
) -> Result<Compiled> {
    // A registered CA that a held CRL lists counts as REVOKED whatever its own status: were it
    // left a trust anchor, chains ending at it would never reach the CRL of its issuer.
    let effective = |c: &CaEntry| {
        if registered
            .crls
            .iter()
            .any(|h| h.crl.is_revoked(&c.certificate))
        {
            CaStatus::Revoked
        } else {
            c.status
        }
    };
    let mut roots = RootCertStore::empty();
    for ca in registered
        .cas
        .iter()
        .filter(|c| effective(c) == CaStatus::Active)
    {
        roots.add(ca.certificate.der().clone()).map_err(|e| {
            Error::invalid(
                "CA certificate",
                format!("{} cannot be a trust anchor: {e}", ca.certificate.subject()),
            )
        })?;
    }
    let verifier = if roots.is_empty() {
        None
    } else {
        let crls = registered
            .crls
            .iter()
            .map(|h| CertificateRevocationListDer::from(h.crl.der().to_vec()));
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls)
                // Without this every issuer in a chain would need a CRL, or the handshake fails.
                .allow_unknown_revocation_status()
                // The registered CA list is not advertised to clients.
                .clear_root_hint_subjects()
                .build()
                .map_err(|e| Error::invalid("trust store", format!("rustls cannot use it: {e}")))?;
        Some(verifier)
    };
    let is_active = |subject: &[u8], spki: &[u8]| {
        registered.cas.iter().any(|c| {
            effective(c) == CaStatus::Active
                && c.certificate.subject_der() == subject
                && c.certificate.public_key_spki() == spki
        })
    };
    let blocked = registered
        .cas
        .iter()
        .filter_map(|c| {
            let status = effective(c);
            let blocks = match status {
                CaStatus::Active => false,
                // Revocation is about the key: it wins over an ACTIVE re-issue of the same CA.
                CaStatus::Revoked => true,
                // An INACTIVE old certificate of a CA re-issued with the same key and name, and
                // registered ACTIVE, does not block it.
                CaStatus::Inactive => {
                    !is_active(c.certificate.subject_der(), c.certificate.public_key_spki())
                }
            };
            blocks.then(|| BlockedCa {
                subject: c.certificate.subject_der().to_vec(),
                spki: c.certificate.public_key_spki().to_vec(),
                status,
            })
        })
        .collect();
    Ok(Compiled {
        verifier,
        blocked,
        hook,
    })
}

/// Whether `new` supersedes `old` (same issuer): a higher CRL number, or a later thisUpdate when
/// either has no number.
fn is_newer(new: &Crl, old: &Crl) -> bool {
    match (new.number(), old.number()) {
        (Some(a), Some(b)) => compare_unsigned_be(a, b) == Ordering::Greater,
        _ => new.this_update() > old.this_update(),
    }
}

fn compare_unsigned_be(a: &[u8], b: &[u8]) -> Ordering {
    let trim = |x: &[u8]| -> Vec<u8> { x.iter().copied().skip_while(|&b| b == 0).collect() };
    let (a, b) = (trim(a), trim(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
}

fn crl_number(crl: &Crl) -> String {
    match crl.number() {
        Some(n) if n.len() <= 16 => {
            let mut wide = [0u8; 16];
            wide[16 - n.len()..].copy_from_slice(n);
            u128::from_be_bytes(wide).to_string()
        }
        Some(n) => format!("0x{}", crate::pki::hex_lower(n)),
        None => "none".to_owned(),
    }
}

/// The hub's client-certificate verifier: the trust store's current `WebPkiClientVerifier`, then
/// the CA-status and device-status checks.
pub(crate) struct HubClientVerifier {
    trust: Arc<TrustStore>,
    allow_unauthenticated: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for HubClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClientVerifier")
            .field("trust", &self.trust)
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .finish_non_exhaustive()
    }
}

impl HubClientVerifier {
    /// A verifier reading `trust`. With `allow_unauthenticated`, a client that presents no
    /// certificate is let through the handshake (dialects that authenticate by username and
    /// password, such as SAS or JWT, then decide at CONNECT); a certificate that is presented
    /// is always verified.
    pub(crate) fn new(trust: Arc<TrustStore>, allow_unauthenticated: bool) -> Self {
        let algorithms = trust.provider().signature_verification_algorithms;
        HubClientVerifier {
            trust,
            allow_unauthenticated,
            algorithms,
        }
    }
}

impl ClientCertVerifier for HubClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.allow_unauthenticated
    }

    fn root_hint_subjects(&self) -> &[TlsName] {
        // The registered CA list is not advertised: it tells a stranger which CAs the fleet
        // uses, and the clouds do not send it either.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let current = self.trust.current();
        let Some(verifier) = &current.verifier else {
            return Err(CertificateError::UnknownIssuer.into());
        };
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        if !current.blocked.is_empty() {
            for der in intermediates {
                let cert = Certificate::from_der(der.as_ref())
                    .map_err(|_| rustls::Error::from(CertificateError::BadEncoding))?;
                let blocked = current
                    .blocked
                    .iter()
                    .find(|b| b.subject == cert.subject_der() && b.spki == cert.public_key_spki());
                match blocked.map(|b| b.status) {
                    Some(CaStatus::Revoked) => return Err(CertificateError::Revoked.into()),
                    Some(_) => return Err(CertificateError::UnknownIssuer.into()),
                    None => {}
                }
            }
        }
        if let Some(hook) = &current.hook {
            let leaf = Certificate::from_der(end_entity.as_ref())
                .map_err(|_| rustls::Error::from(CertificateError::BadEncoding))?;
            hook.check(&leaf)?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The hub's rustls server configuration: `server_chain` (leaf first) with `server_key`,
/// clients verified by a [`HubClientVerifier`] over `trust`, ALPN protocols `alpn` in the
/// hub's order of preference (empty: no ALPN), TLS 1.2 and 1.3, no session resumption.
pub(crate) fn server_config(
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Arc<dyn Signer>,
    trust: Arc<TrustStore>,
    alpn: Vec<Vec<u8>>,
    allow_unauthenticated: bool,
) -> Result<Arc<ServerConfig>> {
    if server_chain.is_empty() {
        return Err(Error::invalid("server certificate", "the chain is empty"));
    }
    if let Some(bad) = alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
        return Err(Error::invalid(
            "alpn",
            format!("a protocol name must be 1 to 255 bytes, not {}", bad.len()),
        ));
    }
    let key: Arc<dyn rustls::sign::SigningKey> = Arc::new(TlsSigningKey::new(server_key));
    let certified = CertifiedKey::new(server_chain, key);
    certified.keys_match().map_err(|e| {
        Error::invalid(
            "server key",
            format!("does not belong to the server certificate ({e})"),
        )
    })?;
    let provider = trust.provider().clone();
    let verifier = Arc::new(HubClientVerifier::new(trust, allow_unauthenticated));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::NotSupported(format!("TLS protocol versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = alpn;
    // A resumed session skips the client-certificate check; see the module docs.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// `config`, refusing clients that send no SNI (server name) in their hello — as AWS IoT
/// Core does; a client that connects to an IP address sends none.
pub(crate) fn require_sni(config: Arc<ServerConfig>) -> Arc<ServerConfig> {
    let mut config = (*config).clone();
    config.cert_resolver = Arc::new(SniRequired(config.cert_resolver.clone()));
    Arc::new(config)
}

/// A certificate resolver that answers only hellos naming a server.
#[derive(Debug)]
struct SniRequired(Arc<dyn rustls::server::ResolvesServerCert>);

impl rustls::server::ResolvesServerCert for SniRequired {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello.server_name()?;
        self.0.resolve(hello)
    }
}

/// How long the hub's server certificate is valid (cut to the CA's own validity).
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// How far its notBefore is set back, for clients whose clock is slightly behind.
const SERVER_CERT_BACKDATE: Duration = Duration::from_secs(3600);

/// Issues the hub's TLS server certificate under `ca`, with a new P-256 key.
///
/// It covers `localhost`, `127.0.0.1`, `::1` and every name in `names` (DNS names or IP
/// addresses, as subject alternative names); its CN is the first of `names` (`localhost` if
/// there is none); extendedKeyUsage serverAuth. Returns the chain to present (the certificate,
/// then `ca` and its parents below the root) and the key.
pub(crate) fn issue_server_certificate(
    ca: &CertificateAuthority,
    names: &[String],
) -> Result<(Vec<CertificateDer<'static>>, Arc<dyn Signer>)> {
    let mut sans: Vec<SanType> = Vec::new();
    let defaults = ["localhost", "127.0.0.1", "::1"].map(String::from);
    for name in names.iter().chain(defaults.iter()) {
        let san = server_name(name)?;
        let duplicate = sans.iter().any(|s| match (s, &san) {
            (SanType::DnsName(a), SanType::DnsName(b)) => {
                a.as_str().eq_ignore_ascii_case(b.as_str())
            }
            (a, b) => a == b,
        });
        if !duplicate {
            sans.push(san);
        }
    }
    let common_name = names.first().map_or("localhost", |n| n.trim());

    let now = OffsetDateTime::now_utc();
    let issuer = ca.certificate();
    if !issuer.is_valid_at(now) {
        return Err(Error::Expired(format!(
            "the hub CA {} is valid from {} to {}; it cannot issue the server certificate now",
            issuer.subject(),
            issuer.not_before(),
            issuer.not_after()
        )));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.not_before = (now - SERVER_CERT_BACKDATE).max(issuer.not_before());
    params.not_after = (now + SERVER_CERT_VALIDITY).min(issuer.not_after());
    params.serial_number = Some(random_serial()?);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;

    let key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256()?);
    let cert = params
        .signed_by(&RcgenKey::new(key.clone())?, ca.rcgen_issuer())
        .map_err(|e| Error::Crypto(format!("signing the hub's server certificate: {e}")))?;
    let mut chain = vec![cert.der().clone()];
    chain.extend(ca.chain_for_devices().iter().map(|c| c.der().clone()));
    Ok((chain, key))
}

/// One configured host name as a subject alternative name: an IP address (`[::1]` accepted)
/// or a DNS name.
fn server_name(name: &str) -> Result<SanType> {
    let bad = |reason: String| Error::invalid("host name", format!("{name:?}: {reason}"));
    let trimmed = name.trim();
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(trimmed);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    rustls_pki_types::DnsName::try_from(trimmed)
        .map_err(|_| bad("not a DNS name or IP address".into()))?;
    let ia5 = trimmed
        .to_owned()
        .try_into()
        .map_err(|e| bad(format!("{e}")))?;
    Ok(SanType::DnsName(ia5))
}

use crate::pki::random_serial;

#[cfg(test)]
mod tests {
    //! Real handshakes over loopback sockets: tokio-rustls on both ends, the client presenting
    //! an `identity::ClientIdentity`.

    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Mutex;

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::identity::{ClientIdentity, DeviceId, X509Credential};
    use crate::pki::{CaOptions, CrlOptions, DeviceCertOptions, Revocation, RevocationReason};

    const HELLO: &[u8] = b"hello device";
    const DEADLINE: Duration = Duration::from_secs(20);

    /// The hub's own CA (server certificate) and a separate fleet CA hierarchy for devices.
    struct Pki {
        hub: CertificateAuthority,
        root: CertificateAuthority,
        issuing: CertificateAuthority,
    }

    fn pki() -> Pki {
        let hub = CertificateAuthority::new_root(&CaOptions::new("Test Hub CA")).unwrap();
        let root =
            CertificateAuthority::new_root(&CaOptions::new("Fleet Root").with_path_len(1)).unwrap();
        let issuing = root
            .new_intermediate(&CaOptions::new("Fleet Devices"))
            .unwrap();
        Pki { hub, root, issuing }
    }

    fn device(ca: &CertificateAuthority, id: &str) -> X509Credential {
        let key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256().unwrap());
        let cert = ca
            .issue(
                &DeviceId::new(id).unwrap(),
                key.public_key_spki(),
                &DeviceCertOptions::default(),
            )
            .unwrap();
        let mut chain = vec![cert.der().clone()];
        chain.extend(ca.chain_for_devices().iter().map(|c| c.der().clone()));
        X509Credential::new(chain, key).unwrap()
    }

    fn hub_config(
        pki: &Pki,
        trust: &Arc<TrustStore>,
        alpn: &[&[u8]],
        allow_unauthenticated: bool,
    ) -> Arc<ServerConfig> {
        let (chain, key) =
            issue_server_certificate(&pki.hub, &["hub.example".to_string()]).unwrap();
        server_config(
            chain,
            key,
            trust.clone(),
            alpn.iter().map(|p| p.to_vec()).collect(),
            allow_unauthenticated,
        )
        .unwrap()
    }

    fn client(
        hub_ca: &CertificateAuthority,
        identity: Option<&X509Credential>,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(hub_ca.certificate().der().clone()).unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots);
        let mut config = match identity {
            Some(credential) => builder
                .with_client_cert_resolver(Arc::new(ClientIdentity::new(credential).unwrap())),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    fn tls13(
        hub_ca: &CertificateAuthority,
        identity: Option<&X509Credential>,
    ) -> Arc<ClientConfig> {
        client(hub_ca, identity, &[&rustls::version::TLS13], &[])
    }

    /// What the server saw of one connection.
    #[derive(Debug)]
    struct Accepted {
        peer_cn: Option<String>,
        alpn: Option<Vec<u8>>,
        version: Option<rustls::ProtocolVersion>,
    }

    /// Accepts one TLS connection; on success writes [`HELLO`] and closes.
    async fn serve_once(
        config: Arc<ServerConfig>,
    ) -> (
        SocketAddr,
        tokio::task::JoinHandle<std::result::Result<Accepted, rustls::Error>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = tokio_rustls::TlsAcceptor::from(config)
                .accept(tcp)
                .await
                .map_err(tls_error)?;
            let (_, conn) = tls.get_ref();
            let accepted = Accepted {
                peer_cn: conn.peer_certificates().map(|chain| {
                    Certificate::from_der(chain[0].as_ref())
                        .unwrap()
                        .subject_common_name()
                        .unwrap_or_default()
                        .to_owned()
                }),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                version: conn.protocol_version(),
            };
            tls.write_all(HELLO).await.map_err(tls_error)?;
            tls.shutdown().await.map_err(tls_error)?;
            Ok(accepted)
        });
        (addr, task)
    }

    /// The rustls error inside a tokio-rustls I/O error.
    fn tls_error(e: std::io::Error) -> rustls::Error {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(tls) => tls.clone(),
            None => rustls::Error::General(format!("I/O: {e}")),
        }
    }

    /// Connects as `name` and reads the server's greeting: in TLS 1.3 a refused client
    /// certificate shows only here, after the client's side of the handshake finished.
    async fn connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        name: &str,
    ) -> std::result::Result<Vec<u8>, rustls::Error> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(tls_error)?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.map_err(tls_error)?;
        Ok(buf)
    }

    /// One handshake: the server's verdict and what the client read.
    async fn handshake(
        server: &Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> (
        std::result::Result<Accepted, rustls::Error>,
        std::result::Result<Vec<u8>, rustls::Error>,
    ) {
        tokio::time::timeout(DEADLINE, async {
            let (addr, task) = serve_once(server.clone()).await;
            let read = connect(addr, client, name).await;
            (task.await.unwrap(), read)
        })
        .await
        .expect("the handshake finished in time")
    }

    /// Asserts the device got in, and returns the CN the hub saw.
    async fn admitted(server: &Arc<ServerConfig>, client: Arc<ClientConfig>) -> Accepted {
        let (accepted, read) = handshake(server, client, "localhost").await;
        let accepted = accepted.expect("the hub accepted the client");
        assert_eq!(read.expect("the client read the greeting"), HELLO);
        accepted
    }

    /// Asserts the hub refused the client with `expected`, and the client got nothing.
    async fn refused(
        server: &Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        expected: impl Fn(&rustls::Error) -> bool,
    ) {
        let (accepted, read) = handshake(server, client, "localhost").await;
        let err = accepted.expect_err("the hub refused the client");
        assert!(expected(&err), "unexpected refusal: {err:?}");
        assert!(read.is_err(), "the client must not read data: {read:?}");
    }

    fn is(expected: CertificateError) -> impl Fn(&rustls::Error) -> bool {
        move |e| *e == rustls::Error::InvalidCertificate(expected.clone())
    }

    fn revoke(ca: &CertificateAuthority, number: u64, credentials: &[&X509Credential]) -> Crl {
        let revoked = credentials
            .iter()
            .map(|c| Revocation::of(c.leaf(), RevocationReason::KeyCompromise))
            .collect();
        ca.issue_crl(&CrlOptions::new(number, revoked)).unwrap()
    }

    fn registered(cas: &[&CertificateAuthority]) -> Arc<TrustStore> {
        let trust = Arc::new(TrustStore::new());
        for ca in cas {
            trust.register_ca(ca.certificate().clone()).unwrap();
        }
        trust
    }

    #[tokio::test]
    async fn device_under_active_ca_connects_with_tls13_and_tls12() {
        let pki = pki();
        let trust = registered(&[&pki.root]);
        let server = hub_config(&pki, &trust, &[], false);
        // The device presents leaf + intermediate; only the root is registered.
        let dev = device(&pki.issuing, "sensor-1");
        let accepted = admitted(&server, tls13(&pki.hub, Some(&dev))).await;
        assert_eq!(accepted.peer_cn.as_deref(), Some("sensor-1"));
        assert_eq!(accepted.version, Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(accepted.alpn, None);

        let tls12 = client(&pki.hub, Some(&dev), &[&rustls::version::TLS12], &[]);
        let accepted = admitted(&server, tls12).await;
        assert_eq!(accepted.version, Some(rustls::ProtocolVersion::TLSv1_2));

        // A registered intermediate is a trust anchor of its own.
        let trust = registered(&[&pki.issuing]);
        let server = hub_config(&pki, &trust, &[], false);
        admitted(&server, tls13(&pki.hub, Some(&dev))).await;
    }

    #[tokio::test]
    async fn unregistered_ca_is_refused() {
        let pki = pki();
        let other = CertificateAuthority::new_root(&CaOptions::new("Stranger CA")).unwrap();
        let trust = registered(&[&pki.root]);
        let server = hub_config(&pki, &trust, &[], false);
        let stranger = device(&other, "stranger-1");
        refused(
            &server,
            tls13(&pki.hub, Some(&stranger)),
            is(CertificateError::UnknownIssuer),
        )
        .await;
        // TLS 1.2 too: there the client sees the alert during its handshake.
        let tls12 = client(&pki.hub, Some(&stranger), &[&rustls::version::TLS12], &[]);
        refused(&server, tls12, is(CertificateError::UnknownIssuer)).await;
    }

    #[tokio::test]
    async fn nothing_is_trusted_without_an_active_ca() {
        let pki = pki();
        let trust = Arc::new(TrustStore::new());
        let server = hub_config(&pki, &trust, &[], false);
        let dev = device(&pki.root, "sensor-1");
        refused(
            &server,
            tls13(&pki.hub, Some(&dev)),
            is(CertificateError::UnknownIssuer),
        )
        .await;
        // Registered INACTIVE: still nothing trusted; activating it lets the device in.
        trust
            .register_ca_with_status(pki.root.certificate().clone(), CaStatus::Inactive)
            .unwrap();
        refused(
            &server,
            tls13(&pki.hub, Some(&dev)),
            is(CertificateError::UnknownIssuer),
        )
        .await;
        trust
            .set_ca_status(
                &pki.root.certificate().fingerprint_sha256(),
                CaStatus::Active,
            )
            .unwrap();
        admitted(&server, tls13(&pki.hub, Some(&dev))).await;
    }

    #[tokio::test]
    async fn ca_status_changes_apply_to_the_running_config() {
        let pki = pki();
        let trust = registered(&[&pki.root]);
        // One ServerConfig for the whole test: every change below is a hot swap.
        let server = hub_config(&pki, &trust, &[], false);
        let dev = device(&pki.root, "sensor-1");
        let id = pki.root.certificate().fingerprint_sha256();

        admitted(&server, tls13(&pki.hub, Some(&dev))).await;
        trust.set_ca_status(&id, CaStatus::Inactive).unwrap();
        refused(
            &server,
            tls13(&pki.hub, Some(&dev)),
            is(CertificateError::UnknownIssuer),
        )
        .await;
        trust.set_ca_status(&id, CaStatus::Active).unwrap();
        admitted(&server, tls13(&pki.hub, Some(&dev))).await;
        trust.set_ca_status(&id, CaStatus::Revoked).unwrap();
        refused(
            &server,
            tls13(&pki.hub, Some(&dev)),
            is(CertificateError::UnknownIssuer),
        )
        .await;
    }

    #[tokio::test]
    async fn a_non_active_intermediate_blocks_chains_under_an_active_root() {
        let pki = pki();
        let trust = registered(&[&pki.root]);
        trust
            .register_ca_with_status(pki.issuing.certificate().clone(), CaStatus::Active)
            .unwrap();
        let server = hub_config(&pki, &trust, &[], false);
        let dev = device(&pki.issuing, "sensor-1");
        admitted(&server, tls13(&pki.hub, Some(&dev))).await;

        let id = pki.issuing.certificate().fingerprint_sha256();
        trust.set_ca_status(&id, CaStatus::Revoked).unwrap();
        refused(
            &server,
            tls13(&pki.hub, Some(&dev)),
            is(CertificateError::Revoked),
        )
        .await;
        trust.set_ca_status(&id, CaStatus::Inactive).unwrap();
        refused(
            &server,
            tls13(&pki.hub, Some(&dev)),
            is(CertificateError::UnknownIssuer),
        )
        .await;
        // A device straight under the root is not affected.
        let direct = device(&pki.root, "gateway-1");
        admitted(&server, tls13(&pki.hub, Some(&direct))).await;
    }

    #[tokio::test]
    async fn a_crl_added_later_revokes_the_device() {
        let pki = pki();
        let trust = registered(&[&pki.root]);
        let server = hub_config(&pki, &trust, &[], false);
        let bad = device(&pki.issuing, "sensor-bad");
        let good = device(&pki.issuing, "sensor-good");
        admitted(&server, tls13(&pki.hub, Some(&bad))).await;

        // The CRL comes from the intermediate, which must be registered to vouch for it.
        let crl = revoke(&pki.issuing, 1, &[&bad]);
        assert!(matches!(
            trust.add_crl(crl.clone()),
            Err(Error::Unauthenticated(_))
        ));
        trust
            .register_ca_with_status(pki.issuing.certificate().clone(), CaStatus::Active)
            .unwrap();
        trust.add_crl(crl).unwrap();
        assert!(trust.is_revoked(bad.leaf()));

        refused(
            &server,
            tls13(&pki.hub, Some(&bad)),
            is(CertificateError::Revoked),
        )
        .await;
        admitted(&server, tls13(&pki.hub, Some(&good))).await;

        // The root's CRL revoking the intermediate cuts off the whole subtree, although the
        // intermediate is registered ACTIVE (an anchor of its own) and is_revoked says so.
        let issuing = pki.issuing.certificate();
        assert!(!trust.is_revoked(issuing));
        trust
            .add_crl(
                pki.root
                    .issue_crl(&CrlOptions::new(
                        1,
                        vec![Revocation::of(issuing, RevocationReason::CaCompromise)],
                    ))
                    .unwrap(),
            )
            .unwrap();
        assert!(trust.is_revoked(issuing));
        refused(
            &server,
            tls13(&pki.hub, Some(&good)),
            is(CertificateError::Revoked),
        )
        .await;
        // A device straight under the root still connects.
        admitted(&server, tls13(&pki.hub, Some(&device(&pki.root, "gw-1")))).await;
    }

    #[tokio::test]
    async fn session_resumption_cannot_bypass_revocation() {
        let pki = pki();
        let trust = registered(&[&pki.root]);
        let server = hub_config(&pki, &trust, &[], false);
        let dev = device(&pki.root, "sensor-1");
        // The same ClientConfig (and so the same client session cache) for both connections.
        let config = tls13(&pki.hub, Some(&dev));
        admitted(&server, config.clone()).await;
        trust.add_crl(revoke(&pki.root, 1, &[&dev])).unwrap();
        refused(&server, config, is(CertificateError::Revoked)).await;
    }

    #[derive(Debug, Default)]
    struct DenyList {
        denied: Vec<String>,
        seen: Mutex<Vec<String>>,
    }

    impl CertificateStatus for DenyList {
        fn check(&self, leaf: &Certificate) -> std::result::Result<(), CertificateError> {
            let cn = leaf.subject_common_name().unwrap_or_default().to_owned();
            self.seen.lock().unwrap().push(cn.clone());
            if self.denied.contains(&cn) {
                Err(CertificateError::ApplicationVerificationFailure)
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn the_status_hook_rules_on_authenticated_devices_only() {
        let pki = pki();
        let trust = registered(&[&pki.root]);
        let server = hub_config(&pki, &trust, &[], false);
        let hook = Arc::new(DenyList {
            denied: vec!["sensor-disabled".into()],
            ..DenyList::default()
        });
        trust.set_status_hook(hook.clone());

        let ok = device(&pki.root, "sensor-ok");
        let disabled = device(&pki.root, "sensor-disabled");
        let other = CertificateAuthority::new_root(&CaOptions::new("Stranger CA")).unwrap();
        let stranger = device(&other, "stranger");

        admitted(&server, tls13(&pki.hub, Some(&ok))).await;
        refused(
            &server,
            tls13(&pki.hub, Some(&disabled)),
            is(CertificateError::ApplicationVerificationFailure),
        )
        .await;
        refused(
            &server,
            tls13(&pki.hub, Some(&stranger)),
            is(CertificateError::UnknownIssuer),
        )
        .await;
        // The stranger's certificate never reached the hook.
        assert_eq!(
            *hook.seen.lock().unwrap(),
            vec!["sensor-ok".to_string(), "sensor-disabled".to_string()]
        );

        trust.clear_status_hook();
        admitted(&server, tls13(&pki.hub, Some(&disabled))).await;
    }

    #[tokio::test]
    async fn an_expired_device_certificate_is_refused() {
        let pki = pki();
        let trust = registered(&[&pki.root]);
        let server = hub_config(&pki, &trust, &[], false);
        // Made with rcgen directly: the PKI refuses to issue certificates that are expired.
        let key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256().unwrap());
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "sensor-old");
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
        params.serial_number = Some(random_serial().unwrap());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(
                &RcgenKey::new(key.clone()).unwrap(),
                pki.root.rcgen_issuer(),
            )
            .unwrap();
        let expired = X509Credential::new(vec![cert.der().clone()], key).unwrap();
        refused(&server, tls13(&pki.hub, Some(&expired)), |e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                )
            )
        })
        .await;
    }

    #[tokio::test]
    async fn a_client_certificate_is_mandatory_unless_allowed() {
        let pki = pki();
        let trust = registered(&[&pki.root]);
        let strict = hub_config(&pki, &trust, &[], false);
        refused(&strict, tls13(&pki.hub, None), |e| {
            *e == rustls::Error::NoCertificatesPresented
        })
        .await;

        let lenient = hub_config(&pki, &trust, &[], true);
        let accepted = admitted(&lenient, tls13(&pki.hub, None)).await;
        assert_eq!(accepted.peer_cn, None);
        // A certificate that is presented is still verified.
        let other = CertificateAuthority::new_root(&CaOptions::new("Stranger CA")).unwrap();
        refused(
            &lenient,
            tls13(&pki.hub, Some(&device(&other, "stranger"))),
            is(CertificateError::UnknownIssuer),
        )
        .await;
        let accepted = admitted(&lenient, tls13(&pki.hub, Some(&device(&pki.root, "d-1")))).await;
        assert_eq!(accepted.peer_cn.as_deref(), Some("d-1"));
    }

    #[tokio::test]
    async fn the_server_certificate_covers_its_names_and_only_them() {
        let pki = pki();
        let trust = registered(&[&pki.root]);
        let server = hub_config(&pki, &trust, &[], false);
        let dev = device(&pki.root, "sensor-1");
        // The TLS server name is what is checked; the socket is always 127.0.0.1.
        for name in [
            "localhost",
            "127.0.0.1",
            "::1",
            "hub.example",
            "HUB.example",
        ] {
            let (accepted, read) = handshake(&server, tls13(&pki.hub, Some(&dev)), name).await;
            accepted.unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(read.unwrap(), HELLO, "{name}");
        }
        let (_, read) = handshake(&server, tls13(&pki.hub, Some(&dev)), "evil.example").await;
        assert!(
            matches!(
                read,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                ))
            ),
            "{read:?}"
        );
        // A client that trusts another CA does not accept the hub.
        let (_, read) = handshake(&server, tls13(&pki.root, Some(&dev)), "localhost").await;
        assert!(
            matches!(
                read,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer
                ))
            ),
            "{read:?}"
        );
    }

    #[test]
    fn the_server_certificate_has_the_right_content() {
        let root =
            CertificateAuthority::new_root(&CaOptions::new("Hub Root").with_path_len(1)).unwrap();
        let hub = root
            .new_intermediate(&CaOptions::new("Hub Issuing"))
            .unwrap();
        let names = [
            "mqtt.local".to_string(),
            "10.0.0.7".into(),
            "[fd00::1]".into(),
        ];
        let (chain, key) = issue_server_certificate(&hub, &names).unwrap();
        assert_eq!(chain.len(), 2, "server certificate + the intermediate");
        assert_eq!(chain[1], *hub.certificate().der());
        let cert = Certificate::from_der(chain[0].as_ref()).unwrap();
        assert_eq!(cert.public_key_spki(), key.public_key_spki());
        assert_eq!(cert.subject_common_name(), Some("mqtt.local"));
        assert!(!cert.is_ca());
        assert_eq!(
            cert.extended_key_usage(),
            [crate::pki::ExtendedKeyUsage::ServerAuth]
        );
        use crate::pki::SubjectAltName as San;
        let ip = |s: &str| San::Ip(s.parse().unwrap());
        assert_eq!(
            cert.subject_alt_names(),
            [
                San::Dns("mqtt.local".into()),
                ip("10.0.0.7"),
                ip("fd00::1"),
                San::Dns("localhost".into()),
                ip("127.0.0.1"),
                ip("::1"),
            ]
        );
        assert!(cert.not_after() <= hub.certificate().not_after());

        // Duplicates are dropped; no names at all still covers the loopback names.
        let (chain, _) =
            issue_server_certificate(&root, &["LOCALHOST".into(), "::1".into()]).unwrap();
        assert_eq!(chain.len(), 1, "a root is not sent");
        let cert = Certificate::from_der(chain[0].as_ref()).unwrap();
        assert_eq!(cert.subject_alt_names().len(), 3);
        let (chain, _) = issue_server_certificate(&root, &[]).unwrap();
        let cert = Certificate::from_der(chain[0].as_ref()).unwrap();
        assert_eq!(cert.subject_common_name(), Some("localhost"));

        for bad in [
            "",
            "has space.example",
            "under_score..example",
            "*.wild.example",
        ] {
            assert!(
                matches!(
                    issue_server_certificate(&root, &[bad.to_string()]),
                    Err(Error::InvalidInput { .. })
                ),
                "{bad:?} must be refused"
            );
        }
    }

    #[tokio::test]
    async fn alpn_picks_the_hubs_first_choice_the_client_offers() {
        let pki = pki();
        let trust = registered(&[&pki.root]);
        let server = hub_config(&pki, &trust, &[b"mqtt", b"x-amzn-mqtt-ca"], false);
        let dev = device(&pki.root, "sensor-1");
        let offer = |alpn: &[&[u8]]| client(&pki.hub, Some(&dev), &[&rustls::version::TLS13], alpn);

        let accepted = admitted(&server, offer(&[b"x-amzn-mqtt-ca", b"mqtt"])).await;
        assert_eq!(accepted.alpn.as_deref(), Some(&b"mqtt"[..]));
        let accepted = admitted(&server, offer(&[b"x-amzn-mqtt-ca"])).await;
        assert_eq!(accepted.alpn.as_deref(), Some(&b"x-amzn-mqtt-ca"[..]));
        let accepted = admitted(&server, offer(&[])).await;
        assert_eq!(accepted.alpn, None);
        refused(&server, offer(&[b"h2"]), |e| {
            *e == rustls::Error::NoApplicationProtocol
        })
        .await;
    }

    #[test]
    fn server_config_refuses_bad_input() {
        let pki = pki();
        let trust = registered(&[&pki.root]);
        let (chain, key) = issue_server_certificate(&pki.hub, &[]).unwrap();
        let other: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256().unwrap());
        let invalid = |r: Result<Arc<ServerConfig>>| matches!(r, Err(Error::InvalidInput { .. }));
        assert!(invalid(server_config(
            chain.clone(),
            other,
            trust.clone(),
            vec![],
            false
        )));
        assert!(invalid(server_config(
            vec![],
            key.clone(),
            trust.clone(),
            vec![],
            false
        )));
        assert!(invalid(server_config(
            chain.clone(),
            key.clone(),
            trust.clone(),
            vec![Vec::new()],
            false
        )));
        let config = server_config(chain, key, trust, vec![b"mqtt".to_vec()], false).unwrap();
        assert_eq!(config.send_tls13_tickets, 0);
    }

    /// Runs the openssl CLI in `dir`; returns (success, stdout + stderr).
    fn openssl(dir: &Path, args: &[String]) -> (bool, String) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("the openssl CLI must be installed (.ci/run installs it)");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    #[tokio::test]
    async fn openssl_s_client_completes_mutual_tls() {
        let pki = pki();
        let trust = registered(&[&pki.root]);
        let server = hub_config(&pki, &trust, &[], false);
        let key = SoftwareKey::generate_p256().unwrap();
        let cert = pki
            .root
            .issue(
                &DeviceId::new("openssl-dev").unwrap(),
                key.public_key_spki(),
                &DeviceCertOptions::default(),
            )
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), pki.hub.certificate().to_pem()).unwrap();
        std::fs::write(dir.path().join("dev.pem"), cert.to_pem()).unwrap();
        std::fs::write(
            dir.path().join("dev.key"),
            key.to_pkcs8_pem().unwrap().as_bytes(),
        )
        .unwrap();

        let run = |addr: SocketAddr, key_file: &'static str| {
            let dir = dir.path().to_owned();
            let args: Vec<String> = [
                "s_client",
                "-connect",
                &addr.to_string(),
                "-CAfile",
                "ca.pem",
                "-cert",
                "dev.pem",
                "-key",
                key_file,
                "-verify_return_error",
                "-verify_ip",
                "127.0.0.1",
                "-ign_eof",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            tokio::task::spawn_blocking(move || openssl(&dir, &args))
        };

        let (addr, task) = serve_once(server.clone()).await;
        let (ok, out) = tokio::time::timeout(DEADLINE, run(addr, "dev.key"))
            .await
            .unwrap()
            .unwrap();
        let accepted = task.await.unwrap().expect("the hub accepted openssl");
        assert_eq!(accepted.peer_cn.as_deref(), Some("openssl-dev"));
        assert!(ok, "openssl s_client failed:\n{out}");
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        assert!(out.contains("hello device"), "{out}");

        // After revocation openssl gets no greeting: the hub refused its certificate.
        trust.add_crl(revoke_cert(&pki.root, &cert)).unwrap();
        let (addr, task) = serve_once(server).await;
        let (_, out) = tokio::time::timeout(DEADLINE, run(addr, "dev.key"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            task.await.unwrap().unwrap_err(),
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
        );
        assert!(!out.contains("hello device"), "{out}");
    }

    fn revoke_cert(ca: &CertificateAuthority, cert: &Certificate) -> Crl {
        ca.issue_crl(&CrlOptions::new(
            1,
            vec![Revocation::of(cert, RevocationReason::KeyCompromise)],
        ))
        .unwrap()
    }
}
