package metrics_test

import (
	"testing"

	"github.com/umbra-iot/umbra/internal/metrics"
)

func TestBridgeMetrics(t *testing.T) {
	m := metrics.New()
	m.RegisterBridge(func() metrics.BridgeStats {
		return metrics.BridgeStats{Connected: true, OutMessages: 7, OutDropped: 1, InMessages: 5, InDropped: 2, Duplicates: 3,
			Subscriptions: 4, SubscriptionsRefused: 6, Sessions: 8, TakeoversSent: 9, TakeoversReleased: 10, Reconnects: 11}
	})
	got := scrape(t, m.Handler())
	for series, want := range map[string]float64{
		`umbra_cluster_nats_connected`:                          1,
		`umbra_cluster_messages_total{direction="out"}`:         7,
		`umbra_cluster_messages_total{direction="in"}`:          5,
		`umbra_cluster_messages_dropped_total{direction="out"}`: 1,
		`umbra_cluster_messages_dropped_total{direction="in"}`:  2,
		`umbra_cluster_duplicates_total`:                        3,
		`umbra_cluster_subscriptions`:                           4,
		`umbra_cluster_subscriptions_refused_total`:             6,
		`umbra_cluster_sessions`:                                8,
		`umbra_cluster_takeovers_total{role="sent"}`:            9,
		`umbra_cluster_takeovers_total{role="released"}`:        10,
		`umbra_cluster_nats_reconnects_total`:                   11,
	} {
		if got[series] != want {
			t.Errorf("%s = %v, want %v", series, got[series], want)
		}
	}
}
