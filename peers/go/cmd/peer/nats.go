package main

import (
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/nats-io/nats.go"
)

// newNATS is Watermill's NATS pub/sub in JetStream mode (pkg/nats, which its docs recommend for
// production over the experimental pkg/jetstream), set up as its docs and tests do:
//   - one stream per topic, made by SubscribeInitialize (the tests' way; AutoProvision would also
//     ask the broker for the stream's info on every Publish);
//   - a durable push consumer per topic (DurableCalculator: the prefix alone would give every
//     topic the same durable), DeliverAll and AckExplicit as in its examples;
//   - one subscriber per topic (SubscribersCount 1, no queue group): its callback hands a message
//     on and waits for its ack before taking the next, which is what keeps a topic in order;
//   - acks sent with AckSync (AckAsync false, the default) and Publish waiting for JetStream's
//     ack; TrackMsgId (dedup, for exactly-once) stays off: this is at-least-once.
func newNATS(url string, topicNames []string, logger watermill.LoggerAdapter) (*bus, error) {
	// A connection of our own for what Watermill does not do: deleting the streams.
	admin, err := nats.Connect(url, nats.Name("peers-admin"))
	if err != nil {
		return nil, fmt.Errorf("cannot connect to NATS at %s: %w", url, err)
	}
	js, err := admin.JetStream()
	if err != nil {
		admin.Close()
		return nil, fmt.Errorf("NATS JetStream: %w", err)
	}
	var closers []func() error
	var created []string
	b := &bus{
		settings: "JetStream (pkg/nats), stream and durable push consumer per topic, DeliverAll, AckExplicit, AckSync, sync publish (waits for PubAck), 1 subscriber per topic",
		close: func() error {
			var errs []error
			for _, c := range closers {
				errs = append(errs, c())
			}
			// Streams go last: deleting one deletes its consumers too.
			for _, t := range created {
				if err := js.DeleteStream(t); err != nil && !errors.Is(err, nats.ErrStreamNotFound) {
					errs = append(errs, fmt.Errorf("delete stream %s: %w", t, err))
				}
			}
			admin.Close()
			return errors.Join(errs...)
		},
	}
	fail := func(err error) (*bus, error) { return nil, errors.Join(err, b.close()) }

	jetStream := wmnats.JetStreamConfig{
		SubscribeOptions:  []nats.SubOpt{nats.DeliverAll(), nats.AckExplicit()},
		DurablePrefix:     "durable",
		DurableCalculator: func(prefix, topic string) string { return prefix + "-" + topic },
	}
	sub, err := wmnats.NewSubscriber(wmnats.SubscriberConfig{
		URL:              url,
		SubscribersCount: 1,
		JetStream:        jetStream,
	}, logger)
	if err != nil {
		return fail(fmt.Errorf("NATS subscriber: %w", err))
	}
	closers = append(closers, sub.Close)
	for _, t := range topicNames {
		if err := sub.SubscribeInitialize(t); err != nil {
			_ = js.DeleteStream(t) // in case a create that timed out made it after all
			return fail(fmt.Errorf("NATS stream %s: %w", t, err))
		}
		created = append(created, t)
	}
	pub, err := wmnats.NewPublisher(wmnats.PublisherConfig{URL: url, JetStream: jetStream}, logger)
	if err != nil {
		return fail(fmt.Errorf("NATS publisher: %w", err))
	}
	closers = append(closers, pub.Close)
	b.pub, b.sub = pub, sub
	return b, nil
}
