//! What a run looked like over time: tasks, threads and heap sampled every millisecond by a
//! thread of its own, and when each phase began.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus_testkit::leak::{Snapshot, Usage};
use serde::Serialize;

use super::{Recorder, lock};

/// Tasks, threads and heap at one moment of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Microseconds since the start snapshot.
    pub at_us: u64,
    /// Alive tokio tasks.
    pub tasks: usize,
    /// OS threads.
    pub threads: usize,
    /// Live heap bytes (0 without the counting allocator).
    pub heap_bytes: usize,
}

/// Samples over a run (every millisecond, by a thread of its own; thinned out to at most
/// 1,024 by dropping every other one when full) and when its phases began, in microseconds
/// since the start snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Timeline {
    /// The samples, oldest first; the first is the start snapshot, the last the after-close one.
    pub samples: Vec<Sample>,
    /// Subscriptions made, publishing starts.
    pub publishing_us: u64,
    /// Last receipt (or the deadline).
    pub received_us: u64,
    /// Closing starts.
    pub closing_us: u64,
    /// Closed.
    pub closed_us: u64,
}

const MAX_SAMPLES: usize = 1024;
const SAMPLE_EVERY: Duration = Duration::from_millis(1);

/// Usage and timeline of a run.
pub(super) struct Sampler {
    origin: Instant,
    pub(super) usage: Usage,
    pub(super) timeline: Timeline,
    /// Keep one sample in `stride`.
    stride: u64,
    ticks: u64,
}

impl Sampler {
    /// Allocates the timeline, then takes the start snapshot.
    pub(super) fn begin() -> Self {
        let mut timeline = Timeline {
            samples: Vec::with_capacity(MAX_SAMPLES),
            ..Timeline::default()
        };
        let origin = Instant::now();
        let usage = Usage::begin();
        timeline.samples.push(Self::point(origin, usage.start));
        Sampler {
            origin,
            usage,
            timeline,
            stride: 1,
            ticks: 0,
        }
    }

    pub(super) fn point(origin: Instant, s: Snapshot) -> Sample {
        Sample {
            at_us: origin.elapsed().as_micros() as u64,
            tasks: s.tasks,
            threads: s.threads,
            heap_bytes: s.heap_bytes,
        }
    }

    pub(super) fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    pub(super) fn push(&mut self, s: Snapshot) {
        if self.timeline.samples.len() == MAX_SAMPLES {
            // Keep the first (the start) and every other one after it.
            let mut i = 0;
            self.timeline.samples.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.stride *= 2;
        }
        self.timeline.samples.push(Self::point(self.origin, s));
    }

    /// A periodic sample: always counts toward the peak, kept in the timeline one in `stride`.
    pub(super) fn tick(&mut self, s: Snapshot) {
        self.usage.peak = self.usage.peak.max(s);
        self.ticks += 1;
        if self.ticks.is_multiple_of(self.stride) {
            self.push(s);
        }
    }

    /// The after-close snapshot.
    pub(super) async fn finish(&mut self) {
        self.usage.finish().await;
        self.push(self.usage.after_close);
        self.timeline.closed_us = self.now_us();
    }
}

/// A [`Sampler`] sampling on a thread of its own, so a busy runtime cannot starve it: the
/// runtime's timers are not polled while its workers are busy. Its thread counts in the peak
/// thread figure and is gone before the after-close snapshot.
pub(super) struct Sampling {
    shared: Arc<(Mutex<Sampler>, AtomicBool)>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampling {
    /// Starts sampling the current runtime; prints `label`'s progress every `load.progress`.
    pub(super) fn start(sampler: Sampler, label: &str, recorder: &Arc<Recorder>) -> Self {
        let shared = Arc::new((Mutex::new(sampler), AtomicBool::new(false)));
        let handle = tokio::runtime::Handle::current();
        let (state, label, recorder) =
            (Arc::clone(&shared), label.to_owned(), Arc::clone(recorder));
        let thread = std::thread::Builder::new()
            .name("load-sampler".into())
            .spawn(move || {
                // Snapshots read the task count of the runtime entered.
                let _runtime = handle.enter();
                let (sampler, stop) = &*state;
                let load = recorder.load;
                let origin = lock(sampler).origin;
                let mut next_report = load.progress.map(|every| origin + every);
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(SAMPLE_EVERY);
                    let s = Snapshot::take();
                    lock(sampler).tick(s);
                    if let (Some(at), Some(every)) = (next_report, load.progress)
                        && Instant::now() >= at
                    {
                        eprintln!(
                            "  {label}: {} / {} received, {} duplicates, {:.1} s",
                            recorder.distinct(),
                            load.messages(),
                            recorder.duplicates(),
                            origin.elapsed().as_secs_f64()
                        );
                        next_report = Some(at + every);
                    }
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the sampler thread: {e}"));
        Sampling { shared, thread }
    }

    /// A sample at the start of a phase (always kept), and when the phase started.
    pub(super) fn mark(&self, phase: fn(&mut Timeline) -> &mut u64) {
        let s = Snapshot::take();
        let mut sampler = lock(&self.shared.0);
        sampler.usage.peak = sampler.usage.peak.max(s);
        sampler.push(s);
        *phase(&mut sampler.timeline) = sampler.now_us();
    }

    /// Stops and joins the thread; returns the sampler.
    pub(super) fn stop(self) -> Sampler {
        self.shared.1.store(true, Ordering::Release);
        if self.thread.join().is_err() {
            panic!("the sampler thread panicked");
        }
        let taken = Sampler {
            origin: Instant::now(),
            usage: Usage::default(),
            timeline: Timeline::default(),
            stride: 1,
            ticks: 0,
        };
        std::mem::replace(&mut *lock(&self.shared.0), taken)
    }

    /// Waits for the last receipt (or the deadline).
    pub(super) async fn wait(&self, recorder: &Recorder) -> Option<Instant> {
        tokio::select! {
            () = recorder.done.notified() => {}
            () = tokio::time::sleep(recorder.load.deadline) => {}
        }
        self.mark(|t| &mut t.received_us);
        recorder.finished_at()
    }
}
