// Command peer runs one load scenario of `cargo xtask peers` on a Go event bus and prints its
// figures as one JSON line, measured the way the Rust side measures them: time to the last
// receipt (no fixed sleeps), end-to-end latency from a send timestamp in the payload, loss,
// duplicates and per-aggregate order from what the subscribers received, goroutines at start,
// at peak and after close, and heap and RSS after close.
//
// Scenarios (those of eventbus-bench's load module, the Go SDK's load test):
//   - A: raw messages over 5 topics, one sender per topic, 8-byte send timestamp + 100 bytes;
//   - B: versions 1..V of each aggregate in order (aggregate a on topic a % 5, its sender
//     publishing version by version), checked for order per aggregate on receipt.
//
// Peers:
//   - watermill-gochannel: Watermill's GoChannel with BlockPublishUntilSubscriberAck, the
//     setting under which its docs promise delivery in publish order (without it, every
//     Publish hands the message to a goroutine of its own, and goroutines race);
//   - watermill-gochannel-async: the same with its default configuration.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
)

const (
	topics      = 5
	payloadSize = 100
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

// pubSub is what a peer offers: a publisher and a subscriber, closed together.
type pubSub interface {
	message.Publisher
	message.Subscriber
}

func newPeer(name string) (pubSub, string, error) {
	logger := watermill.NopLogger{}
	switch name {
	case "watermill-gochannel":
		return gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, logger),
			"GoChannel, BlockPublishUntilSubscriberAck", nil
	case "watermill-gochannel-async":
		return gochannel.NewGoChannel(gochannel.Config{}, logger), "GoChannel, defaults", nil
	}
	return nil, "", fmt.Errorf("unknown peer %q", name)
}

// received is what the subscribers saw.
type received struct {
	mu         sync.Mutex
	times      map[string]int   // message id -> receipts
	latest     map[string]int64 // aggregate -> highest version seen
	violations int
	latencies  []time.Duration
	count      atomic.Int64
}

func main() {
	peerName := flag.String("peer", "watermill-gochannel", "which Go event bus")
	scenario := flag.String("scenario", "A", "A or B")
	messages := flag.Int("messages", 500, "messages in all")
	aggregates := flag.Int("aggregates", 50, "aggregates of scenario B")
	deadline := flag.Duration("deadline", 60*time.Second, "longest wait for the last receipt")
	flag.Parse()

	goroutinesStart := runtime.NumGoroutine()
	ps, settings, err := newPeer(*peerName)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rec := &received{times: map[string]int{}, latest: map[string]int64{}}

	var peak atomic.Int64
	stopSampling := make(chan struct{})
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
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	}()

	var consumers sync.WaitGroup
	for t := 0; t < topics; t++ {
		msgs, err := ps.Subscribe(ctx, fmt.Sprintf("peers.%d", t))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		consumers.Add(1)
		go func() {
			defer consumers.Done()
			for m := range msgs {
				rec.receive(m, *scenario == "B")
				m.Ack()
			}
		}()
	}

	total := *messages
	start := time.Now()
	var senders sync.WaitGroup
	for t := 0; t < topics; t++ {
		senders.Add(1)
		go func(t int) {
			defer senders.Done()
			for _, m := range plan(*scenario, t, total, *aggregates) {
				binary.LittleEndian.PutUint64(m.Payload, uint64(time.Now().UnixNano()))
				if err := ps.Publish(fmt.Sprintf("peers.%d", t), m); err != nil {
					fmt.Fprintln(os.Stderr, "publish:", err)
				}
			}
		}(t)
	}
	published := expected(*scenario, total, *aggregates)
	completed := true
	limit := time.After(*deadline)
wait:
	for rec.count.Load() < int64(published) {
		select {
		case <-limit:
			completed = false
			break wait
		case <-time.After(time.Millisecond):
		}
	}
	elapsed := time.Since(start)
	senders.Wait()

	cancel()
	_ = ps.Close()
	consumers.Wait()
	close(stopSampling)
	<-sampled
	// What the bus left running: goroutines still there once the runtime had a moment to
	// retire those that were ending.
	after := runtime.NumGoroutine()
	for i := 0; i < 100 && after > goroutinesStart; i++ {
		time.Sleep(10 * time.Millisecond)
		after = runtime.NumGoroutine()
	}
	runtime.GC()
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)

	rec.mu.Lock()
	f := figures{
		Peer:            *peerName,
		Settings:        settings,
		Scenario:        *scenario,
		Published:       published,
		Received:        int(rec.count.Load()),
		Completed:       completed,
		OrderViolations: rec.violations,
		Seconds:         elapsed.Seconds(),
		GoroutinesStart: goroutinesStart,
		GoroutinesPeak:  int(peak.Load()),
		GoroutinesAfter: after,
		HeapAfter:       mem.HeapAlloc,
		RSSAfter:        rss(),
	}
	for _, n := range rec.times {
		if n > 1 {
			f.Duplicated += n - 1
		}
	}
	f.Lost = published - len(rec.times)
	f.Throughput = float64(len(rec.times)) / elapsed.Seconds()
	f.P50Micros, f.P99Micros = percentile(rec.latencies, 0.50), percentile(rec.latencies, 0.99)
	rec.mu.Unlock()
	out, _ := json.Marshal(f)
	fmt.Println(string(out))
}

// plan is what the sender of topic t publishes, in order.
func plan(scenario string, t, total, aggregates int) []*message.Message {
	var out []*message.Message
	if scenario == "A" {
		for i := 0; i < total/topics; i++ {
			out = append(out, stamped(fmt.Sprintf("%d-%d", t, i), nil))
		}
		return out
	}
	versions := total / aggregates
	for v := 1; v <= versions; v++ {
		for a := t; a < aggregates; a += topics {
			m := stamped(fmt.Sprintf("a%d-v%d", a, v), map[string]string{
				"aggregate_id": fmt.Sprintf("aggregate-%d", a),
				"version":      strconv.Itoa(v),
			})
			out = append(out, m)
		}
	}
	return out
}

func expected(scenario string, total, aggregates int) int {
	if scenario == "A" {
		return total / topics * topics
	}
	return total / aggregates * aggregates
}

// stamped is a message whose payload starts with room for its send time, written when it is
// published.
func stamped(id string, metadata map[string]string) *message.Message {
	m := message.NewMessage(id, make([]byte, 8+payloadSize))
	for k, v := range metadata {
		m.Metadata.Set(k, v)
	}
	return m
}

func (r *received) receive(m *message.Message, ordered bool) {
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

func percentile(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	sorted := append([]time.Duration(nil), d...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	return float64(sorted[int(q*float64(len(sorted)-1))].Microseconds())
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
