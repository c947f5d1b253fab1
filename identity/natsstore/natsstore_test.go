package natsstore_test

import (
	"context"
	"testing"

	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/identity/natsstore"
	"github.com/umbra-iot/umbra/identity/storetest"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// opener returns a storetest.Opener on target: each test directory is one
// pair of buckets, so reopening a directory reopens them.
func opener(t *testing.T, target natstest.Target) storetest.Opener {
	js := natstest.JetStream(t, target.URLs())
	bucket, keyBucket := natstest.BucketNames("identity"), natstest.BucketNames("identity_key")
	return func(tb testing.TB, dir string) (identity.Storage, func()) {
		tb.Helper()
		st, err := natsstore.Open(context.Background(), natsstore.Config{JetStream: js, Replicas: target.Replicas(),
			Bucket: bucket(dir), KeyBucket: keyBucket(dir)})
		if err != nil {
			tb.Fatalf("open: %v", err)
		}
		return st, func() { st.Close(context.Background()) }
	}
}

func TestContract(t *testing.T) { storetest.Run(t, opener(t, natstest.Start(t))) }

func TestContractR3(t *testing.T) { storetest.Run(t, opener(t, natstest.StartCluster(t))) }
