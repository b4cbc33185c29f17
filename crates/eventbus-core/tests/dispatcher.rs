//! Specification of the unified keyed dispatcher, [`eventbus_core::Dispatcher`].
//!
//! Every test drives the dispatcher as a transport would (`poll_ready`, then `call`, then await
//! the [`Outcome`]) and controls its handlers by hand: a handler can be held at a gate until the
//! test opens it, and can be told to fail, panic or fail permanently on given attempts.
//!
//! Determinism: tests run on a current-thread runtime (see [`run`]), so a worker runs without
//! interruption from one `.await` point to the next. When a test has seen a handler start
//! (through [`Probe::started`]) or has received an outcome, everything the worker does
//! synchronously after that point (finishing the attempt, releasing the key, freeing the buffer
//! slot) has already happened. Backpressure is checked by polling `poll_ready` by hand on a mock
//! task (`tower_test::mock::Spawn`), never with sleeps. Time is paused: retry backoffs take no
//! real time, and a test that can no longer make progress fails instead of hanging.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use eventbus_core::dispatch::ResponseFuture;
use eventbus_core::telemetry::names;
use eventbus_core::{
    BoxError, Delivery, Dispatch, Dispatcher, DispatcherConfig, Error, Message, Outcome, Panicked,
    Permanent, RetryPolicy, Route, handler_fn,
};
use futures::future::join_all;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use proptest::prelude::*;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok};
use tower::{Service, ServiceExt};
use tower_test::mock;

// ---------------------------------------------------------------------------------------------
// Test harness
// ---------------------------------------------------------------------------------------------

/// What a probe handler observed, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// The handler was called for `(message name, attempt)`.
    Start(String, u32),
    /// The handler call returned (successfully or not) or panicked.
    End(String, u32),
    /// The handler's future was dropped before it returned.
    Dropped(String, u32),
}

fn start(name: &str, attempt: u32) -> Event {
    Event::Start(name.to_owned(), attempt)
}

fn end(name: &str, attempt: u32) -> Event {
    Event::End(name.to_owned(), attempt)
}

/// What a probe handler does on one attempt.
#[derive(Debug, Clone, Copy)]
enum Act {
    Succeed,
    Fail,
    Panic,
    FailPermanently,
    /// Waits until the delivery's cancellation (the route's `closing`) fires, then fails.
    FailOnClosing,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A scriptable handler shared by the routes of a test. A message's *name* is its payload.
#[derive(Clone)]
struct Probe(Arc<ProbeState>);

struct ProbeState {
    events: Mutex<Vec<Event>>,
    /// Messages held at a gate: each attempt takes one permit before going on.
    gates: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// The act of each attempt (attempt n uses entry n - 1); attempts past the plan succeed.
    plans: Mutex<HashMap<String, Vec<Act>>>,
    started_tx: mpsc::UnboundedSender<String>,
    started_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

impl Probe {
    fn new() -> Self {
        let (started_tx, started_rx) = mpsc::unbounded_channel();
        Probe(Arc::new(ProbeState {
            events: Mutex::default(),
            gates: Mutex::default(),
            plans: Mutex::default(),
            started_tx,
            started_rx: tokio::sync::Mutex::new(started_rx),
        }))
    }

    /// Holds every attempt of `name` at a gate until [`release`](Self::release).
    fn hold(&self, name: &str) {
        lock(&self.0.gates).insert(name.to_owned(), Arc::new(Semaphore::new(0)));
    }

    /// Lets one held attempt of `name` go on.
    fn release(&self, name: &str) {
        lock(&self.0.gates)[name].add_permits(1);
    }

    fn plan(&self, name: &str, acts: impl IntoIterator<Item = Act>) {
        lock(&self.0.plans).insert(name.to_owned(), acts.into_iter().collect());
    }

    fn events(&self) -> Vec<Event> {
        lock(&self.0.events).clone()
    }

    /// The events of the messages whose names start with `prefix`.
    fn events_of(&self, prefix: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| match e {
                Event::Start(n, _) | Event::End(n, _) | Event::Dropped(n, _) => {
                    n.starts_with(prefix)
                }
            })
            .collect()
    }

    fn started_names(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Start(n, _) => Some(n),
                _ => None,
            })
            .collect()
    }

    /// Waits until a handler call starts, and says for which message.
    async fn started(&self) -> String {
        self.0
            .started_rx
            .lock()
            .await
            .recv()
            .await
            .expect("the probe owns a sender")
    }

    /// A handler call that started and was not yet collected by [`started`](Self::started).
    fn try_started(&self) -> Option<String> {
        self.0
            .started_rx
            .try_lock()
            .expect("not awaited concurrently")
            .try_recv()
            .ok()
    }

    fn record(&self, event: Event) {
        lock(&self.0.events).push(event);
    }

    async fn handle(self, delivery: Delivery) -> Result<(), BoxError> {
        let name = String::from_utf8(delivery.payload().to_vec()).expect("utf-8 name");
        let attempt = delivery.attempt();
        self.record(Event::Start(name.clone(), attempt));
        let _ = self.0.started_tx.send(name.clone());
        let mut running = Running {
            probe: self.clone(),
            name: name.clone(),
            attempt,
            returned: false,
        };

        let gate = lock(&self.0.gates).get(&name).cloned();
        if let Some(gate) = gate {
            gate.acquire()
                .await
                .expect("gates are never closed")
                .forget();
        }
        let act = lock(&self.0.plans)
            .get(&name)
            .and_then(|plan| plan.get(attempt as usize - 1).copied())
            .unwrap_or(Act::Succeed);
        if let Act::FailOnClosing = act {
            delivery.cancellation().cancelled().await;
        }

        running.returned = true;
        self.record(Event::End(name.clone(), attempt));
        match act {
            Act::Succeed => Ok(()),
            Act::Fail | Act::FailOnClosing => {
                Err(format!("{name} failed on attempt {attempt}").into())
            }
            Act::FailPermanently => Err(Permanent::new(format!("{name} is malformed")).into()),
            Act::Panic => panic!("{name} panicked on attempt {attempt}"),
        }
    }

    /// A route (subscription) whose handler is this probe.
    fn route(&self, topic: &str, retry: RetryPolicy) -> Arc<Route> {
        let probe = self.clone();
        let handler = handler_fn(move |d: Delivery| probe.clone().handle(d));
        Arc::new(Route::builder(topic, "group", handler).retry(retry).build())
    }
}

/// Records [`Event::Dropped`] when a handler's future is dropped before it returned.
struct Running {
    probe: Probe,
    name: String,
    attempt: u32,
    returned: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.returned {
            self.probe
                .record(Event::Dropped(self.name.clone(), self.attempt));
        }
    }
}

fn config(
    max_in_flight: usize,
    max_buffered: usize,
    max_buffered_bytes: usize,
) -> DispatcherConfig {
    DispatcherConfig::default()
        .max_in_flight(max_in_flight)
        .max_buffered(max_buffered)
        .max_buffered_bytes(max_buffered_bytes)
}

fn msg(key: Option<&str>, name: &str) -> Arc<Message> {
    let message = Message::new("orders", name.to_owned());
    Arc::new(match key {
        Some(key) => message.with_key(key),
        None => message,
    })
}

fn dispatch(route: &Arc<Route>, message: Arc<Message>) -> Dispatch {
    Dispatch {
        route: Arc::clone(route),
        message,
    }
}

/// A virtual day: no test needs that long, so reaching it means nothing could make progress.
const STUCK: Duration = Duration::from_secs(24 * 60 * 60);

/// Runs a test body on a current-thread runtime with paused time. When every task waits, the
/// paused clock jumps to the next timer, so a deadlock trips the [`STUCK`] deadline at once.
fn run(body: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
        .block_on(async {
            tokio::time::timeout(STUCK, body)
                .await
                .expect("stuck: the test can no longer make progress");
        });
}

/// Submits a message the way a transport does: wait for room, then call.
async fn submit(d: &mut Dispatcher, route: &Arc<Route>, message: Arc<Message>) -> ResponseFuture {
    d.ready()
        .await
        .expect("dispatcher is open")
        .call(dispatch(route, message))
}

/// Lets every task of the current-thread runtime run until it waits. Only used to give a
/// *wrong* implementation the chance to misbehave before the test looks.
async fn settle() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

#[track_caller]
fn assert_handled(outcome: Result<Outcome, Error>, attempts: u32) {
    match outcome {
        Ok(Outcome::Handled { attempts: n }) if n == attempts => {}
        other => panic!("expected Handled {{ attempts: {attempts} }}, got {other:?}"),
    }
}

#[track_caller]
fn assert_cancelled(outcome: Result<Outcome, Error>) {
    assert!(
        matches!(outcome, Ok(Outcome::Cancelled)),
        "expected Cancelled, got {outcome:?}"
    );
}

/// The error of a `Failed` outcome with `attempts` attempts.
#[track_caller]
fn assert_failed(outcome: Result<Outcome, Error>, attempts: u32) -> BoxError {
    match outcome {
        Ok(Outcome::Failed {
            attempts: n, error, ..
        }) if n == attempts => error,
        other => panic!("expected Failed {{ attempts: {attempts}, .. }}, got {other:?}"),
    }
}

#[track_caller]
fn assert_closed(ready: Result<(), Error>) {
    assert!(
        matches!(ready, Err(Error::Closed)),
        "expected Err(Closed), got {ready:?}"
    );
}

/// Retries after a fixed, jitter-free delay, without limit.
fn retry_every(delay: Duration) -> RetryPolicy {
    RetryPolicy::default()
        .unlimited()
        .backoff(delay, delay)
        .jitter(false)
}

// ---------------------------------------------------------------------------------------------
// 1. Backpressure
// ---------------------------------------------------------------------------------------------

#[test]
fn poll_ready_is_pending_at_max_buffered_and_woken_when_a_message_finishes() {
    run(async {
        let probe = Probe::new();
        for name in ["m1", "m2", "m3"] {
            probe.hold(name);
        }
        let route = probe.route("orders", RetryPolicy::never());
        let mut svc = mock::Spawn::new(Dispatcher::new(config(2, 2, usize::MAX)));

        assert_ready_ok!(svc.poll_ready());
        let r1 = svc.call(dispatch(&route, msg(None, "m1")));
        assert_ready_ok!(svc.poll_ready());
        let r2 = svc.call(dispatch(&route, msg(None, "m2")));

        // Two messages admitted and unfinished: no room for a third.
        assert_pending!(svc.poll_ready());
        probe.started().await;
        probe.started().await;
        assert_eq!(svc.get_ref().stats().buffered, 2);
        assert!(!svc.is_woken(), "nothing finished yet");
        assert_pending!(svc.poll_ready());

        // Finishing one message frees its slot and wakes the waiting caller.
        probe.release("m1");
        assert_handled(r1.await, 1);
        assert!(svc.is_woken());
        assert_ready_ok!(svc.poll_ready());
        let r3 = svc.call(dispatch(&route, msg(None, "m3")));
        assert_pending!(svc.poll_ready(), "m2 and m3 fill the buffer again");

        probe.release("m2");
        probe.release("m3");
        assert_handled(r2.await, 1);
        assert_handled(r3.await, 1);
        assert!(svc.is_woken());
        assert_ready_ok!(svc.poll_ready());
        assert_eq!(
            svc.get_ref().stats().buffered,
            1,
            "only the reservation just made"
        );
    });
}

/// Slots freed together wake the waiters one after another: the first woken takes one and,
/// seeing another free, wakes the next. Nobody waits while a slot is free.
#[test]
fn slots_freed_together_wake_as_many_waiters() {
    run(async {
        let probe = Probe::new();
        for name in ["m1", "m2"] {
            probe.hold(name);
        }
        let route = probe.route("orders", RetryPolicy::never());
        let d = Dispatcher::new(config(2, 2, usize::MAX));
        let mut full = mock::Spawn::new(d.clone());
        assert_ready_ok!(full.poll_ready());
        let r1 = full.call(dispatch(&route, msg(None, "m1")));
        assert_ready_ok!(full.poll_ready());
        let r2 = full.call(dispatch(&route, msg(None, "m2")));
        probe.started().await;
        probe.started().await;

        let (mut a, mut b) = (mock::Spawn::new(d.clone()), mock::Spawn::new(d.clone()));
        assert_pending!(a.poll_ready());
        assert_pending!(b.poll_ready());

        // Both slots are freed before either waiter runs.
        probe.release("m1");
        probe.release("m2");
        assert_handled(r1.await, 1);
        assert_handled(r2.await, 1);
        assert!(
            a.is_woken(),
            "the first slot freed from a full buffer wakes a waiter"
        );
        assert_ready_ok!(a.poll_ready());
        assert!(
            b.is_woken(),
            "a second slot is free: the next waiter is woken too"
        );
        assert_ready_ok!(b.poll_ready());
        assert_eq!(d.stats().buffered, 2, "the two reservations");
    });
}

#[test]
fn poll_ready_is_pending_while_buffered_bytes_reach_the_cap_and_woken_below_it() {
    run(async {
        let probe = Probe::new();
        for name in ["b1", "b2", "b3"] {
            probe.hold(name);
        }
        let route = probe.route("orders", RetryPolicy::never());
        let (m1, m2, m3) = (msg(None, "b1"), msg(None, "b2"), msg(None, "b3"));
        let len = m1.encoded_len();
        assert_eq!(m2.encoded_len(), len);
        // Room for exactly two of them.
        let mut svc = mock::Spawn::new(Dispatcher::new(config(4, 64, 2 * len)));

        assert_ready_ok!(svc.poll_ready());
        let r1 = svc.call(dispatch(&route, m1));
        assert_eq!(svc.get_ref().stats().buffered_bytes, len);
        assert_ready_ok!(svc.poll_ready());
        let r2 = svc.call(dispatch(&route, m2));
        assert_eq!(svc.get_ref().stats().buffered_bytes, 2 * len);

        // The cap is reached: admission stops although message slots are free.
        assert_pending!(svc.poll_ready());
        probe.started().await;
        probe.started().await;
        assert!(!svc.is_woken());
        assert_pending!(svc.poll_ready());

        probe.release("b1");
        assert_handled(r1.await, 1);
        assert_eq!(svc.get_ref().stats().buffered_bytes, len);
        assert!(svc.is_woken(), "dropping below the cap wakes the caller");
        assert_ready_ok!(svc.poll_ready());
        let r3 = svc.call(dispatch(&route, m3));
        assert_pending!(svc.poll_ready());

        probe.release("b2");
        probe.release("b3");
        assert_handled(r2.await, 1);
        assert_handled(r3.await, 1);
        assert_eq!(svc.get_ref().stats().buffered_bytes, 0);
        assert!(svc.is_woken());
        assert_ready_ok!(svc.poll_ready());
    });
}

#[test]
fn a_message_larger_than_the_byte_cap_is_admitted_into_an_empty_buffer() {
    run(async {
        let probe = Probe::new();
        let big = "x".repeat(1000);
        probe.hold(&big);
        let route = probe.route("orders", RetryPolicy::never());
        let mut svc = mock::Spawn::new(Dispatcher::new(config(4, 64, 10)));

        // The cap is soft: admission only needs `buffered_bytes < cap`, so no message is too
        // big to ever get in, and the buffer may overshoot the cap by one message.
        assert_ready_ok!(svc.poll_ready());
        let r = svc.call(dispatch(&route, msg(None, &big)));
        assert!(svc.get_ref().stats().buffered_bytes > 1000);
        assert_pending!(svc.poll_ready());

        probe.release(&big);
        assert_handled(r.await, 1);
        assert!(svc.is_woken());
        assert_ready_ok!(svc.poll_ready());
    });
}

#[test]
fn a_slot_reserved_by_poll_ready_is_released_when_its_handle_is_dropped() {
    run(async {
        let d = Dispatcher::new(config(1, 1, usize::MAX));
        let mut a = mock::Spawn::new(d.clone());
        let mut b = mock::Spawn::new(d.clone());

        assert_ready_ok!(a.poll_ready());
        assert_eq!(d.stats().buffered, 1, "a reservation holds a slot");
        // A clone does not inherit the reservation: it has to wait for its own.
        let mut c = mock::Spawn::new(a.get_ref().clone());
        assert_pending!(b.poll_ready());
        assert_pending!(c.poll_ready());

        // Dropping `a` hands its slot to the first waiter.
        drop(a);
        assert!(b.is_woken());
        assert_ready_ok!(b.poll_ready());
        assert_eq!(d.stats().buffered, 1, "now b's reservation");
        assert_pending!(c.poll_ready());
    });
}

#[test]
#[should_panic(expected = "poll_ready must be called first")]
fn call_without_poll_ready_panics() {
    run(async {
        let probe = Probe::new();
        let route = probe.route("orders", RetryPolicy::never());
        let mut d = Dispatcher::new(DispatcherConfig::default());
        drop(d.call(dispatch(&route, msg(None, "m1"))));
    });
}

// ---------------------------------------------------------------------------------------------
// 2. Per-key FIFO
// ---------------------------------------------------------------------------------------------

#[test]
fn messages_of_one_key_run_one_at_a_time_in_submission_order() {
    run(async {
        let probe = Probe::new();
        let names: Vec<String> = (1..=5).map(|i| format!("k{i}")).collect();
        for name in &names {
            probe.hold(name);
        }
        let route = probe.route("orders", RetryPolicy::never());
        let mut d = Dispatcher::new(config(8, 64, usize::MAX));

        let mut responses = Vec::new();
        for name in &names {
            responses.push(submit(&mut d, &route, msg(Some("K"), name)).await);
        }
        for name in &names {
            assert_eq!(&probe.started().await, name);
            // Seven workers are free, yet nothing else of key K starts while `name` runs.
            settle().await;
            assert_eq!(probe.try_started(), None);
            assert_eq!(d.stats().in_flight, 1);
            assert_eq!(d.stats().active_keys, 1);
            probe.release(name);
        }
        for outcome in join_all(responses).await {
            assert_handled(outcome, 1);
        }

        let expected: Vec<Event> = names
            .iter()
            .flat_map(|n| [start(n, 1), end(n, 1)])
            .collect();
        assert_eq!(probe.events(), expected);
        assert_eq!(d.stats().active_keys, 0);
    });
}

// ---------------------------------------------------------------------------------------------
// 3. No head-of-line blocking
// ---------------------------------------------------------------------------------------------

#[test]
fn a_stalled_key_holds_back_only_its_own_later_messages() {
    run(async {
        let probe = Probe::new();
        probe.hold("a1");
        let orders = probe.route("orders", RetryPolicy::never());
        let audit = probe.route("audit", RetryPolicy::never());
        // Two workers: the stalled key may occupy one, the other serves everyone else.
        let mut d = Dispatcher::new(config(2, 256, usize::MAX));

        let a1 = submit(&mut d, &orders, msg(Some("A"), "a1")).await;
        let a2 = submit(&mut d, &orders, msg(Some("A"), "a2")).await;
        assert_eq!(probe.started().await, "a1");

        let mut others = Vec::new();
        for i in 0..100 {
            let key = format!("key-{i}");
            others.push(submit(&mut d, &orders, msg(Some(&key), &format!("o{i}"))).await);
        }
        // The same key on another subscription is another queue.
        others.push(submit(&mut d, &audit, msg(Some("A"), "other-route-A")).await);
        for outcome in join_all(others).await {
            assert_handled(outcome, 1);
        }

        assert!(
            !probe.started_names().contains(&"a2".to_owned()),
            "a2 must wait for a1"
        );
        let stats = d.stats();
        assert_eq!(stats.in_flight, 1);
        assert_eq!(stats.active_keys, 1);
        assert_eq!(stats.buffered, 2);
        assert_eq!(stats.handled, 101);

        probe.release("a1");
        assert_handled(a1.await, 1);
        assert_handled(a2.await, 1);
        assert_eq!(
            probe.events_of("a"),
            [start("a1", 1), end("a1", 1), start("a2", 1), end("a2", 1)]
        );
    });
}

/// A worker whose handlers finish on the spot takes several keys' ready jobs at once. A
/// handler of them that waits gives the rest back where each came from (the rest of its own
/// key behind it, other keys' first jobs to the ready queue), so none of them waits for it.
#[test]
fn a_handler_that_waits_gives_back_the_other_keys_jobs_taken_with_it() {
    run(async {
        let probe = Probe::new();
        probe.hold("a1");
        probe.hold("c1");
        let orders = probe.route("orders", RetryPolicy::never());
        let mut d = Dispatcher::new(config(3, 256, usize::MAX));
        // Handled on the spot: its worker takes other keys' ready jobs along from now on.
        let w = submit(&mut d, &orders, msg(Some("W"), "w")).await;
        assert_handled(w.await, 1);

        // All submitted before a worker runs (one thread): the first run takes a1, u, b1, c1
        // and d1; a1 waits and gives back the rest, c1 waits in a later run holding c2 and d1.
        let mut responses = HashMap::new();
        for (key, name) in [
            (Some("A"), "a1"),
            (Some("A"), "a2"),
            (None, "u"),
            (Some("B"), "b1"),
            (Some("C"), "c1"),
            (Some("C"), "c2"),
            (Some("D"), "d1"),
        ] {
            responses.insert(name, submit(&mut d, &orders, msg(key, name)).await);
        }
        for name in ["u", "b1", "d1"] {
            let response = responses.remove(name).expect("submitted");
            assert_handled(response.await, 1);
        }
        let started = probe.started_names();
        assert!(started.contains(&"a1".to_owned()) && started.contains(&"c1".to_owned()));
        assert!(!started.contains(&"a2".to_owned()) && !started.contains(&"c2".to_owned()));
        let stats = d.stats();
        assert_eq!(
            (stats.in_flight, stats.active_keys, stats.buffered),
            (2, 2, 4)
        );

        probe.release("a1");
        probe.release("c1");
        for name in ["a1", "a2", "c1", "c2"] {
            let response = responses.remove(name).expect("submitted");
            assert_handled(response.await, 1);
        }
        assert_eq!(
            probe.events_of("a"),
            [start("a1", 1), end("a1", 1), start("a2", 1), end("a2", 1)]
        );
        assert_eq!(
            probe.events_of("c"),
            [start("c1", 1), end("c1", 1), start("c2", 1), end("c2", 1)]
        );
        let stats = d.stats();
        assert_eq!(
            (stats.in_flight, stats.active_keys, stats.buffered),
            (0, 0, 0)
        );
        assert_eq!(stats.handled, 8);
    });
}

/// A call that finishes on its first poll but keeps its thread busy (here a handler blocking
/// for a millisecond) makes its worker give back the other keys' jobs it took along, and take
/// one key at a time from then on: those jobs wait behind one such call, not behind several.
#[test]
fn after_a_call_that_kept_its_thread_the_worker_gives_back_other_keys_jobs() {
    // The worker times calls on the real clock, and records each time in the handler duration
    // histogram: the test reads it there to know its warm-up call was quick.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let last_call = || {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == names::HANDLER_DURATION)
            .find_map(|(.., value)| match value {
                DebugValue::Histogram(seconds) => seconds.last().map(|s| s.into_inner()),
                _ => None,
            })
            .map(Duration::from_secs_f64)
            .expect("the call was timed")
    };
    run(async {
        let started = Arc::new(Mutex::new(Vec::<String>::new()));
        let log = Arc::clone(&started);
        let handler = handler_fn(move |d: Delivery| {
            let name = String::from_utf8(d.payload().to_vec()).expect("utf-8 name");
            if name == "s1" {
                // Real time, not the paused clock: the thread is kept busy.
                std::thread::sleep(Duration::from_millis(1));
            }
            lock(&log).push(name);
            async { Ok::<_, BoxError>(()) }
        });
        // Its metric handles are the test's recorder's.
        let route = Arc::new(Route::builder("orders", "group", handler).build());
        let mut d = Dispatcher::new(config(1, 256, usize::MAX));
        // Handled on the spot, in under 100 µs: its worker takes other keys' ready jobs along
        // from now on. A call whose thread the OS took away for longer (a scheduler tick or
        // two, now and then on a loaded machine) leaves the worker taking one key at a time,
        // so the warm-up goes on until the worker's own timing says a call was quick.
        let mut calls = 0;
        loop {
            assert_handled(submit(&mut d, &route, msg(Some("W"), "w")).await.await, 1);
            calls += 1;
            if last_call() < Duration::from_micros(100) {
                break;
            }
            assert!(calls < 100, "no warm-up call of {calls} took under 100 µs");
        }
        lock(&started).clear();

        // The run takes s1, x1 and y1; s1 keeps the thread, so x1 and y1 go back, x1 with x2
        // now behind it, and the worker takes one key at a time: x1 and x2, then y1, then s2
        // (ready since s1 finished).
        let mut responses = Vec::new();
        for (key, name) in [
            ("S", "s1"),
            ("S", "s2"),
            ("X", "x1"),
            ("X", "x2"),
            ("Y", "y1"),
        ] {
            responses.push(submit(&mut d, &route, msg(Some(key), name)).await);
        }
        for outcome in join_all(responses).await {
            assert_handled(outcome, 1);
        }
        assert_eq!(*lock(&started), ["s1", "x1", "x2", "y1", "s2"]);
        assert_eq!(d.stats().active_keys, 0);
    });
}

// ---------------------------------------------------------------------------------------------
// 4. max_in_flight
// ---------------------------------------------------------------------------------------------

#[test]
fn handler_calls_are_bounded_by_max_in_flight_and_unkeyed_messages_run_concurrently() {
    run(async {
        let probe = Probe::new();
        let names: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
        for name in &names {
            probe.hold(name);
        }
        let route = probe.route("orders", RetryPolicy::never());
        let mut d = Dispatcher::new(config(3, 32, usize::MAX));

        let mut responses = Vec::new();
        for name in &names {
            responses.push(submit(&mut d, &route, msg(None, name)).await);
        }
        // Three unkeyed messages run at once ...
        for _ in 0..3 {
            probe.started().await;
        }
        // ... and no fourth, although 17 more are ready.
        settle().await;
        assert_eq!(probe.try_started(), None);
        let stats = d.stats();
        assert_eq!(stats.in_flight, 3);
        assert_eq!(stats.peak_in_flight, 3);
        assert_eq!(stats.workers, 3);
        assert_eq!(stats.buffered, 20);

        for name in &names {
            probe.release(name);
        }
        for outcome in join_all(responses).await {
            assert_handled(outcome, 1);
        }
        let stats = d.stats();
        assert_eq!(stats.peak_in_flight, 3);
        assert_eq!(stats.in_flight, 0);
        assert_eq!(stats.handled, 20);
    });
}

// ---------------------------------------------------------------------------------------------
// 5. In-place retry
// ---------------------------------------------------------------------------------------------

#[test]
fn a_failing_message_is_retried_in_place_while_other_keys_flow() {
    run(async {
        let probe = Probe::new();
        probe.plan("k1", [Act::Fail, Act::Fail]);
        let route = probe.route("orders", retry_every(Duration::from_secs(1)));
        let mut d = Dispatcher::new(config(4, 64, usize::MAX));
        let t0 = Instant::now();

        let k1 = submit(&mut d, &route, msg(Some("K"), "k1")).await;
        let k2 = submit(&mut d, &route, msg(Some("K"), "k2")).await;
        let l1 = submit(&mut d, &route, msg(Some("L"), "l1")).await;
        let l2 = submit(&mut d, &route, msg(Some("L"), "l2")).await;

        // Key L is handled while k1 waits out its first backoff (no time has passed).
        assert_handled(l1.await, 1);
        assert_handled(l2.await, 1);
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(probe.events_of("k"), [start("k1", 1), end("k1", 1)]);
        let stats = d.stats();
        assert_eq!(stats.retried, 1);
        assert_eq!(stats.active_keys, 1, "K stays busy while k1 backs off");
        assert_eq!(
            stats.in_flight, 0,
            "a backing-off message holds no handler call"
        );

        assert_handled(k1.await, 3);
        assert!(
            t0.elapsed() >= Duration::from_secs(2),
            "two backoffs of 1 s"
        );
        assert_handled(k2.await, 1);
        assert_eq!(
            probe.events_of("k"),
            [
                start("k1", 1),
                end("k1", 1),
                start("k1", 2),
                end("k1", 2),
                start("k1", 3),
                end("k1", 3),
                start("k2", 1),
                end("k2", 1),
            ]
        );
        let stats = d.stats();
        assert_eq!(stats.retried, 2);
        assert_eq!(stats.handled, 4);
        assert_eq!(stats.failed, 0);
        assert_eq!(stats.active_keys, 0);
    });
}

#[test]
fn later_messages_of_a_key_wait_behind_a_retry_even_when_taken_together() {
    run(async {
        let probe = Probe::new();
        probe.hold("k1");
        probe.plan("k2", [Act::Fail]);
        let route = probe.route("orders", retry_every(Duration::from_secs(1)));
        let mut d = Dispatcher::new(config(4, 64, usize::MAX));

        let k1 = submit(&mut d, &route, msg(Some("K"), "k1")).await;
        assert_eq!(probe.started().await, "k1");
        // Queued behind k1, so a worker takes k2, k3 and k4 together once k1 is done.
        let rest = [
            submit(&mut d, &route, msg(Some("K"), "k2")).await,
            submit(&mut d, &route, msg(Some("K"), "k3")).await,
            submit(&mut d, &route, msg(Some("K"), "k4")).await,
        ];
        probe.release("k1");
        assert_handled(k1.await, 1);

        // k2 failed and backs off: the two taken with it must not run meanwhile, and other
        // keys flow.
        let l1 = submit(&mut d, &route, msg(Some("L"), "l1")).await;
        assert_handled(l1.await, 1);
        settle().await;
        assert_eq!(
            probe.events_of("k"),
            [start("k1", 1), end("k1", 1), start("k2", 1), end("k2", 1)]
        );
        assert_eq!(d.stats().active_keys, 1);

        let [k2, k3, k4] = rest;
        assert_handled(k2.await, 2);
        assert_handled(k3.await, 1);
        assert_handled(k4.await, 1);
        assert_eq!(
            probe.events_of("k"),
            [
                start("k1", 1),
                end("k1", 1),
                start("k2", 1),
                end("k2", 1),
                start("k2", 2),
                end("k2", 2),
                start("k3", 1),
                end("k3", 1),
                start("k4", 1),
                end("k4", 1),
            ]
        );
        assert_eq!(d.stats().active_keys, 0);
    });
}

// ---------------------------------------------------------------------------------------------
// 6. Panics
// ---------------------------------------------------------------------------------------------

#[test]
fn a_handler_panic_is_caught_counted_and_retried() {
    run(async {
        let probe = Probe::new();
        probe.plan("p1", [Act::Panic]);
        let route = probe.route("orders", retry_every(Duration::from_millis(10)));
        let mut d = Dispatcher::new(config(4, 64, usize::MAX));

        let p1 = submit(&mut d, &route, msg(Some("P"), "p1")).await;
        let p2 = submit(&mut d, &route, msg(Some("P"), "p2")).await;
        assert_handled(p1.await, 2);
        assert_handled(p2.await, 1);
        assert_eq!(
            probe.events(),
            [
                start("p1", 1),
                end("p1", 1),
                start("p1", 2),
                end("p1", 2),
                start("p2", 1),
                end("p2", 1),
            ]
        );
        let stats = d.stats();
        assert_eq!(stats.panicked, 1);
        assert_eq!(stats.retried, 1);

        // The dispatcher keeps working, for the same key and others.
        let p3 = submit(&mut d, &route, msg(Some("P"), "p3")).await;
        let u1 = submit(&mut d, &route, msg(None, "u1")).await;
        assert_handled(p3.await, 1);
        assert_handled(u1.await, 1);
        let stats = d.stats();
        assert_eq!(stats.handled, 4);
        assert_eq!(stats.panicked, 1);
        assert_eq!((stats.in_flight, stats.active_keys), (0, 0));
    });
}

#[test]
fn a_panic_on_the_last_attempt_fails_the_message_with_a_panicked_error() {
    run(async {
        let probe = Probe::new();
        probe.plan("p1", [Act::Panic]);
        let route = probe.route("orders", RetryPolicy::never());
        let mut d = Dispatcher::new(config(4, 64, usize::MAX));

        let error = assert_failed(submit(&mut d, &route, msg(Some("P"), "p1")).await.await, 1);
        let panicked = error.downcast_ref::<Panicked>().expect("a Panicked error");
        assert_eq!(panicked.0, "p1 panicked on attempt 1");
        let stats = d.stats();
        assert_eq!((stats.panicked, stats.failed, stats.retried), (1, 1, 0));
    });
}

// ---------------------------------------------------------------------------------------------
// 7. Failing for good
// ---------------------------------------------------------------------------------------------

#[test]
fn a_permanent_error_fails_the_message_at_once() {
    run(async {
        let probe = Probe::new();
        probe.plan("x1", [Act::FailPermanently]);
        // Unlimited retries: a permanent error still is not retried.
        let route = probe.route("orders", retry_every(Duration::from_secs(1)));
        let mut d = Dispatcher::new(config(4, 64, usize::MAX));
        let t0 = Instant::now();

        let x1 = submit(&mut d, &route, msg(Some("X"), "x1")).await;
        let x2 = submit(&mut d, &route, msg(Some("X"), "x2")).await;
        let error = assert_failed(x1.await, 1);
        assert!(Permanent::is_permanent(&error), "{error}");
        assert_eq!(t0.elapsed(), Duration::ZERO, "no backoff");
        // A message that failed for good releases its key.
        assert_handled(x2.await, 1);
        let stats = d.stats();
        assert_eq!((stats.failed, stats.retried, stats.handled), (1, 0, 1));
    });
}

#[test]
fn retries_stop_after_max_attempts() {
    run(async {
        let probe = Probe::new();
        probe.plan("f1", [Act::Fail; 10]);
        let route = probe.route(
            "orders",
            retry_every(Duration::from_millis(10)).max_attempts(3),
        );
        let mut d = Dispatcher::new(config(4, 64, usize::MAX));

        let f1 = submit(&mut d, &route, msg(Some("F"), "f1")).await;
        let f2 = submit(&mut d, &route, msg(Some("F"), "f2")).await;
        let error = assert_failed(f1.await, 3);
        assert_eq!(
            error.to_string(),
            "f1 failed on attempt 3",
            "the last error"
        );
        assert_handled(f2.await, 1);
        assert_eq!(
            probe.events_of("f1"),
            [
                start("f1", 1),
                end("f1", 1),
                start("f1", 2),
                end("f1", 2),
                start("f1", 3),
                end("f1", 3),
            ]
        );
        let stats = d.stats();
        assert_eq!((stats.failed, stats.retried, stats.handled), (1, 2, 1));
    });
}

// ---------------------------------------------------------------------------------------------
// 8. Closing and aborting a route
// ---------------------------------------------------------------------------------------------

#[test]
fn closing_cancels_queued_messages_and_lets_the_running_one_finish() {
    run(async {
        let probe = Probe::new();
        probe.hold("k1");
        let orders = probe.route("orders", RetryPolicy::default());
        let audit = probe.route("audit", RetryPolicy::default());
        let mut d = Dispatcher::new(config(4, 64, usize::MAX));

        let k1 = submit(&mut d, &orders, msg(Some("K"), "k1")).await;
        let k2 = submit(&mut d, &orders, msg(Some("K"), "k2")).await;
        let k3 = submit(&mut d, &orders, msg(Some("K"), "k3")).await;
        assert_eq!(probe.started().await, "k1");

        orders.closing().cancel();
        // Messages that reach a closing route are cancelled too, keyed or not.
        let k4 = submit(&mut d, &orders, msg(Some("K"), "k4")).await;
        let u1 = submit(&mut d, &orders, msg(None, "u1")).await;
        assert_cancelled(u1.await);
        // Other routes are not affected.
        assert_handled(
            submit(&mut d, &audit, msg(Some("K"), "audit-k"))
                .await
                .await,
            1,
        );

        probe.release("k1");
        assert_handled(k1.await, 1);
        assert_cancelled(k2.await);
        assert_cancelled(k3.await);
        assert_cancelled(k4.await);

        assert_eq!(probe.started_names(), ["k1", "audit-k"]);
        let stats = d.stats();
        assert_eq!((stats.handled, stats.cancelled, stats.failed), (2, 4, 0));
        assert_eq!((stats.active_keys, stats.buffered), (0, 0));
    });
}

#[test]
fn an_error_returned_after_closing_cancels_the_message_without_retry() {
    run(async {
        let probe = Probe::new();
        probe.plan("e1", [Act::FailOnClosing]);
        let route = probe.route("orders", RetryPolicy::default());
        let mut d = Dispatcher::new(config(4, 64, usize::MAX));

        let e1 = submit(&mut d, &route, msg(Some("E"), "e1")).await;
        assert_eq!(probe.started().await, "e1");
        route.closing().cancel();

        assert_cancelled(e1.await);
        assert_eq!(probe.events(), [start("e1", 1), end("e1", 1)]);
        let stats = d.stats();
        assert_eq!((stats.cancelled, stats.retried, stats.failed), (1, 0, 0));
    });
}

#[test]
fn closing_cuts_a_retry_backoff_short_and_cancels_the_message() {
    run(async {
        let probe = Probe::new();
        probe.plan("b1", [Act::Fail; 10]);
        let route = probe.route("orders", retry_every(Duration::from_secs(3600)));
        let mut d = Dispatcher::new(config(4, 64, usize::MAX));
        let t0 = Instant::now();

        let b1 = submit(&mut d, &route, msg(Some("B"), "b1")).await;
        let b2 = submit(&mut d, &route, msg(Some("B"), "b2")).await;
        assert_eq!(probe.started().await, "b1");
        // The first attempt failed and b1 now backs off for an hour.
        assert_eq!(d.stats().retried, 1);

        route.closing().cancel();
        assert_cancelled(b1.await);
        assert_cancelled(b2.await);
        assert!(
            t0.elapsed() < Duration::from_secs(3600),
            "did not wait out the backoff"
        );
        assert_eq!(probe.events(), [start("b1", 1), end("b1", 1)]);
        d.shutdown().await;
        let stats = d.stats();
        assert_eq!((stats.cancelled, stats.retried, stats.workers), (2, 1, 0));
    });
}

#[test]
fn abort_drops_the_running_handler_and_cancels_the_message() {
    run(async {
        let probe = Probe::new();
        probe.hold("a1"); // never released
        let route = probe.route("orders", RetryPolicy::default());
        let mut d = Dispatcher::new(config(4, 64, usize::MAX));

        let a1 = submit(&mut d, &route, msg(Some("A"), "a1")).await;
        let a2 = submit(&mut d, &route, msg(Some("A"), "a2")).await;
        assert_eq!(probe.started().await, "a1");

        // The drain sequence: stop intake, then, once the deadline passed, drop running handlers.
        route.closing().cancel();
        settle().await;
        assert_eq!(d.stats().in_flight, 1, "closing alone lets a1 run on");
        route.abort().cancel();

        assert_cancelled(a1.await);
        assert_cancelled(a2.await);
        assert_eq!(
            probe.events(),
            [start("a1", 1), Event::Dropped("a1".to_owned(), 1)],
            "a1's handler future was dropped, a2 never ran"
        );
        let stats = d.stats();
        assert_eq!(
            (stats.cancelled, stats.in_flight, stats.active_keys),
            (2, 0, 0)
        );
    });
}

/// A handler future whose destructor panics while it is still pending.
struct PanicsWhenDroppedEarly;

impl Drop for PanicsWhenDroppedEarly {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("handler future dropped while pending");
        }
    }
}

#[test]
fn a_panic_while_an_aborted_handler_is_dropped_is_contained() {
    run(async {
        let stalling = handler_fn(|_d: Delivery| async move {
            let _guard = PanicsWhenDroppedEarly;
            std::future::pending::<Result<(), BoxError>>().await
        });
        let aborted = Arc::new(
            Route::builder("orders", "group", stalling)
                .retry(RetryPolicy::never())
                .build(),
        );
        let probe = Probe::new();
        let other = probe.route("audit", RetryPolicy::never());
        // One worker: losing it would stop the dispatcher altogether.
        let mut d = Dispatcher::new(config(1, 8, usize::MAX));

        let a1 = submit(&mut d, &aborted, msg(Some("A"), "a1")).await;
        settle().await;
        assert_eq!(d.stats().in_flight, 1);
        aborted.closing().cancel();
        aborted.abort().cancel();

        assert_cancelled(a1.await);
        assert_handled(submit(&mut d, &other, msg(Some("A"), "o1")).await.await, 1);
        d.shutdown().await;
        let stats = d.stats();
        assert_eq!(
            (stats.active_keys, stats.workers, stats.buffered),
            (0, 0, 0)
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 9. Closing the dispatcher and shutting down
// ---------------------------------------------------------------------------------------------

#[test]
fn close_rejects_new_messages_and_wakes_waiting_callers() {
    run(async {
        let probe = Probe::new();
        probe.hold("m1");
        let route = probe.route("orders", RetryPolicy::never());
        let d = Dispatcher::new(config(1, 2, usize::MAX));
        let mut a = mock::Spawn::new(d.clone());
        let mut b = mock::Spawn::new(d.clone());
        let mut c = mock::Spawn::new(d.clone());

        assert_ready_ok!(a.poll_ready());
        let m1 = a.call(dispatch(&route, msg(None, "m1")));
        assert_ready_ok!(b.poll_ready()); // b holds the second slot
        assert_pending!(c.poll_ready());
        assert!(!d.is_closed());

        d.close();
        assert!(d.is_closed());
        assert!(
            c.is_woken(),
            "a caller waiting for room learns of the close"
        );
        assert_closed(assert_ready!(c.poll_ready()));
        assert_closed(assert_ready!(b.poll_ready()));
        assert_eq!(d.stats().buffered, 1, "b gave its reservation back");
        assert_closed(assert_ready!(a.poll_ready()));

        // Admitted messages still run.
        probe.release("m1");
        assert_handled(m1.await, 1);
        assert_eq!(d.stats().buffered, 0);
        assert_ready_err!(a.poll_ready());
        assert_closed(assert_ready!(mock::Spawn::new(d.clone()).poll_ready()));
    });
}

#[test]
fn close_wakes_a_caller_waiting_for_byte_budget() {
    run(async {
        let probe = Probe::new();
        probe.hold("m1");
        let route = probe.route("orders", RetryPolicy::never());
        let mut svc = mock::Spawn::new(Dispatcher::new(config(4, 64, 1)));

        assert_ready_ok!(svc.poll_ready());
        let m1 = svc.call(dispatch(&route, msg(None, "m1")));
        assert_pending!(svc.poll_ready());

        svc.get_ref().close();
        assert!(svc.is_woken());
        assert_closed(assert_ready!(svc.poll_ready()));
        assert_eq!(svc.get_ref().stats().buffered, 1, "only m1 holds a slot");

        probe.release("m1");
        assert_handled(m1.await, 1);
    });
}

#[test]
fn shutdown_closes_intake_and_returns_once_in_flight_work_ended() {
    run(async {
        let probe = Probe::new();
        probe.hold("s1");
        let route = probe.route("orders", RetryPolicy::never());
        let mut d = Dispatcher::new(DispatcherConfig::default());

        let s1 = submit(&mut d, &route, msg(Some("S"), "s1")).await;
        let s2 = submit(&mut d, &route, msg(Some("S"), "s2")).await;
        let u1 = submit(&mut d, &route, msg(None, "u1")).await;
        assert_eq!(probe.started().await, "s1");
        assert_handled(u1.await, 1);

        let mut shutdown = tokio_test::task::spawn(d.shutdown());
        assert_pending!(shutdown.poll());
        assert!(d.is_closed());
        assert_closed(assert_ready!(mock::Spawn::new(d.clone()).poll_ready()));
        settle().await;
        assert_pending!(shutdown.poll(), "s1 is still running");

        probe.release("s1");
        assert_handled(s1.await, 1);
        assert_handled(s2.await, 1);
        shutdown.await;

        let stats = d.stats();
        assert_eq!(stats.workers, 0);
        assert_eq!(stats.in_flight, 0);
        assert_eq!(stats.active_keys, 0);
        assert_eq!(stats.buffered, 0);
        assert_eq!(stats.buffered_bytes, 0);
        assert_eq!(stats.handled, 3);
    });
}

#[test]
fn idle_keys_cost_nothing() {
    run(async {
        let probe = Probe::new();
        let route = probe.route("orders", RetryPolicy::never());
        let mut d = Dispatcher::new(config(8, 64, usize::MAX));

        let mut responses = Vec::new();
        for i in 0..500 {
            let key = format!("key-{}", i % 50);
            responses.push(submit(&mut d, &route, msg(Some(&key), &format!("m{i}"))).await);
        }
        for outcome in join_all(responses).await {
            assert_handled(outcome, 1);
        }
        let stats = d.stats();
        assert_eq!(stats.active_keys, 0, "no state is left for 50 idle keys");
        assert_eq!((stats.buffered, stats.buffered_bytes), (0, 0));
        assert_eq!(stats.in_flight, 0);
        assert!(stats.peak_in_flight <= 8);

        d.shutdown().await;
        let stats = d.stats();
        assert_eq!(stats.workers, 0, "workers exit when there is no work");
        assert_eq!(stats.handled, 500);
    });
}

#[test]
fn a_dispatcher_dropped_without_shutdown_leaves_no_task_behind() {
    run(async {
        let probe = Probe::new();
        let route = probe.route("orders", RetryPolicy::never());
        let mut d = Dispatcher::new(config(4, 64, usize::MAX));
        let mut responses = Vec::new();
        for i in 0..20 {
            let key = format!("key-{}", i % 3);
            responses.push(submit(&mut d, &route, msg(Some(&key), &format!("m{i}"))).await);
        }
        for outcome in join_all(responses).await {
            assert_handled(outcome, 1);
        }

        // Workers may stay parked for the next burst, but not past the last handle.
        let runtime = tokio::runtime::Handle::current().metrics();
        drop(d);
        settle().await;
        assert_eq!(runtime.num_alive_tasks(), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Outcome futures
// ---------------------------------------------------------------------------------------------

#[test]
fn outcomes_resolve_cancelled_when_the_runtime_drops_their_jobs() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let probe = Probe::new();
    probe.hold("r1"); // never released
    let (d, r1, r2) = rt.block_on(async {
        let route = probe.route("orders", RetryPolicy::default());
        let mut d = Dispatcher::new(DispatcherConfig::default());
        let r1 = submit(&mut d, &route, msg(Some("R"), "r1")).await;
        let r2 = submit(&mut d, &route, msg(Some("R"), "r2")).await;
        assert_eq!(probe.started().await, "r1");
        (d, r1, r2)
    });

    // The runtime goes away with r1 running and r2 queued behind it.
    drop(rt);
    drop(d);
    assert_cancelled(futures::executor::block_on(r1));
    assert_cancelled(futures::executor::block_on(r2));
    assert_eq!(
        probe.events(),
        [start("r1", 1), Event::Dropped("r1".to_owned(), 1)]
    );
}

#[test]
fn dropping_the_outcome_future_does_not_stop_the_message() {
    run(async {
        let probe = Probe::new();
        probe.hold("m1");
        let route = probe.route("orders", RetryPolicy::never());
        let mut d = Dispatcher::new(DispatcherConfig::default());

        drop(submit(&mut d, &route, msg(Some("M"), "m1")).await);
        assert_eq!(probe.started().await, "m1");
        probe.release("m1");
        d.shutdown().await;
        assert_eq!(probe.events(), [start("m1", 1), end("m1", 1)]);
        let stats = d.stats();
        assert_eq!(
            (stats.handled, stats.buffered, stats.active_keys),
            (1, 0, 0)
        );
    });
}

#[test]
fn deliveries_carry_the_message_group_attempt_and_closing_token() {
    run(async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let handler = handler_fn(move |d: Delivery| {
            let record = Arc::clone(&record);
            async move {
                lock(&record).push((
                    d.message().key().map(|k| k.to_string()),
                    d.group().to_owned(),
                    d.attempt(),
                    d.cancellation().is_cancelled(),
                ));
                if d.attempt() < 2 {
                    Err::<(), BoxError>("again".into())
                } else {
                    Ok(())
                }
            }
        });
        let route = Arc::new(
            Route::builder("orders", "billing", handler)
                .retry(retry_every(Duration::from_millis(5)))
                .build(),
        );
        let mut d = Dispatcher::new(DispatcherConfig::default());
        assert_handled(submit(&mut d, &route, msg(Some("K"), "m1")).await.await, 2);
        assert_eq!(
            *lock(&seen),
            [
                (Some("K".to_owned()), "billing".to_owned(), 1, false),
                (Some("K".to_owned()), "billing".to_owned(), 2, false),
            ]
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Real parallelism
// ---------------------------------------------------------------------------------------------
//
// The tests above interleave tasks on one thread. These two run on four threads, where the
// dispatcher's lock and its lock-free byte budget meet real races. They pass deterministically
// when the dispatcher is correct; a lost wake-up shows as the (real-time) watchdog firing.

/// Fails the test if `body` has not finished after a minute.
async fn watchdog<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("stuck: no progress for a minute")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_key_order_holds_across_threads() {
    const KEYS: usize = 16;
    let running: Arc<Vec<Mutex<bool>>> = Arc::new((0..KEYS).map(|_| Mutex::new(false)).collect());
    let handled: Arc<Vec<Mutex<Vec<usize>>>> =
        Arc::new((0..KEYS).map(|_| Mutex::new(Vec::new())).collect());
    let overlaps = Arc::new(Mutex::new(0usize));
    let handler = {
        let (running, handled, overlaps) = (running.clone(), handled.clone(), overlaps.clone());
        handler_fn(move |d: Delivery| {
            let (running, handled, overlaps) = (running.clone(), handled.clone(), overlaps.clone());
            async move {
                let seq: usize = std::str::from_utf8(d.payload())?.parse()?;
                let key = d
                    .message()
                    .key()
                    .map(|k| k.as_str().parse::<usize>().unwrap());
                if let Some(k) = key
                    && std::mem::replace(&mut *lock(&running[k]), true)
                {
                    *lock(&overlaps) += 1;
                }
                for _ in 0..seq % 4 {
                    tokio::task::yield_now().await;
                }
                if let Some(k) = key {
                    *lock(&running[k]) = false;
                    lock(&handled[k]).push(seq);
                }
                Ok::<_, BoxError>(())
            }
        })
    };
    let route = Arc::new(
        Route::builder("orders", "group", handler)
            .retry(RetryPolicy::never())
            .build(),
    );
    let mut d = Dispatcher::new(config(8, 32, usize::MAX));

    let outcomes = watchdog(async {
        let mut responses = Vec::new();
        for seq in 0..2000 {
            let key = (seq % 5 != 0).then(|| (seq % KEYS).to_string());
            let message = msg(key.as_deref(), &seq.to_string());
            responses.push(submit(&mut d, &route, message).await);
        }
        join_all(responses).await
    })
    .await;
    for outcome in outcomes {
        assert_handled(outcome, 1);
    }
    watchdog(d.shutdown()).await;

    assert_eq!(*lock(&overlaps), 0, "calls of one key overlapped");
    for (k, handled) in handled.iter().enumerate() {
        let submitted: Vec<usize> = (0..2000).filter(|s| s % 5 != 0 && s % KEYS == k).collect();
        assert_eq!(*lock(handled), submitted, "key {k}");
    }
    let stats = d.stats();
    assert!(stats.peak_in_flight <= 8);
    assert_eq!(stats.handled, 2000);
    assert_eq!(
        (
            stats.workers,
            stats.in_flight,
            stats.active_keys,
            stats.buffered,
            stats.buffered_bytes
        ),
        (0, 0, 0, 0, 0)
    );
}

/// A route whose handler yields once, so calls overlap across threads.
fn yielding_route() -> Arc<Route> {
    let handler = handler_fn(|_d: Delivery| async {
        tokio::task::yield_now().await;
        Ok::<_, BoxError>(())
    });
    Arc::new(
        Route::builder("orders", "group", handler)
            .retry(RetryPolicy::never())
            .build(),
    )
}

/// Waits for the producers: every message handled, then, after shutdown, `handled` counted
/// and no slot or byte still held.
async fn every_message_handled_then_nothing_held(
    producers: impl Iterator<Item = tokio::task::JoinHandle<Vec<Result<Outcome, Error>>>>,
    d: &Dispatcher,
    handled: u64,
) {
    let outcomes = watchdog(join_all(producers)).await;
    for outcome in outcomes.into_iter().flat_map(|o| o.expect("producer ran")) {
        assert_handled(outcome, 1);
    }
    watchdog(d.shutdown()).await;
    let stats = d.stats();
    assert_eq!(stats.handled, handled);
    assert_eq!((stats.buffered, stats.buffered_bytes), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_producers_at_the_byte_cap_are_always_woken() {
    let route = yielding_route();
    let len = msg(None, "0000").encoded_len();
    // Room for about two messages: nearly every admission waits for bytes to be freed.
    let d = Dispatcher::new(config(4, 64, 2 * len));

    let producers = (0..4).map(|p| {
        let (mut d, route) = (d.clone(), route.clone());
        tokio::spawn(async move {
            let mut responses = Vec::new();
            for i in 0..250 {
                responses.push(submit(&mut d, &route, msg(None, &format!("{p}{i:03}"))).await);
            }
            join_all(responses).await
        })
    });
    every_message_handled_then_nothing_held(producers, &d, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_producers_at_the_slot_bound_are_always_woken() {
    let route = yielding_route();
    // Two slots for eight producers: nearly every admission waits for a slot, and a freed slot
    // wakes one waiter, who must pass the wake on when it leaves a slot free.
    let d = Dispatcher::new(config(2, 2, usize::MAX));

    let producers = (0..8).map(|p| {
        let (mut d, route) = (d.clone(), route.clone());
        tokio::spawn(async move {
            let mut responses = Vec::new();
            for i in 0..200 {
                responses.push(submit(&mut d, &route, msg(None, &format!("{p}{i:03}"))).await);
                // Some callers take a slot and give it back unused, as a consuming loop whose
                // source is empty does (by dropping a clone holding the reservation).
                if i % 7 == 0 {
                    let mut idle = d.clone();
                    ServiceExt::<Dispatch>::ready(&mut idle)
                        .await
                        .expect("open");
                }
            }
            join_all(responses).await
        })
    });
    every_message_handled_then_nothing_held(producers, &d, 1600).await;
}

// ---------------------------------------------------------------------------------------------
// 10. Ordering under random delays, errors and panics
// ---------------------------------------------------------------------------------------------

/// One message of a random scenario.
#[derive(Debug, Clone)]
struct Spec {
    route: usize,
    key: Option<u8>,
    delay_ms: u64,
    /// Attempts that fail before one succeeds.
    fail_times: u32,
    /// Whether failing attempts panic instead of returning an error.
    panic: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0..2usize,
        proptest::option::of(1..=8u8),
        0..5u64,
        0..=2u32,
        any::<bool>(),
    )
        .prop_map(|(route, key, delay_ms, fail_times, panic)| Spec {
            route,
            key,
            delay_ms,
            fail_times,
            panic,
        })
}

#[derive(Default)]
struct Trace {
    /// `(route, key)` pairs with a handler call running now.
    running: Mutex<HashSet<(usize, u8)>>,
    /// Messages whose call started while another call of their key was running.
    overlaps: Mutex<Vec<usize>>,
    /// Messages in the order their handler succeeded.
    succeeded: Mutex<Vec<usize>>,
}

async fn run_scenario(specs: Vec<Spec>) -> Result<(), TestCaseError> {
    let specs = Arc::new(specs);
    let trace = Arc::new(Trace::default());
    let routes: Vec<Arc<Route>> = (0..2)
        .map(|r| {
            let (specs, trace) = (Arc::clone(&specs), Arc::clone(&trace));
            let handler = handler_fn(move |d: Delivery| {
                let (specs, trace) = (Arc::clone(&specs), Arc::clone(&trace));
                async move {
                    let seq: usize = std::str::from_utf8(d.payload()).unwrap().parse().unwrap();
                    let spec = &specs[seq];
                    if let Some(key) = spec.key
                        && !lock(&trace.running).insert((r, key))
                    {
                        lock(&trace.overlaps).push(seq);
                    }
                    // No delay: the call finishes on its first poll, as most handlers do, and
                    // its worker then takes several keys' jobs at once.
                    if spec.delay_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(spec.delay_ms)).await;
                    }
                    if let Some(key) = spec.key {
                        lock(&trace.running).remove(&(r, key));
                    }
                    if d.attempt() <= spec.fail_times {
                        if spec.panic {
                            panic!("message {seq} panics on attempt {}", d.attempt());
                        }
                        return Err::<(), BoxError>("planned failure".into());
                    }
                    lock(&trace.succeeded).push(seq);
                    Ok(())
                }
            });
            Arc::new(
                Route::builder(if r == 0 { "orders" } else { "audit" }, "group", handler)
                    .retry(
                        RetryPolicy::default()
                            .backoff(Duration::from_millis(1), Duration::from_millis(4))
                            .jitter(false),
                    )
                    .build(),
            )
        })
        .collect();

    // Small bounds, so submission meets backpressure too.
    let mut d = Dispatcher::new(config(3, 8, usize::MAX));
    let mut responses = Vec::new();
    for (seq, spec) in specs.iter().enumerate() {
        let message = Message::new("orders", seq.to_string());
        let message = match spec.key {
            Some(key) => message.with_key(key.to_string()),
            None => message,
        };
        responses.push(submit(&mut d, &routes[spec.route], Arc::new(message)).await);
    }
    let outcomes = join_all(responses).await;
    d.shutdown().await;

    for (seq, (spec, outcome)) in specs.iter().zip(outcomes).enumerate() {
        prop_assert!(
            matches!(outcome, Ok(Outcome::Handled { attempts }) if attempts == spec.fail_times + 1),
            "message {seq} ({spec:?}) ended {outcome:?}"
        );
    }
    prop_assert_eq!(lock(&trace.overlaps).clone(), Vec::<usize>::new());
    let succeeded = lock(&trace.succeeded).clone();
    for route in 0..2 {
        for key in 1..=8u8 {
            let of_key = |seq: &usize| specs[*seq].route == route && specs[*seq].key == Some(key);
            let submitted: Vec<usize> = (0..specs.len()).filter(of_key).collect();
            let handled: Vec<usize> = succeeded.iter().copied().filter(of_key).collect();
            prop_assert_eq!(handled, submitted, "route {} key {}", route, key);
        }
    }
    let stats = d.stats();
    let failures: u32 = specs.iter().map(|s| s.fail_times).sum();
    let panics: u32 = specs.iter().filter(|s| s.panic).map(|s| s.fail_times).sum();
    prop_assert_eq!(stats.handled, specs.len() as u64);
    prop_assert_eq!(stats.retried, u64::from(failures));
    prop_assert_eq!(stats.panicked, u64::from(panics));
    prop_assert!(stats.peak_in_flight <= 3);
    prop_assert_eq!(
        (
            stats.workers,
            stats.active_keys,
            stats.buffered,
            stats.buffered_bytes
        ),
        (0, 0, 0, 0)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn per_key_order_holds_under_random_delays_errors_and_panics(
        specs in proptest::collection::vec(spec(), 1..40)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(STUCK, run_scenario(specs))
                .await
                .expect("stuck: the scenario can no longer make progress")
        })?;
    }
}
