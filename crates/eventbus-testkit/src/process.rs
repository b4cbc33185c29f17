//! A broker as a child process for tests that must kill or restart one: its own free port and
//! store directory, stopped by its pid (on drop too) and its store removed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process on `127.0.0.1:<port>`.
#[derive(Debug)]
pub struct ServerProcess {
    program: String,
    args: Vec<String>,
    port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `program` with `args`, where `{port}` becomes a free port and `{store}` a fresh
    /// directory, and waits (up to 10 s) until the port accepts connections.
    pub fn start(program: &str, args: &[&str]) -> std::io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let store =
            std::env::temp_dir().join(format!("eventbus-{program}-{}-{port}", std::process::id()));
        let mut server = ServerProcess {
            program: program.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            port,
            store,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// A nats-server with JetStream, plus `extra` arguments (e.g. `--auth secret`).
    pub fn nats(extra: &[&str]) -> std::io::Result<Self> {
        let mut args = vec!["-a", "127.0.0.1", "-p", "{port}", "-js", "-sd", "{store}"];
        args.extend_from_slice(extra);
        Self::start("nats-server", &args)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its store directory.
    pub fn store(&self) -> &Path {
        &self.store
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let port = self.port.to_string();
        let store = self.store.display().to_string();
        let args = self
            .args
            .iter()
            .map(|a| a.replace("{port}", &port).replace("{store}", &store));
        self.child = Some(
            Command::new(&self.program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                self.kill();
                return Err(std::io::Error::other(format!(
                    "{} did not listen on port {} within 10 s",
                    self.program, self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL, as a crash would, and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts it again on the same port and store.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

impl ServerProcess {
    /// A tansu Kafka broker (`tansu broker`, sqlite storage in its store directory), plus
    /// `extra` arguments. tansu opens its sqlite file relative to its working directory, so it
    /// is started from the store directory (through `sh`, which `exec`s it: the pid is
    /// tansu's). The binary is `$TANSU` if set, else `tansu` on the `PATH`.
    pub fn tansu(extra: &[&str]) -> std::io::Result<Self> {
        let mut script = String::from(
            "mkdir -p {store} && cd {store} && exec \"${TANSU:-tansu}\" broker \
             --listener-url tcp://127.0.0.1:{port} \
             --advertised-listener-url tcp://127.0.0.1:{port} \
             --storage-engine sqlite://tansu.db",
        );
        for arg in extra {
            script.push_str(" '");
            script.push_str(&arg.replace('\'', r"'\''"));
            script.push('\'');
        }
        let server = Self::start("sh", &["-c", &script])?;
        index_tansu_headers(&server.store.join("tansu.db"));
        Ok(server)
    }
}

/// tansu 0.6's sqlite schema has no index on `header (topition, offset_id)`, and its fetch
/// looks up each record's headers with its own query: every fetched record scans every header
/// stored so far, of every topic. Consuming slows down linearly with what the broker holds
/// (about 160 msg/s once some 60,000 headers are stored), which measures the broker and
/// starves long tests. The index is added to the store tansu just created (its tables exist
/// once it listens), with the `sqlite3` shell; without one, or with
/// `EVENTBUS_TANSU_AS_SHIPPED` set (to compare), the broker runs as shipped.
fn index_tansu_headers(db: &Path) {
    if std::env::var_os("EVENTBUS_TANSU_AS_SHIPPED").is_some() {
        return;
    }
    let created = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 5000")
        .arg(db)
        .arg("CREATE INDEX IF NOT EXISTS eventbus_header_record ON header (topition, offset_id)")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match created {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "tansu: cannot index its header table ({}): fetches slow down as it fills",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!(
            "tansu: no sqlite3 shell to index its header table ({e}): fetches slow down as it fills"
        ),
    }
}
