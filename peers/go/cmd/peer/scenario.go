package main

import (
	"fmt"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"
)

const (
	topics      = 5
	payloadSize = 100

	// stalledAggregate is scenario H's slow aggregate: its handler sleeps, and it is left out
	// of every figure.
	stalledAggregate = "stalled"
)

// plan is what the sender of topic t publishes, in order. Scenario H is B with the stalled
// aggregate's messages first on topic 0, so every other message of that topic is behind them.
func plan(scenario string, t, total, aggregates, stallMessages int) []*message.Message {
	var out []*message.Message
	if scenario == "A" {
		for i := 0; i < total/topics; i++ {
			out = append(out, stamped(fmt.Sprintf("%d-%d", t, i), nil))
		}
		return out
	}
	if scenario == "H" && t == 0 {
		for v := 1; v <= stallMessages; v++ {
			out = append(out, versioned(stalledAggregate, fmt.Sprintf("stalled-v%d", v), v))
		}
	}
	versions := total / aggregates
	for v := 1; v <= versions; v++ {
		for a := t; a < aggregates; a += topics {
			out = append(out, versioned(fmt.Sprintf("aggregate-%d", a), fmt.Sprintf("a%d-v%d", a, v), v))
		}
	}
	return out
}

// expected is how many messages count: all but the stalled aggregate's.
func expected(scenario string, total, aggregates int) int {
	if scenario == "A" {
		return total / topics * topics
	}
	return total / aggregates * aggregates
}

func versioned(aggregate, id string, version int) *message.Message {
	return stamped(id, map[string]string{
		"aggregate_id": aggregate,
		"version":      strconv.Itoa(version),
	})
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

func stalled(m *message.Message) bool {
	return m.Metadata.Get("aggregate_id") == stalledAggregate
}
