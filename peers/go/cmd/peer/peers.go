package main

import (
	"context"
	"fmt"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
)

// bus is a peer ready to run: a publisher and a subscriber on topics that exist.
type bus struct {
	pub      message.Publisher
	sub      message.Subscriber
	settings string
	// ready, when set, waits until the subscriptions are in place on the broker, so that the
	// clock does not run while a consumer group forms.
	ready func(ctx context.Context) error
	// close closes the subscriber and the publisher, then deletes whatever the peer
	// provisioned on a broker.
	close func() error
}

// peerOptions are the flags the peers read.
type peerOptions struct {
	natsURL      string
	kafkaBrokers []string
	// group names what a run creates on a shared broker, unique to this process.
	group string
}

var peerNames = []string{"watermill-gochannel", "watermill-gochannel-async", "watermill-nats", "watermill-kafka"}

func knownPeer(name string) bool {
	for _, p := range peerNames {
		if p == name {
			return true
		}
	}
	return false
}

func newPeer(name string, topicNames []string, o peerOptions) (*bus, error) {
	logger := watermill.NopLogger{}
	switch name {
	case "watermill-gochannel":
		return goChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, "GoChannel, BlockPublishUntilSubscriberAck"), nil
	case "watermill-gochannel-async":
		return goChannel(gochannel.Config{}, "GoChannel, defaults"), nil
	case "watermill-nats":
		return newNATS(o.natsURL, topicNames, logger)
	case "watermill-kafka":
		return newKafka(o.kafkaBrokers, topicNames, o.group, logger)
	}
	return nil, fmt.Errorf("unknown peer %q", name)
}

func goChannel(config gochannel.Config, settings string) *bus {
	g := gochannel.NewGoChannel(config, watermill.NopLogger{})
	return &bus{pub: g, sub: g, settings: settings, close: g.Close}
}
