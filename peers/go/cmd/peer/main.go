// Command peer runs one load scenario of `cargo xtask peers` on a Go event bus and prints its
// figures as one JSON line, measured the way the Rust side measures them: time from the first
// publish to the last receipt (no fixed sleeps), end-to-end latency from a send timestamp in the
// payload, loss, duplicates and per-aggregate order from what the subscribers received,
// goroutines at start, at peak and after close, and heap and RSS after close.
//
// Scenarios (those of eventbus-bench's load module, the Go SDK's load test, and its
// head-of-line one):
//   - A: raw messages over 5 topics, one sender per topic, 8-byte send timestamp + 100 bytes;
//   - B: versions 1..V of each aggregate in order (aggregate a on topic a % 5, its sender
//     publishing version by version), checked for order per aggregate on receipt;
//   - H: B plus the aggregate `stalled` on topic 0, whose messages its sender publishes first
//     and whose handler sleeps before acking; the figures are the other aggregates' only.
//
// Peers:
//   - watermill-gochannel: Watermill's GoChannel with BlockPublishUntilSubscriberAck, the
//     setting under which its docs promise delivery in publish order (without it, every
//     Publish hands the message to a goroutine of its own, and goroutines race);
//   - watermill-gochannel-async: the same with its default configuration;
//   - watermill-nats: Watermill's NATS JetStream pub/sub (nats.go);
//   - watermill-kafka: Watermill's Kafka pub/sub (sarama), keyed by aggregate.
//
// An error (a broker that does not answer, provisioning that failed) goes to stderr with exit
// status 1 and no figures. A run past its deadline is not an error: it prints what arrived.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

type options struct {
	peer          string
	scenario      string
	messages      int
	aggregates    int
	deadline      time.Duration
	stall         time.Duration
	stallMessages int
	peerOptions
}

func main() {
	var o options
	var brokers string
	flag.StringVar(&o.peer, "peer", "watermill-gochannel", "which Go event bus: "+strings.Join(peerNames, ", "))
	flag.StringVar(&o.scenario, "scenario", "A", "A, B or H")
	flag.IntVar(&o.messages, "messages", 500, "messages in all")
	flag.IntVar(&o.aggregates, "aggregates", 50, "aggregates of scenarios B and H")
	flag.DurationVar(&o.deadline, "deadline", 60*time.Second, "longest wait for the last receipt")
	flag.DurationVar(&o.stall, "stall", time.Second, "scenario H: how long the stalled aggregate's handler sleeps per message")
	flag.IntVar(&o.stallMessages, "stall-messages", 2, "scenario H: messages of the stalled aggregate")
	flag.StringVar(&o.natsURL, "nats-url", "nats://127.0.0.1:4222", "watermill-nats: the NATS server")
	flag.StringVar(&brokers, "kafka-brokers", "127.0.0.1:9092", "watermill-kafka: the Kafka brokers, comma-separated")
	flag.Parse()
	o.kafkaBrokers = strings.Split(brokers, ",")
	// Streams, topics and the consumer group are named after the process: the brokers are shared.
	o.group = fmt.Sprintf("peers-%d", os.Getpid())

	if !knownPeer(o.peer) {
		fmt.Fprintf(os.Stderr, "unknown peer %q (%s)\n", o.peer, strings.Join(peerNames, ", "))
		os.Exit(2)
	}
	if o.scenario != "A" && o.scenario != "B" && o.scenario != "H" {
		fmt.Fprintf(os.Stderr, "unknown scenario %q (A, B or H)\n", o.scenario)
		os.Exit(2)
	}
	if o.scenario != "A" && o.aggregates <= 0 {
		fmt.Fprintln(os.Stderr, "-aggregates must be positive")
		os.Exit(2)
	}

	// An interrupted run still closes the peer and deletes what it made on the brokers.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	f, err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(f)
	fmt.Println(string(out))
}

func run(ctx context.Context, o options) (f figures, err error) {
	f = figures{Peer: o.peer, Scenario: o.scenario}
	f.GoroutinesStart = runtime.NumGoroutine()
	topicNames := make([]string, topics)
	for t := range topicNames {
		topicNames[t] = fmt.Sprintf("%s-%d", o.group, t)
	}
	b, err := newPeer(o.peer, topicNames, o.peerOptions)
	if err != nil {
		return f, err
	}
	f.Settings = b.settings
	subscriptions, cancel := context.WithCancel(ctx)
	closed := false
	defer func() {
		if !closed {
			cancel()
			err = errors.Join(err, b.close())
		}
	}()

	var peak atomic.Int64
	stopSampling := samplePeak(&peak)
	defer stopSampling()

	rec := newReceived()
	ordered := o.scenario != "A"
	var consumers sync.WaitGroup
	for _, topic := range topicNames {
		msgs, err := b.sub.Subscribe(subscriptions, topic)
		if err != nil {
			return f, fmt.Errorf("subscribe %s: %w", topic, err)
		}
		consumers.Add(1)
		go func() {
			defer consumers.Done()
			// One message at a time, as the subscriber hands them over; the stalled
			// aggregate's handler sleeps before it acks, and the bus decides what waits behind.
			for m := range msgs {
				if stalled(m) {
					select {
					case <-time.After(o.stall):
					case <-subscriptions.Done():
					}
				} else {
					rec.receive(m, ordered)
				}
				m.Ack()
			}
		}()
	}

	if b.ready != nil {
		if err := b.ready(subscriptions); err != nil {
			return f, err
		}
	}

	// Built before the clock starts: the time runs from the first publish.
	plans := make([][]*message.Message, topics)
	for t := range plans {
		plans[t] = plan(o.scenario, t, o.messages, o.aggregates, o.stallMessages)
	}
	published := expected(o.scenario, o.messages, o.aggregates)
	var handed atomic.Int64 // messages given to Publish, the stalled aggregate's left out
	stopSending := make(chan struct{})
	var senders sync.WaitGroup
	start := time.Now()
	for t, topic := range topicNames {
		senders.Add(1)
		go func() {
			defer senders.Done()
			for i, m := range plans[t] {
				select {
				case <-stopSending:
					return
				default:
				}
				binary.LittleEndian.PutUint64(m.Payload, uint64(time.Now().UnixNano()))
				if !stalled(m) {
					handed.Add(1)
				}
				if err := b.pub.Publish(topic, m); err != nil {
					fmt.Fprintln(os.Stderr, "publish:", err)
				}
				plans[t][i] = nil // what was sent is the bus's now; let the large runs shed it
			}
		}()
	}
	completed, interrupted := true, false
	limit := time.After(o.deadline)
wait:
	for rec.count.Load() < int64(published) {
		select {
		case <-limit:
			completed = false
			break wait
		case <-ctx.Done():
			interrupted = true
			break wait
		case <-time.After(time.Millisecond):
		}
	}
	elapsed := time.Since(start)
	if !completed {
		rec.frozen.Store(true)
	}
	// Senders stop where they are (a run past its deadline), and none publishes into a closing bus.
	close(stopSending)
	senders.Wait()
	if interrupted {
		return f, errors.New("interrupted")
	}

	cancel()
	closed = true
	closeErr := b.close()
	consumers.Wait()
	stopSampling()
	f.GoroutinesAfter = goroutinesLeft(f.GoroutinesStart)
	f.GoroutinesPeak = int(peak.Load())
	runtime.GC()
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	f.HeapAfter = mem.HeapAlloc
	f.RSSAfter = rss()
	if closeErr != nil {
		return f, fmt.Errorf("closing %s: %w", o.peer, closeErr)
	}

	f.Published = int(handed.Load())
	f.Completed = completed
	f.Seconds = elapsed.Seconds()
	rec.fill(&f, elapsed)
	return f, nil
}
