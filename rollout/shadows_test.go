package rollout_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/boltstore"
)

func TestEngineShadows(t *testing.T) {
	st, err := boltstore.Open(t.Context(), boltstore.Config{Path: filepath.Join(t.TempDir(), "shadow.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close(context.Background())
	eng, err := shadow.Open(t.Context(), shadow.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close(context.Background())
	s := rollout.EngineShadows(eng)

	if _, ok, err := s.ReportedFirmware(t.Context(), "d1"); ok || err != nil {
		t.Fatalf("missing shadow = ok %v, err %v; want not ok, nil", ok, err)
	}
	cmd := map[string]any{"version": "1.2.0", "url": "http://x/fw/a", "job": "r1/1"}
	if err := s.SetDesiredFirmware(t.Context(), "d1", cmd, "r1/1"); err != nil {
		t.Fatal(err)
	}
	doc, err := eng.Read(t.Context(), "d1")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := json.Marshal(doc.Delta()); string(got) != `{"firmware":{"job":"r1/1","url":"http://x/fw/a","version":"1.2.0"}}` {
		t.Errorf("delta after SetDesiredFirmware = %s", got)
	}
	if _, err := eng.Update(t.Context(), "d1", []byte(`{"state":{"reported":{"firmware":{"version":"1.0.0","state":"installing","job":"r1/1"}}}}`)); err != nil {
		t.Fatal(err)
	}
	r, ok, err := s.ReportedFirmware(t.Context(), "d1")
	if err != nil || !ok || r != (firmware.Report{Version: "1.0.0", State: firmware.StateInstalling, Job: "r1/1"}) {
		t.Errorf("ReportedFirmware = %+v, %v, %v", r, ok, err)
	}
	if err := s.SetDesiredFirmware(t.Context(), "d1", nil, "r1/clear"); err != nil {
		t.Fatal(err)
	}
	doc, _ = eng.Read(t.Context(), "d1")
	if _, has := doc.State.Desired["firmware"]; has {
		t.Errorf("desired.firmware still set after clearing: %v", doc.State.Desired)
	}
	eng.Update(t.Context(), "d2", []byte(`{"state":{"reported":{"firmware":"not an object"}}}`))
	if r, ok, err := s.ReportedFirmware(t.Context(), "d2"); err != nil || !ok || r.State != firmware.StateFailed {
		t.Errorf("malformed report = %+v, %v, %v; want a failed report", r, ok, err)
	}
}
