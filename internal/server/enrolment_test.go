package server_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// TestEnrolmentJoinsDynamicRolloutsByEveryPath: serve wires the identity
// store's enrolment callback to the planner once, so a device enrolled by
// any path joins a dynamic rollout its labels match: the store's own
// AddDevice (no HTTP request involved), POST /v1/devices, a bulk import
// and a certificate binding; a dry run adds nobody.
func TestEnrolmentJoinsDynamicRolloutsByEveryPath(t *testing.T) {
	r := mustOpenRig(t, true)
	r.mustUpload(t, newVersion)
	ctx := t.Context()
	if _, err := r.Identity().AddDevice(ctx, "d0", map[string]string{"site": "x"}); err != nil {
		t.Fatal(err)
	}
	ro, err := r.Planner().Create(ctx, rollout.Spec{Firmware: newVersion, Selector: map[string]string{"site": "x"},
		Policy: rollout.Policy{Dynamic: true}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(filepath.Join(r.DataDir(), server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(client.Config{URL: "http://" + r.HTTPAddr().String(), Token: strings.TrimSpace(string(tok))})
	if err != nil {
		t.Fatal(err)
	}
	site := map[string]string{"site": "x"}
	steps := []struct {
		name   string
		enroll func() error
		want   string // the rollout's targets after
	}{
		{"the store's AddDevice", func() error { _, err := r.Identity().AddDevice(ctx, "d1", site); return err }, "d0,d1"},
		{"POST /v1/devices", func() error {
			_, err := c.EnrollDevice(ctx, wire.EnrollRequest{ID: "d2", Labels: site})
			return err
		}, "d0,d1,d2"},
		{"a bulk import", func() error {
			_, err := c.ImportDevices(ctx, wire.ImportRequest{Devices: []wire.EnrollRequest{{ID: "d3", Labels: site}, {ID: "y1"}, {ID: "d4", Labels: site}}})
			return err
		}, "d0,d1,d2,d3,d4"},
		{"a dry run", func() error {
			_, err := c.ImportDevices(ctx, wire.ImportRequest{Devices: []wire.EnrollRequest{{ID: "d5", Labels: site}}, DryRun: true})
			return err
		}, "d0,d1,d2,d3,d4"},
		{"a certificate binding", func() error {
			_, err := c.EnrollDevice(ctx, wire.EnrollRequest{ID: "d6", Labels: site, CertSHA256: strings.Repeat("0c", 32)})
			return err
		}, "d0,d1,d2,d3,d4,d6"},
	}
	for _, st := range steps {
		if err := st.enroll(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		ds, err := r.Planner().Devices(ctx, ro.ID)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range ds {
			got = append(got, string(d.Device))
		}
		if strings.Join(got, ",") != st.want {
			t.Errorf("after %s: targets %v, want %s", st.name, got, st.want)
		}
	}
	if _, err := r.Identity().GetDevice(ctx, device.ID("d5")); err == nil {
		t.Error("the dry run enrolled d5")
	}
}
