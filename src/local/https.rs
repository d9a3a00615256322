//! The HTTPS device endpoint: publish one message per request, authenticated by the client
//! certificate, as AWS IoT Core's `POST https://<endpoint>:8443/topics/<topic>?qos=1`
//! (also on the MQTT port with ALPN `x-amzn-http-ca`).
//!
//! Every request is authorized like an MQTT publish — `iot:Publish` on the topic (and
//! `iot:RetainPublish` with `retain=true`) — but, as on AWS, without a client id: thing
//! policy variables (`${iot:Connection.Thing.*}`) do not resolve over HTTPS, so a policy for
//! HTTPS devices names topics by certificate variables or literally.
//!
//! Answers: `200 {"message":"OK","traceId":…}`; `400` for a bad topic or query, `401` for a
//! certificate that is not registered and active, `403 {"message":"Forbidden"}` when the
//! policy denies (with a [`HubEvent::PolicyDenied`] explaining why), `413` for a payload over
//! the hub's limit.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};

use super::broker::topic::validate_topic_name;
use super::hub::{HubEvent, Shared};
use crate::pki::Certificate;
use crate::policy::Request;

/// The ALPN protocol that selects HTTPS on the MQTT port (AWS's port 443).
pub(crate) const ALPN_HTTP: &[u8] = b"x-amzn-http-ca";

struct Ctx {
    shared: Arc<Shared>,
    /// The client's certificate chain, leaf first (empty: no certificate).
    chain: Vec<Certificate>,
}

/// Serves HTTP/1.1 on an accepted TLS `stream` whose client presented `chain`.
pub(crate) async fn serve<S>(shared: Arc<Shared>, stream: S, chain: Vec<Certificate>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limit = shared.limits.max_packet_size;
    let router = Router::new()
        .route("/topics/{*topic}", post(publish))
        .fallback(|| async { answer(StatusCode::NOT_FOUND, "Not Found") })
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(Arc::new(Ctx {
            shared: shared.clone(),
            chain,
        }));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shared.stopped() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

fn answer(status: StatusCode, message: &str) -> Response {
    let trace: u64 = {
        let mut b = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        u64::from_be_bytes(b)
    };
    (
        status,
        axum::Json(json!({"message": message, "traceId": format!("{trace:016x}")})),
    )
        .into_response()
}

async fn publish(
    State(ctx): State<Arc<Ctx>>,
    Path(topic): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let mut qos = 0u8;
    let mut retain = false;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (k, v) {
            ("qos", "0") => qos = 0,
            ("qos", "1") => qos = 1,
            ("qos", _) => return answer(StatusCode::BAD_REQUEST, "qos must be 0 or 1"),
            ("retain", "true") => retain = true,
            ("retain", "false") => retain = false,
            ("retain", _) => {
                return answer(StatusCode::BAD_REQUEST, "retain must be true or false");
            }
            // AWS's MQTT 5 extras are accepted and not modelled.
            ("contentType" | "responseTopic" | "messageExpiry", _) => {}
            _ => return answer(StatusCode::BAD_REQUEST, &format!("unknown parameter {k:?}")),
        }
    }
    if validate_topic_name(&topic).is_err()
        || ctx.shared.limits.too_deep(&topic)
        || topic.starts_with('$')
    {
        return answer(StatusCode::BAD_REQUEST, &format!("invalid topic {topic:?}"));
    }
    let principal = {
        let registry = ctx.shared.registry.read().expect("registry lock");
        let Some(leaf) = ctx.chain.first() else {
            return answer(StatusCode::UNAUTHORIZED, "Unauthorized");
        };
        let record = match registry.admit(leaf) {
            Ok(r) => r,
            Err(e) => {
                ctx.shared.event(HubEvent::AuthFailure {
                    client_id: String::new(),
                    reason: format!("HTTPS publish: {e}"),
                });
                return answer(StatusCode::UNAUTHORIZED, "Unauthorized");
            }
        };
        // No client id over HTTPS, so no thing context (AWS: thing variables are MQTT-only).
        let mut context = registry.principal_context(record, "");
        context.client_id = None;
        context.thing = None;
        registry.policies().principal(context)
    };
    let mut decision = principal.authorize(&Request::publish(&topic));
    if decision.is_allowed() && retain {
        decision = principal.authorize(&Request::retain_publish(&topic));
    }
    if !decision.is_allowed() {
        ctx.shared.event(HubEvent::PolicyDenied {
            client_id: String::new(),
            explanation: format!("HTTPS publish: {decision}"),
        });
        return answer(StatusCode::FORBIDDEN, "Forbidden");
    }
    let routed = {
        let mut state = ctx.shared.broker.lock().expect("broker lock");
        if retain {
            state.retain(&topic, &body, qos);
        }
        let limits = ctx.shared.limits.clone();
        let shared = ctx.shared.clone();
        state.route(&topic, &body, qos, &limits, |client, explanation| {
            shared.event(HubEvent::PolicyDenied {
                client_id: client.to_string(),
                explanation,
            })
        })
    };
    if qos == 1 && (retain || routed.queued > 0) {
        ctx.shared.durable().await;
    }
    answer(StatusCode::OK, "OK")
}
