//! The server against slow and hostile clients, over real TCP on loopback: a request head or body that
//! never completes and an idle keep-alive connection are closed after their timeouts, and connections
//! beyond the cap wait instead of exhausting the server's file descriptors and memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use clearing_server::storage::Db;
use clearing_server::{AppState, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far above every limit under test: a connection still open after it was never going to be closed.
const PATIENCE: Duration = Duration::from_secs(10);

async fn start(limits: Limits) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // The connection layer is the same whatever the database: these run on SQLite only.
    let db = Db::open(&dir.path().join("clearing.sqlite3").display().to_string()).unwrap();
    let state = AppState::new(
        db,
        clearing_server::vault::Vault::new(
            clearing_server::vault::MasterKey::from_bytes(&[42; 32]).unwrap(),
        ),
        Arc::new(|| 0),
    )
    .with_limits(limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(clearing_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    (addr, dir)
}

fn limits(max_connections: usize, timeout: Duration) -> Limits {
    Limits {
        max_connections,
        header_timeout: timeout,
        body_timeout: timeout,
    }
}

/// Everything the server sends until it closes the connection, or `None` if it is still open after
/// [`PATIENCE`].
async fn until_closed(s: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    match tokio::time::timeout(PATIENCE, s.read_to_end(&mut got)).await {
        Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn a_request_head_that_never_completes_is_cut_off() {
    let (addr, _dir) = start(limits(16, Duration::from_millis(300))).await;
    // Slow loris: a head begun and never finished.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /v1/terminals/T-1/journal/head HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(until_closed(&mut s).await.is_some(), "still open");
    // A connection that never sends a byte, and one idle after a served request (keep-alive).
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    assert!(until_closed(&mut silent).await.is_some(), "still open");
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut idle).await.expect("still open");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}

#[tokio::test]
async fn a_request_body_that_never_completes_is_answered_408() {
    let (addr, _dir) = start(limits(16, Duration::from_millis(300))).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"POST /v1/terminals/T-1/journal HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"from_seq\"",
    )
    .await
    .unwrap();
    let answer = until_closed(&mut s).await.expect("still open");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_one() {
    let (addr, _dir) = start(limits(2, PATIENCE * 2)).await;
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(&addr).await.unwrap(),
        TcpStream::connect(&addr).await.unwrap(),
    ];
    // The kernel completes the handshake (listen backlog), but the server does not serve it.
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "served a connection beyond the cap"
    );
    drop(held);
    let answer = until_closed(&mut third).await.expect("never served");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}
