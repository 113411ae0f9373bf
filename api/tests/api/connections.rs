//! Connections: each request header must be complete within
//! `API_KEEP_ALIVE_TIMEOUT_SECS` of the connection's opening or of its
//! previous response, or the api closes the connection; the time a handler
//! takes does not count. A stop lets every request in progress finish.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::test_app::TestApp;

const KEEP_ALIVE: &[(&str, &str)] = &[("API_KEEP_ALIVE_TIMEOUT_SECS", "1")];

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Everything the api sends until it closes the connection, and when it
/// closed it. Fails the test if the connection is still open after 10 s.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Instant) {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("the api kept the connection open for 10 s");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    (String::from_utf8_lossy(&bytes).into_owned(), Instant::now())
}

#[sqlx::test(migrations = false)]
async fn an_idle_keep_alive_connection_is_closed_after_the_timeout(pool: PgPool) {
    let app = TestApp::spawn_with(pool, KEEP_ALIVE).await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /ready HTTP/1.1\r\nHost: txdx\r\n\r\n")
        .await
        .unwrap();
    let sent = Instant::now();

    let (answer, closed) = read_until_closed(&mut stream).await;

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed - sent >= Duration::from_millis(900),
        "closed {:?} after the request, before the keep-alive timeout",
        closed - sent
    );
}

#[sqlx::test(migrations = false)]
async fn a_client_that_never_completes_its_header_is_disconnected(pool: PgPool) {
    let app = TestApp::spawn_with(pool, KEEP_ALIVE).await;
    let mut stream = connect(&app).await;
    let opened = Instant::now();
    // The header's last line never comes.
    stream
        .write_all(b"GET /ready HTTP/1.1\r\nHost: txdx\r\n")
        .await
        .unwrap();

    let (answer, closed) = read_until_closed(&mut stream).await;

    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(closed - opened >= Duration::from_millis(900));
}

#[sqlx::test(migrations = false)]
async fn a_client_that_sends_nothing_is_disconnected(pool: PgPool) {
    let app = TestApp::spawn_with(pool, KEEP_ALIVE).await;
    let mut stream = connect(&app).await;
    let opened = Instant::now();

    let (answer, closed) = read_until_closed(&mut stream).await;

    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(closed - opened >= Duration::from_millis(900));
}

/// HTTP/2 over plain TCP (prior knowledge) is not served: the preface is
/// refused at once, not left holding the connection until a deadline.
#[sqlx::test(migrations = false)]
async fn a_client_that_opens_with_the_http2_preface_is_refused_at_once(pool: PgPool) {
    // The default keep-alive (30 s): a close within read_until_closed's 10 s
    // is the refusal, not the deadline.
    let app = TestApp::spawn(pool).await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();

    let (answer, _) = read_until_closed(&mut stream).await;

    assert!(!answer.contains("200 OK"), "{answer}");
}

#[sqlx::test(migrations = false)]
async fn a_request_slower_than_the_timeout_is_answered_in_full(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), KEEP_ALIVE).await;
    let admin = app.register_company("Acme").await;
    let lock = app.hold_company_row(admin.company_id).await;
    let held = app.post_ticket_in_background(&admin, "slow");
    app.wait_for_stalled_ticket_inserts(1).await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    lock.rollback().await.unwrap();

    assert_eq!(held.await.unwrap().status(), 201);
}

#[sqlx::test(migrations = false)]
async fn a_stop_waits_for_the_requests_in_progress_and_takes_no_new_ones(pool: PgPool) {
    let mut app = TestApp::spawn(pool.clone()).await;
    let admin = app.register_company("Acme").await;
    let lock = app.hold_company_row(admin.company_id).await;
    let held = app.post_ticket_in_background(&admin, "in progress");
    app.wait_for_stalled_ticket_inserts(1).await;

    app.begin_shutdown();
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut waited = Duration::ZERO;
    while TcpStream::connect(&address).await.is_ok() {
        assert!(
            waited < Duration::from_secs(10),
            "the api still took connections 10 s after the stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert!(
        !app.served.is_finished(),
        "the server stopped with a request in progress"
    );
    lock.rollback().await.unwrap();

    assert_eq!(held.await.unwrap().status(), 201);
    tokio::time::timeout(Duration::from_secs(10), &mut app.served)
        .await
        .expect("the server did not stop once its last request was answered")
        .unwrap();
    let tickets: i64 = sqlx::query_scalar("SELECT count(*) FROM tickets")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tickets, 1);
}
