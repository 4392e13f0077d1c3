//! `egress-forward`: the launcher binary run under that name inside a
//! build's sandbox (whose network namespace has only a loopback device).
//!
//! ```text
//! egress-forward <port> <socket> -- <program> [<arg>...]
//! ```
//!
//! It listens on `127.0.0.1:<port>` (the address `HTTP_PROXY` and
//! `HTTPS_PROXY` name in the sandbox), starts the program, and carries
//! every connection to that port over the Unix socket `<socket>` — the
//! build's egress proxy, outside, which decides where it may go. When the
//! program ends, so does the forwarder, with the program's exit status.
//! It holds no privilege: it is only a pipe.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

/// The name the launcher answers to as the forwarder.
pub const NAME: &str = "egress-forward";

/// Runs the forwarder with its arguments (after the program name); returns
/// the exit code to leave with.
pub fn main(args: &[String]) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            // As the launcher's own errors: 80-89 (platform spec).
            super::EXIT_LAUNCH_ERROR
        }
    }
}

fn run(args: &[String]) -> Result<i32, String> {
    let usage = || format!("usage: {NAME} <port> <socket> -- <program> [<arg>...]");
    let [port, socket, dashes, program, rest @ ..] = args else {
        return Err(usage());
    };
    if dashes != "--" {
        return Err(usage());
    }
    let port: u16 = port.parse().map_err(|_| usage())?;
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let socket = socket.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let socket = socket.clone();
            std::thread::spawn(move || carry(conn, &socket));
        }
    });
    let status = Command::new(program)
        .args(rest)
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Carries one connection both ways until both sides are done.
fn carry(tcp: TcpStream, socket: &str) {
    let Ok(unix) = UnixStream::connect(socket) else {
        // No proxy: the client sees its connection closed.
        let _ = tcp.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(tcp2), Ok(unix2)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || copy(tcp, unix, |u| u.shutdown(Shutdown::Write)));
    copy(unix2, tcp2, |t| t.shutdown(Shutdown::Write));
    let _ = up.join();
}

fn copy<R: Read, W: Write>(mut from: R, mut to: W, close: impl FnOnce(&W) -> std::io::Result<()>) {
    let mut buf = [0u8; 32 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = close(&to);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_carries_connections_while_the_program_runs_and_exits_as_it_does() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("proxy.sock");
        let server = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        // An echo server behind the socket, upper-casing what it gets.
        std::thread::spawn(move || {
            for c in server.incoming() {
                let mut c = c.unwrap();
                let mut got = Vec::new();
                c.read_to_end(&mut got).unwrap();
                c.write_all(&got.to_ascii_uppercase()).unwrap();
            }
        });
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The forwarder leaves with its program's exit code.
        let args: Vec<String> = [
            port.to_string(),
            sock.display().to_string(),
            "--".into(),
            "/bin/sh".into(),
            "-c".into(),
            "exit 7".into(),
        ]
        .into();
        assert_eq!(main(&args), 7, "the program's exit code");
        // While a program runs, connections are carried.
        let port2 = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let sock2 = sock.clone();
        let forwarder = std::thread::spawn(move || {
            let args: Vec<String> = [
                port2.to_string(),
                sock2.display().to_string(),
                "--".into(),
                "/bin/sleep".into(),
                "2".into(),
            ]
            .into();
            main(&args)
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut conn = loop {
            match TcpStream::connect(("127.0.0.1", port2)) {
                Ok(c) => break c,
                Err(e) => assert!(std::time::Instant::now() < deadline, "never listened: {e}"),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        conn.write_all(b"hello").unwrap();
        conn.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "HELLO");
        assert_eq!(forwarder.join().unwrap(), 0);
        assert_ne!(main(&["x".into()]), 0, "usage");
    }
}
