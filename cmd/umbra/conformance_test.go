package main

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/conformance"
	"github.com/umbra-iot/umbra/internal/mosquittotest"
)

// envConformanceReport names a file TestConformance writes its table to
// (docs/conformance.md holds a copy).
const envConformanceReport = "UMBRA_CONFORMANCE_REPORT"

// TestConformance runs Umbra's MQTT 3.1.1 interoperability suite
// (internal/conformance, Python paho) against Debian's mosquitto and
// against umbra serve, with --insecure-anonymous and with an operator's
// login, and fails unless Umbra passes every test mosquitto passes. Both
// brokers refuse subscriptions to test/nosubscribe, as the suite needs:
// mosquitto through its acl_file, Umbra through --acl-file.
func TestConformance(t *testing.T) {
	dir := t.TempDir()
	mosqACL := filepath.Join(dir, "mosquitto.acl")
	umbraACL := filepath.Join(dir, "umbra.acl")
	for path, text := range map[string]string{
		mosqACL:  "topic readwrite #\ntopic deny test/nosubscribe\n",
		umbraACL: "# The suite's subscribe failure test needs one refused filter.\ntopic deny test/nosubscribe\nrole operator\ntopic deny test/nosubscribe\n",
	} {
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mosq := mosquittotest.Start(t, "acl_file "+mosqACL+"\n")
	anon := startServerConfig(t, func(c *serveConfig) { c.Anonymous, c.ACLFile = true, umbraACL })
	auth := startServerConfig(t, func(c *serveConfig) { c.ACLFile = umbraACL })
	secret, err := auth.ids.CreateToken(t.Context(), identity.RoleOperator, "conformance")
	if err != nil {
		t.Fatal(err)
	}
	targets := []struct {
		name   string
		target conformance.Target
	}{
		{"mosquitto " + mosquittotest.Version(), conformance.Target{Addr: mosq}},
		{"umbra serve --insecure-anonymous", conformance.Target{Addr: anon.brk.Addr().String()}},
		{"umbra serve, operator login", conformance.Target{Addr: auth.brk.Addr().String(), Username: "conformance", Password: secret}},
	}
	names := make([]string, len(targets))
	results := make([][]conformance.Result, len(targets))
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, tg := range targets {
		names[i] = tg.name
		wg.Go(func() {
			results[i], errs[i] = conformance.Run(t.Context(), t.TempDir(), tg.target)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s: %v", names[i], err)
		}
	}
	table := conformance.Table(names, results)
	t.Logf("\n%s", table)
	if path := os.Getenv(envConformanceReport); path != "" {
		if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
			t.Errorf("write %s: %v", path, err)
		}
	}
	for i := 1; i < len(targets); i++ {
		if missing := conformance.Missing(results[0], results[i]); len(missing) > 0 {
			t.Errorf("%s fails what %s passes: %s", names[i], names[0], strings.Join(missing, ", "))
		}
	}
}
