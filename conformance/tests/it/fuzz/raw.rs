//! Bytes straight onto a TCP connection, for HTTP no client library sends:
//! garbage request lines, broken headers, bodies shorter than announced.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for an answer to one raw request.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// What to do with our side of the connection once the bytes are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Keep it open and read the answer (the request asks the server to
    /// close when it is done).
    Read,
    /// Shut down our writing half (the server reads EOF), then read.
    HalfClose,
    /// Close the connection at once; there is no answer to read.
    Close,
}

/// The first final (non-1xx) response on the connection, if any.
#[derive(Debug, Default)]
pub struct Answer {
    pub status: Option<u16>,
    pub head: String,
    pub body: Vec<u8>,
    /// Nothing complete arrived within the deadline.
    pub timed_out: bool,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends one well-formed HTTP/1.1 request (`Connection: close`, its body
/// with `Content-Length`) and reads the answer. The whole request is written
/// before anything is read, and a failed write is ignored: a server may
/// answer and close without reading a body, and what it sent still arrives.
/// (hyper's client instead fails such an exchange when its write fails.)
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Answer {
    let mut bytes =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").into_bytes();
    for (name, value) in headers {
        bytes.extend_from_slice(format!("{name}: ").as_bytes());
        bytes.extend_from_slice(value.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(body);
    let mut answer = exchange(addr, &bytes, End::Read).await;
    if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        answer.body = dechunk(&answer.body);
    }
    answer
}

/// The data of a chunked body (as much as is well-formed).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size.filter(|&n| n > 0 && eol + 2 + n <= b.len()) else {
            break;
        };
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

pub async fn exchange(addr: SocketAddr, bytes: &[u8], end: End) -> Answer {
    let mut conn = TcpStream::connect(addr)
        .await
        .expect("connect to the server");
    // The server may answer and close before reading everything: a failed
    // write is not a failure of the test; the answer decides.
    let _ = conn.write_all(bytes).await;
    match end {
        End::Read => {}
        End::HalfClose => {
            let _ = conn.shutdown().await;
        }
        End::Close => return Answer::default(),
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(ANSWER_DEADLINE, async {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(answer) = parse(&buf, false) {
                return answer;
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return parse(&buf, true).unwrap_or_default(),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.unwrap_or_else(|_| Answer {
        timed_out: true,
        ..parse(&buf, true).unwrap_or_default()
    })
}

/// The first final response in `buf` once it is complete (or, at `eof`,
/// whatever there is of it).
fn parse(buf: &[u8], eof: bool) -> Option<Answer> {
    let mut rest = buf;
    loop {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return eof.then(|| Answer {
                head: String::from_utf8_lossy(rest).into_owned(),
                ..Answer::default()
            });
        };
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok());
        let body = &rest[end + 4..];
        if let Some(s) = status
            && (100..200).contains(&s)
        {
            rest = body;
            continue;
        }
        let answer = Answer {
            status,
            head,
            body: Vec::new(),
            timed_out: false,
        };
        let length = answer
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        let chunked = answer
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let complete = match (length, chunked) {
            (Some(n), _) => body.len() >= n,
            (None, true) => body.ends_with(b"0\r\n\r\n"),
            (None, false) => matches!(status, Some(204 | 304)),
        };
        if complete || eof {
            let take = length.map_or(body.len(), |n| n.min(body.len()));
            return Some(Answer {
                body: body[..take].to_vec(),
                ..answer
            });
        }
        return None;
    }
}
