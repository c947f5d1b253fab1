package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/wire"
)

// healthy reports whether bucket h has a leader and a quorum of current
// replicas: it takes writes.
func healthy(h wire.ClusterBucket) bool { return h.Leader != "" && h.Current > h.Replicas/2 }

// StoreHealth returns the replication state of every bucket whose name
// starts with prefix ("umbra_" for all of Umbra's; a key-value bucket or
// the firmware object store), sorted by stream name: replicas, the leading
// server, how many replicas are current, which are offline or lagging,
// keys and bytes. Healthy means a leader and a quorum of current
// replicas: the bucket takes writes.
func StoreHealth(ctx context.Context, js jetstream.JetStream, prefix string) ([]wire.ClusterBucket, error) {
	lister := js.ListStreams(ctx)
	var out []wire.ClusterBucket
	for info := range lister.Info() {
		name := info.Config.Name
		if !strings.HasPrefix(name, "KV_"+prefix) && !strings.HasPrefix(name, "OBJ_"+prefix) {
			continue
		}
		h := wire.ClusterBucket{Stream: name, Replicas: max(info.Config.Replicas, 1), Keys: info.State.Msgs, Bytes: info.State.Bytes}
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
		h.Healthy = healthy(h)
		out = append(out, h)
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("cluster: store health: %w", err)
	}
	slices.SortFunc(out, func(a, b wire.ClusterBucket) int { return strings.Compare(a.Stream, b.Stream) })
	return out, nil
}
