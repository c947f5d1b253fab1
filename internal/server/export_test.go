package server

import (
	"context"
	"time"
)

// Crash drops the node's NATS connection (its stores, the planner lease
// and the planner RPC) at once, as a kill -9 would for the rest of the
// cluster: no lease renewal, no release, no answer to a forwarded call.
// Then it closes the node, whose errors (every NATS call fails) it drops.
func (s *Server) Crash() {
	if s.stores.nc != nil {
		s.stores.nc.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = s.Close(ctx)
}

// SetPlannerOpenFault makes every open of the planner in cluster mode call
// fault first and fail with its error, if any.
func SetPlannerOpenFault(cfg *Config, fault func() error) { cfg.plannerOpenFault = fault }
