package client

import (
	"context"
	"net/http"

	"github.com/umbra-iot/umbra/wire"
)

// ClusterStatus returns the cluster's status (GET /v1/cluster): its live
// nodes with their connection counts, where rollouts are planned and the
// health of the store buckets. A single-node server answers with Mode
// "single-node" and itself as the one node. It needs an integrator or
// operator token.
func (c *Client) ClusterStatus(ctx context.Context) (wire.ClusterStatus, error) {
	var st wire.ClusterStatus
	if err := c.call(ctx, "cluster status", http.MethodGet, "/v1/cluster", nil, http.StatusOK, &st); err != nil {
		return wire.ClusterStatus{}, err
	}
	return st, nil
}
