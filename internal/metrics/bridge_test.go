package metrics_test

import (
	"testing"

	"github.com/umbra-iot/umbra/internal/metrics"
)

func TestBridgeMetrics(t *testing.T) {
	m := metrics.New()
	m.RegisterBridge(func() metrics.BridgeStats {
		return metrics.BridgeStats{Connected: true, OutMessages: 7, OutDropped: 1, InMessages: 5, InDropped: 2, Duplicates: 3,
			Subscriptions: 4, SubscriptionsRefused: 6, Sessions: 8, TakeoversSent: 9, TakeoversReleased: 10, Reconnects: 11,
			RetainedStored: 12, RetainedFailed: 13, RetainedApplied: 14, RetainedCorrupt: 15,
			HandoffsSent: 16, HandoffsReceived: 17, HandoffRefused: 18, HandoffDropped: 19, HandoffObjects: 20, TakeoverTimeouts: 21}
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
		`umbra_cluster_retained_writes_total{result="stored"}`:  12,
		`umbra_cluster_retained_writes_total{result="failed"}`:  13,
		`umbra_cluster_retained_applied_total`:                  14,
		`umbra_cluster_retained_corrupt_total`:                  15,
		`umbra_cluster_session_handoffs_total{role="sent"}`:     16,
		`umbra_cluster_session_handoffs_total{role="received"}`: 17,
		`umbra_cluster_session_handoffs_total{role="refused"}`:  18,
		`umbra_cluster_session_handoff_dropped_total`:           19,
		`umbra_cluster_session_handoff_objects_total`:           20,
		`umbra_cluster_takeover_timeouts_total`:                 21,
	} {
		if got[series] != want {
			t.Errorf("%s = %v, want %v", series, got[series], want)
		}
	}
}

func TestPresenceSeries(t *testing.T) {
	m := metrics.New()
	m.RegisterPresence(func() metrics.PresenceStats {
		return metrics.PresenceStats{Written: 7, Stale: 2, Lost: 3, Corrupt: 1, Errors: 4, Pending: 5, Watching: true}
	})
	got := scrape(t, m.Handler())
	for series, want := range map[string]float64{
		`umbra_cluster_presence_writes_total{result="written"}`: 7,
		`umbra_cluster_presence_writes_total{result="stale"}`:   2,
		`umbra_cluster_presence_writes_total{result="error"}`:   4,
		`umbra_cluster_presence_lost_total`:                     3,
		`umbra_cluster_presence_corrupt_total`:                  1,
		`umbra_cluster_presence_pending`:                        5,
		`umbra_cluster_presence_watching`:                       1,
	} {
		if got[series] != want {
			t.Errorf("%s = %v, want %v", series, got[series], want)
		}
	}
}
