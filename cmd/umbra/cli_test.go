package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/shadow"
)

// decodeJSON decodes one JSON object.
func decodeJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
	return m
}

// oneLine fails unless err is a non-nil, one-line error containing every
// part.
func oneLine(t *testing.T, name string, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want one containing %q", name, parts)
		return
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("%s: error %q spans several lines, want one", name, err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q, want it to contain %q", name, err, p)
		}
	}
	if exitCode(err) == 0 {
		t.Errorf("%s: exit code 0 for error %v", name, err)
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestShadowCommands(t *testing.T) {
	// Real authentication: the CLI picks up the operator token from the
	// server's data dir.
	srv, _ := startSecureServer(t)
	url := srv.mqttURL()
	file := writeFile(t, "update.json", `{"state":{"desired":{"color":"blue"}}}`)
	// Steps run in order on one shadow. want are fields of the JSON output;
	// text is a substring of the text output.
	steps := []struct {
		name    string
		args    []string
		stdin   string
		wantErr []string
		want    map[string]any
		text    []string
	}{
		{name: "get missing", args: []string{"shadow", "get", "lamp"}, wantErr: []string{"get lamp", "404", "No shadow exists"}},
		{name: "set desired", args: []string{"shadow", "update", "lamp", "--desired", `{"color":"red"}`},
			want: map[string]any{"version": 1.0, "state": map[string]any{"desired": map[string]any{"color": "red"}}}},
		{name: "report, text", args: []string{"shadow", "update", "lamp", "--reported", `{"color":"blue"}`, "-o", "text"},
			text: []string{"lamp updated, version 2\n"}},
		{name: "stale version", args: []string{"shadow", "update", "lamp", "--desired", `{"color":"green"}`, "--version", "1"},
			wantErr: []string{"update lamp", "409", "ersion"}},
		{name: "get, text", args: []string{"shadow", "get", "lamp", "-o", "text"},
			text: []string{"lamp version 2\n", `desired:  {"color":"red"}`, `reported: {"color":"blue"}`, `delta:    {"color":"red"}`}},
		{name: "get", args: []string{"shadow", "get", "lamp"},
			want: map[string]any{"version": 2.0, "state": map[string]any{
				"desired": map[string]any{"color": "red"}, "reported": map[string]any{"color": "blue"}, "delta": map[string]any{"color": "red"}}}},
		{name: "desired and reported together", args: []string{"shadow", "update", "lamp", "--desired", `{"on":true}`, "--reported", `{"on":true}`},
			want: map[string]any{"version": 3.0}},
		{name: "file with version", args: []string{"shadow", "update", "lamp", "--file", file, "--version", "3"},
			want: map[string]any{"version": 4.0}},
		{name: "file from stdin", args: []string{"shadow", "update", "lamp", "--file", "-"}, stdin: `{"state":{"reported":{"color":"blue"}},"clientToken":"from-stdin"}`,
			want: map[string]any{"version": 5.0, "clientToken": "from-stdin"}},
		{name: "server flag before the subcommand", args: []string{"shadow", "--server", url, "get", "lamp", "-o", "text"},
			text: []string{"lamp version 5\n"}},
		{name: "delete, text", args: []string{"shadow", "delete", "lamp", "-o", "text"}, text: []string{"lamp deleted at version 5\n"}},
		{name: "get deleted", args: []string{"shadow", "get", "lamp"}, wantErr: []string{"404"}},
		// Named shadows: --name, before or after the subcommand.
		{name: "named update", args: []string{"shadow", "update", "lamp", "--name", "cfg", "--desired", `{"rate":5}`},
			want: map[string]any{"version": 1.0, "state": map[string]any{"desired": map[string]any{"rate": 5}}}},
		{name: "named get, text", args: []string{"shadow", "get", "lamp", "--name", "cfg", "-o", "text"},
			text: []string{"lamp (shadow cfg) version 1\n", `desired:  {"rate":5}`}},
		{name: "name before the subcommand", args: []string{"shadow", "--name", "cfg", "get", "lamp"},
			want: map[string]any{"version": 1.0}},
		{name: "classic still deleted", args: []string{"shadow", "get", "lamp"}, wantErr: []string{"404", "No shadow exists for device: lamp"}},
		{name: "other named missing", args: []string{"shadow", "get", "lamp", "--name", "nope"}, wantErr: []string{"404", "No shadow exists with name: nope"}},
		{name: "named delete, text", args: []string{"shadow", "delete", "lamp", "--name", "cfg", "-o", "text"},
			text: []string{"lamp (shadow cfg) deleted at version 1\n"}},
	}
	for _, s := range steps {
		args := s.args
		if !slices.Contains(args, "--server") {
			args = append(args, "--server", url)
		}
		args = append(args, "--data-dir", srv.dataDir)
		if s.want != nil && !slices.Contains(args, "-o") {
			args = append(args, "-o", "json") // text is the default
		}
		r := runCLI(t.Context(), s.stdin, args...)
		if s.wantErr != nil {
			oneLine(t, s.name, r.err, s.wantErr...)
			if r.stdout != "" {
				t.Errorf("%s: stdout %q, want nothing", s.name, r.stdout)
			}
			continue
		}
		if r.err != nil {
			t.Errorf("%s: %v", s.name, r.err)
			continue
		}
		if s.want != nil {
			if strings.Count(r.stdout, "\n") != 1 {
				t.Errorf("%s: stdout %q, want one line of JSON", s.name, r.stdout)
			}
			got := decodeJSON(t, r.stdout)
			for k, v := range s.want {
				g, _ := json.Marshal(got[k])
				w, _ := json.Marshal(v)
				if string(g) != string(w) {
					t.Errorf("%s: %s = %s, want %s", s.name, k, g, w)
				}
			}
		}
		for _, sub := range s.text {
			if !strings.Contains(r.stdout, sub) {
				t.Errorf("%s: stdout %q, want it to contain %q", s.name, r.stdout, sub)
			}
		}
	}
}

func TestServerFromEnvironment(t *testing.T) {
	srv := startServer(t)
	t.Setenv("UMBRA_SERVER", srv.mqttURL())
	if r := runCLI(t.Context(), "", "shadow", "update", "env-dev", "--reported", `{"a":1}`); r.err != nil {
		t.Fatalf("update with UMBRA_SERVER set: %v", r.err)
	}
	t.Setenv("UMBRA_SERVER", "tcp://"+closedAddr(t))
	r := runCLI(t.Context(), "", "shadow", "get", "env-dev", "--server", srv.mqttURL())
	if r.err != nil {
		t.Errorf("--server must win over UMBRA_SERVER: %v", r.err)
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestCLIErrors(t *testing.T) {
	srv := startServer(t)
	requests := make(chan string, 100)
	if err := srv.brk.Subscribe("state/#", func(_, topic string, _ []byte) {
		if _, ok, _ := shadow.ParseRequestTopic(topic); ok {
			select {
			case requests <- topic:
			default: // only the first is read
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	badJSON := writeFile(t, "bad.json", `{"state":`)
	noState := writeFile(t, "nostate.json", `{"desired":{"a":1}}`)
	withVersion := writeFile(t, "version.json", `{"state":{"desired":{"a":1}},"version":2}`)
	array := writeFile(t, "array.json", `[{"state":{}}]`)
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"bad --desired JSON", []string{"shadow", "update", "d", "--desired", `{"a":`}, []string{"--desired", "invalid JSON"}},
		{"--reported not an object", []string{"shadow", "update", "d", "--reported", `[1]`}, []string{"--reported", "JSON object or null"}},
		{"--desired a string", []string{"shadow", "update", "d", "--desired", `"red"`}, []string{"--desired", "JSON object or null"}},
		{"--file and --desired", []string{"shadow", "update", "d", "--desired", `{}`, "--file", badJSON}, []string{"--file cannot be combined"}},
		{"nothing to update", []string{"shadow", "update", "d"}, []string{"nothing to update"}},
		{"--version alone", []string{"shadow", "update", "d", "--version", "3"}, []string{"nothing to update"}},
		{"missing file", []string{"shadow", "update", "d", "--file", filepath.Join(t.TempDir(), "none.json")}, []string{"--file", "no such file"}},
		{"bad file JSON", []string{"shadow", "update", "d", "--file", badJSON}, []string{"--file", "invalid JSON"}},
		{"file is an array", []string{"shadow", "update", "d", "--file", array}, []string{"--file", "invalid JSON"}},
		{"file without state", []string{"shadow", "update", "d", "--file", noState}, []string{`no "state"`}},
		{"two versions", []string{"shadow", "update", "d", "--file", withVersion, "--version", "2"}, []string{"--version conflicts"}},
		{"negative version", []string{"shadow", "update", "d", "--desired", `{}`, "--version", "-1"}, []string{"version"}},
		{"invalid id", []string{"shadow", "get", "bad/id"}, []string{`device ID "bad/id"`, "invalid id"}},
		{"invalid id on update", []string{"shadow", "update", "a+b", "--desired", `{}`}, []string{`device ID "a+b"`}},
		{"no id", []string{"shadow", "get"}, []string{"shadow get: missing <id>", "usage: umbra shadow get <id>"}},
		{"two ids", []string{"shadow", "delete", "a", "b"}, []string{"too many arguments", "want <id>"}},
		{"bad output", []string{"shadow", "get", "d", "-o", "xml"}, []string{`--output "xml"`, "text, json or yaml"}},
		{"zero timeout", []string{"shadow", "get", "d", "--timeout", "0s"}, []string{"--timeout"}},
		{"bad timeout", []string{"shadow", "get", "d", "--timeout", "soon"}, []string{"timeout"}},
		{"bad server URL", []string{"shadow", "get", "d", "--server", "http://127.0.0.1:1"}, []string{"scheme"}},
		{"watch: bad kind", []string{"watch", "--kind", "accepted,bogus"}, []string{`kind "bogus"`}},
		{"watch: negative count", []string{"watch", "--count", "-1"}, []string{"--count"}},
		{"watch: invalid id", []string{"watch", "ok", "not/ok"}, []string{`device ID "not/ok"`}},
		{"bad name", []string{"shadow", "get", "d", "--name", "a.b"}, []string{`--name "a.b"`, "Invalid shadow name"}},
		{"reserved name", []string{"shadow", "update", "d", "--name", "$package", "--desired", `{}`}, []string{`--name "$package"`}},
		{"empty name", []string{"shadow", "delete", "d", "--name", ""}, []string{`--name ""`, "1 to 64 bytes"}},
		{"watch: bad name", []string{"watch", "--name", "a/b"}, []string{`--name "a/b"`}},
		{"watch: empty name", []string{"watch", "--name", ""}, []string{`--name ""`}},
		{"list: no id", []string{"shadow", "list"}, []string{"missing <id>"}},
		{"list: invalid id", []string{"shadow", "list", "bad/id"}, []string{`device ID "bad/id"`}},
		{"list: --name", []string{"shadow", "list", "d", "--name", "cfg"}, []string{"--name is not used by shadow list"}},
		{"list: bad output", []string{"shadow", "list", "d", "-o", "xml"}, []string{`--output "xml"`}},
		{"list: bad api", []string{"shadow", "list", "d", "--api", "ftp://x"}, []string{"--api"}},
		{"unknown command", []string{"shadow", "frobnicate", "d"}, []string{"unknown"}},
	}
	for _, tc := range tests {
		args := tc.args
		if !slices.Contains(args, "--server") && !strings.HasPrefix(tc.name, "list:") {
			args = append(args, "--server", srv.mqttURL())
		}
		r := runCLI(t.Context(), "", args...)
		oneLine(t, tc.name, r.err, tc.want...)
	}
	// A marker: every command above has returned, so a request any of them
	// had sent would have been recorded before this one.
	if r := runCLI(t.Context(), "", "shadow", "get", "marker", "--server", srv.mqttURL()); r.err == nil {
		t.Errorf("get marker: no error, want 404")
	}
	select {
	case got := <-requests:
		if got != "state/marker/get" {
			t.Errorf("first request sent: %s, want state/marker/get", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the marker request was not recorded within 5s")
	}
}

func TestUnreachableServer(t *testing.T) {
	addr := closedAddr(t)
	tests := []struct {
		name string
		args []string
	}{
		{"get", []string{"shadow", "get", "d"}},
		{"update", []string{"shadow", "update", "d", "--desired", `{"a":1}`}},
		{"delete", []string{"shadow", "delete", "d"}},
		{"watch", []string{"watch"}},
	}
	for _, tc := range tests {
		r := runCLI(t.Context(), "", append(tc.args, "--server", "tcp://"+addr, "--timeout", "5s")...)
		oneLine(t, tc.name, r.err, "cannot reach the Umbra server at tcp://"+addr, "connection refused", "umbra serve", "--mqtt")
	}
}

func TestCancelledContext(t *testing.T) {
	// What SIGINT does to a request (timeouts are tested in shadowclient).
	srv := startServer(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	r := runCLI(ctx, "", "shadow", "get", "d", "--server", srv.mqttURL())
	oneLine(t, "cancelled", r.err, "context canceled")
}

// startWatch runs `umbra watch args…` in the background; the result arrives
// on the returned channel.
func startWatch(t *testing.T, ctx context.Context, args ...string) <-chan cliResult {
	t.Helper()
	res := make(chan cliResult, 1)
	if !slices.Contains(args, "-o") {
		args = append(args, "-o", "json") // text is the default
	}
	go func() { res <- runCLI(ctx, "", append([]string{"watch"}, args...)...) }()
	return res
}

func waitResult(t *testing.T, res <-chan cliResult) cliResult {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not exit within 10s")
		return cliResult{}
	}
}

func TestWatchCommand(t *testing.T) {
	srv := startServer(t)
	url := srv.mqttURL()
	update := func(id, flag, value string) {
		t.Helper()
		if r := runCLI(t.Context(), "", "shadow", "update", id, flag, value, "--server", url); r.err != nil {
			t.Fatalf("update %s: %v", id, r.err)
		}
	}

	t.Run("all devices, count", func(t *testing.T) {
		res := startWatch(t, t.Context(), "--count", "3", "--server", url)
		srv.waitSubscribed(t, "state/any/update/documents")
		update("w1", "--desired", `{"color":"red"}`)
		r := waitResult(t, res)
		if r.err != nil {
			t.Fatalf("watch: %v", r.err)
		}
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		if len(lines) != 3 {
			t.Fatalf("watch printed %d lines, want 3: %q", len(lines), r.stdout)
		}
		var kinds []string
		for _, l := range lines {
			ev := decodeJSON(t, l)
			kind, _ := ev["kind"].(string)
			kinds = append(kinds, kind)
			if ev["device"] != "w1" || ev["topic"] != "state/w1/update/"+kind {
				t.Errorf("event %s: want device w1 and topic state/w1/update/%s", l, kind)
			}
			p, _ := ev["payload"].(map[string]any)
			if kind == "documents" {
				p, _ = p["current"].(map[string]any)
			}
			if p["version"] != 1.0 {
				t.Errorf("event %s: payload is not the version 1 message", l)
			}
		}
		slices.Sort(kinds)
		if want := []string{"accepted", "delta", "documents"}; !slices.Equal(kinds, want) {
			t.Errorf("kinds %v, want %v", kinds, want)
		}
	})

	t.Run("one device, deltas, text", func(t *testing.T) {
		res := startWatch(t, t.Context(), "w3", "--kind", "delta", "--count", "1", "-o", "text", "--server", url)
		srv.waitSubscribed(t, "state/w3/update/delta")
		update("w2", "--desired", `{"x":1}`)
		update("w3", "--desired", `{"x":2}`)
		r := waitResult(t, res)
		if r.err != nil {
			t.Fatalf("watch: %v", r.err)
		}
		if !strings.HasPrefix(r.stdout, `w3 delta {"state":{"x":2}`) || strings.Count(r.stdout, "\n") != 1 {
			t.Errorf("watch output %q, want one line starting w3 delta {\"state\":{\"x\":2}", r.stdout)
		}
	})

	t.Run("named shadow", func(t *testing.T) {
		res := startWatch(t, t.Context(), "w4", "--name", "cfg", "--kind", "delta", "--count", "1", "--server", url)
		srv.waitSubscribed(t, "state/w4/shadow/cfg/update/delta")
		update("w4", "--desired", `{"classic":1}`) // the classic shadow: not watched
		if r := runCLI(t.Context(), "", "shadow", "update", "w4", "--name", "cfg", "--desired", `{"x":3}`, "--server", url); r.err != nil {
			t.Fatal(r.err)
		}
		r := waitResult(t, res)
		if r.err != nil {
			t.Fatalf("watch: %v", r.err)
		}
		ev := decodeJSON(t, r.stdout)
		if ev["device"] != "w4" || ev["name"] != "cfg" || ev["topic"] != "state/w4/shadow/cfg/update/delta" {
			t.Errorf("watch --name cfg printed %s, want the delta of w4's shadow cfg", r.stdout)
		}
	})

	t.Run("every named shadow, text", func(t *testing.T) {
		res := startWatch(t, t.Context(), "--name", "+", "--kind", "accepted", "--count", "1", "-o", "text", "--server", url)
		srv.waitSubscribed(t, "state/any/shadow/any/update/accepted")
		update("w5", "--reported", `{"classic":1}`) // the classic shadow: not watched
		if r := runCLI(t.Context(), "", "shadow", "update", "w5", "--name", "ota", "--reported", `{"y":1}`, "--server", url); r.err != nil {
			t.Fatal(r.err)
		}
		r := waitResult(t, res)
		if r.err != nil || !strings.HasPrefix(r.stdout, `w5/ota accepted {"state":{"reported":{"y":1}}`) {
			t.Errorf("watch --name + printed %q (%v), want one line for w5/ota", r.stdout, r.err)
		}
	})

	t.Run("interrupted", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		res := startWatch(t, ctx, "quiet", "--server", url)
		srv.waitSubscribed(t, "state/quiet/update/accepted")
		cancel()
		if r := waitResult(t, res); r.err != nil || r.stdout != "" {
			t.Errorf("interrupted watch: err %v stdout %q, want no error and no output", r.err, r.stdout)
		}
	})

	t.Run("server stops", func(t *testing.T) {
		own := startServer(t)
		res := startWatch(t, t.Context(), "--server", own.mqttURL())
		own.waitSubscribed(t, "state/any/update/delta")
		if err := own.brk.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		oneLine(t, "watch when the server stops", waitResult(t, res).err, "connection lost")
	})
}

// TestHTTPUpdateReachesMQTT: an update through the HTTP API of a running
// server is published over MQTT, where `umbra watch` sees it, and the CLI
// reads the same document the API returns.
func TestHTTPUpdateReachesMQTT(t *testing.T) {
	srv := startServer(t)
	if srv.api == nil {
		t.Fatal("startServer: no HTTP API")
	}
	base := "http://" + srv.api.Addr().String()
	res := startWatch(t, t.Context(), "h1", "--kind", "delta", "--count", "1", "--server", srv.mqttURL())
	srv.waitSubscribed(t, "state/h1/update/delta")

	resp, err := http.Post(base+"/v1/devices/h1/shadow?clientToken=http-1", "application/json",
		strings.NewReader(`{"state":{"desired":{"color":"red"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST: %d %s, want 200", resp.StatusCode, body)
	}
	r := waitResult(t, res)
	if r.err != nil {
		t.Fatalf("watch: %v", r.err)
	}
	ev := decodeJSON(t, r.stdout)
	p, _ := ev["payload"].(map[string]any)
	if ev["kind"] != "delta" || p["clientToken"] != "http-1" || p["version"] != 1.0 {
		t.Errorf("watch saw %s, want the version 1 delta with clientToken http-1", r.stdout)
	}

	// The same document over HTTP and over MQTT (timestamps aside).
	resp, err = http.Get(base + "/v1/devices/h1/shadow")
	if err != nil {
		t.Fatal(err)
	}
	httpDoc, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	cli := runCLI(t.Context(), "", "shadow", "get", "h1", "-o", "json", "--server", srv.mqttURL())
	if cli.err != nil {
		t.Fatal(cli.err)
	}
	for _, k := range []string{"state", "metadata", "version"} {
		h, _ := json.Marshal(decodeJSON(t, string(httpDoc))[k])
		m, _ := json.Marshal(decodeJSON(t, cli.stdout)[k])
		if string(h) != string(m) {
			t.Errorf("%s: HTTP %s, MQTT %s, want the same", k, h, m)
		}
	}
	http.DefaultClient.CloseIdleConnections()
}

// TestShadowListCommand lists a device's shadows over the HTTP API, as a
// table and as the server's JSON.
func TestShadowListCommand(t *testing.T) {
	srv, _ := startSecureServer(t)
	api := "http://" + srv.api.Addr().String()
	for _, name := range []string{"", "zeta", "alpha"} {
		args := []string{"shadow", "update", "lamp", "--reported", `{"on":true}`, "--server", srv.mqttURL(), "--data-dir", srv.dataDir}
		if name != "" {
			args = append(args, "--name", name)
		}
		if r := runCLI(t.Context(), "", args...); r.err != nil {
			t.Fatalf("update %q: %v", name, r.err)
		}
	}
	r := runCLI(t.Context(), "", "shadow", "list", "lamp", "--api", api, "--data-dir", srv.dataDir)
	if r.err != nil {
		t.Fatal(r.err)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	var names []string
	for _, l := range lines[1:] {
		names = append(names, strings.Fields(l)[0]+"@"+strings.Fields(l)[1])
	}
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "NAME") || strings.Join(names, " ") != "-@1 alpha@1 zeta@1" {
		t.Errorf("shadow list printed %q, want a header and -, alpha, zeta at version 1", r.stdout)
	}
	r = runCLI(t.Context(), "", "shadow", "list", "lamp", "-o", "json", "--api", api, "--data-dir", srv.dataDir)
	if r.err != nil {
		t.Fatal(r.err)
	}
	got := decodeJSON(t, r.stdout)
	if list, _ := got["shadows"].([]any); got["device"] != "lamp" || len(list) != 3 {
		t.Errorf("shadow list -o json printed %s, want device lamp with 3 shadows", r.stdout)
	}
	r = runCLI(t.Context(), "", "shadow", "list", "lamp", "--api", api, "--data-dir", t.TempDir())
	oneLine(t, "list without a credential", r.err, "401")
}
