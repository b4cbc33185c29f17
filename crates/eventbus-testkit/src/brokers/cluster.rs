//! A broker cluster on loopback: several [`ServerProcess`]es, one per node, on free ports with
//! their own stores, that a test kills and restarts one by one.
//!
//! - NATS: `nats-server -js` nodes named `n1`, `n2`, … joined by routes into one JetStream
//!   cluster (each started after, and routed to, the nodes before it); each also serves its
//!   monitoring port, whose `/healthz` says when its JetStream is current (a meta leader
//!   known, its streams and consumers caught up).
//! - Kafka: KRaft nodes that are each broker and controller, `node.id` 1, 2, …, with a static
//!   quorum of all of them; replication and `min.insync.replicas` default to the cluster's
//!   (3 and 2 for three nodes), and the broker's liveness timeouts are cut from 9 s to 3 s so
//!   a killed node is fenced, and its partitions led elsewhere, within seconds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::{ServerKind, ServerProcess, kafka};

/// How long a cluster may take to become whole, at start or after a node's restart (three
/// JVMs starting on two cores take tens of seconds).
const FORM_TIMEOUT: Duration = Duration::from_secs(120);

/// How long after a NATS node starts its routes may still change: nats-server dials a route
/// that failed again a second later.
const ROUTES_SETTLE: Duration = Duration::from_millis(1500);

/// Nodes of one broker kind forming one cluster.
#[derive(Debug)]
pub struct Cluster {
    kind: ServerKind,
    nodes: Vec<ServerProcess>,
    /// NATS: each node's monitoring port (`/healthz`, `/routez`).
    monitors: Vec<u16>,
    /// When a node was last started.
    launched: Instant,
}

impl Cluster {
    /// `size` nats-servers with JetStream forming one cluster; returns once every node's
    /// JetStream is current.
    pub fn nats(size: usize) -> std::io::Result<Cluster> {
        let ports = free_ports(size)?;
        let routes = free_ports(size)?;
        let monitors = free_ports(size)?;
        let name = format!("eventbus-{}-{}", std::process::id(), ports[0]);
        let mut cluster = Cluster {
            kind: ServerKind::Nats,
            nodes: Vec::with_capacity(size),
            monitors: monitors.clone(),
            launched: Instant::now(),
        };
        let all_routes = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        for i in 0..size {
            let extra = [
                "--server_name".to_owned(),
                node_name(i),
                "--cluster_name".to_owned(),
                name.clone(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{}", routes[i]),
                "--routes".to_owned(),
                all_routes.clone(),
                "-m".to_owned(),
                monitors[i].to_string(),
            ];
            cluster.nodes.push(ServerProcess::launch_node(
                ServerKind::Nats,
                i as u32 + 1,
                &extra,
                ports[i],
                0,
                node_dir(ServerKind::Nats, ports[0], i),
            )?);
        }
        cluster.await_whole()?;
        Ok(cluster)
    }

    /// `size` Kafka nodes (broker and controller each) forming one KRaft cluster, with
    /// `properties` (`name=value` lines) added to every node's configuration; returns once
    /// every node lists all of them.
    pub fn kafka(size: usize, properties: &[&str]) -> std::io::Result<Cluster> {
        let ports = free_ports(size)?;
        let controllers = free_ports(size)?;
        let voters = controllers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let replicas = size.min(3);
        let in_sync = replicas.div_ceil(2).max(1);
        let mut config = vec![
            format!("controller.quorum.voters={voters}"),
            format!("default.replication.factor={replicas}"),
            format!("min.insync.replicas={in_sync}"),
            format!("offsets.topic.replication.factor={replicas}"),
            format!("transaction.state.log.replication.factor={replicas}"),
            format!("transaction.state.log.min.isr={in_sync}"),
            format!("share.coordinator.state.topic.replication.factor={replicas}"),
            format!("share.coordinator.state.topic.min.isr={in_sync}"),
            // A broker that stops heartbeating is fenced after this (default 9 s), and only
            // then are its partitions given other leaders.
            "broker.heartbeat.interval.ms=500".to_owned(),
            "broker.session.timeout.ms=3000".to_owned(),
        ];
        config.extend(properties.iter().map(|p| (*p).to_owned()));
        let mut cluster = Cluster {
            kind: ServerKind::Kafka,
            nodes: Vec::with_capacity(size),
            monitors: Vec::new(),
            launched: Instant::now(),
        };
        for i in 0..size {
            cluster.nodes.push(ServerProcess::launch_node(
                ServerKind::Kafka,
                i as u32 + 1,
                &config,
                ports[i],
                controllers[i],
                node_dir(ServerKind::Kafka, ports[0], i),
            )?);
        }
        cluster.await_whole()?;
        Ok(cluster)
    }

    /// Which broker.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// Its nodes, in order: node `i` is NATS server `n<i+1>`, Kafka `node.id` `i + 1`.
    pub fn nodes(&self) -> &[ServerProcess] {
        &self.nodes
    }

    /// The index of the node a broker names: a NATS server name (`n2`) or a Kafka node id
    /// (`2`).
    pub fn node_named(&self, name: &str) -> Option<usize> {
        let id: usize = name.strip_prefix('n').unwrap_or(name).parse().ok()?;
        (1..=self.nodes.len()).contains(&id).then(|| id - 1)
    }

    /// Every node's client address, comma-separated: NATS URLs (`nats://127.0.0.1:p,…`) or
    /// Kafka bootstrap servers (`127.0.0.1:p,…`).
    pub fn addresses(&self) -> String {
        self.nodes
            .iter()
            .map(|n| match self.kind {
                ServerKind::Nats => format!("nats://127.0.0.1:{}", n.port()),
                ServerKind::Kafka => format!("127.0.0.1:{}", n.port()),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Keeps every node's directory (log and store) when this is dropped, as a failed test
    /// does: for a tool that failed without panicking.
    pub fn keep_on_drop(&mut self) {
        for node in &mut self.nodes {
            node.keep_on_drop();
        }
    }

    /// SIGKILLs node `i`, as a crash would.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its ports and store, and waits until the cluster is whole
    /// again (NATS: every node current; Kafka: every node listed).
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        self.launched = Instant::now();
        self.nodes[i].restart()?;
        self.await_whole()
    }

    /// Waits until every node answers and the cluster is whole.
    fn await_whole(&mut self) -> std::io::Result<()> {
        for node in &mut self.nodes {
            node.await_ready()?;
        }
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let whole = match self.kind {
                // Current, and routed to every other node after the routes settled: a node
                // that dialed one not yet listening dials again a second later, and nats-server
                // closes one of the two connections that makes with the other side's; a
                // JetStream request on it at that moment is lost (a consumer being created
                // timed out so in one CI run).
                ServerKind::Nats => {
                    self.launched.elapsed() > ROUTES_SETTLE
                        && self
                            .monitors
                            .iter()
                            .all(|&m| healthy(m) && routed(m, self.nodes.len()))
                }
                ServerKind::Kafka => self
                    .nodes
                    .iter()
                    .all(|n| kafka::brokers_listed(n.port()).ok() == Some(self.nodes.len() as i32)),
            };
            if whole {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs = self
                    .nodes
                    .iter()
                    .map(|n| n.log().display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(std::io::Error::other(format!(
                    "the {} cluster of {} nodes did not form within {FORM_TIMEOUT:?}; logs: {logs}",
                    self.kind.name(),
                    self.nodes.len()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let dir = self
            .nodes
            .first()
            .and_then(|n| n.dir().parent().map(ToOwned::to_owned));
        // Each node removes its own directory (or keeps it, and says so, in a failed test).
        self.nodes.clear();
        if let Some(dir) = dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}

fn node_dir(kind: ServerKind, first_port: u16, i: usize) -> std::path::PathBuf {
    std::env::temp_dir()
        .join("eventbus-brokers")
        .join(format!(
            "{}-cluster-{}-{first_port}",
            kind.name(),
            std::process::id()
        ))
        .join(node_name(i))
}

/// `n` distinct free ports (asked for while the earlier ones are still held, so no two are the
/// same).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Whether nats-server's monitoring port answers `/healthz` with 200: JetStream enabled, a
/// meta leader known, and every stream and consumer of this node current.
fn healthy(monitor: u16) -> bool {
    get(monitor, "/healthz")
        .is_some_and(|response| response.split_whitespace().nth(1) == Some("200"))
}

/// Whether the node behind `monitor` has routes to all `nodes - 1` others (`/routez`).
fn routed(monitor: u16, nodes: usize) -> bool {
    get(monitor, "/routez").is_some_and(|body| {
        (0..nodes)
            .filter(|&i| body.contains(&format!("\"remote_name\": \"{}\"", node_name(i))))
            .count()
            >= nodes - 1
    })
}

/// The whole HTTP/1.0 response to `GET path` on the monitoring port.
fn get(monitor: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", monitor)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}
