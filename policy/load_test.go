package policy_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/policy"
)

// fixture is a shared example file under the repository's testdata/acl.
func fixture(name string) string { return filepath.Join("..", "testdata", "acl", name) }

func mustLoad(t *testing.T, path string) *policy.Policy {
	t.Helper()
	p, err := policy.Load(path)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	return p
}

// TestLoadMosquittoFixture: a mosquitto acl_file, unchanged, extending the
// default.
func TestLoadMosquittoFixture(t *testing.T) {
	p := mustLoad(t, fixture("mosquitto.acl"))
	dashboard := policy.Subject{Role: policy.RoleIntegrator, User: "dashboard", ClientID: "dash-7"}
	ops := policy.Subject{Role: policy.RoleOperator, User: "ops", ClientID: "ops-1"}
	checkAllow(t, p, []allowCase{
		{"anonymous reads public", policy.Subject{Role: policy.RoleOperator, ClientID: "x"}, "public/news", r, true},
		{"user section read", dashboard, "sensors/t1", r, true},
		{"integrator still writes nothing", dashboard, "sensors/t1", w, false},
		{"user section readwrite", ops, "sensors/t1", w, true},
		{"user deny beats the default's operator grant", ops, "sensors/calibration/x", w, false},
		{"pattern %c for a device", devA, "clients/A/status", w, true},
		{"pattern %c for a token", dashboard, "clients/dash-7/status", w, true},
		{"pattern %c: other client", dashboard, "clients/A/status", w, false},
		{"pattern %u", dashboard, "users/dashboard/x", w, true},
		{"default for devices unchanged", devA, "devices/A/telemetry", w, true},
		{"default still isolates devices", devA, "devices/B/telemetry", r, false},
	})
}

// TestLoadRolesFixture: role sections extending the default.
func TestLoadRolesFixture(t *testing.T) {
	p := mustLoad(t, fixture("roles.acl"))
	lamp := policy.Subject{Role: policy.RoleDevice, User: "lamp1", ClientID: "lamp1"}
	checkAllow(t, p, []allowCase{
		{"device status added", devA, "devices/A/status", w, true},
		{"device announcements", devA, "fleet/announcements", r, true},
		{"device logs denied", devA, "devices/A/logs", w, false},
		{"device telemetry from the default", devA, "devices/A/telemetry", w, true},
		{"integrator acks alarms", integ, "alarms/a1/ack", w, true},
		{"integrator still writes nothing else", integ, "alarms/a1", w, false},
		{"one device's topic", lamp, "lights/lamp1/on", w, true},
		{"not another device's", devA, "lights/lamp1/on", w, false},
	})
}

// TestLoadErrors: every bad line of a file is reported as file:line and
// what is wrong; unreadable and over-large files are errors too.
func TestLoadErrors(t *testing.T) {
	path := fixture("bad.acl")
	_, err := policy.Load(path)
	want := []string{
		path + `:4: topic: unknown access "raed" (want read, write, readwrite or deny)`,
		path + `:5: role "admin": unknown role (want device, operator, integrator)`,
		path + `:6: pattern "devices/x%u": level "x%u": %c and %u must be whole levels`,
	}
	if err == nil || err.Error() != strings.Join(want, "\n") {
		t.Errorf("Load(bad.acl) error:\n%v\nwant:\n%s", err, strings.Join(want, "\n"))
	}
	if !errors.Is(err, policy.ErrSyntax) {
		t.Errorf("Load(bad.acl) error does not wrap ErrSyntax")
	}

	if _, err := policy.Load(filepath.Join(t.TempDir(), "missing.acl")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want fs.ErrNotExist", err)
	}
	big := filepath.Join(t.TempDir(), "big.acl")
	if err := os.WriteFile(big, []byte(strings.Repeat("# comment\n", policy.MaxFileSize/10+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := policy.Load(big); !errors.Is(err, policy.ErrTooLarge) || !strings.Contains(err.Error(), big) {
		t.Errorf("Load(big) = %v, want ErrTooLarge naming the file", err)
	}

	// At most 20 bad lines are reported.
	many := strings.Repeat("bogus\n", 50)
	_, err = policy.Parse("many.acl", []byte(many))
	if n := strings.Count(err.Error(), "\n") + 1; n != 20 {
		t.Errorf("Parse of 50 bad lines reported %d, want 20", n)
	}
}

// TestParseAccepts covers the forms Parse accepts and what they mean.
func TestParseAccepts(t *testing.T) {
	f, err := policy.Parse("ok.acl", []byte("\ufeff# comment\r\n\r\n   # indented comment\n\ttopic\tread\ta/b c \r\n"+
		"user  spaced name \ntopic x\ndefault replace\n"))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if f.Rules() != 2 || f.Mode() != policy.Replace || f.Name() != "ok.acl" {
		t.Errorf("Parse: %d rules, mode %s, name %q; want 2, replace, ok.acl", f.Rules(), f.Mode(), f.Name())
	}
	p := policy.New(f)
	spaced := policy.Subject{Role: policy.RoleOperator, User: "spaced name"}
	checkAllow(t, p, []allowCase{
		{"anonymous line with tabs and a space in the filter", policy.Subject{}, "a/b c", r, true},
		{"user name with a space", spaced, "x", w, true},
	})
	if policy.DefaultSource() == "" || policy.Default().String() != policy.DefaultName {
		t.Errorf("DefaultSource or Default().String() wrong")
	}
}
