//! Start and stop: requests in flight finish when the server is told to stop.

use slipway_registry::testing::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes and reads one response head (up to the blank line).
async fn read_head(conn: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = conn.read(&mut byte).await.expect("read response");
        assert!(
            n == 1,
            "connection closed before a full response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    String::from_utf8(buf).unwrap()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn a_request_in_flight_finishes_after_stop_is_asked() {
    let server = TestServer::start().await;
    server.create_project("tool-a", false).await;
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(server.admin_creds())
    };
    let mut c = TcpStream::connect(server.addr).await.unwrap();
    c.write_all(
        format!(
            "POST /v2/tool-a/web/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n\
             Authorization: Basic {auth}\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 202"), "{head}");
    let location = header(&head, "location").unwrap().to_owned();

    // Half of a chunk is sent, then the server is told to stop.
    let mut c2 = TcpStream::connect(server.addr).await.unwrap();
    c2.write_all(
        format!(
            "PATCH {location} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\
             Content-Length: 10\r\n\r\nhello"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Let the server start reading the body before it is asked to stop.
    let probe =
        format!("GET {location} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n");
    c.write_all(probe.as_bytes()).await.unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");

    let stopping = tokio::spawn(server.stop());
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(
        !stopping.is_finished(),
        "the server stopped with a request in flight"
    );

    c2.write_all(b"world").await.unwrap();
    let head = read_head(&mut c2).await;
    assert!(head.starts_with("HTTP/1.1 202"), "{head}");
    assert_eq!(header(&head, "range"), Some("0-9"));
    stopping.await.unwrap();
}
