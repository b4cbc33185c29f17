//! Where the brokers live on this machine, and how they get there: pinned versions, installed
//! into a cache outside the checkout so that every clone (and CI's) reuses them.
//!
//! - nats-server: `go install github.com/nats-io/nats-server/v2@<version>` (the Go module
//!   proxy), into `<cache>/nats-server-<version>/`.
//! - Apache Kafka: the broker's jars and their runtime dependencies, fetched by Maven from
//!   Maven Central with `dependency:copy-dependencies` over `kafka-pom.xml` (next to this file),
//!   into `<cache>/kafka-<version>/libs/`.
//!
//! Each is installed into a temporary directory and renamed into place, so an interrupted
//! install leaves nothing that looks installed and two concurrent installs do not mix.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The nats-server release the tests run (priority groups need 2.11 or newer).
pub const NATS_SERVER_VERSION: &str = "v2.15.3";
/// The Apache Kafka release the tests run (the version in `kafka-pom.xml`).
pub const KAFKA_VERSION: &str = "4.4.0";
/// The Maven project that names Kafka's broker and a log provider.
const KAFKA_POM: &str = include_str!("kafka-pom.xml");
/// `maven-dependency-plugin`, named by version: Maven 3.8's default one is older than Central's.
const DEPENDENCY_PLUGIN: &str = "org.apache.maven.plugins:maven-dependency-plugin:3.11.0";

/// The cache root: `$EVENTBUS_CACHE`, else `$XDG_CACHE_HOME/eventbus`, else
/// `$HOME/.cache/eventbus`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EVENTBUS_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("eventbus");
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join("eventbus")
}

/// The installed nats-server binary (it may not exist yet: see [`nats_server`]).
pub fn nats_server_path() -> PathBuf {
    cache_dir()
        .join(format!("nats-server-{NATS_SERVER_VERSION}"))
        .join("nats-server")
}

/// Kafka's installation: `libs/` (the classpath) and `template/` (a formatted store).
pub fn kafka_home() -> PathBuf {
    cache_dir().join(format!("kafka-{KAFKA_VERSION}"))
}

/// The installed nats-server, or an error that says how to install it.
pub fn nats_server() -> std::io::Result<PathBuf> {
    let path = nats_server_path();
    if path.is_file() {
        Ok(path)
    } else {
        Err(not_installed("nats-server", &path))
    }
}

/// Kafka's `libs/` directory, or an error that says how to install it.
pub fn kafka_libs() -> std::io::Result<PathBuf> {
    let libs = kafka_home().join("libs");
    if libs
        .join(format!("kafka_2.13-{KAFKA_VERSION}.jar"))
        .is_file()
    {
        Ok(libs)
    } else {
        Err(not_installed("Apache Kafka", &libs))
    }
}

fn not_installed(what: &str, path: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!(
            "{what} is not installed at {} (run `cargo xtask brokers install`)",
            path.display()
        ),
    )
}

/// Installs what is missing (nats-server with `go`, Kafka with `mvn`); a machine that has both
/// does nothing. Says on stderr what it does.
pub fn install() -> std::io::Result<()> {
    install_nats_server()?;
    install_kafka()
}

fn install_nats_server() -> std::io::Result<()> {
    let path = nats_server_path();
    if path.is_file() {
        return Ok(());
    }
    let dir = path.parent().expect("a file in a directory");
    let staging = staging(dir)?;
    eprintln!(
        "installing nats-server {NATS_SERVER_VERSION} (go install) into {}",
        dir.display()
    );
    run(Command::new("go")
        .arg("install")
        .arg(format!(
            "github.com/nats-io/nats-server/v2@{NATS_SERVER_VERSION}"
        ))
        .env("GOBIN", &staging))?;
    publish(&staging, dir)
}

fn install_kafka() -> std::io::Result<()> {
    if kafka_libs().is_ok() {
        return Ok(());
    }
    let home = kafka_home();
    let staging = staging(&home)?;
    let pom = staging.join("pom.xml");
    std::fs::write(&pom, KAFKA_POM)?;
    eprintln!(
        "installing Apache Kafka {KAFKA_VERSION} (Maven) into {}",
        home.display()
    );
    run(Command::new("mvn")
        .args(["-B", "-q", "-f"])
        .arg(&pom)
        .arg(format!("{DEPENDENCY_PLUGIN}:copy-dependencies"))
        .arg("-DincludeScope=runtime")
        .arg(format!(
            "-DoutputDirectory={}",
            staging.join("libs").display()
        )))?;
    std::fs::remove_file(&pom)?;
    // A half-made directory from an earlier failed attempt has no jar of the broker: replace it.
    if home.exists() {
        std::fs::remove_dir_all(&home)?;
    }
    publish(&staging, &home)
}

/// A fresh directory beside `dir`, to be renamed into it.
fn staging(dir: &Path) -> std::io::Result<PathBuf> {
    let parent = dir
        .parent()
        .expect("an installation directory has a parent");
    std::fs::create_dir_all(parent)?;
    let staging = parent.join(format!(
        ".{}.{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    Ok(staging)
}

/// Renames `staging` into `dir`; another process that got there first wins.
fn publish(staging: &Path, dir: &Path) -> std::io::Result<()> {
    match std::fs::rename(staging, dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.exists() => std::fs::remove_dir_all(staging),
        Err(e) => Err(e),
    }
}

fn run(command: &mut Command) -> std::io::Result<()> {
    let status = command.status().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot run {:?}: {e}", command.get_program()),
        )
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{:?} {:?} failed ({status})",
            command.get_program(),
            command.get_args().collect::<Vec<_>>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pom_names_the_pinned_kafka() {
        assert!(
            KAFKA_POM.contains(&format!("<version>{KAFKA_VERSION}</version>")),
            "kafka-pom.xml and KAFKA_VERSION disagree"
        );
    }
}
