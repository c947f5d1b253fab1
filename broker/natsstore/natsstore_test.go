package natsstore_test

import (
	"context"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/natsstore"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// opener returns a brokertest.StoreOpener on target: each test directory
// is one bucket, so reopening a directory reopens its bucket.
func opener(t *testing.T, target natstest.Target, maxBatch int) brokertest.StoreOpener {
	js := natstest.JetStream(t, target.URLs())
	bucket := natstest.BucketNames("broker")
	return func(tb testing.TB, dir string) (broker.Store, func()) {
		tb.Helper()
		s, err := natsstore.Open(context.Background(), natsstore.Config{JetStream: js, Bucket: bucket(dir), Replicas: target.Replicas(), MaxBatch: maxBatch})
		if err != nil {
			tb.Fatalf("open: %v", err)
		}
		return s, func() {}
	}
}

func TestContract(t *testing.T) { brokertest.StoreContract(t, opener(t, natstest.Start(t), 0)) }

func TestContractR3(t *testing.T) {
	brokertest.StoreContract(t, opener(t, natstest.StartCluster(t), 0))
}

// TestContractSmallBatches runs the contract with atomic batches of two
// writes, so every multi-op call is split: the order of ops must hold
// across batches.
func TestContractSmallBatches(t *testing.T) {
	brokertest.StoreContract(t, opener(t, natstest.Start(t), 2))
}

// TestLongNames: topics and client IDs longer than a key token are hashed
// in the key and kept whole in the value.
func TestLongNames(t *testing.T) {
	open := opener(t, natstest.Start(t), 0)
	s, _ := open(t, t.TempDir())
	topic := strings.Repeat("a/", 5000) + "t"
	cid := strings.Repeat("c", 3000)
	ops := []broker.StoreOp{
		{Kind: broker.OpPutRetained, Message: broker.Message{Topic: topic, Payload: []byte("x"), Retain: true}},
		{Kind: broker.OpPutSession, ClientID: cid, Session: broker.Session{ClientID: cid, ProtocolVersion: 5}},
		{Kind: broker.OpPutSubscription, ClientID: cid, Subscription: broker.Subscription{Filter: topic, QoS: 1}},
	}
	if err := s.Apply(t.Context(), ops); err != nil {
		t.Fatal(err)
	}
	st, err := s.Load(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Retained) != 1 || st.Retained[0].Topic != topic || len(st.Sessions) != 1 || st.Sessions[0].ClientID != cid ||
		len(st.Sessions[0].Subscriptions) != 1 || st.Sessions[0].Subscriptions[0].Filter != topic {
		t.Fatalf("Load = %d retained, %d sessions", len(st.Retained), len(st.Sessions))
	}
}
