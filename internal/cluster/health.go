package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// BucketHealth is the replication state of one of Umbra's buckets (a
// key-value bucket or the firmware object store), for `umbra cluster
// status`.
type BucketHealth struct {
	// Stream is the bucket's JetStream stream (KV_<bucket>, OBJ_<bucket>).
	Stream string `json:"stream"`
	// Replicas is the configured replica count.
	Replicas int `json:"replicas"`
	// Leader is the server that leads the stream; "" while it has none
	// (the bucket then refuses writes).
	Leader string `json:"leader"`
	// Current counts the replicas (the leader included) that are up to
	// date; Offline and Lagging name the others.
	Current int      `json:"current"`
	Offline []string `json:"offline,omitempty"`
	Lagging []string `json:"lagging,omitempty"`
	// Keys and Bytes are the stream's message count and size.
	Keys  uint64 `json:"keys"`
	Bytes uint64 `json:"bytes"`
}

// Healthy reports whether the bucket has a leader and a quorum of current
// replicas: it takes writes.
func (h BucketHealth) Healthy() bool { return h.Leader != "" && h.Current > h.Replicas/2 }

// StoreHealth returns the health of every bucket whose name starts with
// prefix ("umbra_" for all of Umbra's), sorted by stream name.
func StoreHealth(ctx context.Context, js jetstream.JetStream, prefix string) ([]BucketHealth, error) {
	lister := js.ListStreams(ctx)
	var out []BucketHealth
	for info := range lister.Info() {
		name := info.Config.Name
		if !strings.HasPrefix(name, "KV_"+prefix) && !strings.HasPrefix(name, "OBJ_"+prefix) {
			continue
		}
		h := BucketHealth{Stream: name, Replicas: max(info.Config.Replicas, 1), Keys: info.State.Msgs, Bytes: info.State.Bytes}
		if c := info.Cluster; c == nil {
			h.Leader, h.Current = "local", 1 // a single server
		} else {
			h.Leader = c.Leader
			if c.Leader != "" {
				h.Current = 1
			}
			for _, p := range c.Replicas {
				switch {
				case p.Offline:
					h.Offline = append(h.Offline, p.Name)
				case p.Current:
					h.Current++
				default:
					h.Lagging = append(h.Lagging, p.Name)
				}
			}
		}
		out = append(out, h)
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("cluster: store health: %w", err)
	}
	slices.SortFunc(out, func(a, b BucketHealth) int { return strings.Compare(a.Stream, b.Stream) })
	return out, nil
}
