//! The hub's admin endpoint: a JSON REST API over HTTPS for a running [`LocalHub`].
//!
//! [`AdminServer`] serves the hub's control plane — devices, device certificates, CAs, CRLs,
//! policies, live clients — to tools in other processes (the `fleetkit` command-line tool among
//! them). It is deliberately small and local:
//!
//! - **Loopback only.** [`AdminServer::start`] refuses any address that is not a loopback
//!   address: the API can mint device credentials, so it is not a network service.
//! - **TLS** with a server certificate for `localhost`, `127.0.0.1` and `::1` issued from the
//!   hub's CA, so a client verifies it with the same CA file devices use.
//! - **A bearer token**: 32 random bytes (base64url), new on every start, compared in constant
//!   time. A missing or wrong token gets `401` with a JSON error body before any handler runs,
//!   so nothing changes. The token is an [`AdminToken`], whose `Debug` is redacted.
//!
//! # Routes
//!
//! Every request carries `Authorization: Bearer <token>`; bodies are JSON.
//!
//! | Method and path                        | Body                          | Does                                      |
//! |----------------------------------------|-------------------------------|-------------------------------------------|
//! | `GET /v1/status`                       |                               | endpoints (`mqtt`, `websocket`, `tcp`, `admin`), the hub CA, counts |
//! | `GET /v1/devices`                      |                               | every device                              |
//! | `POST /v1/devices`                     | `{id, attributes?, groups?, thing_type?, enabled?}` | registers a device (`201`) |
//! | `GET /v1/devices/{id}`                 |                               | a device, its certificates and policies   |
//! | `POST /v1/devices/{id}/enable`         |                               | enables it                                |
//! | `POST /v1/devices/{id}/disable`        |                               | disables it; `connections_closed`         |
//! | `POST /v1/devices/{id}/credentials`    |                               | new key + certificate from the hub CA, registered ACTIVE (`201`); the response is the only copy of the key |
//! | `POST /v1/devices/{id}/commands/{name}` | the command's payload, as raw bytes (any content type) | sends command `name` to the device (QoS 1); `sessions` it reached |
//! | `GET /v1/devices/{id}/twin`            |                               | the device's twin as the hub holds it     |
//! | `GET /v1/certificates?state=S&device=D` |                              | registered device certificates with their PEM (both filters optional) |
//! | `POST /v1/certificates`                | `{device, certificate_pem}`   | registers a device certificate ACTIVE (`201`) |
//! | `GET /v1/certificates/{id}`            |                               | a device certificate                      |
//! | `PUT /v1/certificates/{id}/state`      | `{state}`: `active`, `inactive`, `revoked` | `connections_closed`         |
//! | `GET /v1/cas`                          |                               | registered CAs, with their PEM            |
//! | `POST /v1/cas`                         | `{certificate_pem}`           | registers a CA ACTIVE (`201`)             |
//! | `PUT /v1/cas/{id}/status`              | `{status}`: `active`, `inactive`, `revoked` | `connections_closed`        |
//! | `GET /v1/cas/{id}/devices`             |                               | the device certificates that chain to the CA (directly or through registered CAs below it), in every state: what revoking it cuts off |
//! | `POST /v1/crls`                        | `{crl_pem}`                   | adds a CRL (`201`); `connections_closed`  |
//! | `GET /v1/policies`                     |                               | policy names, versions and targets        |
//! | `GET /v1/policies/{name}`              |                               | a policy and its document                 |
//! | `PUT /v1/policies/{name}`              | a policy document (AWS IoT policy JSON) | stores a new version; returns it |
//! | `POST /v1/policies/{name}/attach`      | one of `{device}`, `{certificate}`, `{group}`, `{scope}` | attaches it |
//! | `POST /v1/policies/{name}/detach`      | the same                      | detaches it                               |
//! | `GET /v1/clients`                      |                               | client ids of live MQTT connections       |
//! | `GET /v1/audit?device_expiry_days=N&ca_expiry_days=N` |                | Device Defender's certificate checks over the fleet (both thresholds optional, default 30) |
//!
//! Certificate and CA ids are SHA-256 fingerprints of the DER, lowercase hex (AWS's certificate
//! id). A certificate in an answer is `{id, subject, issuer, serial, not_before, not_after}`
//! (times RFC 3339, UTC), with `state` (`active`, `inactive`, `revoked`) and `device` where
//! they apply: `GET /v1/devices/{id}` lists the device's certificates so, and `GET
//! /v1/certificates` adds `certificate_pem` to each, so a fleet tool (a rotation campaign's
//! selection, say) can look at issuers and key ids with one request.
//!
//! `POST /v1/devices/{id}/commands/{name}` takes the body as the payload, byte for byte (a
//! rotation request is JSON, but the hub does not look): `{device, command, sessions}`, where
//! `sessions` counts the sessions it reached, live or queued for an offline persistent
//! session. When no session of the device subscribes to its commands the answer is `503`
//! `unavailable`, and nothing is queued; an unknown device is `404`, a bad command name
//! (empty, or with `/`, `+`, `#`) `400`.
//!
//! `GET /v1/devices/{id}/twin` answers the twin in fleetkit's neutral shape: `{desired,
//! reported, version, desired_version, reported_version}` (see
//! [`TwinDocument`](crate::device::twin::TwinDocument)); a device that never reported has
//! empty sections at version 0.
//!
//! `GET /v1/cas/{id}/devices` answers `{ca: {id, subject, status, hub_ca}, certificates: [{id,
//! device, state}], devices: [id…], active: N}`: `hub_ca` says whether it is the hub's own CA,
//! `devices` are the distinct devices, `active` counts the ACTIVE certificates (those a
//! revocation of the CA leaves to re-provision).
//!
//! `GET /v1/audit` answers `{findings: […], counts: {critical, high, medium, low},
//! device_expiry_days, ca_expiry_days}`, the findings most severe first. Each is a
//! [`CertificateFinding`] with its fields as:
//!
//! - `check`: the AWS check name, e.g. `DEVICE_CERTIFICATE_EXPIRING_CHECK`;
//! - `severity`: `CRITICAL`, `HIGH`, `MEDIUM` or `LOW`;
//! - `resource`: `{kind, id}`, `kind` one of `ca_certificate`, `device_certificate`,
//!   `client_id`;
//! - `devices`, `reason`, and `reason_code` (AWS's, or `null`);
//! - `affected`: `[{certificate, device}]`, the ACTIVE device certificates under a revoked CA;
//! - `summary`: the finding in one line, as its `Display` writes it.
//!
//! # Errors
//!
//! Failures answer `{"error": kind, "message": …, "field"?: …}` with the status of the
//! [`Error`] variant: `NotFound` 404 `not_found`; `AlreadyExists` 409 `already_exists`;
//! `InvalidInput` 400 `invalid_input` (with `field`); `PermissionDenied` 403
//! `permission_denied`; `Conflict` 409 `conflict`; `Precondition` 409 `precondition_failed`;
//! `Unauthenticated`, `Expired`, `Revoked`, `Untrusted` 422 (the input names something the hub
//! will not trust, such as a CRL no registered CA signed); `NotSupported` 501; `Unavailable`
//! 503; `Timeout` 504; anything else 500 `internal`. A missing or wrong token is 401
//! `unauthenticated`. A request that fails changes nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ring::rand::SecureRandom as _;
use rustls::ServerConfig;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use zeroize::Zeroizing;

use super::hub::LocalHub;
use super::registry::{CertificateRecord, CertificateState, DeviceRecord};
use super::tls::CaStatus;
use crate::identity::{DeviceId, TlsSigningKey};
use crate::lifecycle::audit::{AuditConfig, CertificateFinding, Severity};
use crate::pki::{Certificate, Crl};
use crate::policy::{AttachTarget, PolicyDocument};
use crate::{Error, Result};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
/// How long [`AdminServer::shutdown`] lets requests in flight finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The admin API's bearer token: 32 random bytes, base64url without padding.
///
/// Its `Debug` output is redacted; read it with [`expose_secret`](Self::expose_secret) only to
/// hand it to a client (for example in a 0600 file), never to log it. The memory is zeroized
/// on drop.
#[derive(Clone)]
pub struct AdminToken(Zeroizing<String>);

impl AdminToken {
    /// A new token from the operating system's random source.
    pub fn generate() -> Result<Self> {
        use base64::Engine as _;
        let mut bytes = Zeroizing::new([0u8; 32]);
        ring::rand::SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| Error::Crypto("the system random source failed".into()))?;
        Ok(AdminToken(Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref()),
        )))
    }

    /// The token text, for the `Authorization: Bearer` header.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, compared in constant time.
    fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.0.as_bytes().ct_eq(presented))
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// The admin HTTPS endpoint of a running [`LocalHub`]. Dropping it stops it (requests in
/// flight are cut off; [`shutdown`](Self::shutdown) lets them finish).
///
/// ```no_run
/// # async fn f() -> fleetkit::Result<()> {
/// use std::sync::Arc;
/// use fleetkit::local::LocalHub;
/// use fleetkit::local::admin::AdminServer;
///
/// let hub = Arc::new(LocalHub::builder().start().await?);
/// let admin = AdminServer::start(hub.clone(), "127.0.0.1:0".parse().unwrap()).await?;
/// // Hand these to the client (the token in a private file), with the hub's CA certificate.
/// println!("admin API at {}", admin.url());
/// let _token = admin.token().expose_secret();
/// admin.shutdown().await;
/// # Ok(()) }
/// ```
pub struct AdminServer {
    addr: SocketAddr,
    token: AdminToken,
    serving: Serving,
}

impl fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminServer")
            .field("addr", &self.addr)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

struct AppState {
    hub: Arc<LocalHub>,
    token: AdminToken,
    url: String,
}

impl AdminServer {
    /// Starts serving `hub`'s admin API on `bind` (a loopback address; port 0 picks a free
    /// port), with a new token and a server certificate from the hub's CA. Must be called
    /// inside a tokio runtime.
    ///
    /// Fails with [`Error::InvalidInput`] (field `admin bind`) for a non-loopback address, and
    /// with [`Error::Io`] if the address cannot be bound.
    pub async fn start(hub: Arc<LocalHub>, bind: SocketAddr) -> Result<AdminServer> {
        if !bind.ip().is_loopback() {
            return Err(Error::invalid(
                "admin bind",
                format!(
                    "{bind} is not a loopback address; the admin API only listens on \
                     127.0.0.1 or ::1"
                ),
            ));
        }
        let token = AdminToken::generate()?;
        let tls = tokio_rustls::TlsAcceptor::from(server_config(&hub)?);
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|e| Error::io(format!("{bind}"), e))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(AppState {
            hub,
            token: token.clone(),
            url: format!("https://{addr}"),
        });
        let serving = Serving::start(listener, tls, router(state));
        tracing::info!(%addr, "admin API listening");
        Ok(AdminServer {
            addr,
            token,
            serving,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `https://127.0.0.1:<port>` (routes are under `/v1/`).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The bearer token clients must present.
    pub fn token(&self) -> &AdminToken {
        &self.token
    }

    /// Stops accepting, lets requests in flight finish (up to a few seconds), and returns.
    pub async fn shutdown(self) {
        self.serving.shutdown().await;
    }
}

/// TLS for the admin endpoint: a serverAuth certificate for the loopback names from the hub's
/// CA, no client certificates (the token authenticates), ALPN `http/1.1`.
pub(crate) fn server_config(hub: &LocalHub) -> Result<Arc<ServerConfig>> {
    let (chain, key) = super::tls::issue_server_certificate(hub.ca(), &[])?;
    let key: Arc<dyn rustls::sign::SigningKey> = Arc::new(TlsSigningKey::new(key));
    let certified = CertifiedKey::new(chain, key);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::NotSupported(format!("TLS protocol versions: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An HTTPS server's accept loop and the switch that stops it: shutting down lets requests
/// in flight finish (a few seconds at most); dropping aborts every connection.
pub(crate) struct Serving {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Serving {
    /// Serves `router` on `listener` with `tls` until stopped.
    pub(crate) fn start(
        listener: TcpListener,
        tls: tokio_rustls::TlsAcceptor,
        router: Router,
    ) -> Serving {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, tls, router, stopped));
        Serving {
            stop,
            task: Some(task),
        }
    }

    /// Stops accepting, lets requests in flight finish, and returns.
    pub(crate) async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            // Aborting the accept loop drops its JoinSet, which aborts every connection.
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    router: Router,
    mut stopped: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop_requested(&mut stopped) => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop_requested(&mut stopped) => break,
        };
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let tls = tls.clone();
        let router = router.clone();
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "admin API TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = TowerToHyperService::new(router);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop_requested(&mut stopped) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        });
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        connections.abort_all();
    }
}

/// Returns once a stop is requested (or the server handle is gone).
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    // Not `select!` on `wait_for` directly: its guard is not `Send`.
    let _ = stopped.wait_for(|s| *s).await;
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/devices", get(list_devices).post(create_device))
        .route("/v1/devices/{id}", get(get_device))
        .route("/v1/devices/{id}/enable", post(enable_device))
        .route("/v1/devices/{id}/disable", post(disable_device))
        .route("/v1/devices/{id}/credentials", post(issue_credential))
        .route("/v1/devices/{id}/commands/{name}", post(send_command))
        .route("/v1/devices/{id}/twin", get(get_twin))
        .route(
            "/v1/certificates",
            get(list_certificates).post(register_certificate),
        )
        .route("/v1/certificates/{id}", get(get_certificate))
        .route("/v1/certificates/{id}/state", put(set_certificate_state))
        .route("/v1/cas", get(list_cas).post(register_ca))
        .route("/v1/cas/{id}/status", put(set_ca_status))
        .route("/v1/cas/{id}/devices", get(ca_devices))
        .route("/v1/crls", post(add_crl))
        .route("/v1/policies", get(list_policies))
        .route("/v1/policies/{name}", get(get_policy).put(put_policy))
        .route("/v1/policies/{name}/attach", post(attach_policy))
        .route("/v1/policies/{name}/detach", post(detach_policy))
        .route("/v1/clients", get(clients))
        .route("/v1/audit", get(audit))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // After the routes and fallbacks, so it guards them all: an unauthenticated caller
        // learns nothing, not even which paths exist.
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// Lets a request through only with the right bearer token.
async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request.headers().get(header::AUTHORIZATION).and_then(|v| {
        let v = v.as_bytes();
        let space = v.iter().position(|b| *b == b' ')?;
        let (scheme, rest) = v.split_at(space);
        scheme
            .eq_ignore_ascii_case(b"bearer")
            .then(|| rest.trim_ascii())
    });
    match presented {
        Some(token) if state.token.matches(token) => next.run(request).await,
        _ => {
            tracing::info!(path = %request.uri().path(), "admin API request without a valid token");
            let mut response = error_response(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "a valid bearer token is required (see admin.json in the hub's data directory)",
                None,
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fleetkit\""),
            );
            response
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// A fleetkit [`Error`] as an HTTP response.
struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

type ApiResult = std::result::Result<Response, ApiError>;

fn error_response(status: StatusCode, kind: &str, message: &str, field: Option<&str>) -> Response {
    let mut body = json!({ "error": kind, "message": message });
    if let Some(field) = field {
        body["field"] = Value::from(field);
    }
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let (status, kind, field) = match &e {
            Error::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found", None),
            Error::AlreadyExists { .. } => (StatusCode::CONFLICT, "already_exists", None),
            Error::InvalidInput { field, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_input",
                Some(field.as_str()),
            ),
            Error::PermissionDenied(_) => (StatusCode::FORBIDDEN, "permission_denied", None),
            Error::Conflict { .. } => (StatusCode::CONFLICT, "conflict", None),
            Error::Precondition(_) => (StatusCode::CONFLICT, "precondition_failed", None),
            Error::Unauthenticated(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "unauthenticated", None)
            }
            Error::Expired(_) => (StatusCode::UNPROCESSABLE_ENTITY, "expired", None),
            Error::Revoked(_) => (StatusCode::UNPROCESSABLE_ENTITY, "revoked", None),
            Error::Untrusted(_) => (StatusCode::UNPROCESSABLE_ENTITY, "untrusted", None),
            Error::NotSupported(_) => (StatusCode::NOT_IMPLEMENTED, "not_supported", None),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            Error::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout", None),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        };
        if status.is_server_error() {
            tracing::warn!(error = %e, "admin API request failed");
        }
        error_response(status, kind, &e.to_string(), field)
    }
}

async fn not_found(request: Request) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no such route: {}", request.uri().path()),
        None,
    )
}

async fn method_not_allowed(request: Request) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
        None,
    )
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Parses a JSON request body into `T`, refusing unknown fields.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T> {
    if body.is_empty() {
        return Err(Error::invalid("body", "a JSON body is required"));
    }
    serde_json::from_slice(body).map_err(|e| Error::invalid("body", e.to_string()))
}

fn ok(status: StatusCode, body: Value) -> ApiResult {
    Ok((status, axum::Json(body)).into_response())
}

/// Runs an admin change on a blocking thread: it writes and fsyncs the data directory. The
/// change runs to completion even if the client goes away.
async fn blocking<T: Send + 'static>(
    hub: &Arc<LocalHub>,
    f: impl FnOnce(&LocalHub) -> Result<T> + Send + 'static,
) -> Result<T> {
    let hub = hub.clone();
    tokio::task::spawn_blocking(move || f(&hub))
        .await
        .map_err(|e| Error::Unavailable(format!("the admin operation did not complete: {e}")))?
}

/// RFC 3339 in UTC, to the second.
fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn state_name(state: CertificateState) -> &'static str {
    match state {
        CertificateState::Active => "active",
        CertificateState::Inactive => "inactive",
        _ => "revoked",
    }
}

fn ca_status_name(status: CaStatus) -> &'static str {
    match status {
        CaStatus::Active => "active",
        CaStatus::Inactive => "inactive",
        _ => "revoked",
    }
}

fn parse_state(text: &str) -> Result<CertificateState> {
    match text.to_ascii_lowercase().as_str() {
        "active" => Ok(CertificateState::Active),
        "inactive" => Ok(CertificateState::Inactive),
        "revoked" => Ok(CertificateState::Revoked),
        _ => Err(Error::invalid(
            "state",
            format!("{text:?} is not one of active, inactive, revoked"),
        )),
    }
}

fn parse_ca_status(text: &str) -> Result<CaStatus> {
    match text.to_ascii_lowercase().as_str() {
        "active" => Ok(CaStatus::Active),
        "inactive" => Ok(CaStatus::Inactive),
        "revoked" => Ok(CaStatus::Revoked),
        _ => Err(Error::invalid(
            "status",
            format!("{text:?} is not one of active, inactive, revoked"),
        )),
    }
}

fn device_json(d: &DeviceRecord) -> Value {
    let attributes: serde_json::Map<String, Value> = d
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    json!({
        "id": d.id,
        "enabled": d.enabled,
        "thing_type": d.thing_type,
        "attributes": attributes,
        "groups": d.groups,
    })
}

fn certificate_json(c: &Certificate) -> Value {
    json!({
        "id": c.fingerprint_sha256(),
        "subject": c.subject(),
        "issuer": c.issuer(),
        "serial": c.serial_hex(),
        "not_before": rfc3339(c.not_before()),
        "not_after": rfc3339(c.not_after()),
    })
}

fn target_json(t: &AttachTarget) -> Value {
    match t {
        AttachTarget::Certificate(id) => json!({ "certificate": id }),
        AttachTarget::Device(id) => json!({ "device": id }),
        AttachTarget::Group(g) => json!({ "group": g }),
        AttachTarget::Scope(s) => json!({ "scope": s }),
    }
}

/// The registered certificates as (id, state, device), parsed from the registry's snapshot:
/// the registry offers no listing of its own.
fn certificates(hub: &LocalHub) -> Vec<(Certificate, CertificateState, String)> {
    let snapshot = hub.with_registry(|r| r.snapshot());
    snapshot
        .certificates
        .into_iter()
        .filter_map(|(pem, state, device)| {
            Certificate::from_pem(&pem).ok().map(|c| (c, state, device))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn status(State(s): State<Arc<AppState>>) -> ApiResult {
    let hub = &s.hub;
    let (devices, certificates, policies) = hub.with_registry(|r| {
        let snapshot = r.snapshot();
        (
            snapshot.devices.len(),
            snapshot.certificates.len(),
            r.policies().policy_names().len(),
        )
    });
    let ca = hub.ca_certificate();
    ok(
        StatusCode::OK,
        json!({
            "mqtt": format!("mqtts://{}", hub.mqtt_addr()),
            "websocket": hub.websocket_addr().map(|a| format!("wss://{a}/mqtt")),
            "tcp": hub.tcp_addr().map(|a| format!("mqtt://{a}")),
            "admin": s.url,
            "ca": { "id": ca.fingerprint_sha256(), "subject": ca.subject() },
            "devices": devices,
            "certificates": certificates,
            "policies": policies,
            "cas": hub.trust_store().cas().len(),
            "crls": hub.trust_store().crls().len(),
            "connections": hub.connection_count(),
            "subscriptions": hub.subscription_count(),
        }),
    )
}

async fn list_devices(State(s): State<Arc<AppState>>) -> ApiResult {
    let devices = s.hub.with_registry(|r| r.snapshot().devices);
    let list: Vec<Value> = devices.iter().map(device_json).collect();
    ok(StatusCode::OK, json!({ "devices": list }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDevice {
    id: String,
    #[serde(default)]
    thing_type: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

async fn create_device(State(s): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let req: CreateDevice = parse_body(&body)?;
    DeviceId::new(req.id.as_str())?;
    let mut device = DeviceRecord::new(&req.id);
    device.enabled = req.enabled;
    if let Some(t) = req.thing_type {
        if t.trim().is_empty() {
            return Err(Error::invalid("thing_type", "must not be empty").into());
        }
        device.thing_type = Some(t);
    }
    for (name, value) in &req.attributes {
        if name.trim().is_empty() {
            return Err(Error::invalid("attributes", "an attribute name is empty").into());
        }
        device = device.with_attribute(name, value);
    }
    for group in &req.groups {
        if group.trim().is_empty() {
            return Err(Error::invalid("groups", "a group name is empty").into());
        }
        if !device.groups.contains(group) {
            device = device.in_group(group);
        }
    }
    let body = device_json(&device);
    blocking(&s.hub, move |hub| hub.create_device(device)).await?;
    ok(StatusCode::CREATED, body)
}

async fn get_device(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let (device, policies) = s.hub.with_registry(|r| {
        let device = r.device(&id).cloned();
        let target = AttachTarget::Device(id.clone());
        let engine = r.policies();
        let policies: Vec<String> = engine
            .policy_names()
            .into_iter()
            .filter(|name| engine.targets_of(name).contains(&target))
            .collect();
        (device, policies)
    });
    let device = device.ok_or_else(|| Error::NotFound {
        what: "device",
        id: id.clone(),
    })?;
    let certs: Vec<Value> = certificates(&s.hub)
        .into_iter()
        .filter(|(_, _, d)| *d == id)
        .map(|(c, state, _)| {
            let mut v = certificate_json(&c);
            v["state"] = Value::from(state_name(state));
            v
        })
        .collect();
    let mut body = device_json(&device);
    body["certificates"] = Value::from(certs);
    body["policies"] = Value::from(policies);
    ok(StatusCode::OK, body)
}

async fn set_enabled(s: &AppState, id: String, enabled: bool) -> ApiResult {
    let device = id.clone();
    let closed = blocking(&s.hub, move |hub| hub.set_device_enabled(&device, enabled)).await?;
    ok(
        StatusCode::OK,
        json!({ "device": id, "enabled": enabled, "connections_closed": closed }),
    )
}

async fn enable_device(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    set_enabled(&s, id, true).await
}

async fn disable_device(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    set_enabled(&s, id, false).await
}

async fn issue_credential(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let device = id.clone();
    let credential = blocking(&s.hub, move |hub| hub.issue_device_credential(&device)).await?;
    let key_der = credential.signer().export_pkcs8_der()?;
    let key_pem = Zeroizing::new(crate::identity::pem_encode("PRIVATE KEY", &key_der));
    let leaf = credential.leaf();
    let body = json!({
        "device": id,
        "certificate_id": leaf.fingerprint_sha256(),
        "certificate_pem": leaf.to_pem(),
        "chain_pem": credential.chain_pem(),
        "private_key_pem": key_pem.as_str(),
        "ca_pem": s.hub.ca_certificate().to_pem(),
        "not_after": rfc3339(leaf.not_after()),
    });
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn send_command(
    State(s): State<Arc<AppState>>,
    Path((id, name)): Path<(String, String)>,
    payload: Bytes,
) -> ApiResult {
    // Spawned: once asked, the command is sent even if the client goes away meanwhile.
    let hub = s.hub.clone();
    let (device, command) = (id.clone(), name.clone());
    let sessions = tokio::spawn(async move { hub.send_command(&device, &command, payload).await })
        .await
        .map_err(|e| Error::Unavailable(format!("the command was not sent: {e}")))??;
    ok(
        StatusCode::OK,
        json!({ "device": id, "command": name, "sessions": sessions }),
    )
}

async fn get_twin(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let twin = s.hub.twin(&id)?;
    let body = serde_json::to_value(&twin)
        .map_err(|e| Error::invalid("twin", format!("cannot encode the twin: {e}")))?;
    ok(StatusCode::OK, body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterCertificate {
    device: String,
    certificate_pem: String,
}

async fn register_certificate(State(s): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let req: RegisterCertificate = parse_body(&body)?;
    let certificate = Certificate::from_pem(&req.certificate_pem)?;
    let mut body = certificate_json(&certificate);
    let device = req.device.clone();
    blocking(&s.hub, move |hub| {
        hub.register_certificate(certificate, &device)
    })
    .await?;
    body["device"] = Value::from(req.device);
    body["state"] = Value::from("active");
    ok(StatusCode::CREATED, body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    device: Option<String>,
}

async fn list_certificates(
    State(s): State<Arc<AppState>>,
    query: std::result::Result<Query<CertificateQuery>, QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(|e| {
        Error::invalid(
            "query",
            format!("{}; the listing takes state and device", e.body_text()),
        )
    })?;
    let state = query.state.as_deref().map(parse_state).transpose()?;
    // Cloned out of the registry lock; the JSON (with every PEM) is built after.
    let records: Vec<CertificateRecord> = s.hub.with_registry(|r| {
        r.all_certificates()
            .into_iter()
            .filter(|c| state.is_none_or(|st| c.state == st))
            .filter(|c| query.device.as_ref().is_none_or(|d| c.device == *d))
            .cloned()
            .collect()
    });
    let list: Vec<Value> = records
        .iter()
        .map(|r| {
            let mut v = certificate_json(&r.certificate);
            v["device"] = Value::from(r.device.as_str());
            v["state"] = Value::from(state_name(r.state));
            v["certificate_pem"] = Value::from(r.certificate.to_pem());
            v
        })
        .collect();
    ok(StatusCode::OK, json!({ "certificates": list }))
}

async fn get_certificate(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let record = s
        .hub
        .with_registry(|r| r.certificate(&id).cloned())
        .ok_or_else(|| Error::NotFound {
            what: "certificate",
            id: id.clone(),
        })?;
    let mut body = certificate_json(&record.certificate);
    body["device"] = Value::from(record.device);
    body["state"] = Value::from(state_name(record.state));
    ok(StatusCode::OK, body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetState {
    state: String,
}

async fn set_certificate_state(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let req: SetState = parse_body(&body)?;
    let state = parse_state(&req.state)?;
    let cert = id.clone();
    let closed = blocking(&s.hub, move |hub| hub.set_certificate_state(&cert, state)).await?;
    ok(
        StatusCode::OK,
        json!({ "id": id, "state": state_name(state), "connections_closed": closed }),
    )
}

async fn list_cas(State(s): State<Arc<AppState>>) -> ApiResult {
    let hub_ca = s.hub.ca_certificate().fingerprint_sha256();
    let cas: Vec<Value> = s
        .hub
        .trust_store()
        .cas()
        .iter()
        .map(|(c, status)| {
            let mut v = certificate_json(c);
            v["status"] = Value::from(ca_status_name(*status));
            v["hub_ca"] = Value::from(c.fingerprint_sha256() == hub_ca);
            v["certificate_pem"] = Value::from(c.to_pem());
            v
        })
        .collect();
    ok(StatusCode::OK, json!({ "cas": cas }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterCa {
    certificate_pem: String,
}

async fn register_ca(State(s): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let req: RegisterCa = parse_body(&body)?;
    let certificate = Certificate::from_pem(&req.certificate_pem)?;
    let mut body = certificate_json(&certificate);
    blocking(&s.hub, move |hub| hub.register_ca(&certificate)).await?;
    body["status"] = Value::from("active");
    ok(StatusCode::CREATED, body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStatus {
    status: String,
}

async fn set_ca_status(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let req: SetStatus = parse_body(&body)?;
    let status = parse_ca_status(&req.status)?;
    let (certificate, _) = s.hub.trust_store().ca(&id).ok_or_else(|| Error::NotFound {
        what: "CA certificate",
        id: id.clone(),
    })?;
    let closed = blocking(&s.hub, move |hub| hub.set_ca_status(&certificate, status)).await?;
    ok(
        StatusCode::OK,
        json!({ "id": id, "status": ca_status_name(status), "connections_closed": closed }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddCrl {
    crl_pem: String,
}

async fn add_crl(State(s): State<Arc<AppState>>, body: Bytes) -> ApiResult {
    let req: AddCrl = parse_body(&body)?;
    let crl = Crl::from_pem(&req.crl_pem)?;
    let body = json!({
        "issuer": crl.issuer(),
        "entries": crl.entries().len(),
        "this_update": rfc3339(crl.this_update()),
    });
    let closed = blocking(&s.hub, move |hub| hub.add_crl(crl)).await?;
    let mut body = body;
    body["connections_closed"] = Value::from(closed);
    ok(StatusCode::CREATED, body)
}

async fn list_policies(State(s): State<Arc<AppState>>) -> ApiResult {
    let policies = s.hub.with_registry(|r| {
        let engine = r.policies();
        engine
            .policy_names()
            .into_iter()
            .filter_map(|name| {
                let info = engine.policy(&name).ok()?;
                let targets: Vec<Value> =
                    engine.targets_of(&name).iter().map(target_json).collect();
                Some(json!({
                    "name": name,
                    "default_version": info.default_version,
                    "targets": targets,
                }))
            })
            .collect::<Vec<_>>()
    });
    ok(StatusCode::OK, json!({ "policies": policies }))
}

async fn get_policy(State(s): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult {
    let (info, targets) = s.hub.with_registry(|r| {
        let engine = r.policies();
        engine
            .policy(&name)
            .map(|info| (info, engine.targets_of(&name)))
    })?;
    let document: Value = serde_json::from_str(&info.document.to_json()).map_err(|e| {
        Error::invalid("policy", format!("cannot re-read the stored document: {e}"))
    })?;
    let targets: Vec<Value> = targets.iter().map(target_json).collect();
    ok(
        StatusCode::OK,
        json!({
            "name": info.name,
            "default_version": info.default_version,
            "versions": info.versions,
            "document": document,
            "targets": targets,
        }),
    )
}

async fn put_policy(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let text = std::str::from_utf8(&body)
        .map_err(|_| Error::invalid("policy", "the document is not UTF-8"))?;
    let document = PolicyDocument::from_json(text)?;
    let policy = name.clone();
    let version = blocking(&s.hub, move |hub| hub.put_policy(&policy, &document)).await?;
    ok(StatusCode::OK, json!({ "name": name, "version": version }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    certificate: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

impl Target {
    fn into_attach_target(self) -> Result<AttachTarget> {
        let mut targets = Vec::new();
        if let Some(d) = self.device {
            targets.push(AttachTarget::Device(d));
        }
        if let Some(c) = self.certificate {
            targets.push(AttachTarget::Certificate(c));
        }
        if let Some(g) = self.group {
            targets.push(AttachTarget::Group(g));
        }
        if let Some(s) = self.scope {
            targets.push(AttachTarget::Scope(s));
        }
        let target = match targets.len() {
            1 => targets.remove(0),
            _ => {
                return Err(Error::invalid(
                    "target",
                    "give exactly one of device, certificate, group, scope",
                ));
            }
        };
        let empty = match &target {
            AttachTarget::Device(v)
            | AttachTarget::Certificate(v)
            | AttachTarget::Group(v)
            | AttachTarget::Scope(v) => v.trim().is_empty(),
        };
        if empty {
            return Err(Error::invalid("target", "the name is empty"));
        }
        Ok(target)
    }
}

async fn attach_policy(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let target = parse_body::<Target>(&body)?.into_attach_target()?;
    // A typo in a device or certificate id would attach to nothing; refuse it instead.
    s.hub.with_registry(|r| match &target {
        AttachTarget::Device(id) if r.device(id).is_none() => Err(Error::NotFound {
            what: "device",
            id: id.clone(),
        }),
        AttachTarget::Certificate(id) if r.certificate(id).is_none() => Err(Error::NotFound {
            what: "certificate",
            id: id.clone(),
        }),
        _ => Ok(()),
    })?;
    let body = json!({ "policy": name, "target": target_json(&target), "attached": true });
    blocking(&s.hub, move |hub| hub.attach_policy(&name, target)).await?;
    ok(StatusCode::OK, body)
}

async fn detach_policy(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let target = parse_body::<Target>(&body)?.into_attach_target()?;
    let body = json!({ "policy": name, "target": target_json(&target), "attached": false });
    blocking(&s.hub, move |hub| hub.detach_policy(&name, &target)).await?;
    ok(StatusCode::OK, body)
}

async fn clients(State(s): State<Arc<AppState>>) -> ApiResult {
    let clients = s.hub.connected_clients();
    ok(
        StatusCode::OK,
        json!({ "count": clients.len(), "clients": clients }),
    )
}

async fn ca_devices(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let (certificate, status) = s.hub.trust_store().ca(&id).ok_or_else(|| Error::NotFound {
        what: "CA certificate",
        id: id.clone(),
    })?;
    let ca = json!({
        "id": id,
        "subject": certificate.subject(),
        "status": ca_status_name(status),
        "hub_ca": certificate.fingerprint_sha256() == s.hub.ca_certificate().fingerprint_sha256(),
    });
    // Walks the whole inventory: off the async threads.
    let under = blocking(&s.hub, move |hub| {
        let under = hub.devices_under_ca(&certificate);
        Ok(hub.with_registry(|r| {
            under
                .into_iter()
                .map(|(cert, device)| {
                    let state = r.certificate(&cert).map(|c| c.state);
                    (cert, device, state)
                })
                .collect::<Vec<_>>()
        }))
    })
    .await?;
    let mut devices: Vec<&str> = under.iter().map(|(_, d, _)| d.as_str()).collect();
    devices.sort_unstable();
    devices.dedup();
    let active = under
        .iter()
        .filter(|(_, _, state)| *state == Some(CertificateState::Active))
        .count();
    let certificates: Vec<Value> = under
        .iter()
        .map(|(cert, device, state)| {
            json!({
                "id": cert,
                "device": device,
                "state": state.map_or("unknown", state_name),
            })
        })
        .collect();
    ok(
        StatusCode::OK,
        json!({
            "ca": ca,
            "certificates": certificates,
            "devices": devices,
            "active": active,
        }),
    )
}

/// Longest expiry threshold `GET /v1/audit` takes, in days (a hundred years).
const MAX_EXPIRY_DAYS: u64 = 36_500;

/// The audit's thresholds from the query string: `device_expiry_days` and `ca_expiry_days`,
/// each optional (AWS's 30 days when absent). Anything else in the query is refused, so a typo
/// does not silently run the audit with the defaults.
fn audit_config(query: Option<&str>) -> Result<(AuditConfig, u64, u64)> {
    let mut device_days = 30;
    let mut ca_days = 30;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let target = match name {
            "device_expiry_days" => &mut device_days,
            "ca_expiry_days" => &mut ca_days,
            _ => {
                return Err(Error::invalid(
                    "query",
                    format!(
                        "unknown parameter {name:?}; the audit takes device_expiry_days and \
                         ca_expiry_days"
                    ),
                ));
            }
        };
        *target = value
            .parse::<u64>()
            .ok()
            .filter(|d| *d <= MAX_EXPIRY_DAYS)
            .ok_or_else(|| {
                Error::invalid(
                    name,
                    format!("{value:?} is not a number of days from 0 to {MAX_EXPIRY_DAYS}"),
                )
            })?;
    }
    let day = Duration::from_secs(86_400);
    let config = AuditConfig::default()
        .with_device_expiry_threshold(day * device_days as u32)
        .with_ca_expiry_threshold(day * ca_days as u32);
    Ok((config, device_days, ca_days))
}

/// A finding as JSON: every field of [`CertificateFinding`], and its one-line `Display`.
fn finding_json(f: &CertificateFinding) -> Value {
    let affected: Vec<Value> = f
        .affected
        .iter()
        .map(|(certificate, device)| json!({ "certificate": certificate, "device": device }))
        .collect();
    json!({
        "check": f.check.api_name(),
        "severity": f.severity.name(),
        "resource": {
            // "CA certificate" → "ca_certificate": a stable key for scripts.
            "kind": f.resource.kind().to_ascii_lowercase().replace(' ', "_"),
            "id": f.resource.id(),
        },
        "devices": f.devices,
        "reason": f.reason,
        "reason_code": f.reason_code,
        "affected": affected,
        "summary": f.to_string(),
    })
}

async fn audit(State(s): State<Arc<AppState>>, RawQuery(query): RawQuery) -> ApiResult {
    let (config, device_days, ca_days) = audit_config(query.as_deref())?;
    let findings = blocking(&s.hub, move |hub| Ok(hub.audit(&config))).await?;
    let count = |severity: Severity| findings.iter().filter(|f| f.severity == severity).count();
    let counts = json!({
        "critical": count(Severity::Critical),
        "high": count(Severity::High),
        "medium": count(Severity::Medium),
        "low": count(Severity::Low),
    });
    let list: Vec<Value> = findings.iter().map(finding_json).collect();
    ok(
        StatusCode::OK,
        json!({
            "findings": list,
            "counts": counts,
            "device_expiry_days": device_days,
            "ca_expiry_days": ca_days,
        }),
    )
}

#[cfg(test)]
mod tests {
    //! The API over a real TLS socket, with a hand-written HTTP/1.1 client so that nothing
    //! here shares code with the server.

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;
    use crate::identity::{Signer as _, SoftwareKey};

    #[test]
    fn the_token_is_random_and_redacted() {
        let a = AdminToken::generate().unwrap();
        let b = AdminToken::generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 43);
        assert!(!format!("{a:?}").contains(a.expose_secret()));
        assert!(a.matches(a.expose_secret().as_bytes()));
        assert!(!a.matches(b.expose_secret().as_bytes()));
        assert!(!a.matches(b""));
        assert!(!a.matches(&a.expose_secret().as_bytes()[1..]));
    }

    #[test]
    fn rfc3339_is_utc_to_the_second() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
    }

    #[tokio::test]
    async fn a_non_loopback_bind_is_refused() {
        let hub = Arc::new(LocalHub::builder().start().await.unwrap());
        let err = AdminServer::start(hub, "0.0.0.0:0".parse().unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput { field, .. } if field == "admin bind"),
            "{err}"
        );
    }

    struct Api {
        hub: Arc<LocalHub>,
        admin: AdminServer,
        tls: tokio_rustls::TlsConnector,
    }

    impl Api {
        async fn start() -> Api {
            let hub = Arc::new(LocalHub::builder().start().await.unwrap());
            let admin = AdminServer::start(hub.clone(), "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            // Trusts the hub's CA and nothing else: the server certificate must chain to it
            // and cover `localhost`.
            let mut roots = rustls::RootCertStore::empty();
            roots.add(hub.ca_certificate().der().clone()).unwrap();
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            Api {
                hub,
                admin,
                tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            }
        }

        /// One request on its own connection; the status and the JSON body.
        async fn call_with(
            &self,
            token: Option<&str>,
            method: &str,
            path: &str,
            body: Option<&str>,
        ) -> (u16, Value) {
            let tcp = TcpStream::connect(self.admin.addr()).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = self.tls.connect(name, tcp).await.unwrap();
            let body = body.unwrap_or("");
            let mut request = format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
            if let Some(token) = token {
                request.push_str(&format!("Authorization: Bearer {token}\r\n"));
            }
            request.push_str("\r\n");
            request.push_str(body);
            tls.write_all(request.as_bytes()).await.unwrap();
            let mut response = Vec::new();
            let _ = tls.read_to_end(&mut response).await;
            let text = String::from_utf8(response).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let value = serde_json::from_str(body).unwrap_or(Value::Null);
            (status, value)
        }

        async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
            let token = self.admin.token().expose_secret().to_string();
            self.call_with(Some(&token), method, path, body).await
        }

        fn devices(&self) -> usize {
            self.hub.with_registry(|r| r.snapshot().devices.len())
        }
    }

    const POLICY: &str = r#"{"Version": "2012-10-17", "Statement": [
      {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${fleetkit:DeviceId}"}
    ]}"#;

    #[tokio::test]
    async fn without_the_token_nothing_happens() {
        let api = Api::start().await;
        let create = Some(r#"{"id": "intruder"}"#);
        let token = api.admin.token().expose_secret().to_string();
        // The real token with its last character changed (to one it is not).
        let last = if token.ends_with('A') { 'B' } else { 'A' };
        let wrong = format!("{}{last}", &token[..token.len() - 1]);
        for presented in [None, Some("nope"), Some(wrong.as_str()), Some("")] {
            let (status, body) = api
                .call_with(presented, "POST", "/v1/devices", create)
                .await;
            assert_eq!(status, 401, "{body}");
            assert_eq!(body["error"], "unauthenticated");
        }
        // Unknown paths too: an unauthenticated caller learns nothing.
        let (status, _) = api.call_with(None, "GET", "/v1/secret", None).await;
        assert_eq!(status, 401);
        assert_eq!(api.devices(), 0);
        let (status, _) = api.call("POST", "/v1/devices", create).await;
        assert_eq!(status, 201);
        assert_eq!(api.devices(), 1);
    }

    #[tokio::test]
    async fn devices_credentials_and_certificate_states() {
        let api = Api::start().await;
        let (status, body) = api
            .call(
                "POST",
                "/v1/devices",
                Some(r#"{"id": "sensor-1", "attributes": {"site": "lab"}, "groups": ["fleet"]}"#),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["attributes"]["site"], "lab");

        // Bad input is a 400 naming the field, and changes nothing.
        for (request, field) in [
            (r#"{"id": "no spaces"}"#, "device id"),
            (r#"{"id": "sensor-2", "colour": "red"}"#, "body"),
            (r#"{"id": "sensor-2", "groups": [""]}"#, "groups"),
            ("not json", "body"),
        ] {
            let (status, body) = api.call("POST", "/v1/devices", Some(request)).await;
            assert_eq!(status, 400, "{request}: {body}");
            assert_eq!(body["error"], "invalid_input");
            assert_eq!(body["field"], field, "{body}");
        }
        let (status, body) = api
            .call("POST", "/v1/devices", Some(r#"{"id": "sensor-1"}"#))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("already_exists"))
        );
        assert_eq!(api.devices(), 1);

        // A credential: the key in the answer belongs to the registered certificate.
        let (status, body) = api
            .call("POST", "/v1/devices/nosuch/credentials", None)
            .await;
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
        let (status, cred) = api
            .call("POST", "/v1/devices/sensor-1/credentials", None)
            .await;
        assert_eq!(status, 201, "{cred}");
        let key = SoftwareKey::from_pem(cred["private_key_pem"].as_str().unwrap()).unwrap();
        let leaf = Certificate::from_pem(cred["certificate_pem"].as_str().unwrap()).unwrap();
        assert_eq!(key.public_key_spki(), leaf.public_key_spki());
        let id = cred["certificate_id"].as_str().unwrap().to_string();
        assert_eq!(id, leaf.fingerprint_sha256());
        let (status, device) = api.call("GET", "/v1/devices/sensor-1", None).await;
        assert_eq!(status, 200);
        assert_eq!(device["certificates"][0]["id"], id.as_str());

        let path = format!("/v1/certificates/{id}/state");
        let (status, body) = api.call("PUT", &path, Some(r#"{"state": "lost"}"#)).await;
        assert_eq!((status, body["field"].as_str()), (400, Some("state")));
        let (status, body) = api
            .call(
                "PUT",
                "/v1/certificates/0000/state",
                Some(r#"{"state": "revoked"}"#),
            )
            .await;
        assert_eq!(status, 404, "{body}");
        let (status, body) = api
            .call("PUT", &path, Some(r#"{"state": "revoked"}"#))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["connections_closed"], 0);
        let (status, body) = api.call("PUT", &path, Some(r#"{"state": "active"}"#)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("precondition_failed"))
        );

        let (status, body) = api.call("POST", "/v1/devices/sensor-1/disable", None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["enabled"], false);
        assert!(
            !api.hub
                .with_registry(|r| r.device("sensor-1").unwrap().enabled)
        );

        let (status, body) = api.call("GET", "/v1/status", None).await;
        assert_eq!(status, 200);
        assert_eq!(body["devices"], 1);
        assert_eq!(body["certificates"], 1);
        assert_eq!(body["mqtt"], format!("mqtts://{}", api.hub.mqtt_addr()));
        let (status, body) = api.call("DELETE", "/v1/status", None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (405, Some("method_not_allowed"))
        );
    }

    #[tokio::test]
    async fn policies_cas_and_crls() {
        let api = Api::start().await;
        let (status, body) = api
            .call("PUT", "/v1/policies/p", Some(r#"{"Statement": ["#))
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["field"].as_str().unwrap().starts_with("policy"),
            "{body}"
        );
        let (status, body) = api.call("GET", "/v1/policies", None).await;
        assert_eq!(status, 200);
        assert_eq!(body["policies"], serde_json::json!([]));
        for version in [1, 2] {
            let (status, body) = api.call("PUT", "/v1/policies/p", Some(POLICY)).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["version"], version);
        }
        api.call("POST", "/v1/devices", Some(r#"{"id": "sensor-1"}"#))
            .await;
        let (status, body) = api
            .call(
                "POST",
                "/v1/policies/p/attach",
                Some(r#"{"device": "nosuch"}"#),
            )
            .await;
        assert_eq!(status, 404, "{body}");
        let (status, body) = api
            .call(
                "POST",
                "/v1/policies/p/attach",
                Some(r#"{"device": "sensor-1", "group": "g"}"#),
            )
            .await;
        assert_eq!((status, body["field"].as_str()), (400, Some("target")));
        let (status, body) = api
            .call(
                "POST",
                "/v1/policies/p/attach",
                Some(r#"{"device": "sensor-1"}"#),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (_, body) = api.call("GET", "/v1/policies/p", None).await;
        assert_eq!(body["targets"], serde_json::json!([{"device": "sensor-1"}]));
        assert_eq!(body["default_version"], 2);
        let (status, _) = api
            .call(
                "POST",
                "/v1/policies/p/detach",
                Some(r#"{"device": "sensor-1"}"#),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = api
            .call(
                "POST",
                "/v1/policies/p/detach",
                Some(r#"{"device": "sensor-1"}"#),
            )
            .await;
        assert_eq!(status, 404);

        // A CA of our own, its status, and a CRL it signs.
        let ca =
            crate::pki::CertificateAuthority::new_root(&crate::pki::CaOptions::new("Other CA"))
                .unwrap();
        let register = serde_json::json!({ "certificate_pem": ca.certificate().to_pem() });
        let (status, body) = api
            .call("POST", "/v1/cas", Some(&register.to_string()))
            .await;
        assert_eq!(status, 201, "{body}");
        let ca_id = body["id"].as_str().unwrap().to_string();
        let (status, _) = api
            .call("POST", "/v1/cas", Some(&register.to_string()))
            .await;
        assert_eq!(status, 409);
        let (status, body) = api
            .call(
                "PUT",
                &format!("/v1/cas/{ca_id}/status"),
                Some(r#"{"status": "inactive"}"#),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (_, body) = api.call("GET", "/v1/cas", None).await;
        let listed = body["cas"].as_array().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(
            listed
                .iter()
                .any(|c| c["id"] == ca_id.as_str() && c["status"] == "inactive")
        );
        let crl = ca
            .issue_crl(&crate::pki::CrlOptions::new(1, Vec::new()))
            .unwrap();
        let add = serde_json::json!({ "crl_pem": crl.to_pem() });
        let (status, body) = api.call("POST", "/v1/crls", Some(&add.to_string())).await;
        assert_eq!(status, 201, "{body}");
        // One no registered CA signed: refused, with the hub's reason.
        let stranger = crate::pki::CertificateAuthority::new_root(&crate::pki::CaOptions::new("X"))
            .unwrap()
            .issue_crl(&crate::pki::CrlOptions::new(1, Vec::new()))
            .unwrap();
        let add = serde_json::json!({ "crl_pem": stranger.to_pem() });
        let (status, body) = api.call("POST", "/v1/crls", Some(&add.to_string())).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (422, Some("unauthenticated"))
        );
        assert_eq!(api.hub.trust_store().crls().len(), 1);
    }

    #[tokio::test]
    async fn ca_devices_and_the_audit() {
        let api = Api::start().await;
        let root =
            crate::pki::CertificateAuthority::new_root(&crate::pki::CaOptions::new("Plant A"))
                .unwrap();
        api.hub.register_ca(root.certificate()).unwrap();
        let ca_id = root.certificate().fingerprint_sha256();
        let mut ids = Vec::new();
        for device in ["pump-2", "pump-1"] {
            api.hub.create_device(DeviceRecord::new(device)).unwrap();
            let key = SoftwareKey::generate_p256().unwrap();
            let cert = root
                .issue(
                    &DeviceId::new(device).unwrap(),
                    key.public_key_spki(),
                    &crate::pki::DeviceCertOptions::default(),
                )
                .unwrap();
            ids.push(api.hub.register_certificate(cert, device).unwrap());
        }
        api.hub
            .set_certificate_state(&ids[0], CertificateState::Inactive)
            .unwrap();

        let (status, body) = api.call("GET", "/v1/cas/0000/devices", None).await;
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
        let (status, body) = api
            .call("GET", &format!("/v1/cas/{ca_id}/devices"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["ca"]["status"], "active");
        assert_eq!(body["ca"]["hub_ca"], false);
        assert_eq!(body["devices"], json!(["pump-1", "pump-2"]));
        assert_eq!(body["active"], 1);
        assert_eq!(body["certificates"].as_array().unwrap().len(), 2);
        let inactive = body["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == ids[0].as_str())
            .unwrap();
        assert_eq!(inactive["state"], "inactive");

        // A clean fleet, then a revoked CA with an active device certificate below it.
        let (status, body) = api.call("GET", "/v1/audit", None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["findings"], json!([]));
        assert_eq!(body["device_expiry_days"], 30);
        api.hub
            .set_ca_status(root.certificate(), CaStatus::Revoked)
            .unwrap();
        let (status, body) = api
            .call(
                "GET",
                "/v1/audit?device_expiry_days=400&ca_expiry_days=0",
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["counts"]["critical"], 1, "{body}");
        let critical = &body["findings"][0];
        assert_eq!(
            critical["check"],
            "INTERMEDIATE_CA_REVOKED_FOR_ACTIVE_DEVICE_CERTIFICATES_CHECK"
        );
        assert_eq!(critical["severity"], "CRITICAL");
        assert_eq!(critical["resource"]["kind"], "ca_certificate");
        assert_eq!(critical["resource"]["id"], ca_id.as_str());
        assert_eq!(critical["devices"], json!(["pump-1"]));
        assert_eq!(
            critical["affected"],
            json!([{"certificate": ids[1], "device": "pump-1"}])
        );
        assert!(
            critical["summary"]
                .as_str()
                .unwrap()
                .starts_with("CRITICAL INTERMEDIATE_CA_REVOKED"),
            "{critical}"
        );
        // 400 days: every active certificate (365 days) is expiring.
        assert!(
            body["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["check"] == "DEVICE_CERTIFICATE_EXPIRING_CHECK"
                    && f["reason_code"] == "CERTIFICATE_APPROACHING_EXPIRATION"),
            "{body}"
        );

        for (query, field) in [
            ("device_expiry_days=-1", "device_expiry_days"),
            ("ca_expiry_days=36501", "ca_expiry_days"),
            ("expiry=3", "query"),
        ] {
            let (status, body) = api.call("GET", &format!("/v1/audit?{query}"), None).await;
            assert_eq!(
                (status, body["field"].as_str()),
                (400, Some(field)),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn commands_twins_and_the_certificate_listing() {
        let api = Api::start().await;
        api.call(
            "POST",
            "/v1/devices",
            Some(r#"{"id": "sensor-1", "groups": ["fleet"]}"#),
        )
        .await;
        let (status, cred) = api
            .call("POST", "/v1/devices/sensor-1/credentials", None)
            .await;
        assert_eq!(status, 201, "{cred}");
        let id = cred["certificate_id"].as_str().unwrap().to_string();

        // A command: the device must exist, the name be one topic level, and a session
        // subscribe to its commands (none here: 503, nothing queued).
        let (status, body) = api
            .call("POST", "/v1/devices/nosuch/commands/rotate", Some("{}"))
            .await;
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
        let (status, body) = api
            .call("POST", "/v1/devices/sensor-1/commands/a+b", Some("{}"))
            .await;
        assert_eq!(
            (status, body["field"].as_str()),
            (400, Some("command name"))
        );
        let (status, body) = api
            .call(
                "POST",
                "/v1/devices/sensor-1/commands/rotate",
                Some(r#"{"campaign": "c1"}"#),
            )
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("unavailable")),
            "{body}"
        );

        // The twin of a device that never reported; an unknown device's is 404.
        let (status, twin) = api.call("GET", "/v1/devices/sensor-1/twin", None).await;
        assert_eq!(status, 200, "{twin}");
        assert_eq!(twin["reported"], json!({}));
        assert_eq!(twin["version"], 0);
        let (status, _) = api.call("GET", "/v1/devices/nosuch/twin", None).await;
        assert_eq!(status, 404);

        // The listing: PEM, issuer, state and device; filters; a typo is refused.
        let inactive = {
            let (_, c) = api
                .call("POST", "/v1/devices/sensor-1/credentials", None)
                .await;
            c["certificate_id"].as_str().unwrap().to_string()
        };
        api.call(
            "PUT",
            &format!("/v1/certificates/{inactive}/state"),
            Some(r#"{"state": "inactive"}"#),
        )
        .await;
        let (status, body) = api.call("GET", "/v1/certificates", None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["certificates"].as_array().unwrap().len(), 2);
        let (status, body) = api
            .call("GET", "/v1/certificates?state=active&device=sensor-1", None)
            .await;
        assert_eq!(status, 200, "{body}");
        let listed = body["certificates"].as_array().unwrap();
        assert_eq!(listed.len(), 1, "{body}");
        let c = &listed[0];
        assert_eq!(c["id"], id.as_str());
        assert_eq!(c["device"], "sensor-1");
        assert_eq!(c["state"], "active");
        assert_eq!(c["issuer"], api.hub.ca_certificate().subject());
        let pem = Certificate::from_pem(c["certificate_pem"].as_str().unwrap()).unwrap();
        assert_eq!(pem.fingerprint_sha256(), id);
        let (_, body) = api.call("GET", "/v1/certificates?device=other", None).await;
        assert_eq!(body["certificates"], json!([]));
        for query in ["state=lost", "colour=red"] {
            let (status, body) = api
                .call("GET", &format!("/v1/certificates?{query}"), None)
                .await;
            assert_eq!(status, 400, "{query}: {body}");
            assert_eq!(body["error"], "invalid_input", "{body}");
        }

        // The device's own listing says state, issuer and expiry of each certificate; the CA
        // listing carries each CA's PEM.
        let (_, device) = api.call("GET", "/v1/devices/sensor-1", None).await;
        let certs = device["certificates"].as_array().unwrap();
        assert_eq!(certs.len(), 2);
        for c in certs {
            assert_eq!(c["issuer"], api.hub.ca_certificate().subject(), "{c}");
            assert!(c["not_after"].as_str().unwrap().ends_with('Z'), "{c}");
            assert!(
                matches!(c["state"].as_str(), Some("active" | "inactive")),
                "{c}"
            );
        }
        let (_, cas) = api.call("GET", "/v1/cas", None).await;
        let hub_ca =
            Certificate::from_pem(cas["cas"][0]["certificate_pem"].as_str().unwrap()).unwrap();
        assert_eq!(hub_ca, *api.hub.ca_certificate());
    }

    #[tokio::test]
    async fn a_command_reaches_a_connected_device_byte_for_byte() {
        use crate::device::{DeviceClient, NativeDialect};
        let api = Api::start().await;
        api.hub
            .put_policy("device", &crate::policy::builtin::native_device())
            .unwrap();
        api.hub
            .attach_policy("device", AttachTarget::Group("fleet".into()))
            .unwrap();
        api.hub
            .create_device(DeviceRecord::new("sensor-1").in_group("fleet"))
            .unwrap();
        let credential = api.hub.issue_device_credential("sensor-1").unwrap();
        let client = DeviceClient::builder(
            NativeDialect::new(
                "localhost",
                api.hub.mqtt_addr().port(),
                api.hub.ca_certificate(),
            ),
            DeviceId::new("sensor-1").unwrap(),
        )
        .credential(credential)
        .connect()
        .await
        .unwrap();
        let mut commands = client.commands().unwrap();
        // Not JSON, not even UTF-8 in general: the body is the payload.
        let (status, body) = api
            .call(
                "POST",
                "/v1/devices/sensor-1/commands/reboot",
                Some("now, please"),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"device": "sensor-1", "command": "reboot", "sessions": 1})
        );
        let command = tokio::time::timeout(Duration::from_secs(10), commands.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(command.name, "reboot");
        assert_eq!(&command.payload[..], b"now, please");
        client.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn shutdown_stops_listening() {
        let api = Api::start().await;
        let (status, _) = api.call("GET", "/v1/clients", None).await;
        assert_eq!(status, 200);
        let addr = api.admin.addr();
        api.admin.shutdown().await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
