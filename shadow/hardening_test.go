package shadow_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/internal/device"
	"github.com/umbra-iot/umbra/shadow"
)

// Regression tests for issue 10's case 8.

// absentKeys is an update with a clientToken that deletes n keys that do
// not exist, each named prefix plus a number.
func absentKeys(n int, prefix, token string) []byte {
	var b strings.Builder
	b.WriteString(`{"state":{"reported":{`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"%s%05d":null`, prefix, i)
	}
	fmt.Fprintf(&b, `}},"clientToken":%q}`, token)
	return []byte(b.String())
}

// mustRead returns id's stored document (version 0 if there is none).
func mustRead(t *testing.T, eng *shadow.Engine, id device.ID) shadow.Document {
	t.Helper()
	doc, err := eng.Read(t.Context(), id)
	if err != nil && shadow.CodeOf(err) != 404 {
		t.Fatalf("read %s: %v", id, err)
	}
	return doc
}

// TestHardening08RetryCacheBounded: the retry cache costs a few hundred
// bytes per entry whatever the request, keeps one entry per device (so a
// device cannot evict the others' entries by sending more), is bounded in
// entries and bytes, and is counted. An update that deletes many absent
// keys gets a reply the size of the request, not 3.4 times it.
func TestHardening08RetryCacheBounded(t *testing.T) {
	t.Run("reply proportionate to the request", func(t *testing.T) {
		h := mustOpen(t, nil)
		if _, err := h.eng.Update(t.Context(), "dev-1", []byte(`{"state":{"reported":{"keep":1}}}`)); err != nil {
			t.Fatal(err)
		}
		req := absentKeys(3900, "k", "t1") // about 55 KB, as in the campaign
		acc, err := h.eng.Update(t.Context(), "dev-1", req)
		if err != nil {
			t.Fatal(err)
		}
		if len(acc) > len(req)+256 {
			t.Errorf("accepted is %d bytes for a %d-byte request, want at most the request + 256", len(acc), len(req))
		}
		var m struct {
			Metadata struct{ Reported map[string]any }
			Version  int
		}
		if err := json.Unmarshal(acc, &m); err != nil {
			t.Fatal(err)
		}
		if len(m.Metadata.Reported) != 0 || m.Version != 2 {
			t.Errorf("accepted has metadata for %d deleted keys and version %d, want none and 2", len(m.Metadata.Reported), m.Version)
		}
		if rep := mustRead(t, h.eng, "dev-1").State.Reported; len(rep) != 1 || rep["keep"] == nil {
			t.Errorf("reported after deleting absent keys = %v, want only keep", rep)
		}
	})

	t.Run("one entry per device", func(t *testing.T) {
		h := mustOpen(t, func(c *shadow.Config) { c.DeviceRate = -1 })
		for i := range 50 {
			if _, err := h.eng.Update(t.Context(), "dev-1", absentKeys(100, "k", fmt.Sprintf("tok-%d", i))); err != nil {
				t.Fatal(err)
			}
		}
		st := h.eng.Stats().RetryCache
		if st.Entries != 1 || st.Bytes > 512 || st.Evictions != 0 {
			t.Errorf("after 50 tokened updates of one device: %+v, want 1 entry of at most 512 bytes and no evictions", st)
		}
		// An update without a token, and a delete, leave nothing to retry.
		h.eng.Update(t.Context(), "dev-1", []byte(`{"state":{"reported":{"a":1}}}`))
		if st := h.eng.Stats().RetryCache; st.Entries != 0 || st.Bytes != 0 {
			t.Errorf("after an update without a token: %+v, want empty", st)
		}
	})

	t.Run("bounded in bytes and entries", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			entries int
			bytes   int64
		}{
			{"bytes", 1000, 4 << 10},
			{"entries", 10, 1 << 20},
		} {
			t.Run(tc.name, func(t *testing.T) {
				h := mustOpen(t, func(c *shadow.Config) { c.DedupeMaxEntries, c.DedupeMaxBytes = tc.entries, tc.bytes })
				token := strings.Repeat("t", shadow.MaxClientTokenLen)
				const devices = 100
				for i := range devices {
					id := device.ID(fmt.Sprintf("device-%03d", i))
					if _, err := h.eng.Update(t.Context(), id, absentKeys(300, "k", token)); err != nil {
						t.Fatal(err)
					}
				}
				st := h.eng.Stats().RetryCache
				if st.Bytes > tc.bytes || st.Entries > tc.entries || st.Evictions != uint64(devices-st.Entries) || st.Entries == 0 {
					t.Fatalf("after %d devices: %+v, want at most %d bytes and %d entries, the rest evicted", devices, st, tc.bytes, tc.entries)
				}
				// The newest device's retry is still answered from the
				// cache; the oldest one's was evicted and is applied again.
				newest, oldest := device.ID(fmt.Sprintf("device-%03d", devices-1)), device.ID("device-000")
				for _, c := range []struct {
					id   device.ID
					want shadow.Version
				}{{newest, 1}, {oldest, 2}} {
					acc, err := h.eng.Update(t.Context(), c.id, absentKeys(300, "k", token))
					if err != nil {
						t.Fatal(err)
					}
					if v := version(t, acc); v != c.want {
						t.Errorf("retry for %s answered with version %d, want %d", c.id, v, c.want)
					}
				}
				if st := h.eng.Stats().RetryCache; st.Hits != 1 {
					t.Errorf("retry cache hits %d, want 1", st.Hits)
				}
			})
		}
	})

	t.Run("invalid config", func(t *testing.T) {
		for _, mod := range []func(*shadow.Config){
			func(c *shadow.Config) { c.DedupeMaxEntries = -1 },
			func(c *shadow.Config) { c.DedupeMaxBytes = 100 },
		} {
			cfg := shadow.Config{Path: t.TempDir() + "/shadow.db"}
			mod(&cfg)
			if eng, err := shadow.Open(t.Context(), cfg); err == nil {
				eng.Close(t.Context())
				t.Errorf("Open(%+v) succeeded, want an error", cfg)
			}
		}
	})
}
