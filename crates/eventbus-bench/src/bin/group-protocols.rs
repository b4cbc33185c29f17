//! Kafka's group protocols side by side: 10 members joining under load, a member leaving and
//! one killed, under KIP-848 and the classic protocol (cooperative-sticky and eager); see
//! `eventbus_bench::groups`.
//!
//! `cargo xtask groups [--quick] [--rounds N]`, or
//! `cargo run --release -p eventbus-bench --bin group-protocols -- [--quick] [--rounds N]
//! [--work-ms MS] [--shared] [--protocol consumer|classic-cooperative|classic-eager]
//! [--scenario join|leave|kill]` (handlers work 50 ms per message, 1 ms with `--quick`;
//! members log to stderr per `EVENTBUS_LOG`)
//!
//! Kafka: with `--shared` the shared broker (`EVENTBUS_KAFKA_BROKERS`, else 127.0.0.1:9092),
//! else a private broker of its own. Fails when a message is
//! lost, a key's order is broken, or a message is handled twice where no member crashed.

use std::time::Duration;

use eventbus_bench::groups::{self, Departure, HEAD, Plan, Variant};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("member") {
        return match groups::member(&args[1..]) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("member: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only_protocol = eventbus_bench::flag("--protocol");
    let only_scenario = eventbus_bench::flag("--scenario");
    let rounds = eventbus_bench::arg("--rounds", 1) as usize;
    let plan = if quick {
        Plan {
            joining: 10,
            rate: 500,
            phase: Duration::from_secs(1),
            work: Duration::from_millis(1),
        }
    } else {
        Plan {
            joining: 10,
            rate: 1_000,
            phase: Duration::from_secs(3),
            work: Duration::from_millis(eventbus_bench::arg("--work-ms", 50)),
        }
    };
    let shared =
        args.iter().any(|a| a == "--shared") || std::env::var("EVENTBUS_KAFKA_BROKERS").is_ok();
    let private = (!shared).then(eventbus_kafka::testing::PrivateBroker::start);
    let brokers = private.as_ref().map_or_else(
        eventbus_testkit::brokers::shared::kafka_brokers,
        eventbus_kafka::testing::PrivateBroker::brokers,
    );
    let runtime = eventbus_bench::runtime();
    let mut failures = Vec::new();
    println!("Kafka group protocols on {brokers} ({plan:?}, {rounds} round(s))\n\n{HEAD}");
    for _ in 0..rounds {
        for variant in Variant::ALL {
            if only_protocol
                .as_deref()
                .is_some_and(|p| p != variant.name())
            {
                continue;
            }
            let runs: [(&str, Option<Departure>); 3] = [
                ("join", None),
                ("leave", Some(Departure::Leave)),
                ("kill", Some(Departure::Kill)),
            ];
            for (scenario, departure) in runs {
                if only_scenario.as_deref().is_some_and(|s| s != scenario) {
                    continue;
                }
                let result = runtime.block_on(async {
                    match departure {
                        None => groups::join(&brokers, variant, plan).await,
                        Some(d) => groups::depart(&brokers, variant, d, plan).await,
                    }
                });
                match result {
                    Ok(f) => {
                        println!("{}", groups::row(variant, scenario, &f));
                        if f.lost > 0 || f.order_violations > 0 {
                            failures.push(format!("{} {scenario}: {f:?}", variant.name()));
                        }
                        if departure != Some(Departure::Kill) && f.duplicated > 0 {
                            failures.push(format!(
                                "{} {scenario}: {} duplicates where no member crashed",
                                variant.name(),
                                f.duplicated
                            ));
                        }
                    }
                    Err(e) => failures.push(format!("{} {scenario}: {e}", variant.name())),
                }
            }
        }
    }
    drop(private);
    eventbus_bench::exit_code(&failures)
}
