//! A group of bus instances on NATS or Kafka losing one to `close`, one to SIGKILL and gaining
//! a replacement under keyed load, then 3 instances against 1 draining a backlog; see
//! `eventbus_bench::scale_out`.
//!
//! `cargo xtask scale-out [--transport nats|kafka|all] [--only scenario|throughput]`, or
//! `cargo run --release -p eventbus-bench --bin scale-out -- [--transport nats|kafka|all]
//! [--only scenario|throughput] [--messages N]` (instances log to stderr per
//! `EVENTBUS_LOG`, into `$TMPDIR/eventbus-scale-out/<topic>/`, kept when a run fails).
//!
//! On the shared brokers (`EVENTBUS_NATS_URL`, `EVENTBUS_KAFKA_BROKERS`, else 127.0.0.1);
//! the topics, streams and groups it made are deleted at the end. Fails when a message is
//! lost or a key's order is broken; duplicates are reported, not failed on (a killed
//! instance's unacknowledged messages are handled again: at-least-once).

use std::process::ExitCode;

use eventbus_bench::scale_out::{self, DRAIN_HEAD, DrainPlan, Plan, SCENARIO_HEAD, Transport};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("member") {
        return match scale_out::member(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("member: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let transports = match Transport::from_flag(eventbus_bench::flag("--transport").as_deref()) {
        Ok(transports) => transports,
        Err(e) => {
            eprintln!("--transport: {e}");
            return ExitCode::from(2);
        }
    };
    let only = eventbus_bench::flag("--only");
    if only
        .as_deref()
        .is_some_and(|o| o != "scenario" && o != "throughput")
    {
        eprintln!("--only: expected scenario or throughput");
        return ExitCode::from(2);
    }
    let messages = eventbus_bench::arg("--messages", 10_000);
    let plan = Plan {
        messages,
        ..Plan::default()
    };
    let drain_plan = DrainPlan {
        messages,
        ..DrainPlan::default()
    };
    // Dropped at the end, also after a failure: they delete what this process named.
    let kafka = eventbus_kafka::testing::SharedBroker::get();
    let nats = eventbus_nats::testing::SharedServer::get();
    let address = |t: Transport| match t {
        Transport::Kafka => kafka.brokers(),
        Transport::Nats => nats.url(),
    };
    let runtime = eventbus_bench::runtime();
    let mut failures = Vec::new();
    let mut check = |what: String, tally: eventbus_bench::members::Tally| {
        if tally.broken() {
            failures.push(format!("{what}: {tally:?}"));
        }
    };
    let mut errors = Vec::new();

    if only.as_deref() != Some("throughput") {
        println!(
            "Scale-out: 3 instances, one closes at 20% of the load, one is killed (SIGKILL) at 40%, a replacement starts at 60% ({plan:?})\n\n{SCENARIO_HEAD}"
        );
        for &t in &transports {
            match runtime.block_on(scale_out::scenario(t, &address(t), plan)) {
                Ok(f) => {
                    println!("{}", scale_out::scenario_row(t, &f));
                    check(format!("{} scenario", t.name()), f.tally);
                }
                Err(e) => errors.push(format!("{} scenario: {e}", t.name())),
            }
        }
        println!();
    }
    if only.as_deref() != Some("scenario") {
        println!(
            "Throughput: a backlog drained by 1 instance, then by 3 ({drain_plan:?})\n\n{DRAIN_HEAD}"
        );
        let mut speedups = Vec::new();
        for &t in &transports {
            match runtime.block_on(scale_out::drain(t, &address(t), drain_plan, &[1, 3])) {
                Ok(rows) => {
                    for d in &rows {
                        println!("{}", scale_out::drain_row(t, d));
                        check(format!("{} drain by {}", t.name(), d.instances), d.tally);
                    }
                    if let [one, three] = rows.as_slice() {
                        speedups.push((t, scale_out::speedup(one, three)));
                    }
                }
                Err(e) => errors.push(format!("{} throughput: {e}", t.name())),
            }
        }
        println!();
        for (t, (all, handling)) in speedups {
            println!(
                "{}: 3 instances drain {all:.2}x as fast as 1 from start, {handling:.2}x from the first handling",
                t.name()
            );
        }
    }
    drop((kafka, nats));
    failures.extend(errors);
    eventbus_bench::exit_code(&failures)
}
