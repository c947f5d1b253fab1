package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/wire"
)

// StatusSource is what Status reads: the JetStream client (for the
// buckets' health), the node registry and the planner lease.
type StatusSource struct {
	JetStream jetstream.JetStream
	Registry  *Registry
	// Lease is the planner lease; nil when the nodes do not plan under a
	// lease (each plans its own rollouts): the status then says Planners
	// "per-node" and its health does not depend on a lease holder.
	Lease *Lease
	// Node is the answering node's ID (ClusterStatus.Node).
	Node string
	// Prefix selects the buckets: those whose stream names start with
	// KV_<Prefix> or OBJ_<Prefix>. Default "umbra_".
	Prefix string
}

// Status returns the cluster's status as GET /v1/cluster answers it.
func (src StatusSource) Status(ctx context.Context) (wire.ClusterStatus, error) {
	prefix := src.Prefix
	if prefix == "" {
		prefix = "umbra_"
	}
	st := wire.ClusterStatus{Mode: "cluster", Node: src.Node, Planners: "lease", Nodes: []wire.ClusterNode{},
		Buckets: []wire.ClusterBucket{}, Healthy: true}
	nodes, err := src.Registry.Nodes(ctx)
	if err != nil {
		return st, err
	}
	versions := map[string][]string{} // release → node IDs
	for _, n := range nodes {
		st.Nodes = append(st.Nodes, wire.ClusterNode{ID: n.ID, Addr: n.Addr, Version: n.Version, Connections: n.Connections,
			Started: n.Started, Heartbeat: n.Heartbeat})
		versions[n.Version] = append(versions[n.Version], n.ID)
	}
	if len(versions) > 1 {
		st.Warnings = append(st.Warnings, versionsWarning(versions))
	}
	if src.Lease == nil {
		st.Planners = "per-node"
	} else {
		info, held, err := src.Lease.Info(ctx)
		if err != nil {
			return st, err
		}
		if held {
			st.Planner = info.Holder
		} else {
			st.Healthy = false
		}
	}
	buckets, err := StoreHealth(ctx, src.JetStream, prefix)
	if err != nil {
		return st, err
	}
	for _, b := range buckets {
		st.Buckets = append(st.Buckets, b)
		st.Healthy = st.Healthy && b.Healthy
	}
	return st, nil
}

// versionsWarning describes nodes of several releases, e.g. "nodes run
// different Umbra releases: 0.4.0 (n1, n2), 0.5.0 (n3); finish the
// upgrade (nodes of one release share the buckets' schema and the planner
// protocol)".
func versionsWarning(versions map[string][]string) string {
	rels := slices.Sorted(maps.Keys(versions))
	parts := make([]string, len(rels))
	for i, v := range rels {
		parts[i] = fmt.Sprintf("%s (%s)", cmp.Or(v, "unknown"), strings.Join(versions[v], ", "))
	}
	return "nodes run different Umbra releases: " + strings.Join(parts, ", ") +
		"; finish the upgrade (nodes of one release share the buckets' schema and the planner protocol)"
}

// statusTimeout bounds the requests of one status answer.
const statusTimeout = 5 * time.Second

// Handler serves GET /v1/cluster: the Status as JSON, or 503 with the
// API's JSON error body when NATS does not answer. The wiring mounts it
// behind the API's authentication.
func (src StatusSource) Handler(log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), statusTimeout)
		defer cancel()
		st, err := src.Status(ctx)
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			log.Warn("cluster status", "err", err)
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(wire.ErrorBody{Code: http.StatusServiceUnavailable,
				Message: "Service unavailable: the cluster's NATS servers did not answer"})
			return
		}
		_ = json.NewEncoder(w).Encode(st)
	})
}
