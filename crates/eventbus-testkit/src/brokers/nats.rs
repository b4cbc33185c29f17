//! How nats-server is started and when it counts as up.

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `nats-server -js` on `127.0.0.1:<port>` with its store in `store`, plus `extra` arguments.
pub(super) fn command(port: u16, store: &Path, extra: &[String]) -> std::io::Result<Command> {
    let mut command = Command::new(super::install::nats_server()?);
    command
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .args(extra);
    Ok(command)
}

/// Whether a server on `port` greets a client (its `INFO` line comes once it serves clients,
/// JetStream included).
pub(super) fn answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut greeting = [0u8; 4];
    stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO"
}
