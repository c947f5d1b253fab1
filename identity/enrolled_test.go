package identity_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
)

// TestOnEnrolled: every enrolment path calls Config.OnEnrolled once, after
// the commit, with what was enrolled; a dry run, a refused enrolment and
// the other changes do not.
func TestOnEnrolled(t *testing.T) {
	var mu sync.Mutex // guards calls
	var calls []string
	var s *identity.Store
	s = mustOpen(t, "", identity.Config{OnEnrolled: func(ctx context.Context, enrolled []identity.Enrollment) {
		var ids []string
		for _, e := range enrolled {
			// Committed: the device is there, and the store may be called.
			if _, err := s.GetDevice(ctx, e.ID); err != nil {
				t.Errorf("OnEnrolled(%s): GetDevice: %v", e.ID, err)
			}
			ids = append(ids, fmt.Sprintf("%s%v%s", e.ID, e.Labels, e.CertSHA256))
		}
		mu.Lock()
		calls = append(calls, strings.Join(ids, " "))
		mu.Unlock()
	}})
	fp := strings.Repeat("ab", 32)
	steps := []struct {
		name    string
		call    func() error
		refused bool   // the call fails
		want    string // the call's devices, "" for none
	}{
		{"add", func() error { _, err := s.AddDevice(t.Context(), "d1", map[string]string{"hw": "m2"}); return err }, false, "d1map[hw:m2]"},
		{"certificate binding", func() error {
			_, err := s.EnrollDevice(t.Context(), identity.Enrollment{ID: "d2", CertSHA256: fp})
			return err
		}, false, "d2map[]" + fp},
		{"import", func() error {
			_, err := s.EnrollDevices(t.Context(), []identity.Enrollment{{ID: "d3"}, {ID: "d4", Labels: map[string]string{"site": "x"}}}, false)
			return err
		}, false, "d3map[] d4map[site:x]"},
		{"dry run", func() error {
			_, err := s.EnrollDevices(t.Context(), []identity.Enrollment{{ID: "d5"}}, true)
			return err
		}, false, ""},
		{"refused: taken", func() error { _, err := s.AddDevice(t.Context(), "d1", nil); return err }, true, ""},
		{"refused import", func() error {
			_, err := s.EnrollDevices(t.Context(), []identity.Enrollment{{ID: "d6"}, {ID: "bad/id"}}, false)
			return err
		}, true, ""},
		{"rotate", func() error { _, err := s.RotateDevice(t.Context(), "d1"); return err }, false, ""},
		{"remove", func() error { return s.RemoveDevice(t.Context(), "d3") }, false, ""},
	}
	for _, st := range steps {
		mu.Lock()
		calls = nil
		mu.Unlock()
		if err := st.call(); (err != nil) != st.refused {
			t.Fatalf("%s: error %v, want refused=%t", st.name, err, st.refused)
		}
		mu.Lock()
		got := slices.Clone(calls)
		mu.Unlock()
		var want []string
		if st.want != "" {
			want = []string{st.want}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: OnEnrolled calls %q, want %q", st.name, got, want)
		}
	}
	if _, err := s.GetDevice(t.Context(), device.ID("d6")); err == nil {
		t.Error("d6 of a refused import was enrolled")
	}
}
