package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/wire"
)

// showSettings runs umbra config show -o json with args and returns the
// settings by key.
func showSettings(t *testing.T, args ...string) map[string]setting {
	t.Helper()
	r := runCLI(t.Context(), "", append([]string{"config", "show", "-o", "json"}, args...)...)
	if r.err != nil {
		t.Fatalf("config show: %v", r.err)
	}
	var v configShow
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("config show: %v in %q", err, r.stdout)
	}
	out := map[string]setting{}
	for _, s := range v.Settings {
		out[s.Key] = s
	}
	return out
}

// TestClientProfile: every client command finds the server through the
// same profile; flag > environment > profile > default, and the MQTT
// address follows the HTTP one.
func TestClientProfile(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	srv, _ := startSecureServer(t)
	path := filepath.Join(os.Getenv("XDG_CONFIG_HOME"), "umbra", "profiles.yaml")

	// Defaults, before any profile.
	s := showSettings(t)
	if s["api"].Value != defaultAPI || s["api"].Source != "default" || s["mqtt"].Value != defaultMQTT {
		t.Errorf("no profile: %+v, want the defaults", s)
	}
	for _, kv := range [][2]string{{"api", srv.apiURL()}, {"data_dir", srv.dataDir}} {
		if r := runCLI(t.Context(), "", "config", "set", kv[0], kv[1]); r.err != nil {
			t.Fatalf("config set %s: %v", kv[0], r.err)
		}
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("profile file %s: %v, mode %v; want mode 0600", path, err, st.Mode())
	}
	s = showSettings(t)
	host := strings.TrimPrefix(srv.apiURL(), "http://")
	host = host[:strings.LastIndexByte(host, ':')]
	for key, want := range map[string]setting{
		"api":      {Value: srv.apiURL(), Source: "profile default"},
		"mqtt":     {Value: "tcp://" + host + ":1883", Source: "the host of api"},
		"token":    {Value: "admin:********", Source: "admin.token of data_dir"},
		"data_dir": {Value: srv.dataDir, Source: "profile default"},
	} {
		if got := s[key]; got.Value != want.Value || got.Source != want.Source {
			t.Errorf("%s = %+v, want %+v", key, got, want)
		}
	}
	// HTTP commands now need no flags.
	if r := runCLI(t.Context(), "", "device", "add", "p1", "-o", "json"); r.err != nil || !strings.Contains(r.stdout, `"secret":`) {
		t.Fatalf("device add with the profile: %v %q", r.err, r.stdout)
	}
	// The MQTT address from the profile reaches shadow and watch.
	if r := runCLI(t.Context(), "", "config", "set", "mqtt", srv.mqttURL()); r.err != nil {
		t.Fatal(r.err)
	}
	if r := runCLI(t.Context(), "", "shadow", "update", "p1", "--desired", `{"a":1}`); r.err != nil || r.stdout != "p1 updated, version 1\n" {
		t.Fatalf("shadow update with the profile: %v %q", r.err, r.stdout)
	}
	// Environment over profile, flag over environment.
	t.Setenv("UMBRA_API", "http://192.0.2.1:9")
	if got := showSettings(t)["api"]; got.Value != "http://192.0.2.1:9" || got.Source != "env UMBRA_API" {
		t.Errorf("with UMBRA_API: api = %+v", got)
	}
	if got := showSettings(t, "--api", "http://192.0.2.2:9")["api"]; got.Value != "http://192.0.2.2:9" || got.Source != "flag --api" {
		t.Errorf("with --api: api = %+v", got)
	}
	t.Setenv("UMBRA_API", "")
	os.Unsetenv("UMBRA_API")

	// A second profile, chosen with --profile or config use.
	if r := runCLI(t.Context(), "", "config", "set", "--profile", "lab", "api", "http://192.0.2.3:8080"); r.err != nil {
		t.Fatal(r.err)
	}
	if got := showSettings(t, "--profile", "lab")["mqtt"]; got.Value != "tcp://192.0.2.3:1883" {
		t.Errorf("profile lab: mqtt = %+v, want it to follow the api host", got)
	}
	if r := runCLI(t.Context(), "", "config", "use", "lab"); r.err != nil {
		t.Fatal(r.err)
	}
	if got := showSettings(t)["profile"]; got.Value != "lab" {
		t.Errorf("after config use lab: profile %+v", got)
	}
	if r := runCLI(t.Context(), "", "config", "use", "default"); r.err != nil {
		t.Fatal(r.err)
	}

	// Bad input: a clear error, and the file is unchanged.
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown key", []string{"config", "set", "colour", "red"}, `unknown key "colour"`},
		{"bad api", []string{"config", "set", "api", "ftp://x"}, `api "ftp://x"`},
		{"bad mqtt", []string{"config", "set", "mqtt", "http://x"}, `mqtt "http://x"`},
		{"bad token", []string{"config", "set", "token", "nocolon"}, "<name>:<secret>"},
		{"missing ca", []string{"config", "set", "ca", filepath.Join(t.TempDir(), "none.pem")}, "no such file"},
		{"unknown profile", []string{"config", "use", "nope"}, `no profile "nope"`},
		{"--profile unknown", []string{"device", "list", "--profile", "nope"}, `--profile "nope"`},
		{"missing value", []string{"config", "set", "api"}, "missing <value>"},
	} {
		r := runCLI(t.Context(), "", tc.args...)
		oneLine(t, tc.name, r.err, tc.want)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Errorf("a refused config command changed the file:\n%s\nwas\n%s", after, before)
	}
	// A damaged file is named in the error.
	if err := os.WriteFile(path, []byte("profiles: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t.Context(), "", "device", "list")
	oneLine(t, "damaged profile file", r.err, path)
}

// TestEveryDataCommandTakesOutput: every command that talks to a server
// (it has --api) takes -o text|json|yaml, and nothing else under that name.
func TestEveryDataCommandTakesOutput(t *testing.T) {
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		if c.Runnable() && c.Flags().Lookup("api") != nil && c.Name() != "sim" {
			n++
			f := c.Flags().Lookup("output")
			if f == nil || f.Shorthand != "o" || f.Hidden || f.DefValue != "text" {
				t.Errorf("%s: -o is %+v, want text by default", c.CommandPath(), f)
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	root := newRootCmd()
	walk(root)
	if n < 25 {
		t.Errorf("only %d server commands found", n)
	}
}

// TestOutputFormats: the same data in text, JSON (one line, no HTML
// escaping) and YAML (the JSON's field names).
func TestOutputFormats(t *testing.T) {
	srv, _ := startSecureServer(t)
	api := []string{"--api", srv.apiURL(), "--data-dir", srv.dataDir}
	adminCLI(t, srv, "device", "add", "o1", "--label", "hw=m2")
	img, _ := fwImageFile(t, 1000)
	adminCLI(t, srv, "firmware", "upload", img, "--version", "1.0.0", "--notes", "fixes <LED> & more")
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"device list", []string{"device", "list"}},
		{"device list --json (old name)", []string{"device", "list", "--json"}},
		{"token list", []string{"token", "list"}},
		{"firmware list", []string{"firmware", "list"}},
		{"rollout list", []string{"rollout", "list"}},
	} {
		args := append(slices.Clone(tc.args), api...)
		js := runCLI(t.Context(), "", append(args, "-o", "json")...)
		if strings.HasSuffix(tc.name, "(old name)") {
			js = runCLI(t.Context(), "", args...)
		}
		if js.err != nil || strings.Count(js.stdout, "\n") != 1 {
			t.Errorf("%s -o json: %v, %q; want one line", tc.name, js.err, js.stdout)
			continue
		}
		if strings.Contains(js.stdout, `\u003c`) || strings.Contains(js.stdout, `\u0026`) {
			t.Errorf("%s -o json: HTML escapes in %q", tc.name, js.stdout)
		}
		var fromJSON, fromYAML any
		if err := json.Unmarshal([]byte(js.stdout), &fromJSON); err != nil {
			t.Errorf("%s -o json: %v", tc.name, err)
		}
		ym := runCLI(t.Context(), "", append(args, "-o", "yaml")...)
		if err := yaml.Unmarshal([]byte(ym.stdout), &fromYAML); ym.err != nil || err != nil {
			t.Errorf("%s -o yaml: %v %v in %q", tc.name, ym.err, err, ym.stdout)
		}
		a, _ := json.Marshal(fromJSON)
		b, _ := json.Marshal(fromYAML)
		if string(a) != string(b) {
			t.Errorf("%s: yaml\n%s\nis not the json\n%s", tc.name, b, a)
		}
	}
	fw := runCLI(t.Context(), "", append([]string{"firmware", "list", "-o", "json"}, api...)...)
	if !strings.Contains(fw.stdout, `"notes":"fixes <LED> & more"`) {
		t.Errorf("firmware list -o json: %q, want the notes unescaped", fw.stdout)
	}
	r := runCLI(t.Context(), "", append([]string{"device", "list", "--select", "hw=m2", "--online=false"}, api...)...)
	if r.err != nil || !strings.Contains(r.stdout, "o1") || strings.Count(r.stdout, "\n") != 2 {
		t.Errorf("device list --select: %v %q", r.err, r.stdout)
	}
	r = runCLI(t.Context(), "", append([]string{"device", "list", "--online"}, api...)...)
	if r.err != nil || strings.Contains(r.stdout, "o1") {
		t.Errorf("device list --online: %v %q, want no offline device", r.err, r.stdout)
	}
	r = runCLI(t.Context(), "", append([]string{"device", "list", "--select", "nokv"}, api...)...)
	oneLine(t, "bad --select", r.err, `--select "nokv"`)
	csv := writeFile(t, "fleet.csv", "id,labels,cert\nimp1,hw=m2,\n")
	r = runCLI(t.Context(), "", append([]string{"device", "import", csv, "--dry-run", "-o", "json"}, api...)...)
	if r.err != nil || r.stdout != `{"file":"`+csv+`","checked":1,"imported":0,"bound":0,"dry_run":true}`+"\n" {
		t.Errorf("device import --dry-run -o json: %v %q", r.err, r.stdout)
	}
	r = runCLI(t.Context(), "", "version", "-o", "json")
	if r.err != nil || !strings.HasPrefix(r.stdout, `{"version":"`) {
		t.Errorf("version -o json: %v %q", r.err, r.stdout)
	}
}

// TestErrorsInUserTerms: no internal package names, the missing argument
// named, and the next command to try.
func TestErrorsInUserTerms(t *testing.T) {
	srv, _ := startSecureServer(t)
	adminCLI(t, srv, "device", "add", "e1")
	api := []string{"--api", srv.apiURL(), "--data-dir", srv.dataDir}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"missing firmware", []string{"rollout", "create", "--firmware", "9.9.9", "--all"}, []string{"firmware 9.9.9", "not found", "400"}},
		{"missing rollout", []string{"rollout", "rollback", "r9"}, []string{`rollout "r9"`, "not found", "umbra rollout list"}},
		{"missing image", []string{"firmware", "show", "1.0.0"}, []string{"1.0.0", "not found", "umbra firmware list"}},
		{"missing device", []string{"device", "remove", "ghost"}, []string{"ghost", "umbra device list"}},
		{"bad role", []string{"token", "create", "--name", "x", "--role", "boss"}, []string{`invalid role: "boss"`}},
		{"no argument", []string{"device", "rotate"}, []string{"device rotate: missing <id>", "usage: umbra device rotate <id>"}},
		{"refused", []string{"device", "list", "--api", "http://" + closedAddr(t)}, []string{"cannot reach the Umbra server", "umbra serve", "--api"}},
	} {
		args := append(slices.Clone(tc.args), api...)
		if tc.name == "refused" {
			args = tc.args
		}
		r := runCLI(t.Context(), "", args...)
		oneLine(t, tc.name, r.err, tc.want...)
		for _, internal := range []string{"client:", "rolloutclient", "boltstore", "identity:", "firmware:", "accepts 1 arg"} {
			if r.err != nil && strings.Contains(r.err.Error(), internal) {
				t.Errorf("%s: %q names %q", tc.name, r.err, internal)
			}
		}
	}
}

// TestCompletion: enum flags and server-side values complete.
func TestCompletion(t *testing.T) {
	srv, _ := startSecureServer(t)
	adminCLI(t, srv, "device", "add", "comp-1")
	api := []string{"--api", srv.apiURL(), "--data-dir", srv.dataDir}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"device", "remove", ""}, []string{"comp-1"}},
		{[]string{"shadow", "get", "comp"}, []string{"comp-1"}},
		{[]string{"device", "list", "-o", ""}, []string{"text", "json", "yaml"}},
		{[]string{"token", "create", "--role", ""}, []string{"operator", "integrator"}},
		{[]string{"rollout", "create", "--on-failure", ""}, []string{"pause", "abort", "rollback"}},
		{[]string{"watch", "--kind", ""}, []string{"accepted", "delta", "documents"}},
		{[]string{"config", "set", ""}, profileKeys},
	} {
		// The server's flags go right after the command's words.
		i := slices.IndexFunc(tc.args, func(a string) bool { return strings.HasPrefix(a, "-") })
		if i < 0 {
			i = len(tc.args) - 1
		}
		args := append([]string{cobra.ShellCompRequestCmd}, tc.args[:i]...)
		args = append(append(args, api...), tc.args[i:]...)
		r := runCLI(t.Context(), "", args...)
		var got []string
		for _, l := range strings.Split(r.stdout, "\n") {
			if l != "" && !strings.HasPrefix(l, ":") {
				got = append(got, l)
			}
		}
		if r.err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("complete %q: %q (%v), want %q", tc.args, got, r.err, tc.want)
		}
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if r := runCLI(t.Context(), "", "completion", shell); r.err != nil || !strings.Contains(r.stdout, "umbra") {
			t.Errorf("completion %s: %v", shell, r.err)
		}
	}
}

// TestWatchFrom: --from next (the default) waits for the next update
// although the server replays the pending delta on subscribing; --from
// current prints that pending delta.
func TestWatchFrom(t *testing.T) {
	srv := startServer(t)
	url := srv.mqttURL()
	if r := runCLI(t.Context(), "", "shadow", "update", "wf", "--desired", `{"a":1}`, "--server", url); r.err != nil {
		t.Fatal(r.err)
	}
	version := func(r cliResult) float64 {
		t.Helper()
		if r.err != nil {
			t.Fatalf("watch: %v", r.err)
		}
		p, _ := decodeJSON(t, r.stdout)["payload"].(map[string]any)
		v, _ := p["version"].(float64)
		return v
	}
	cur := waitResult(t, startWatch(t, t.Context(), "wf", "--kind", "delta", "--count", "1", "--from", "current", "--server", url))
	if v := version(cur); v != 1 {
		t.Errorf("--from current: delta version %v, want the pending 1", v)
	}
	next := startWatch(t, t.Context(), "wf", "--kind", "delta", "--count", "1", "--server", url)
	srv.waitSubscribed(t, "state/wf/update/delta")
	if r := runCLI(t.Context(), "", "shadow", "update", "wf", "--desired", `{"a":2}`, "--server", url); r.err != nil {
		t.Fatal(r.err)
	}
	if v := version(waitResult(t, next)); v != 2 {
		t.Errorf("--from next: delta version %v, want the next update's 2", v)
	}
	r := runCLI(t.Context(), "", "watch", "wf", "--from", "later", "--server", url)
	oneLine(t, "bad --from", r.err, `--from "later"`)
}

// TestOpenAPIMatchesRoutes: the OpenAPI document served at
// /v1/openapi.json describes exactly the routes umbra serve registers,
// and anyone may read it.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	srv, _ := startSecureServer(t)
	registered := srv.api.Routes()
	documented := httpapi.DocumentedRoutes()
	for _, p := range registered {
		if !slices.Contains(documented, p) {
			t.Errorf("route %q is registered but not in the OpenAPI document (internal/httpapi/openapi.go apiRoutes)", p)
		}
	}
	for _, p := range documented {
		if !slices.Contains(registered, p) {
			t.Errorf("route %q is in the OpenAPI document but not registered", p)
		}
	}
	res, err := http.Get(srv.apiURL() + httpapi.OpenAPIPath) // no credential
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if err := json.NewDecoder(res.Body).Decode(&doc); err != nil || res.StatusCode != 200 || !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("GET %s: %d %v, openapi %q", httpapi.OpenAPIPath, res.StatusCode, err, doc.OpenAPI)
	}
	var served []string
	for path, ops := range doc.Paths {
		for method := range ops {
			served = append(served, strings.ToUpper(method)+" "+path)
		}
	}
	slices.Sort(served)
	if !slices.Equal(served, documented) {
		t.Errorf("served document has %q, want %q", served, documented)
	}
}

// TestDeviceResource: GET /v1/devices/{id} (umbra device show) brings a
// device's enrolment, presence, shadow and firmware versions together.
func TestDeviceResource(t *testing.T) {
	srv, _ := startSecureServer(t)
	api := []string{"--api", srv.apiURL(), "--data-dir", srv.dataDir}
	adminCLI(t, srv, "device", "add", "dr1", "--label", "hw=m2")
	if r := runCLI(t.Context(), "", "shadow", "update", "dr1", "--reported", `{"firmware":{"version":"1.0.0"}}`,
		"--desired", `{"firmware":{"version":"1.1.0"}}`, "--mqtt", srv.mqttURL(), "--data-dir", srv.dataDir); r.err != nil {
		t.Fatal(r.err)
	}
	r := runCLI(t.Context(), "", append([]string{"device", "show", "dr1", "-o", "json"}, api...)...)
	if r.err != nil {
		t.Fatal(r.err)
	}
	var d wire.Device
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
		t.Fatal(err)
	}
	if !d.Enrolled || d.Labels["hw"] != "m2" || d.Shadow == nil || d.Shadow.Version != 1 ||
		d.Firmware != (wire.DeviceFirmware{Reported: "1.0.0", Desired: "1.1.0"}) || d.CreatedAt.IsZero() {
		t.Errorf("device show dr1 = %+v", d)
	}
	r = runCLI(t.Context(), "", append([]string{"device", "show", "dr1"}, api...)...)
	if r.err != nil || !strings.Contains(r.stdout, "firmware:         1.0.0") || !strings.Contains(r.stdout, "labels:           hw=m2") {
		t.Errorf("device show dr1 (text): %v\n%s", r.err, r.stdout)
	}
	r = runCLI(t.Context(), "", append([]string{"device", "show", "ghost"}, api...)...)
	oneLine(t, "unknown device", r.err, "No device ghost", "404")
	// device list shows the running firmware and filters on it.
	adminCLI(t, srv, "device", "add", "dr2")
	r = runCLI(t.Context(), "", append([]string{"device", "list"}, api...)...)
	if r.err != nil || !strings.Contains(r.stdout, "1.0.0 -> 1.1.0") || !strings.Contains(r.stdout, "FIRMWARE") {
		t.Errorf("device list: %v\n%s\nwant dr1's firmware 1.0.0 -> 1.1.0", r.err, r.stdout)
	}
	for _, tc := range []struct{ version, want string }{{"1.0.0", "dr1"}, {"9.9.9", ""}} {
		r = runCLI(t.Context(), "", append([]string{"device", "list", "--firmware", tc.version, "-o", "json"}, api...)...)
		var l wire.IdentityList
		if err := json.Unmarshal([]byte(r.stdout), &l); r.err != nil || err != nil {
			t.Fatalf("device list --firmware %s: %v %v", tc.version, r.err, err)
		}
		var ids []string
		for _, d := range l.Devices {
			ids = append(ids, string(d.ID))
		}
		if strings.Join(ids, ",") != tc.want {
			t.Errorf("device list --firmware %s: %q, want %q", tc.version, ids, tc.want)
		}
	}
}
