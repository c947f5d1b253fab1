package rollout_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/shadow"
	shadowstore "github.com/umbra-iot/umbra/shadow/boltstore"
)

// fleet is an Inventory of enrolled devices (settable) and shadows.
type fleet struct {
	mu       sync.Mutex // guards enrolled
	enrolled []rollout.EnrolledDevice
	shadowed []device.ID
}

func (f *fleet) EnrolledDevices(context.Context) ([]rollout.EnrolledDevice, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.enrolled), nil
}

func (f *fleet) ShadowDevices(context.Context) ([]device.ID, error) { return f.shadowed, nil }

// enroll adds devices to the fleet and tells p, as identity's OnEnrolled
// does.
func (f *fleet) enroll(t *testing.T, p *rollout.Planner, devs ...rollout.EnrolledDevice) {
	t.Helper()
	f.mu.Lock()
	f.enrolled = append(f.enrolled, devs...)
	f.mu.Unlock()
	p.DevicesEnrolled(t.Context(), devs)
}

func enrolled(id device.ID, labels ...string) rollout.EnrolledDevice {
	d := rollout.EnrolledDevice{ID: id}
	for _, kv := range labels {
		k, v, _ := strings.Cut(kv, "=")
		if d.Labels == nil {
			d.Labels = map[string]string{}
		}
		d.Labels[k] = v
	}
	return d
}

// hwFirmware is a fakeFirmware whose images are built for the models in hw
// (by version; none when absent).
type hwFirmware struct {
	*fakeFirmware
	hw map[firmware.Version]string
}

func (f hwFirmware) Get(ctx context.Context, v firmware.Version) (firmware.Image, error) {
	img, err := f.fakeFirmware.Get(ctx, v)
	img.HW = f.hw[v]
	return img, err
}

// targetsOf lists rollout id's targets in rollout order, comma separated.
func targetsOf(t *testing.T, p *rollout.Planner, id string) string {
	t.Helper()
	ds, err := p.Devices(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range ds {
		out = append(out, string(d.Device))
	}
	return strings.Join(out, ",")
}

// TestCreateChoosesTargets: a selector takes the enrolled devices carrying
// every pair, all every enrolled device and every shadow, sorted and
// de-duplicated (moved from internal/httpapi's TestIdentityTargets, with
// the rule).
func TestCreateChoosesTargets(t *testing.T) {
	f := &fleet{
		enrolled: []rollout.EnrolledDevice{enrolled("x2", "hw=m2", "region=eu"), enrolled("x1", "hw=m2", "region=us"), enrolled("x3", "hw=m1", "region=eu")},
		shadowed: []device.ID{"s1", "x1"},
	}
	fw := hwFirmware{newFakeFirmware("2.0.0"), nil} // an image for any hardware
	p := mustOpen(t, "", newFakeShadows(silent), fw.fakeFirmware, func(c *rollout.Config) { c.Inventory, c.Firmware = f, fw })
	tests := []struct {
		name string
		spec rollout.Spec
		want string // targets, or the error's text
	}{
		{"one label", rollout.Spec{Selector: map[string]string{"hw": "m2"}}, "x1,x2"},
		{"every pair must match", rollout.Spec{Selector: map[string]string{"hw": "m2", "region": "eu"}}, "x2"},
		{"all is enrolled and shadows, deduplicated", rollout.Spec{All: true}, "s1,x1,x2,x3"},
		{"an explicit list is taken as it is", rollout.Spec{Devices: []device.ID{"z", "x1"}, Selector: map[string]string{"hw": "m9"}}, "z,x1"},
		{"no match", rollout.Spec{Selector: map[string]string{"hw": "m9"}}, "no device matches the selector"},
		{"neither", rollout.Spec{}, "no target devices"},
		{"both", rollout.Spec{All: true, Selector: map[string]string{"hw": "m2"}}, "not both"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.spec.Firmware = "2.0.0"
			r, err := p.Create(t.Context(), tc.spec)
			if err != nil {
				if !errors.Is(err, rollout.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("Create = %v, want %s", err, tc.want)
				}
				return
			}
			if got := targetsOf(t, p, r.ID); got != tc.want {
				t.Errorf("targets %s, want %s", got, tc.want)
			}
			if _, err := p.Abort(t.Context(), r.ID, false); err != nil { // its devices are free again
				t.Fatal(err)
			}
		})
	}
	bare := mustOpen(t, "", newFakeShadows(silent), newFakeFirmware("2.0.0"), nil)
	if _, err := bare.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", All: true}); !errors.Is(err, rollout.ErrInvalid) {
		t.Errorf("all without an Inventory = %v, want ErrInvalid", err)
	}
}

// TestCreateChecksHardware: an image for one model is refused for targets
// enrolled with another (*IncompatibleError listing them), or with
// SkipIncompatible goes to the others, counting the rest; unlabelled and
// unknown devices are taken; an image for any model goes everywhere.
func TestCreateChecksHardware(t *testing.T) {
	f := &fleet{enrolled: []rollout.EnrolledDevice{enrolled("a-m2", "hw=m2", "site=x"), enrolled("b-m3", "hw=m3", "site=x"),
		enrolled("c-none", "site=x"), enrolled("d-m1", "hw=m1", "site=x")}}
	fw := hwFirmware{newFakeFirmware("2.0.0", "3.0.0"), map[firmware.Version]string{"3.0.0": "m2"}}
	p := mustOpen(t, "", newFakeShadows(silent), fw.fakeFirmware, func(c *rollout.Config) { c.Inventory, c.Firmware = f, fw })
	tests := []struct {
		name         string
		spec         rollout.Spec
		incompatible string // the devices an *IncompatibleError lists
		invalid      bool
		targets      string
		excluded     int
	}{
		{name: "refused", spec: rollout.Spec{Firmware: "3.0.0", Selector: map[string]string{"site": "x"}}, incompatible: "b-m3:m3,d-m1:m1"},
		{name: "explicit list refused", spec: rollout.Spec{Firmware: "v3.0.0", Devices: []device.ID{"d-m1"}}, incompatible: "d-m1:m1"},
		{name: "duplicates counted once", spec: rollout.Spec{Firmware: "3.0.0", Devices: []device.ID{"z", "d-m1", "d-m1"}, SkipIncompatible: true},
			targets: "z", excluded: 1},
		{name: "nothing left", spec: rollout.Spec{Firmware: "3.0.0", Devices: []device.ID{"d-m1", "b-m3"}, SkipIncompatible: true}, invalid: true},
		{name: "image for any hardware", spec: rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"d-m1"}}, targets: "d-m1"},
		{name: "skipped", spec: rollout.Spec{Firmware: "3.0.0", Selector: map[string]string{"site": "x"}, SkipIncompatible: true},
			targets: "a-m2,c-none", excluded: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := p.Create(t.Context(), tc.spec)
			var ie *rollout.IncompatibleError
			switch {
			case tc.incompatible != "":
				if !errors.As(err, &ie) || !errors.Is(err, rollout.ErrIncompatible) {
					t.Fatalf("Create = %v, want an *IncompatibleError", err)
				}
				var got []string
				for _, d := range ie.Devices {
					got = append(got, string(d.ID)+":"+d.HW)
				}
				if strings.Join(got, ",") != tc.incompatible || ie.HW != "m2" || ie.Firmware != "3.0.0" {
					t.Errorf("incompatible %v (image %s for %s), want %s", got, ie.Firmware, ie.HW, tc.incompatible)
				}
				return
			case tc.invalid:
				if !errors.Is(err, rollout.ErrInvalid) {
					t.Fatalf("Create = %v, want ErrInvalid", err)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if got := targetsOf(t, p, r.ID); got != tc.targets || r.Excluded != tc.excluded {
				t.Errorf("targets %s, excluded %d; want %s, %d", got, r.Excluded, tc.targets, tc.excluded)
			}
			if _, err := p.Abort(t.Context(), r.ID, false); err != nil {
				t.Fatal(err)
			}
		})
	}
	if list, _ := p.List(t.Context()); len(list) != 3 {
		t.Errorf("%d rollouts stored, want the 3 created (nothing stored for a refusal)", len(list))
	}
}

// TestDevicesEnrolledJoinDynamicRollouts: enrolled devices join the
// active dynamic rollouts whose selector they match (or that take all),
// oldest first, at most one each, not one of another hardware model; a
// group enrolled at once (a bulk import) forms batches of the policy's
// size. internal/httpapi's TestDynamicEnrolment checks the same through
// the HTTP API, and internal/server's
// TestEnrolmentJoinsDynamicRolloutsByEveryPath through every enrolment
// path.
func TestDevicesEnrolledJoinDynamicRollouts(t *testing.T) {
	f := &fleet{enrolled: []rollout.EnrolledDevice{enrolled("m2-a", "hw=m2"), enrolled("m1-a", "hw=m1"),
		enrolled("solo"), enrolled("eu-1", "region=eu")}}
	fw := hwFirmware{newFakeFirmware("1.0.0", "2.0.0", "3.0.0"), map[firmware.Version]string{"3.0.0": "m2"}}
	p := mustOpen(t, "", newFakeShadows(silent), fw.fakeFirmware, func(c *rollout.Config) { c.Inventory, c.Firmware = f, fw })
	for _, spec := range []rollout.Spec{
		{Firmware: "2.0.0", Selector: map[string]string{"hw": "m2"}, Policy: rollout.Policy{Dynamic: true, BatchSize: 2}}, // r1
		{Firmware: "2.0.0", Selector: map[string]string{"hw": "m1"}},                                                      // r2: not dynamic
		{Firmware: "1.0.0", Devices: []device.ID{"solo"}, Policy: rollout.Policy{Dynamic: true}},                          // r3: a list
		{Firmware: "2.0.0", Selector: map[string]string{"region": "eu"}, Policy: rollout.Policy{Dynamic: true}},           // r4
		{Firmware: "3.0.0", Devices: []device.ID{"x5"}, All: true, Policy: rollout.Policy{Dynamic: true}},                 // r5: all, image for m2
	} {
		if _, err := p.Create(t.Context(), spec); err != nil {
			t.Fatalf("create %+v: %v", spec, err)
		}
	}
	steps := []struct {
		name string
		devs []rollout.EnrolledDevice
		want map[string]string // rollout → targets after
	}{
		{"matches r1", []rollout.EnrolledDevice{enrolled("m2-b", "hw=m2", "region=us")},
			map[string]string{"r1": "m2-a,m2-b", "r2": "m1-a", "r5": "x5"}},
		{"another model joins no dynamic rollout of it", []rollout.EnrolledDevice{enrolled("m1-b", "hw=m1")},
			map[string]string{"r2": "m1-a", "r3": "solo", "r5": "x5"}},
		{"r1 and r4 match: the older takes it", []rollout.EnrolledDevice{enrolled("late", "hw=m2", "region=eu")},
			map[string]string{"r1": "m2-a,m2-b,late", "r4": "eu-1"}},
		{"unlabelled: only all", []rollout.EnrolledDevice{enrolled("plain")},
			map[string]string{"r5": "x5,plain"}},
		{"an import: one group, in batches of r1's size", []rollout.EnrolledDevice{enrolled("i1", "hw=m2"), enrolled("i2", "hw=m2"), enrolled("i3", "hw=m2")},
			map[string]string{"r1": "m2-a,m2-b,late,i1,i2,i3"}},
	}
	for _, st := range steps {
		f.enroll(t, p, st.devs...)
		for id, want := range st.want {
			if got := targetsOf(t, p, id); got != want {
				t.Errorf("%s: %s targets %s, want %s", st.name, id, got, want)
			}
		}
	}
	r1, err := p.Get(t.Context(), "r1")
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for _, b := range r1.Batches {
		sizes = append(sizes, b.Size)
	}
	if !slices.Equal(sizes, []int{1, 1, 1, 2, 1}) {
		t.Errorf("r1 batch sizes %v, want [1 1 1 2 1]: one per single enrolment, the import of 3 in batches of 2", sizes)
	}
	// A finished rollout takes no one.
	if _, err := p.Abort(t.Context(), "r5", false); err != nil {
		t.Fatal(err)
	}
	f.enroll(t, p, enrolled("after-abort"))
	if got := targetsOf(t, p, "r5"); got != "x5,plain" {
		t.Errorf("aborted r5 targets %s, want x5,plain", got)
	}
}

// TestEngineInventory: the shadows of a real engine, page by page, and the
// enrolled devices given.
func TestEngineInventory(t *testing.T) {
	st, err := shadowstore.Open(t.Context(), shadowstore.Config{Path: filepath.Join(t.TempDir(), "shadow.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(context.Background())
	eng, err := shadow.Open(t.Context(), shadow.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close(context.Background())
	var want []device.ID
	for i := range 1002 { // more than one page of the engine's List
		id := device.ID(fmt.Sprintf("%04d", i))
		if _, err := eng.Update(t.Context(), id, []byte(`{"state":{"reported":{"on":true}}}`)); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	inv := rollout.EngineInventory(eng, nil)
	got, err := inv.ShadowDevices(t.Context())
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("ShadowDevices = %d devices, %v; want %d in order", len(got), err, len(want))
	}
	if devs, err := inv.EnrolledDevices(t.Context()); err != nil || len(devs) != 0 {
		t.Errorf("EnrolledDevices without a list = %v, %v; want none", devs, err)
	}
	inv = rollout.EngineInventory(eng, func(context.Context) ([]rollout.EnrolledDevice, error) {
		return []rollout.EnrolledDevice{enrolled("e1", "hw=m2")}, nil
	})
	if devs, err := inv.EnrolledDevices(t.Context()); err != nil || len(devs) != 1 || devs[0].Labels["hw"] != "m2" {
		t.Errorf("EnrolledDevices = %v, %v; want e1", devs, err)
	}
}
