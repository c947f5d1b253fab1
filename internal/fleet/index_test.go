package fleet_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/fleet"
)

func ids(p fleet.Page) []device.ID {
	var out []device.ID
	for _, d := range p.Devices {
		out = append(out, d.ID)
	}
	return out
}

func TestAcceptedMergesReportedFirmware(t *testing.T) {
	x := fleet.New()
	x.Enrolled("d1", map[string]string{"hw": "m2"}, time.Unix(1, 0), false)
	steps := []struct {
		name    string
		payload string
		want    fleet.Firmware
	}{
		{"full report", `{"state":{"reported":{"firmware":{"version":"1.0.0","state":"updated"}}},"version":1,"timestamp":10}`, fleet.Firmware{Version: "1.0.0", State: "updated"}},
		{"partial state", `{"state":{"reported":{"firmware":{"state":"installing"}}},"version":2,"timestamp":11}`, fleet.Firmware{Version: "1.0.0", State: "installing"}},
		{"desired only", `{"state":{"desired":{"firmware":{"version":"2"}}},"version":3,"timestamp":12}`, fleet.Firmware{Version: "1.0.0", State: "installing"}},
		{"older message ignored", `{"state":{"reported":{"firmware":{"state":"failed"}}},"version":2,"timestamp":13}`, fleet.Firmware{Version: "1.0.0", State: "installing"}},
		{"failure", `{"state":{"reported":{"firmware":{"state":"failed","error":"bad sig"}}},"version":4,"timestamp":14}`, fleet.Firmware{Version: "1.0.0", State: "failed", Error: "bad sig"}},
		{"key removed", `{"state":{"reported":{"firmware":{"error":null,"state":"updated"}}},"version":5,"timestamp":15}`, fleet.Firmware{Version: "1.0.0", State: "updated"}},
		{"section removed", `{"state":{"reported":{"firmware":null}},"version":6,"timestamp":16}`, fleet.Firmware{}},
		{"report again", `{"state":{"reported":{"firmware":{"version":"1.1"}}},"version":7,"timestamp":17}`, fleet.Firmware{Version: "1.1"}},
		{"state cleared", `{"state":null,"version":8,"timestamp":18}`, fleet.Firmware{}},
	}
	for _, s := range steps {
		if !x.Accepted("d1", []byte(s.payload), nil) {
			t.Fatalf("%s: Accepted refused the payload", s.name)
		}
		d, _ := x.Get("d1")
		if d.Firmware != s.want {
			t.Errorf("%s: firmware %+v, want %+v", s.name, d.Firmware, s.want)
		}
	}
	d, _ := x.Get("d1")
	if d.Version != 8 || !d.LastReport.Equal(time.Unix(17, 0)) {
		t.Errorf("version %d last report %v; want 8 and 17s", d.Version, d.LastReport)
	}
	for _, bad := range []string{``, `{`, `[]`, `{"version":0}`} {
		if x.Accepted("d1", []byte(bad), nil) {
			t.Errorf("Accepted(%q) = true, want false", bad)
		}
	}
	if d2, _ := x.Get("d1"); d2.Version != 8 || d2.Firmware != (fleet.Firmware{}) {
		t.Errorf("bad payloads changed the device: %+v", d2)
	}
}

func TestStateOmittedReadsTheDocument(t *testing.T) {
	x := fleet.New()
	read := func(id device.ID) (uint64, time.Time, fleet.Firmware, bool) {
		return 4, time.Unix(5, 0), fleet.Firmware{Version: "9"}, true
	}
	x.Accepted("big", []byte(`{"version":4,"timestamp":5,"stateOmitted":true}`), read)
	if d, _ := x.Get("big"); d.Firmware.Version != "9" || d.Version != 4 {
		t.Errorf("device %+v, want version 4 firmware 9", d)
	}
}

func TestLoadLosesToNewerEvents(t *testing.T) {
	x := fleet.New()
	x.Accepted("d", []byte(`{"state":{"reported":{"firmware":{"state":"installing"}}},"version":5,"timestamp":5}`), nil)
	x.ShadowDoc("d", 4, time.Unix(4, 0), time.Unix(4, 0), fleet.Firmware{Version: "1.0", State: "updated"})
	d, _ := x.Get("d")
	if d.Version != 5 || d.Firmware.State != "installing" {
		t.Errorf("device %+v: the load overwrote a newer event", d)
	}
}

func TestRemovedAndDeleted(t *testing.T) {
	x := fleet.New()
	x.Enrolled("a", nil, time.Now(), false)
	x.Enrolled("b", nil, time.Now(), false)
	x.Accepted("b", []byte(`{"state":{"reported":{}},"version":1,"timestamp":1}`), nil)
	x.Removed("a")
	x.Removed("b") // keeps its shadow
	if got := ids(x.Query(fleet.Query{})); !slices.Equal(got, []device.ID{"b"}) {
		t.Fatalf("after removals: %v, want [b]", got)
	}
	x.ShadowDeleted("b")
	if n := x.Len(); n != 0 {
		t.Errorf("Len = %d after the shadow went too, want 0", n)
	}
	x.SetPresence("ghost", identity.Presence{Connected: true})
	if n := x.Len(); n != 0 {
		t.Errorf("presence alone made a device: Len %d", n)
	}
}

func TestQueryFiltersPagesAndTotals(t *testing.T) {
	x := fleet.New()
	for i := range 30 {
		id := device.ID(fmt.Sprintf("dev-%02d", i))
		hw := "m1"
		if i%2 == 0 {
			hw = "m2"
		}
		x.Enrolled(id, map[string]string{"hw": hw}, time.Unix(1, 0), false)
		x.SetPresence(id, identity.Presence{Connected: i%3 == 0})
		state := "updated"
		if i%10 == 0 {
			state = "failed"
		}
		x.Accepted(id, fmt.Appendf(nil, `{"state":{"reported":{"firmware":{"version":"1.%d","state":%q}}},"version":1,"timestamp":1}`, i%2, state), nil)
	}
	x.Enrolled("zzz", nil, time.Unix(1, 0), false) // no firmware
	on, off := true, false
	cases := []struct {
		name    string
		q       fleet.Query
		matched int
		first   device.ID
	}{
		{"all", fleet.Query{}, 31, "dev-00"},
		{"selector", fleet.Query{Selector: map[string]string{"hw": "m2"}}, 15, "dev-00"},
		{"selector no key", fleet.Query{Selector: map[string]string{"region": "eu"}}, 0, ""},
		{"online", fleet.Query{Online: &on}, 10, "dev-00"},
		{"offline", fleet.Query{Online: &off}, 21, "dev-01"},
		{"version", fleet.Query{Firmware: "1.1"}, 15, "dev-01"},
		{"no version", fleet.Query{Firmware: fleet.NoVersion}, 1, "zzz"},
		{"failed", fleet.Query{State: "failed"}, 3, "dev-00"},
		{"idle", fleet.Query{State: "idle"}, 1, "zzz"},
		{"search", fleet.Query{Search: "-2"}, 10, "dev-20"},
		{"after cursor", fleet.Query{After: "dev-28"}, 31, "dev-29"},
		{"combined", fleet.Query{Selector: map[string]string{"hw": "m2"}, Online: &on, State: "failed"}, 1, "dev-00"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := x.Query(c.q)
			if p.Matched != c.matched {
				t.Errorf("matched %d, want %d", p.Matched, c.matched)
			}
			var first device.ID
			if len(p.Devices) > 0 {
				first = p.Devices[0].ID
			}
			if first != c.first {
				t.Errorf("first %q, want %q", first, c.first)
			}
			tt := p.Totals
			if tt.Devices != 31 || tt.Online != 10 || tt.Offline != 21 || tt.Failing != 3 || tt.Firmware["1.0"] != 15 || tt.Firmware["1.1"] != 15 || tt.Firmware[fleet.NoVersion] != 1 {
				t.Errorf("totals %+v", tt)
			}
		})
	}
	// Paging walks every device once, in order.
	var all []device.ID
	q := fleet.Query{Limit: 7}
	for {
		p := x.Query(q)
		all = append(all, ids(p)...)
		if p.Next == "" {
			break
		}
		q.After = p.Next
	}
	if len(all) != 31 || !slices.IsSorted(all) || all[30] != "zzz" {
		t.Errorf("paged %d devices %v", len(all), all)
	}
}

func TestTotalsFoldRareVersions(t *testing.T) {
	x := fleet.New()
	for i := range fleet.MaxVersionTotals + 5 {
		id := device.ID(fmt.Sprintf("d%03d", i))
		x.Accepted(id, fmt.Appendf(nil, `{"state":{"reported":{"firmware":{"version":"v%d"}}},"version":1,"timestamp":1}`, i), nil)
	}
	tt := x.Query(fleet.Query{}).Totals
	if len(tt.Firmware) != fleet.MaxVersionTotals+1 || tt.Firmware[fleet.OtherVersions] != 5 {
		t.Errorf("%d versions, other %d; want %d and 5", len(tt.Firmware), tt.Firmware[fleet.OtherVersions], fleet.MaxVersionTotals+1)
	}
}

// BenchmarkQuery is one page of the fleet page at 100,000 devices: the
// first page unfiltered, and a selective filter.
func BenchmarkQuery(b *testing.B) {
	n := 100_000
	if testing.Short() {
		n = 10_000
	}
	x := fleet.New()
	for i := range n {
		id := device.ID(fmt.Sprintf("dev-%06d", i))
		x.Enrolled(id, map[string]string{"hw": fmt.Sprintf("m%d", i%4), "region": "eu"}, time.Unix(1, 0), false)
		x.SetPresence(id, identity.Presence{Connected: i%5 != 0})
		x.Accepted(id, fmt.Appendf(nil, `{"state":{"reported":{"firmware":{"version":"1.%d","state":"updated"}}},"version":1,"timestamp":1}`, i%7), nil)
	}
	on := false
	for _, c := range []struct {
		name string
		q    fleet.Query
	}{
		{"first-page", fleet.Query{Limit: 100}},
		{"selector-offline", fleet.Query{Limit: 100, Selector: map[string]string{"hw": "m1"}, Online: &on}},
		{"search", fleet.Query{Limit: 100, Search: "99"}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if p := x.Query(c.q); len(p.Devices) == 0 {
					b.Fatal("empty page")
				}
			}
		})
	}
}

func TestPresenceHistory(t *testing.T) {
	x := fleet.New()
	x.Enrolled("d", nil, time.Unix(1, 0), false)
	for i := range fleet.MaxHistory + 2 {
		at := time.Unix(int64(100+i), 0)
		if i%2 == 0 {
			x.SetPresence("d", identity.Presence{Connected: true, ConnectedAt: at})
		} else {
			x.SetPresence("d", identity.Presence{DisconnectedAt: at, DisconnectReason: "connection_lost"})
		}
	}
	x.SetPresence("d", identity.Presence{Connected: true, ConnectedAt: time.Unix(106, 0)}) // the same again
	d, _ := x.Get("d")
	if len(d.History) != fleet.MaxHistory || !d.History[0].Connected || !d.History[0].At.Equal(time.Unix(106, 0)) ||
		d.History[1].Reason != "connection_lost" || !d.History[fleet.MaxHistory-1].At.Equal(time.Unix(102, 0)) {
		t.Errorf("history %+v", d.History)
	}
}
