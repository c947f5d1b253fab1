package natsstore_test

import (
	"context"
	"testing"

	"github.com/umbra-iot/umbra/firmware/natsstore"
	"github.com/umbra-iot/umbra/firmware/storetest"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// opener returns a storetest.Opener on target: each test directory is one
// bucket, so reopening a directory reopens its bucket.
func opener(t *testing.T, target natstest.Target) storetest.Opener {
	js := natstest.JetStream(t, target.URLs())
	bucket := natstest.BucketNames("firmware")
	return func(tb testing.TB, dir string) storetest.Catalog {
		tb.Helper()
		c, err := natsstore.OpenCatalog(context.Background(), natsstore.CatalogConfig{JetStream: js, Bucket: bucket(dir), Replicas: target.Replicas()})
		if err != nil {
			tb.Fatalf("open: %v", err)
		}
		return c
	}
}

func TestContract(t *testing.T) { storetest.Contract(t, opener(t, natstest.Start(t))) }

func TestContractR3(t *testing.T) { storetest.Contract(t, opener(t, natstest.StartCluster(t))) }
