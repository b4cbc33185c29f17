//! A 3-node cluster of each broker losing the node that leads the topic under keyed load
//! (`eventbus_bench::cluster`): nothing lost, no key's order broken, and on NATS the stream
//! holds each message exactly once although publishes failed over to another leader. Each run
//! starts its own cluster on free ports.

use eventbus_bench::cluster::{self, HEAD, Plan, Transport};

fn run(transport: Transport) {
    let plan = Plan::default();
    let figures = eventbus_bench::runtime()
        .block_on(cluster::run(transport, plan))
        .unwrap_or_else(|e| panic!("{e}"));
    // The table, also when it passes: `--no-capture` shows the figures.
    println!("{HEAD}\n{}", cluster::row(transport, &figures));
    assert_eq!(figures.tally.lost, 0, "{figures:?}");
    assert_eq!(figures.tally.order_violations, 0, "{figures:?}");
    assert_eq!(figures.tally.published, plan.messages);
    if transport == Transport::Nats {
        assert_eq!(figures.stored, Ok(plan.messages), "{figures:?}");
    }
}

#[test]
fn nats_cluster_loses_the_stream_leader_under_load() {
    run(Transport::Nats);
}

#[test]
fn kafka_cluster_loses_the_partition_leader_under_load() {
    run(Transport::Kafka);
}
