//! TCP mode: listening for the host's two authenticated connections (frames, logs) on a
//! port, as the runner of a Kubernetes pod does.

use std::fs::File;
use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Duration;

/// The variable holding the pod's secret token.
pub const TOKEN_VAR: &str = "SOPM_RUNNER_TOKEN";

/// The first word of an authentication line.
const PROTOCOL: &[u8] = b"sopm-runner/1";

/// The longest authentication line read.
const AUTH_LINE_MAX: usize = 512;

/// How long a connection may take to send its line.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Refused connections after which the runner gives up.
const MAX_REFUSED: u32 = 64;

/// The host's connections, as the files the protocol loop reads and writes.
pub struct HostChannels {
    /// Frames from the host.
    pub frames_in: File,
    /// Frames to the host.
    pub frames_out: File,
    /// The log channel.
    pub log: File,
}

/// Listens on `address` until one `frames` and one `logs` connection have sent the
/// authentication line with `token`; other connections are closed. A token shorter than
/// 16 bytes, or `MAX_REFUSED` refused connections, is an error (`PermissionDenied` for
/// the latter).
pub fn accept_host(address: &str, token: &[u8]) -> io::Result<HostChannels> {
    if token.len() < 16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--listen needs {TOKEN_VAR} (16 bytes or more)"),
        ));
    }
    let listener = TcpListener::bind(address)?;
    let mut frames: Option<TcpStream> = None;
    let mut logs: Option<TcpStream> = None;
    let mut refused = 0;
    while frames.is_none() || logs.is_none() {
        let (mut conn, _) = listener.accept()?;
        match read_auth_line(&mut conn).map(|line| channel_of(&line, token)) {
            Ok(Some(Channel::Frames)) if frames.is_none() => frames = Some(conn),
            Ok(Some(Channel::Logs)) if logs.is_none() => logs = Some(conn),
            _ => {
                drop(conn);
                refused += 1;
                if refused >= MAX_REFUSED {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "too many connections without the pod's token",
                    ));
                }
            }
        }
    }
    drop(listener);
    let frames = frames.expect("accepted");
    let logs = logs.expect("accepted");
    frames.set_read_timeout(None)?;
    logs.set_read_timeout(None)?;
    Ok(HostChannels {
        frames_in: File::from(OwnedFd::from(frames.try_clone()?)),
        frames_out: File::from(OwnedFd::from(frames)),
        log: File::from(OwnedFd::from(logs)),
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Channel {
    Frames,
    Logs,
}

/// Reads one line (without its newline) byte by byte, so nothing after it is consumed.
fn read_auth_line(conn: &mut TcpStream) -> io::Result<Vec<u8>> {
    conn.set_read_timeout(Some(AUTH_TIMEOUT))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() <= AUTH_LINE_MAX {
        if conn.read(&mut byte)? == 0 {
            break;
        }
        if byte[0] == b'\n' {
            return Ok(line);
        }
        line.push(byte[0]);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "no authentication line",
    ))
}

/// Which channel a line opens, if it carries the right token.
fn channel_of(line: &[u8], token: &[u8]) -> Option<Channel> {
    let mut parts = line.split(|&b| b == b' ');
    let (proto, channel, given) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || proto != PROTOCOL || !same(given, token) {
        return None;
    }
    match channel {
        b"frames" => Some(Channel::Frames),
        b"logs" => Some(Channel::Logs),
        _ => None,
    }
}

/// Compares in time that depends on the lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_open_a_channel_only_with_the_token() {
        let token = b"0123456789abcdef";
        assert_eq!(
            channel_of(b"sopm-runner/1 frames 0123456789abcdef", token),
            Some(Channel::Frames)
        );
        assert_eq!(
            channel_of(b"sopm-runner/1 logs 0123456789abcdef", token),
            Some(Channel::Logs)
        );
        for bad in [
            &b"sopm-runner/1 frames 0123456789abcdeX"[..],
            b"sopm-runner/1 frames 0123456789abcdef extra",
            b"sopm-runner/2 frames 0123456789abcdef",
            b"sopm-runner/1 stdin 0123456789abcdef",
            b"sopm-runner/1 frames",
            b"",
        ] {
            assert_eq!(
                channel_of(bad, token),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_short_token_is_refused_before_listening() {
        let e = accept_host("127.0.0.1:0", b"short").err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
