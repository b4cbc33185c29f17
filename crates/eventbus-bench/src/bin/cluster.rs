//! A 3-node NATS or Kafka cluster losing the node that leads the topic under keyed load, and
//! getting it back; see `eventbus_bench::cluster`.
//!
//! `cargo xtask cluster [--transport nats|kafka|all] [--messages N]`, or
//! `cargo run --release -p eventbus-bench --bin cluster -- [--transport nats|kafka|all]
//! [--messages N]`.
//!
//! `EVENTBUS_LOG=<filter>` logs the buses to stderr; `EVENTBUS_KEEP_LOGS=1` keeps the nodes'
//! logs and stores after a run that passed too. Starts its own clusters (nodes on free ports, stores under `$TMPDIR/eventbus-brokers/`,
//! kept with their logs when a run fails). Prints a table and writes
//! `target/cluster/<transport>.svg` (published and handled a second, the kill and the restart
//! marked). Fails when a message is lost, a key's order is broken, or a NATS stream does not
//! hold every message exactly once.

use std::process::ExitCode;

use eventbus_bench::cluster::{self, HEAD, Plan, Transport};

fn main() -> ExitCode {
    let transports = match Transport::from_flag(eventbus_bench::flag("--transport").as_deref()) {
        Ok(transports) => transports,
        Err(e) => {
            eprintln!("--transport: {e}");
            return ExitCode::from(2);
        }
    };
    let plan = Plan {
        messages: eventbus_bench::arg("--messages", Plan::default().messages),
        ..Plan::default()
    };
    // The buses' logs on stderr, per `EVENTBUS_LOG` (e.g. `eventbus_nats=debug`).
    eventbus_bench::members::init_logs();
    let runtime = eventbus_bench::runtime();
    let dir = eventbus_bench::target_dir().join("cluster");
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for &t in &transports {
        match runtime.block_on(cluster::run(t, plan)) {
            Ok(f) => {
                rows.push(cluster::row(t, &f));
                if let Some(n) = f.slowest {
                    println!(
                        "{}: the message that waited longest: m-{n}, key k-{}, {} ms",
                        t.name(),
                        n % plan.keys,
                        f.longest_wait.as_millis()
                    );
                }
                if !f.errors.is_empty() {
                    println!(
                        "{}: {} publish calls failed and were made again: {}",
                        t.name(),
                        f.failed_publishes,
                        f.errors.join("; ")
                    );
                }
                if f.tally.broken() {
                    failures.push(format!("{}: {:?}", t.name(), f.tally));
                }
                if t == Transport::Nats && f.stored != Ok(plan.messages) {
                    failures.push(format!(
                        "nats: the stream holds {:?} messages, {} were published",
                        f.stored, plan.messages
                    ));
                }
                let path = dir.join(format!("{}.svg", t.name()));
                match cluster::svg(t, &f).map(|svg| {
                    std::fs::create_dir_all(&dir)?;
                    std::fs::write(&path, svg)
                }) {
                    Ok(Ok(())) => println!("{}: chart {}", t.name(), path.display()),
                    Ok(Err(e)) => eprintln!("{}: cannot write the chart: {e}", t.name()),
                    Err(e) => eprintln!("{}: cannot draw the chart: {e}", t.name()),
                }
            }
            Err(e) => failures.push(format!("{}: {e}", t.name())),
        }
    }
    println!(
        "\nA {}-node cluster loses the node leading the topic (SIGKILL) at {:.0}% of the load and gets it back at {:.0}% ({} messages over {} keys at {}/s, replication 3)\n\n{HEAD}",
        plan.nodes,
        plan.kill_at * 100.0,
        plan.restart_at * 100.0,
        plan.messages,
        plan.keys,
        plan.rate
    );
    for row in rows {
        println!("{row}");
    }
    eventbus_bench::exit_code(&failures)
}
