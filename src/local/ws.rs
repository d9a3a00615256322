//! MQTT over WebSocket (RFC 6455), as AWS IoT and Azure IoT Hub serve it.
//!
//! [`accept`] performs the server side of the WebSocket upgrade on an already-established stream
//! (normally the TLS stream of the hub's WebSocket listener): the request must be for one of
//! [`PATHS`] and offer the `mqtt` sub-protocol. [`WsStream`] then turns the connection's binary
//! messages back into the byte stream the broker reads MQTT packets from, so the broker serves
//! it exactly like a TLS stream: an MQTT packet may span several WebSocket frames and a frame
//! may carry several packets (MQTT 3.1.1 §6). Text frames are a protocol error; pings are
//! answered by tungstenite; a Close frame is the end of the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;

use super::dialect::UpgradeRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

/// The request paths the hub upgrades: `/mqtt` (AWS IoT and generic clients) and
/// `/$iothub/websocket` (Azure IoT Hub). Query strings (e.g. a SigV4-presigned URL or Azure's
/// `api-version`) are ignored here.
pub(crate) const PATHS: [&str; 2] = ["/mqtt", "/$iothub/websocket"];

/// The WebSocket sub-protocol MQTT requires (matched case-insensitively, answered in the
/// client's spelling: Azure's C SDK offers `MQTT`).
pub(crate) const SUBPROTOCOL: &str = "mqtt";

/// The largest WebSocket message (and frame) [`accept`] takes: comfortably above the default
/// [`Limits::max_packet_size`](super::Limits) for clients that send one packet per message,
/// and small enough that a client cannot make the hub buffer much per connection. Use
/// [`accept_with_max_message`] when the hub's packet limit is larger.
pub(crate) const DEFAULT_MAX_MESSAGE: usize = 1 << 20;

/// The largest frame one `poll_write` produces; a longer write is partly accepted (callers use
/// `write_all`), so no client ever sees a frame above this whatever the packet size.
const MAX_WRITE_FRAME: usize = 64 * 1024;
/// tungstenite's read buffer, allocated up front for every connection (its default is 128 KiB).
const READ_BUFFER: usize = 8 * 1024;
/// How much tungstenite buffers before writing to the stream (a flush always writes it all).
const WRITE_BUFFER: usize = 16 * 1024;
/// How much of an attacker-chosen path or header is repeated in an error (and so in events).
const MAX_ECHO: usize = 96;

/// Why a WebSocket upgrade failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    /// The request was for a path the hub does not serve; it was answered 404.
    #[error("WebSocket upgrade refused (404): path {0:?} is not served (use /mqtt)")]
    NotFound(String),
    /// The request did not offer the `mqtt` sub-protocol; it was answered 400. Holds what it
    /// offered (empty: no `Sec-WebSocket-Protocol` header).
    #[error("WebSocket upgrade refused (400): sub-protocol \"mqtt\" not offered (offered: {0:?})")]
    NoMqttSubprotocol(String),
    /// Not a valid WebSocket upgrade request (no response is sent), or the stream failed
    /// during the handshake.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(#[source] Box<tungstenite::Error>),
}

/// Performs the server WebSocket handshake on `stream` (see the [module docs](self)) with
/// messages of at most [`DEFAULT_MAX_MESSAGE`] bytes. A refused upgrade has been answered
/// (404 or 400) when this returns; the caller just drops the stream.
pub(crate) async fn accept<S>(stream: S) -> Result<(WsStream<S>, UpgradeRequest), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    accept_with_max_message(stream, DEFAULT_MAX_MESSAGE).await
}

/// [`accept`] with another limit on incoming WebSocket messages and frames, in bytes.
pub(crate) async fn accept_with_max_message<S>(
    stream: S,
    max_message: usize,
) -> Result<(WsStream<S>, UpgradeRequest), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let mut refusal = None;
    let mut upgrade = None;
    // The `Err` type is tungstenite's `ErrorResponse` (an `http::Response`).
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| match negotiate(request) {
        Ok(protocol) => {
            upgrade = Some(UpgradeRequest::new(
                request.uri().path(),
                request.uri().query().unwrap_or(""),
                request
                    .headers()
                    .iter()
                    .filter_map(|(n, v)| {
                        Some((n.as_str().to_string(), v.to_str().ok()?.to_string()))
                    })
                    .collect(),
            ));
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
            Ok(response)
        }
        Err(error) => {
            let answer = refusal_response(&error);
            refusal = Some(error);
            Err(answer)
        }
    };
    let result =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await;
    match (result, refusal) {
        (Ok(ws), _) => Ok((
            WsStream::new(ws),
            upgrade.unwrap_or_else(|| UpgradeRequest::new("", "", Vec::new())),
        )),
        // Tungstenite reports a refusal as `Error::Http` once the answer is written; the
        // callback kept the reason.
        (Err(_), Some(error)) => Err(error),
        (Err(e), None) => Err(WsError::Handshake(Box::new(e))),
    }
}

/// Checks the upgrade request's path and sub-protocols; returns the `Sec-WebSocket-Protocol`
/// value to answer with.
fn negotiate(request: &Request) -> Result<HeaderValue, WsError> {
    let path = request.uri().path();
    if !PATHS.contains(&path) {
        return Err(WsError::NotFound(clip(path)));
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    offered
        .iter()
        .find(|t| t.eq_ignore_ascii_case(SUBPROTOCOL))
        .and_then(|t| HeaderValue::from_str(t).ok())
        .ok_or_else(|| WsError::NoMqttSubprotocol(clip(&offered.join(", "))))
}

/// The HTTP answer to a refused upgrade.
fn refusal_response(error: &WsError) -> ErrorResponse {
    let status = match error {
        WsError::NotFound(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    };
    let body = format!("{error}\n");
    let mut response = ErrorResponse::new(None);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    *response.body_mut() = Some(body);
    response
}

/// At most [`MAX_ECHO`] bytes of `s` (cut at a character boundary), marked when cut.
fn clip(s: &str) -> String {
    if s.len() <= MAX_ECHO {
        return s.to_string();
    }
    let mut end = MAX_ECHO;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// An accepted WebSocket connection as a byte stream: what the broker reads and writes MQTT
/// packets on.
///
/// Reads return the payloads of incoming Binary messages in order, across message boundaries;
/// a Text message fails the read (and every later one) with [`io::ErrorKind::InvalidData`];
/// Ping/Pong are consumed (tungstenite queues the Pong and sends it with the next read or
/// write); a Close message is answered and reads as end of stream. Each write becomes one Binary
/// frame of at most 64 KiB, buffered until `poll_flush`; `poll_shutdown` sends a Close frame
/// (1003 after a Text frame, otherwise without a code) and then shuts the underlying stream down.
#[derive(Debug)]
pub(crate) struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the current Binary message.
    pending: Bytes,
    /// The peer closed (Close frame or end of stream): reads return end of stream.
    read_closed: bool,
    /// A Text frame arrived: reads fail, and the Close frame we send says why.
    text_received: bool,
    /// The Close frame has been queued (shutdown started).
    close_queued: bool,
    /// The Close frame is flushed; only the underlying shutdown is left.
    close_sent: bool,
}

impl<S> WsStream<S> {
    fn new(inner: WebSocketStream<S>) -> Self {
        WsStream {
            inner,
            pending: Bytes::new(),
            read_closed: false,
            text_received: false,
            close_queued: false,
            close_sent: false,
        }
    }
}

fn text_frame_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "a Text WebSocket frame: MQTT over WebSocket uses Binary frames",
    )
}

/// A tungstenite error as the `io::Error` the broker expects.
fn io_error(error: tungstenite::Error) -> io::Error {
    use tungstenite::Error as E;
    match error {
        E::Io(e) => e,
        E::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            io::Error::new(io::ErrorKind::UnexpectedEof, error)
        }
        E::ConnectionClosed | E::AlreadyClosed | E::Protocol(ProtocolError::SendAfterClosing) => {
            io::Error::new(io::ErrorKind::BrokenPipe, error)
        }
        E::Protocol(_) | E::Capacity(_) | E::Utf8 => {
            io::Error::new(io::ErrorKind::InvalidData, error)
        }
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.pending.has_remaining() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.text_received {
                return Poll::Ready(Err(text_frame_error()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => this.text_received = true,
                // Tungstenite has queued the Pong; it goes out with the next read or write.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // Tungstenite has queued the answering Close; polling again sends it and then
                // ends the stream (`None`).
                Some(Ok(Message::Close(_))) => {}
                Some(Err(e)) => {
                    this.read_closed = true;
                    return Poll::Ready(Err(io_error(e)));
                }
                None => this.read_closed = true,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(io_error)?;
        let n = buf.len().min(MAX_WRITE_FRAME);
        Pin::new(&mut this.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_queued {
            if this.text_received {
                ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(io_error)?;
                let frame = CloseFrame {
                    code: CloseCode::Unsupported,
                    reason: Utf8Bytes::from_static("MQTT over WebSocket uses Binary frames"),
                };
                // Fails only if the peer has closed already; `poll_close` below still flushes.
                let _ = Pin::new(&mut this.inner).start_send(Message::Close(Some(frame)));
            }
            this.close_queued = true;
        }
        if !this.close_sent {
            // Queues a Close frame (unless one was queued or answered already) and flushes.
            ready!(Pin::new(&mut this.inner).poll_close(cx)).map_err(io_error)?;
            this.close_sent = true;
        }
        Pin::new(this.inner.get_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use futures_util::{SinkExt, StreamExt};
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4::{Packet, Publish};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::handshake::client::Response as ClientResponse;

    type Client = WebSocketStream<DuplexStream>;

    /// Runs a tungstenite client handshake (path `path`, `protocols` as the
    /// `Sec-WebSocket-Protocol` header if any) against [`accept`] over an in-memory pipe.
    async fn handshake(
        path: &str,
        protocols: Option<&str>,
    ) -> (
        Result<(Client, ClientResponse), tungstenite::Error>,
        Result<WsStream<DuplexStream>, WsError>,
    ) {
        let (client_io, server_io) = duplex(64 * 1024);
        let mut request = format!("ws://localhost{path}")
            .into_client_request()
            .unwrap();
        if let Some(p) = protocols {
            request.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(p).unwrap(),
            );
        }
        let (client, server) = tokio::join!(
            tokio_tungstenite::client_async(request, client_io),
            accept(server_io)
        );
        (client, server.map(|(ws, _)| ws))
    }

    async fn connected() -> (Client, WsStream<DuplexStream>) {
        let (client, server) = handshake("/mqtt", Some("mqtt")).await;
        let (client, response) = client.unwrap();
        assert_eq!(
            response.headers()[header::SEC_WEBSOCKET_PROTOCOL],
            HeaderValue::from_static("mqtt")
        );
        (client, server.unwrap())
    }

    fn encode(packet: Packet) -> Vec<u8> {
        let mut buf = BytesMut::new();
        packet.write(&mut buf, usize::MAX).unwrap();
        buf.to_vec()
    }

    /// Reads MQTT packets from `server` the way the broker does, until `n` are decoded.
    async fn read_packets(server: &mut WsStream<DuplexStream>, n: usize) -> Vec<Packet> {
        let mut buf = BytesMut::new();
        let mut packets = Vec::new();
        while packets.len() < n {
            match Packet::read(&mut buf, 1 << 20) {
                Ok(p) => packets.push(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                    let read = server.read_buf(&mut buf).await.unwrap();
                    assert_ne!(read, 0, "end of stream after {packets:?}");
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        packets
    }

    fn publish(topic: &str, payload: &[u8]) -> Publish {
        Publish::new(topic, QoS::AtMostOnce, payload.to_vec())
    }

    #[tokio::test]
    async fn binary_frames_carry_bytes_both_ways() {
        let (mut client, mut server) = connected().await;
        client
            .send(Message::Binary(Bytes::from_static(b"hello")))
            .await
            .unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");

        server.write_all(b"world").await.unwrap();
        server.flush().await.unwrap();
        match client.next().await.unwrap().unwrap() {
            Message::Binary(b) => assert_eq!(&b[..], b"world"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_packet_split_across_frames_is_read_whole() {
        let (mut client, mut server) = connected().await;
        let packet = encode(Packet::Publish(publish("fleet/dev-a/temp", b"21.5")));
        let (a, b) = packet.split_at(5);
        client
            .send(Message::Binary(Bytes::copy_from_slice(a)))
            .await
            .unwrap();
        client
            .send(Message::Binary(Bytes::copy_from_slice(b)))
            .await
            .unwrap();
        assert_eq!(
            read_packets(&mut server, 1).await,
            vec![Packet::Publish(publish("fleet/dev-a/temp", b"21.5"))]
        );
    }

    #[tokio::test]
    async fn two_packets_in_one_frame_are_both_read() {
        let (mut client, mut server) = connected().await;
        let mut frame = encode(Packet::Publish(publish("a/b", b"one")));
        frame.extend(encode(Packet::PingReq));
        client.send(Message::Binary(frame.into())).await.unwrap();
        assert_eq!(
            read_packets(&mut server, 2).await,
            vec![Packet::Publish(publish("a/b", b"one")), Packet::PingReq]
        );
    }

    #[tokio::test]
    async fn small_reads_and_empty_frames_keep_the_byte_order() {
        let (mut client, mut server) = connected().await;
        for part in [&b"abc"[..], b"", b"defg"] {
            client
                .send(Message::Binary(Bytes::copy_from_slice(part)))
                .await
                .unwrap();
        }
        let mut got = Vec::new();
        let mut one = [0u8; 2];
        while got.len() < 7 {
            let n = server.read(&mut one).await.unwrap();
            assert_ne!(n, 0);
            got.extend_from_slice(&one[..n]);
        }
        assert_eq!(got, b"abcdefg");
    }

    #[tokio::test]
    async fn large_writes_are_split_into_bounded_frames() {
        let (mut client, mut server) = connected().await;
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let writer = async {
            server.write_all(&data).await.unwrap();
            server.flush().await.unwrap();
            server
        };
        let reader = async {
            let mut got = Vec::new();
            while got.len() < data.len() {
                match client.next().await.unwrap().unwrap() {
                    Message::Binary(b) => {
                        assert!(b.len() <= MAX_WRITE_FRAME, "a frame of {}", b.len());
                        got.extend_from_slice(&b);
                    }
                    other => panic!("{other:?}"),
                }
            }
            got
        };
        let (_server, got) = tokio::join!(writer, reader);
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn pings_are_answered_while_reading() {
        let (mut client, mut server) = connected().await;
        client
            .send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        client
            .send(Message::Binary(Bytes::from_static(b"x")))
            .await
            .unwrap();
        let mut got = [0u8; 1];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"x");
        // Reading once more sends the queued Pong (nothing else arrives, so this times out).
        let mut more = [0u8; 1];
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), server.read(&mut more))
            .await;
        match client.next().await.unwrap().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"p"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_close_frame_is_end_of_stream_and_is_answered() {
        let (mut client, mut server) = connected().await;
        client
            .send(Message::Binary(Bytes::from_static(b"last")))
            .await
            .unwrap();
        client.close(None).await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last");
        // Writing after the peer closed fails; shutting down still succeeds.
        assert_eq!(
            server.write_all(b"late").await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        server.shutdown().await.unwrap();
        // The client got the answering Close frame, then the end of the stream.
        match client.next().await.unwrap().unwrap() {
            Message::Close(frame) => assert_eq!(frame, None),
            other => panic!("{other:?}"),
        }
        assert!(client.next().await.is_none());
    }

    #[tokio::test]
    async fn shutdown_sends_a_close_frame() {
        let (mut client, mut server) = connected().await;
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        match client.next().await.unwrap().unwrap() {
            Message::Binary(b) => assert_eq!(&b[..], b"bye"),
            other => panic!("{other:?}"),
        }
        match client.next().await.unwrap().unwrap() {
            Message::Close(frame) => assert_eq!(frame, None),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_text_frame_is_invalid_data() {
        let (mut client, mut server) = connected().await;
        client.send(Message::text("CONNECT")).await.unwrap();
        let mut buf = [0u8; 16];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // It stays an error, and the Close frame says why.
        assert_eq!(
            server.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        server.shutdown().await.unwrap();
        match client.next().await.unwrap().unwrap() {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Unsupported),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_invalid_data() {
        let (client_io, server_io) = duplex(64 * 1024);
        let mut request = "ws://localhost/mqtt".into_client_request().unwrap();
        request.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("mqtt"),
        );
        let (client, server) = tokio::join!(
            tokio_tungstenite::client_async(request, client_io),
            accept_with_max_message(server_io, 1024)
        );
        let (mut client, _) = client.unwrap();
        let (mut server, _) = server.unwrap();
        let send = client.send(Message::Binary(vec![0u8; 2048].into()));
        let mut buf = [0u8; 16];
        let (sent, read) = tokio::join!(send, server.read(&mut buf));
        sent.unwrap();
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn the_subprotocol_is_matched_case_insensitively_and_answered_as_offered() {
        let (client, server) = handshake("/$iothub/websocket", Some("wamp, MQTT")).await;
        let (_client, response) = client.unwrap();
        assert_eq!(
            response.headers()[header::SEC_WEBSOCKET_PROTOCOL],
            HeaderValue::from_static("MQTT")
        );
        server.unwrap();
        // A query string does not change the path.
        let (client, server) =
            handshake("/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256", Some("mqtt")).await;
        client.unwrap();
        server.unwrap();
    }

    #[tokio::test]
    async fn another_path_gets_404() {
        for path in ["/", "/mqtt/", "/MQTT", "/ws"] {
            let (client, server) = handshake(path, Some("mqtt")).await;
            match client {
                Err(tungstenite::Error::Http(response)) => {
                    assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
                }
                other => panic!("{path}: {other:?}"),
            }
            match server {
                Err(WsError::NotFound(p)) => assert_eq!(p, path),
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_missing_or_unsupported_subprotocol_gets_400() {
        for (offered, echoed) in [(None, ""), (Some("wamp, mqttv5"), "wamp, mqttv5")] {
            let (client, server) = handshake("/mqtt", offered).await;
            match client {
                Err(tungstenite::Error::Http(response)) => {
                    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
                    let body = String::from_utf8(response.into_body().unwrap()).unwrap();
                    assert!(body.contains("mqtt"), "{body}");
                }
                other => panic!("{offered:?}: {other:?}"),
            }
            match server {
                Err(WsError::NoMqttSubprotocol(o)) => assert_eq!(o, echoed),
                other => panic!("{offered:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_plain_http_request_is_a_handshake_error() {
        let (mut client_io, server_io) = duplex(4096);
        client_io
            .write_all(b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        assert!(matches!(
            accept(server_io).await,
            Err(WsError::Handshake(_))
        ));
    }

    #[test]
    fn long_paths_are_clipped_in_errors() {
        let long = "/é".repeat(100);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_ECHO + '…'.len_utf8());
        assert!(clipped.ends_with('…'));
        assert_eq!(clip("/mqtt"), "/mqtt");
    }

    #[test]
    fn the_accept_future_is_send() {
        fn is_send<T: Send>(_: &T) {}
        let (_, io) = duplex(16);
        is_send(&accept(io));
    }
}
