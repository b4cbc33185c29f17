package main

import (
	"encoding/binary"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

type figures struct {
	Peer            string  `json:"peer"`
	Settings        string  `json:"settings"`
	Scenario        string  `json:"scenario"`
	Published       int     `json:"published"`
	Received        int     `json:"received"`
	Lost            int     `json:"lost"`
	Duplicated      int     `json:"duplicated"`
	OrderViolations int     `json:"order_violations"`
	Completed       bool    `json:"completed"`
	Seconds         float64 `json:"seconds"`
	Throughput      float64 `json:"throughput"`
	P50Micros       float64 `json:"p50_us"`
	P99Micros       float64 `json:"p99_us"`
	GoroutinesStart int     `json:"goroutines_start"`
	GoroutinesPeak  int     `json:"goroutines_peak"`
	GoroutinesAfter int     `json:"goroutines_after"`
	HeapAfter       uint64  `json:"heap_after_bytes"`
	RSSAfter        uint64  `json:"rss_after_bytes"`
}

// received is what the subscribers saw.
type received struct {
	mu         sync.Mutex
	times      map[string]int   // message id -> receipts
	latest     map[string]int64 // aggregate -> highest version seen
	violations int
	latencies  []time.Duration
	count      atomic.Int64
	// frozen is set when a run gives up at its deadline, so that its figures are what
	// arrived by then, not what trickled in while the peer closed.
	frozen atomic.Bool
}

func newReceived() *received {
	return &received{times: map[string]int{}, latest: map[string]int64{}}
}

func (r *received) receive(m *message.Message, ordered bool) {
	if r.frozen.Load() {
		return
	}
	now := time.Now().UnixNano()
	sent := int64(binary.LittleEndian.Uint64(m.Payload))
	r.mu.Lock()
	defer r.mu.Unlock()
	r.times[m.UUID]++
	first := r.times[m.UUID] == 1
	r.latencies = append(r.latencies, time.Duration(now-sent))
	if ordered && first {
		aggregate := m.Metadata.Get("aggregate_id")
		v, _ := strconv.ParseInt(m.Metadata.Get("version"), 10, 64)
		if v < r.latest[aggregate] {
			r.violations++
		}
		if v > r.latest[aggregate] {
			r.latest[aggregate] = v
		}
	}
	if first {
		r.count.Add(1)
	}
}

// fill sets the figures taken from the receipts.
func (r *received) fill(f *figures, elapsed time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f.Received = int(r.count.Load())
	f.OrderViolations = r.violations
	for _, n := range r.times {
		if n > 1 {
			f.Duplicated += n - 1
		}
	}
	f.Lost = f.Published - len(r.times)
	f.Throughput = float64(len(r.times)) / elapsed.Seconds()
	f.P50Micros, f.P99Micros = percentile(r.latencies, 0.50), percentile(r.latencies, 0.99)
}

func percentile(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	sorted := append([]time.Duration(nil), d...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	return float64(sorted[int(q*float64(len(sorted)-1))].Microseconds())
}

// samplePeak records the most goroutines seen every 10 ms until the returned stop is first
// called.
func samplePeak(peak *atomic.Int64) (stop func()) {
	stopping := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if n := int64(runtime.NumGoroutine()); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stopping:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(stopping)
			<-sampled
		})
	}
}

// goroutinesLeft is what the bus left running: goroutines still there once the runtime had a
// moment to retire those that were ending.
func goroutinesLeft(start int) int {
	after := runtime.NumGoroutine()
	for i := 0; i < 100 && after > start; i++ {
		time.Sleep(10 * time.Millisecond)
		after = runtime.NumGoroutine()
	}
	return after
}

// rss is the process's resident set in bytes (/proc/self/statm, in pages).
func rss() uint64 {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(data))
	if len(fields) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(fields[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}
