package metrics_test

import (
	"sync/atomic"
	"testing"

	"github.com/umbra-iot/umbra/internal/metrics"
)

// TestRetryCacheSeries checks the retry cache's series and that they are
// read at each scrape.
func TestRetryCacheSeries(t *testing.T) {
	m := metrics.New()
	var entries atomic.Int64
	m.RegisterRetryCache(func() metrics.RetryCacheStats {
		n := entries.Load()
		return metrics.RetryCacheStats{Entries: n, Bytes: n * 200, Evictions: uint64(n) / 2, Hits: 7}
	})
	for _, n := range []int64{10, 4} {
		entries.Store(n)
		got := scrape(t, m.Handler())
		for series, want := range map[string]float64{
			"umbra_shadow_retry_cache_entries":         float64(n),
			"umbra_shadow_retry_cache_bytes":           float64(n * 200),
			"umbra_shadow_retry_cache_evictions_total": float64(n / 2),
			"umbra_shadow_retry_cache_hits_total":      7,
		} {
			if v, ok := got[series]; !ok || v != want {
				t.Errorf("%s = %g (present %t), want %g", series, v, ok, want)
			}
		}
	}
	defer func() {
		if recover() == nil {
			t.Errorf("second RegisterRetryCache: got no panic, want one")
		}
	}()
	m.RegisterRetryCache(func() metrics.RetryCacheStats { return metrics.RetryCacheStats{} })
}

// TestNamedShadowSeries checks the named-shadow series and that they are
// read at each scrape.
func TestNamedShadowSeries(t *testing.T) {
	m := metrics.New()
	var n atomic.Int64
	m.RegisterNamedShadows(func() metrics.NamedShadowStats {
		return metrics.NamedShadowStats{Shadows: n.Load(), Rejected: uint64(n.Load()) * 3}
	})
	for _, v := range []int64{5, 2} {
		n.Store(v)
		got := scrape(t, m.Handler())
		for series, want := range map[string]float64{
			"umbra_shadow_named_shadows":                float64(v),
			"umbra_shadow_named_limit_rejections_total": float64(v * 3),
		} {
			if g, ok := got[series]; !ok || g != want {
				t.Errorf("%s = %g (present %t), want %g", series, g, ok, want)
			}
		}
	}
}
