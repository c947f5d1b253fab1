package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/metrics"

	"github.com/umbra-iot/umbra/internal/cluster"
	"github.com/umbra-iot/umbra/wire"
)

// register registers the node in cluster mode's node registry
// (internal/cluster.Registry), with its address and its MQTT connection
// count, renewed every heartbeat. It fails when a live node has the same
// ID (cluster.ErrNodeIDInUse). Nothing in single-node mode.
func (s *Server) register(ctx context.Context) (err error) {
	if s.stores.js == nil {
		return nil
	}
	replicas := s.cfg.NATSReplicas
	if replicas == 0 {
		replicas = DefaultNATSReplicas
	}
	s.registry, err = cluster.OpenRegistry(ctx, cluster.RegistryConfig{
		JetStream:   s.stores.js,
		Node:        cluster.Node{ID: s.cfg.NodeID, Addr: s.nodeAddr(), Version: s.cfg.Version},
		Connections: func() int { return int(s.brk.Stats().ClientsConnected) },
		Heartbeat:   s.cfg.ClusterHeartbeat,
		Replicas:    replicas,
		Logger:      s.log,
	})
	return err
}

// nodeAddr is where operators and devices reach this node: its HTTP base
// URL (Config.PublicURL or the bound HTTP address), else its MQTT address.
func (s *Server) nodeAddr() string {
	if u := s.baseURL(); u != "" {
		return u
	}
	if a := s.brk.Addr(); a != nil {
		return "mqtt://" + a.String()
	}
	return ""
}

// clusterHandler serves GET /v1/cluster: in cluster mode the registry's
// nodes, the planner lease's holder and the buckets' health
// (internal/cluster.StatusSource), in single-node mode this server as the
// one node.
func (s *Server) clusterHandler() http.Handler {
	if s.registry != nil {
		return cluster.StatusSource{JetStream: s.stores.js, Registry: s.registry, Lease: s.leader.lease, Node: s.cfg.NodeID}.Handler(s.log)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		st := wire.ClusterStatus{Mode: "single-node", Planners: "single-node", Healthy: true, Buckets: []wire.ClusterBucket{},
			Nodes: []wire.ClusterNode{{Addr: s.nodeAddr(), Version: s.cfg.Version,
				Connections: int(s.brk.Stats().ClientsConnected), Started: s.started}}}
		w.Header().Set("Content-Type", "application/json")
		b, _ := wire.Marshal(st)
		_, _ = w.Write(append(b, '\n'))
	})
}

// openPresence opens cluster mode's device presence (cluster.Presence,
// docs/cluster.md "Presence"): the broker's connects and disconnects are
// written to the shared presence bucket instead of the node's identity
// store, and every node reports the bucket's presence, in the bucket's
// order, to its identity store (GET /v1/devices), to its own MQTT clients
// (the retained state/<id>/presence, published on this node only: every
// node publishes it for itself) and to the fleet index. Nothing in
// single-node mode.
func (s *Server) openPresence(ctx context.Context) (err error) {
	if s.registry == nil {
		return nil
	}
	replicas := natsReplicas(s.cfg)
	s.presence, err = cluster.OpenPresence(ctx, cluster.PresenceConfig{
		JetStream:     s.stores.js,
		Replicas:      replicas,
		Node:          s.cfg.NodeID,
		Nodes:         s.registry,
		SweepInterval: s.cfg.ClusterHeartbeat,
		Logger:        s.log,
		OnChange: func(id device.ID, p identity.Presence) {
			s.ids.ApplyPresence(id, p)
			if p == (identity.Presence{}) {
				return // the device was removed (forgetPresence): nothing to publish, as in single-node mode
			}
			topic, payload := "state/"+string(id)+"/presence", s.ids.PresenceJSON(id)
			s.fleet.tap(topic, payload) // before the broker delivers it, as tapBroker does
			if err := s.brk.PublishLocal(topic, payload, true, 1); err != nil && !errors.Is(err, broker.ErrClosed) {
				s.log.Warn("publish presence", "device", id, "err", err)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("server: presence: %w", err)
	}
	s.metrics.RegisterPresence(func() metrics.PresenceStats { return metrics.PresenceStats(s.presence.Stats()) })
	return nil
}

// natsReplicas is the replica count of the buckets a node creates.
func natsReplicas(cfg Config) int {
	if cfg.NATSReplicas == 0 {
		return DefaultNATSReplicas
	}
	return cfg.NATSReplicas
}

// forgetPresence deletes the cluster presence of a removed device (every
// node that hears of the removal does; the deletes are idempotent).
func (s *Server) forgetPresence(ctx context.Context, r identity.Revocation) {
	if s.presence == nil || r.Reason != identity.RevokeRemoved || r.Principal.Device == "" {
		return
	}
	if err := s.presence.Forget(ctx, r.Principal.Device); err != nil {
		s.log.Warn("presence of a removed device kept", "device", r.Principal.Device, "err", err)
	}
}
