package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
)

const kafkaPartitions = 4

// kafkaVersion replaces Watermill's default protocol version (Kafka 1.0), which Kafka 4 no
// longer answers (KIP-896), with the newest this sarama knows.
var kafkaVersion = sarama.V3_6_0_0

// newKafka is Watermill's Kafka pub/sub ordered per aggregate as its docs say ("GuaranteedOrder:
// yes, require partition key usage"): the partitioning marshaler keyed by aggregate_id, so an
// aggregate stays on one partition, which one consumer group member reads in order, waiting for
// each message's ack. Its topics (4 partitions, replication 1) and its consumer group are this
// process's own and deleted on close.
func newKafka(brokers []string, topicNames []string, group string, logger watermill.LoggerAdapter) (*bus, error) {
	adminConfig := sarama.NewConfig()
	adminConfig.Version = kafkaVersion
	admin, err := sarama.NewClusterAdmin(brokers, adminConfig)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to Kafka at %v: %w", brokers, err)
	}
	var closers []func() error
	var created []string
	b := &bus{
		settings: fmt.Sprintf("sarama, partitioning marshaler keyed by aggregate_id, %d partitions, replication 1, sync producer (acks=1), 1 consumer group, offset oldest, acked offsets auto-committed", kafkaPartitions),
		close: func() error {
			var errs []error
			for _, c := range closers {
				errs = append(errs, c())
			}
			errs = append(errs, deleteGroup(admin, group))
			for _, t := range created {
				if err := admin.DeleteTopic(t); err != nil && !errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
					errs = append(errs, fmt.Errorf("delete topic %s: %w", t, err))
				}
			}
			errs = append(errs, admin.Close())
			return errors.Join(errs...)
		},
	}
	fail := func(err error) (*bus, error) { return nil, errors.Join(err, b.close()) }

	for _, t := range topicNames {
		detail := &sarama.TopicDetail{NumPartitions: kafkaPartitions, ReplicationFactor: 1}
		err := admin.CreateTopic(t, detail, false)
		// A create that failed otherwise (a timeout) may still have made the topic.
		if !errors.Is(err, sarama.ErrTopicAlreadyExists) {
			created = append(created, t)
		}
		if err != nil {
			return fail(fmt.Errorf("create Kafka topic %s: %w", t, err))
		}
	}

	marshaler := kafka.NewWithPartitioningMarshaler(func(_ string, m *message.Message) (string, error) {
		return m.Metadata.Get("aggregate_id"), nil
	})
	subscriberConfig := kafka.DefaultSaramaSubscriberConfig()
	subscriberConfig.Version = kafkaVersion
	// As in the docs' example ("equivalent of auto.offset.reset: earliest"): a partition that
	// has no committed offset yet is read from its start, so nothing published before the
	// group took it is skipped.
	subscriberConfig.Consumer.Offsets.Initial = sarama.OffsetOldest
	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{
		Brokers:               brokers,
		Unmarshaler:           marshaler,
		OverwriteSaramaConfig: subscriberConfig,
		ConsumerGroup:         group,
	}, logger)
	if err != nil {
		return fail(fmt.Errorf("Kafka subscriber: %w", err))
	}
	closers = append(closers, sub.Close)
	publisherConfig := kafka.DefaultSaramaSyncPublisherConfig()
	publisherConfig.Version = kafkaVersion
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers:               brokers,
		Marshaler:             marshaler,
		OverwriteSaramaConfig: publisherConfig,
	}, logger)
	if err != nil {
		return fail(fmt.Errorf("Kafka publisher: %w", err))
	}
	closers = append(closers, pub.Close)

	b.pub, b.sub = pub, sub
	b.ready = func(ctx context.Context) error {
		return groupFormed(ctx, admin, group, len(topicNames)*kafkaPartitions)
	}
	return b, nil
}

// groupFormed waits until the consumer group is stable with all partitions assigned. Each
// Subscribe adds a member to the group, and each member that joins starts a rebalance of the
// whole group; the Rust bus likewise waits for its first assignment before publishing.
func groupFormed(ctx context.Context, admin sarama.ClusterAdmin, group string, partitions int) error {
	limit := time.After(30 * time.Second)
	for {
		assigned := 0
		groups, err := admin.DescribeConsumerGroups([]string{group})
		if err == nil && len(groups) == 1 && groups[0].State == "Stable" {
			for _, member := range groups[0].Members {
				if a, err := member.GetMemberAssignment(); err == nil && a != nil {
					for _, ps := range a.Topics {
						assigned += len(ps)
					}
				}
			}
		}
		if assigned == partitions {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-limit:
			return fmt.Errorf("Kafka consumer group %s: %d of %d partitions assigned after 30 s", group, assigned, partitions)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// deleteGroup deletes the consumer group, giving its members a moment to have left it.
func deleteGroup(admin sarama.ClusterAdmin, group string) error {
	var err error
	for i := 0; i < 50; i++ {
		err = admin.DeleteConsumerGroup(group)
		switch {
		case err == nil, errors.Is(err, sarama.ErrGroupIDNotFound):
			return nil
		case errors.Is(err, sarama.ErrNonEmptyGroup):
			time.Sleep(100 * time.Millisecond)
		default:
			return fmt.Errorf("delete consumer group %s: %w", group, err)
		}
	}
	return fmt.Errorf("delete consumer group %s: %w", group, err)
}
