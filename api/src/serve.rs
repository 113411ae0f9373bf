//! Serving the router over TCP: HTTP/1.1 (hyper's connection with a timer),
//! with a deadline on every request header and a graceful stop.
//!
//! `axum::serve` gives hyper no timer, and without one hyper enforces no
//! header deadline: a client that opens a connection and sends nothing, sends
//! its header a byte at a time, or keeps a keep-alive connection idle, holds
//! its socket, its task and its buffers for as long as it likes. Here each
//! connection must complete its next request header within `keep_alive` of
//! opening or of its previous response, or it is closed.
//!
//! HTTP/1.1 only. Over plain TCP, HTTP/2 is h2c with prior knowledge, which
//! no browser speaks and a proxy in front of the api need not: it would take
//! hyper-util's automatic builder, whose wait for the first bytes (to tell the
//! versions apart) has no deadline, and an HTTP/2 connection has no idle
//! deadline in hyper at all, so a client that opened one and went quiet held
//! it for ever. A client that opens with the HTTP/2 preface is answered with
//! a closed connection.

use std::{future::Future, io, net::SocketAddr, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request},
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::{GracefulConnection, GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting, lets every request in progress finish (idle connections close
/// at once) and returns.
///
/// Handlers see the peer's address as `ConnectInfo<SocketAddr>`, as with
/// `into_make_service_with_connect_info`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    keep_alive: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let connection = serve_connection(stream, peer, app.clone(), keep_alive);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                });
            }
            // The peer gave up before we took its connection: nothing to do.
            Err(e) if is_peer_error(&e) => {}
            // Out of file descriptors or memory: let connections end first.
            Err(e) => {
                tracing::error!(error = %e, "cannot accept a connection; retrying in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = &mut shutdown => break,
                }
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One connection, served to its end; a peer that goes away or misses the
/// header deadline ends it (hyper answers a malformed header itself).
fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    keep_alive: Duration,
) -> impl GracefulConnection<Error: std::fmt::Display> {
    let service = app.map_request(move |request: Request<hyper::body::Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(keep_alive)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
}

fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
