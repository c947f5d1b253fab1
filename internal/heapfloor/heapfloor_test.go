package heapfloor_test

import (
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/heapfloor"
	"github.com/umbra-iot/umbra/internal/waitfor"
)

func TestPercent(t *testing.T) {
	for _, tc := range []struct {
		name        string
		base, floor uint64
		want        int
	}{
		{"small heap waits for the floor", 16 << 20, 64 << 20, 400},
		{"rounded up", 3, 10, 334},
		{"heap as large as the floor: Go's default", 64 << 20, 64 << 20, 100},
		{"large heap: Go's default", 1 << 30, 64 << 20, 100},
		{"empty heap: the cap", 0, 64 << 20, 100_000},
		{"tiny heap: the cap", 1, 64 << 20, 100_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := heapfloor.Percent(tc.base, tc.floor); got != tc.want {
				t.Errorf("Percent(%d, %d) = %d, want %d", tc.base, tc.floor, got, tc.want)
			}
		})
	}
}

// gogc reads the GOGC the runtime uses now.
func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// TestStartFollowsCollections starts a floor far above this test's heap:
// after a collection GOGC is raised above Go's default, and Stop restores
// it. Not parallel: GOGC is the process's.
func TestStartFollowsCollections(t *testing.T) {
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	before := gogc()
	f := heapfloor.Start(1 << 30)
	if f == nil {
		t.Fatal("Start(1 GiB) = nil, want a running floor")
	}
	if second := heapfloor.Start(1 << 30); second != nil {
		second.Stop()
		t.Fatal("a second Start while the first runs = a running floor, want nil (GOGC is the process's)")
	}
	runtime.GC()
	waitfor.Poll(t, 10*time.Second, "GOGC raised after a collection", func() bool {
		runtime.GC() // the cleanup that tunes runs after the collection that freed its object
		return gogc() > 1000
	})
	f.Stop()
	if got := gogc(); got != before {
		t.Errorf("GOGC after Stop = %d, want %d (before Start)", got, before)
	}
	runtime.GC()
	runtime.GC()
	if got := gogc(); got != before {
		t.Errorf("GOGC after Stop and two collections = %d, want %d: the floor still tunes", got, before)
	}
	f.Stop() // idempotent
	again := heapfloor.Start(1 << 30)
	if again == nil {
		t.Fatal("Start after Stop = nil, want a running floor")
	}
	again.Stop()
}

// TestStartLeavesOperatorSettings: with GOGC or GOMEMLIMIT in the
// environment, or no floor, Start changes nothing.
func TestStartLeavesOperatorSettings(t *testing.T) {
	for _, tc := range []struct {
		name, key, value string
		floor            int64
	}{
		{"GOGC set", "GOGC", "200", 64 << 20},
		{"GOMEMLIMIT set", "GOMEMLIMIT", "1GiB", 64 << 20},
		{"floor 0", "GOGC", "", 0},
		{"negative floor", "GOGC", "", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GOGC", "")
			t.Setenv("GOMEMLIMIT", "")
			t.Setenv(tc.key, tc.value)
			before := gogc()
			f := heapfloor.Start(tc.floor)
			if f != nil {
				f.Stop()
				t.Fatalf("Start(%d) with %s=%q = a running floor, want nil", tc.floor, tc.key, tc.value)
			}
			runtime.GC()
			if got := gogc(); got != before {
				t.Errorf("GOGC = %d, want %d unchanged", got, before)
			}
			var nilFloor *heapfloor.Floor
			nilFloor.Stop() // allowed
		})
	}
}
