//! The shared brokers: one nats-server and one Kafka broker on fixed ports, started once for a
//! working session or a CI run (`cargo xtask brokers up`, `cargo xtask test`) and used by every
//! test that does not kill or reconfigure its broker. nextest runs each test in a process of
//! its own, so they live outside the tests: detached processes whose pids are kept in
//! `<dir>/<kind>/pid`, with their store and log beside it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{ServerKind, ServerProcess, kafka, nats};

/// The shared nats-server's client port.
pub const NATS_PORT: u16 = 4222;
/// The shared Kafka broker's port.
pub const KAFKA_PORT: u16 = 9092;
/// The shared Kafka broker's controller port.
pub const KAFKA_CONTROLLER_PORT: u16 = 9093;

/// The shared Kafka's bootstrap servers: `EVENTBUS_KAFKA_BROKERS`, else `127.0.0.1:9092`.
pub fn kafka_brokers() -> String {
    std::env::var("EVENTBUS_KAFKA_BROKERS").unwrap_or_else(|_| format!("127.0.0.1:{KAFKA_PORT}"))
}

/// The shared NATS server's URL: `EVENTBUS_NATS_URL`, else `nats://127.0.0.1:4222`.
pub fn nats_url() -> String {
    std::env::var("EVENTBUS_NATS_URL").unwrap_or_else(|_| format!("nats://127.0.0.1:{NATS_PORT}"))
}

/// Where the shared brokers keep their pid, store and log by default: `target/brokers/` of
/// this workspace.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/brokers")
}

/// Whether the shared `kind` answers on its port.
pub fn answers(kind: ServerKind) -> bool {
    match kind {
        ServerKind::Nats => nats::answers(NATS_PORT),
        ServerKind::Kafka => kafka::answers(KAFKA_PORT),
    }
}

/// Starts each of `kinds` that does not answer yet, on a fresh store in `dir/<kind>/`; returns
/// the ones it started (to be stopped by [`down`]). On an error it stops what it started.
pub fn up(dir: &Path, kinds: &[ServerKind]) -> std::io::Result<Vec<ServerKind>> {
    let mut started = Vec::new();
    for &kind in kinds {
        if answers(kind) {
            continue;
        }
        let home = dir.join(kind.name());
        if home.exists() {
            std::fs::remove_dir_all(&home)?;
        }
        let (port, controller) = match kind {
            ServerKind::Nats => (NATS_PORT, 0),
            ServerKind::Kafka => (KAFKA_PORT, KAFKA_CONTROLLER_PORT),
        };
        let server =
            match ServerProcess::start(kind, &[], port, controller, home.clone(), true, None) {
                Ok(server) => server,
                Err(e) => {
                    // All or nothing: the caller learns of no broker to stop.
                    down(dir, &started)?;
                    return Err(e);
                }
            };
        let log = server.log();
        let pid = server.detach().expect("a started server has a pid");
        std::fs::write(home.join("pid"), pid.to_string())?;
        eprintln!(
            "started the shared {} on port {port} (pid {pid}, log {})",
            kind.name(),
            log.display()
        );
        started.push(kind);
    }
    Ok(started)
}

/// Stops each of `kinds` that [`up`] started in `dir` (SIGTERM, then SIGKILL after 30 s), and
/// removes its directory.
pub fn down(dir: &Path, kinds: &[ServerKind]) -> std::io::Result<()> {
    for &kind in kinds {
        let home = dir.join(kind.name());
        let Some(pid) = pid_of(&home) else {
            continue;
        };
        signal("TERM", pid)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            signal("KILL", pid)?;
        }
        std::fs::remove_dir_all(&home)?;
        eprintln!("stopped the shared {} (pid {pid})", kind.name());
    }
    Ok(())
}

/// A line per kind: whether it answers, and the pid [`up`] recorded.
pub fn status(dir: &Path) -> Vec<String> {
    [ServerKind::Nats, ServerKind::Kafka]
        .into_iter()
        .map(|kind| {
            let home = dir.join(kind.name());
            let answering = if answers(kind) { "up" } else { "down" };
            match pid_of(&home) {
                Some(pid) => format!(
                    "{}: {answering}, started by `up` (pid {pid}, log {})",
                    kind.name(),
                    home.join("server.log").display()
                ),
                None => format!("{}: {answering}, not started by `up`", kind.name()),
            }
        })
        .collect()
}

/// The recorded pid, if that process still runs from `home` (a pid file outliving its
/// process, with the pid reused, names someone else).
fn pid_of(home: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(home.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let home = home.to_string_lossy();
    String::from_utf8_lossy(&cmdline)
        .contains(home.as_ref())
        .then_some(pid)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn signal(name: &str, pid: u32) -> std::io::Result<()> {
    super::process::run_quietly(
        std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string()),
    )
}
