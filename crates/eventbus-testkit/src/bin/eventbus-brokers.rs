//! `eventbus-brokers <install | up | down | status> [nats] [kafka]`: installs the tests' brokers
//! into the cache, or starts, stops and reports the shared ones (all kinds unless named).
//! `cargo xtask brokers` and `cargo xtask test` run it; `up` prints the kinds it started, one
//! per line, so its caller stops only those.

use std::process::ExitCode;

use eventbus_testkit::brokers::{ServerKind, install, shared};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        return usage();
    };
    let mut kinds = Vec::new();
    for name in &args[1..] {
        kinds.push(match name.as_str() {
            "nats" => ServerKind::Nats,
            "kafka" => ServerKind::Kafka,
            _ => return usage(),
        });
    }
    if kinds.is_empty() {
        kinds = vec![ServerKind::Nats, ServerKind::Kafka];
    }
    // One spelling of the directory, as `up` records it in the brokers' command lines and
    // `down` looks for it there.
    let dir = shared::default_dir();
    let dir = || std::fs::create_dir_all(&dir).and_then(|()| dir.canonicalize());
    let result = match command.as_str() {
        "install" => install::install(),
        "up" => install::install()
            .and_then(|()| shared::up(&dir()?, &kinds))
            .map(|started| {
                for kind in started {
                    println!("{}", kind.name());
                }
            }),
        "down" => dir().and_then(|dir| shared::down(&dir, &kinds)),
        "status" => dir().map(|dir| shared::status(&dir).iter().for_each(|l| println!("{l}"))),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventbus-brokers {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: eventbus-brokers <install | up | down | status> [nats] [kafka]");
    ExitCode::from(2)
}
