//! Bus instances as child processes, for the tools that take a group's members away under load
//! (`group-protocols`, `scale-out`): a member can then be killed with SIGKILL as a crash would
//! kill it, which no task inside one process can imitate.
//!
//! - The member side, [`serve`]: a bus subscribed in one group whose handler works a while per
//!   message and prints `h <id>` once it is done; it closes when its stdin ends.
//! - The parent side, [`Members`]: starts members (the tool itself re-run with `member`
//!   arguments), reads what they print into a [`Record`], closes or kills them.
//! - [`Load`]: a steady keyed load from the parent; message `m-<n>` has key `k-<n % keys>`, so
//!   `n` orders a key's messages and [`tally`] can check loss, duplicates and per-key order
//!   from the record alone.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus_core::{BoxError, Delivery, EventBus, Message, handler_fn};

/// What a member's handler does with each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    /// A sleep per message: an I/O-bound handler (a call to a database or another service),
    /// which costs the machine nothing while it waits, so figures stay comparable on a busy
    /// machine.
    pub per_message: Duration,
    /// How many messages the handler works on at once in one member (0: no bound): a
    /// connection pool of that size. Without a bound a bus runs thousands of sleeps at once
    /// and one member is as fast as three.
    pub slots: usize,
}

impl Work {
    /// Its two command-line arguments: milliseconds and slots.
    pub fn args(self) -> [String; 2] {
        [
            self.per_message.as_millis().to_string(),
            self.slots.to_string(),
        ]
    }

    /// The inverse of [`args`](Self::args).
    pub fn parse(ms: &str, slots: &str) -> Result<Work, String> {
        Ok(Work {
            per_message: Duration::from_millis(ms.parse().map_err(|_| "work-ms: a number")?),
            slots: slots.parse().map_err(|_| "slots: a number")?,
        })
    }
}

/// Sends the member's `tracing` events to stderr (stdout carries what it handled), filtered
/// by `EVENTBUS_LOG`, which the parent sets.
pub fn init_logs() {
    if let Ok(filter) = std::env::var("EVENTBUS_LOG") {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .init();
    }
}

/// The member side: subscribes `bus` to `topic` in `group` with a handler doing `work`, until
/// stdin ends; then closes the subscription and the bus. Prints `subscribing`, `joined` (the
/// subscribe call returned), `h <id>` per message handled, and `closed`.
pub async fn serve(bus: EventBus, topic: &str, group: &str, work: Work) -> Result<(), String> {
    let slots = (work.slots > 0).then(|| Arc::new(tokio::sync::Semaphore::new(work.slots)));
    println!("subscribing");
    let sub = bus
        .subscribe(
            topic,
            group,
            handler_fn(move |d: Delivery| {
                let slots = slots.clone();
                async move {
                    let _slot = match &slots {
                        Some(s) => Some(s.acquire().await?),
                        None => None,
                    };
                    tokio::time::sleep(work.per_message).await;
                    // Printed once the work is done: a member killed before this line did not
                    // handle the message, as far as the record goes.
                    println!("h {}", d.message().id());
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .await
        .map_err(|e| e.to_string())?;
    println!("joined");
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    })
    .await;
    sub.close().await;
    bus.close().await.map_err(|e| e.to_string())?;
    println!("closed");
    Ok(())
}

/// One message handled, as the parent received the member's line.
#[derive(Debug, Clone, Copy)]
pub struct Handled {
    /// When the line arrived.
    pub at: Instant,
    /// Which member (index in start order).
    pub member: usize,
    /// The message's number.
    pub n: u64,
}

/// What the members reported, as this process received it. Lines of different members arrive
/// through different pipes and threads, so two handlings a few microseconds apart may be
/// recorded in either order; a key changes members only through a rebalance, which takes far
/// longer.
#[derive(Debug, Default)]
pub struct Record {
    /// Every handling, in order of arrival.
    pub handled: Vec<Handled>,
    /// When the first member said `subscribing`.
    pub first_subscribing: Option<Instant>,
    /// Members whose subscribe call returned.
    pub joined: HashSet<usize>,
    /// Each member's first handling.
    pub first_handled: HashMap<usize, Instant>,
    /// Members that closed.
    pub closed: HashSet<usize>,
}

#[derive(Debug)]
struct Member {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// The parent side: the members of one run and what they print. Their logs (stderr, at
/// `EVENTBUS_LOG` or the filter given to [`Members::new`]) go to files in one directory, kept
/// when the run fails.
#[derive(Debug)]
pub struct Members {
    exe: PathBuf,
    members: Vec<Member>,
    logs: PathBuf,
    filter: String,
    record: Arc<Mutex<Record>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Members {
    /// No member yet; logs go to `logs` (created).
    pub fn new(logs: PathBuf, default_filter: &str) -> Result<Members, String> {
        std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
        Ok(Members {
            exe: std::env::current_exe().map_err(|e| e.to_string())?,
            members: Vec::new(),
            logs,
            filter: std::env::var("EVENTBUS_LOG").unwrap_or_else(|_| default_filter.to_owned()),
            record: Arc::new(Mutex::new(Record::default())),
            readers: Vec::new(),
        })
    }

    /// Starts a member: this program with `member` and `args`. Returns its index.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(&mut self, args: &[S]) -> Result<usize, String> {
        let i = self.members.len();
        let log = self.logs.join(format!("member-{i}.log"));
        let mut child = Command::new(&self.exe)
            .arg("member")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?)
            .env("EVENTBUS_LOG", &self.filter)
            .spawn()
            .map_err(|e| format!("cannot start a member: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stdin = child.stdin.take();
        let record = Arc::clone(&self.record);
        self.readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                let mut r = record.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(id) = line.strip_prefix("h m-") {
                    if let Ok(n) = id.parse() {
                        r.handled.push(Handled { at, member: i, n });
                        r.first_handled.entry(i).or_insert(at);
                    }
                } else if line == "subscribing" {
                    r.first_subscribing.get_or_insert(at);
                } else if line == "joined" {
                    r.joined.insert(i);
                } else if line == "closed" {
                    r.closed.insert(i);
                }
            }
        }));
        self.members.push(Member { child, stdin });
        Ok(i)
    }

    /// The record so far.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `done` holds of the record, or fails after `limit`.
    pub async fn until(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Record) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while !done(&self.lock()) {
            if Instant::now() > deadline {
                return Err(format!("{what}: not within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Waits until every message of `0..published` was handled at least once; on failure,
    /// says which are missing.
    pub async fn all_handled(&self, published: u64, limit: Duration) -> Result<(), String> {
        let waited = self
            .until("every message handled", limit, |r| {
                missing(r, published).is_empty()
            })
            .await;
        waited.map_err(|e| {
            let missing = missing(&self.lock(), published);
            let first: Vec<String> = missing.iter().take(20).map(|n| format!("m-{n}")).collect();
            format!("{e}; {} missing: {} ...", missing.len(), first.join(" "))
        })
    }

    /// Closes member `i` gracefully: its stdin ends, and it calls `close`.
    pub fn leave(&mut self, i: usize) {
        drop(self.members[i].stdin.take());
    }

    /// SIGKILL.
    pub fn kill(&mut self, i: usize) {
        let _ = self.members[i].child.kill();
    }

    /// Closes every member still running and reaps them all; keeps their logs if `failed` (or
    /// if `EVENTBUS_KEEP_LOGS` is set).
    pub fn stop(mut self, failed: bool) {
        for m in &mut self.members {
            drop(m.stdin.take());
        }
        for m in &mut self.members {
            let _ = m.child.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        if failed || std::env::var_os("EVENTBUS_KEEP_LOGS").is_some() {
            eprintln!("the members' logs: {}", self.logs.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

/// Message `m-<n>` of the load: key `k-<n % keys>`.
pub fn message(topic: &str, n: u64, keys: u64) -> Message {
    Message::new(topic, format!("{n}"))
        .with_id(format!("m-{n}"))
        .with_key(format!("k-{}", n % keys))
}

/// Publishes `m-0` .. `m-<count - 1>` as fast as the broker takes them.
pub async fn publish_all(bus: &EventBus, topic: &str, keys: u64, count: u64) -> Result<(), String> {
    const BATCH: u64 = 500;
    for start in (0..count).step_by(BATCH as usize) {
        let batch = (start..count.min(start + BATCH))
            .map(|n| message(topic, n, keys))
            .collect();
        bus.publish_batch(batch)
            .await
            .map_err(|e| format!("publish: {e}"))?;
    }
    Ok(())
}

/// A load at a steady rate: `m-<n>` in batches every 20 ms, until stopped or `total` are out.
#[derive(Debug)]
pub struct Load {
    stop: tokio_util::sync::CancellationToken,
    published: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<Vec<Instant>, String>>,
}

impl Load {
    /// Starts publishing about `per_second` messages a second to `topic`, over `keys` keys.
    pub fn start(
        bus: EventBus,
        topic: String,
        keys: u64,
        per_second: u64,
        total: Option<u64>,
    ) -> Load {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let published = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&published);
        let total = total.unwrap_or(u64::MAX);
        let task = tokio::spawn(async move {
            const TICK: Duration = Duration::from_millis(20);
            let per_tick = (per_second * TICK.as_millis() as u64 / 1000).max(1);
            let mut tick = tokio::time::interval(TICK);
            // When each message's publish call began: a message may be handled before the
            // call returns.
            let mut sent_at = Vec::new();
            let mut n = 0u64;
            while !token.is_cancelled() && n < total {
                tick.tick().await;
                let end = total.min(n + per_tick);
                let batch: Vec<Message> = (n..end).map(|i| message(&topic, i, keys)).collect();
                let now = Instant::now();
                sent_at.extend((n..end).map(|_| now));
                bus.publish_batch(batch)
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
                n = end;
                // Release: read by the scenario to decide when to act; the messages are out.
                count.store(n, Ordering::Release);
            }
            Ok(sent_at)
        });
        Load {
            stop,
            published,
            task,
        }
    }

    /// How many are out so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Whether it published `total` (or failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops it; returns when each message's publish call began (index: its number).
    pub async fn stop(self) -> Result<Vec<Instant>, String> {
        self.stop.cancel();
        self.task.await.map_err(|e| e.to_string())?
    }

    /// Waits until `total` are out; returns when each message's publish call began.
    pub async fn finish(self) -> Result<Vec<Instant>, String> {
        self.task.await.map_err(|e| e.to_string())?
    }
}

/// Loss, duplicates and per-key order of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages published.
    pub published: u64,
    /// Never handled.
    pub lost: u64,
    /// Handlings beyond the first of a message.
    pub duplicated: u64,
    /// A key's message first handled after a later message of the key had been handled. A
    /// message handled again (a duplicate) after later ones is not one: its first handling
    /// was in order.
    pub order_violations: u64,
}

impl Tally {
    /// Whether a message was lost or a key's order broken: what the bus promises not to do.
    /// Duplicates are allowed (at-least-once).
    pub fn broken(&self) -> bool {
        self.lost > 0 || self.order_violations > 0
    }
}

/// The tally of `record` for messages `0..published` over `keys` keys.
pub fn tally(record: &Record, published: u64, keys: u64) -> Tally {
    let mut times: HashMap<u64, u32> = HashMap::new();
    let mut highest: HashMap<u64, u64> = HashMap::new();
    let mut order_violations = 0;
    for h in &record.handled {
        let count = times.entry(h.n).or_default();
        *count += 1;
        let top = highest.entry(h.n % keys).or_insert(h.n);
        if *count == 1 && h.n < *top {
            order_violations += 1;
        }
        *top = (*top).max(h.n);
    }
    let handled_once = (0..published).filter(|n| times.contains_key(n)).count() as u64;
    Tally {
        published,
        lost: published - handled_once,
        duplicated: times.values().map(|&c| u64::from(c) - 1).sum(),
        order_violations,
    }
}

/// The messages of `0..published` not handled yet.
pub fn missing(record: &Record, published: u64) -> Vec<u64> {
    let seen: HashSet<u64> = record.handled.iter().map(|h| h.n).collect();
    (0..published).filter(|n| !seen.contains(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(handled: &[(usize, u64)]) -> Record {
        let at = Instant::now();
        Record {
            handled: handled
                .iter()
                .map(|&(member, n)| Handled { at, member, n })
                .collect(),
            ..Record::default()
        }
    }

    #[test]
    fn a_message_first_handled_after_a_later_one_of_its_key_is_a_violation() {
        // Two keys: 0, 2 are key 0; 1, 3 are key 1. 2 overtakes 0.
        let t = tally(&record(&[(0, 2), (1, 0), (0, 1), (0, 3)]), 4, 2);
        assert_eq!(t.order_violations, 1);
        assert_eq!((t.lost, t.duplicated), (0, 0));
    }

    #[test]
    fn a_duplicate_handled_late_is_counted_as_one_not_as_a_violation() {
        let t = tally(&record(&[(0, 0), (0, 2), (1, 0), (1, 1), (1, 3)]), 4, 2);
        assert_eq!(t.order_violations, 0);
        assert_eq!(t.duplicated, 1);
    }

    #[test]
    fn a_message_never_handled_is_lost() {
        let t = tally(&record(&[(0, 0), (0, 2)]), 4, 2);
        assert_eq!(t.lost, 2);
        assert_eq!(missing(&record(&[(0, 0), (0, 2)]), 4), vec![1, 3]);
    }
}
