package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// printedValue is one key of serve --print-config's output.
type printedValue struct {
	value  string // a list's items joined with ","
	source string // "default", "flag", "env UMBRA_…", "file <path>:<line>"
}

// parsePrinted parses serve --print-config's output.
func parsePrinted(t *testing.T, out string) map[string]printedValue {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(out), &doc); err != nil || len(doc.Content) != 1 {
		t.Fatalf("print-config output is not one YAML document (%v):\n%s", err, out)
	}
	m := doc.Content[0]
	got := map[string]printedValue{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		val := v.Value
		if v.Kind == yaml.SequenceNode {
			var items []string
			for _, it := range v.Content {
				items = append(items, it.Value)
			}
			val = strings.Join(items, ",")
		}
		got[k.Value] = printedValue{value: val, source: strings.TrimPrefix(v.LineComment, "# ")}
	}
	return got
}

// printConfigOf runs serve --print-config with args in-process.
func printConfigOf(t *testing.T, args ...string) map[string]printedValue {
	t.Helper()
	r := runCLI(t.Context(), "", append([]string{"serve", "--print-config"}, args...)...)
	if r.err != nil {
		t.Fatalf("serve --print-config %v: %v\n%s", args, r.err, r.stderr)
	}
	return parsePrinted(t, r.stdout)
}

func writeConfig(t *testing.T, dir, text string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "umbra.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestServeConfigPrecedence: for keys of every kind of value, each
// combination of a flag, an environment variable and a config file
// entry: the flag wins over the variable, the variable over the file, the
// file over the default; --print-config names the source.
func TestServeConfigPrecedence(t *testing.T) {
	type layers struct{ flag, env, file, def string }
	keys := []struct {
		key string
		// In, as given on the command line (and in the variable), and as a
		// YAML value in the file.
		in layers
		// Want, as --print-config shows it (relative paths resolved).
		want layers
	}{
		{"mqtt-addr", layers{"127.0.0.1:1001", "127.0.0.1:1002", `"127.0.0.1:1003"`, ""},
			layers{"127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003", "127.0.0.1:1883"}},
		{"max-packet-size", layers{"2001", "2002", "2003", ""}, layers{"2001", "2002", "2003", "131072"}},
		{"url-ttl", layers{"1m", "2m", "3m", ""}, layers{"1m0s", "2m0s", "3m0s", "1h0m0s"}},
		{"device-rate", layers{"1.5", "2.5", "3.5", ""}, layers{"1.5", "2.5", "3.5", "20"}},
		{"insecure-anonymous", layers{"true", "false", "true", ""}, layers{"true", "false", "true", "false"}},
		{"allowed-origins", layers{"https://a.example", "https://b.example,https://c.example", "[https://d.example, https://e.example]", ""},
			layers{"https://a.example", "https://b.example,https://c.example", "https://d.example,https://e.example", ""}},
		// Paths: the flag's and the variable's against the working
		// directory, the file's against the file's directory.
		{"data-dir", layers{"flagdir", "envdir", "filedir", ""}, layers{"<cwd>/flagdir", "<cwd>/envdir", "<conf>/filedir", "<cwd>/umbra-data"}},
		{"client-ca", layers{"a.pem,/abs/b.pem", "c.pem", "[d.pem, /abs/e.pem]", ""},
			layers{"<cwd>/a.pem,/abs/b.pem", "<cwd>/c.pem", "<conf>/d.pem,/abs/e.pem", ""}},
	}
	cwd := t.TempDir()
	t.Chdir(cwd)
	conf := filepath.Join(t.TempDir(), "etc")
	expand := func(s string) string {
		return strings.ReplaceAll(strings.ReplaceAll(s, "<cwd>", cwd), "<conf>", conf)
	}
	for _, k := range keys {
		for combo := range 8 {
			useFlag, useEnv, useFile := combo&1 != 0, combo&2 != 0, combo&4 != 0
			var name []string
			for _, u := range []struct {
				on bool
				n  string
			}{{useFlag, "flag"}, {useEnv, "env"}, {useFile, "file"}} {
				if u.on {
					name = append(name, u.n)
				}
			}
			if len(name) == 0 {
				name = []string{"default"}
			}
			t.Run(k.key+"/"+strings.Join(name, "+"), func(t *testing.T) {
				env := "UMBRA_" + strings.ToUpper(strings.ReplaceAll(k.key, "-", "_"))
				var args []string
				if useFlag {
					args = append(args, "--"+k.key+"="+k.in.flag)
				}
				if useEnv {
					t.Setenv(env, k.in.env)
				}
				file := writeConfig(t, conf, "# a comment\nlog-level: info\n"+k.key+": "+k.in.file+"\n")
				if useFile {
					args = append(args, "--config", file)
				}
				want, wantSource := expand(k.want.def), "default"
				switch {
				case useFlag:
					want, wantSource = expand(k.want.flag), "flag"
				case useEnv:
					want, wantSource = expand(k.want.env), "env "+env
				case useFile:
					want, wantSource = expand(k.want.file), "file "+file+":3"
				}
				got := printConfigOf(t, args...)[k.key]
				if got.value != want || got.source != wantSource {
					t.Errorf("%s = %q from %q, want %q from %q", k.key, got.value, got.source, want, wantSource)
				}
			})
		}
	}
}

// TestServeConfigKeysMatchFlags: every flag of serve but --config and
// --print-config is a key of the config file, and nothing else is; and
// packaging/umbra.yaml, the sample config file, lists every key with its
// default.
func TestServeConfigKeysMatchFlags(t *testing.T) {
	fs := newServeFlagSet()
	keys := configKeys(fs)
	var flags []string
	fs.VisitAll(func(f *pflag.Flag) { flags = append(flags, f.Name) })
	for name := range notConfigKeys {
		if name != "help" && fs.Lookup(name) == nil {
			t.Errorf("notConfigKeys names %q, which is no flag of serve", name)
		}
	}
	if len(keys) != len(flags)-len(notConfigKeys)+1 { // help is cobra's, not in fs
		t.Errorf("%d keys for %d flags: %v", len(keys), len(flags), keys)
	}
	// Each key is accepted in a file, with the flag's default as value,
	// and is then that file's.
	var text strings.Builder
	for _, key := range keys {
		var b bytes.Buffer
		enc := yaml.NewEncoder(&b)
		if err := enc.Encode(&yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
			{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, configValueNode(fs.Lookup(key))}}); err != nil {
			t.Fatal(err)
		}
		text.Write(b.Bytes())
	}
	file := writeConfig(t, t.TempDir(), text.String())
	for key, v := range printConfigOf(t, "--config", file) {
		if !strings.HasPrefix(v.source, "file ") {
			t.Errorf("key %s from %q, want the file", key, v.source)
		}
	}
	// A name that is no flag is refused.
	for _, bad := range []string{"config", "print-config", "help", "no-such-key"} {
		file := writeConfig(t, t.TempDir(), bad+": x\n")
		r := runCLI(t.Context(), "", "serve", "--print-config", "--config", file)
		if r.err == nil || !strings.Contains(r.err.Error(), `unknown key "`+bad+`"`) {
			t.Errorf("file with key %s: %v, want an unknown key error", bad, r.err)
		}
	}

	// The sample: its keys, uncommented, are exactly the flags', and each
	// commented one shows the flag's default.
	sample, err := os.ReadFile("../../packaging/umbra.yaml")
	if err != nil {
		t.Fatal(err)
	}
	commented := regexp.MustCompile(`(?m)^#([a-z0-9-]+): (.*)$`)
	all := commented.ReplaceAllString(string(sample), "$1: $2")
	got := printConfigOf(t, "--config", writeConfig(t, t.TempDir(), all))
	var sampleKeys []string
	for k := range got {
		if strings.HasPrefix(got[k].source, "file ") {
			sampleKeys = append(sampleKeys, k)
		}
	}
	slices.Sort(sampleKeys)
	for _, k := range keys {
		if !slices.Contains(sampleKeys, k) {
			t.Errorf("packaging/umbra.yaml lacks key %s: add a line \"#%s: <default>\" in the right section", k, k)
		}
	}
	defaults := printConfigOf(t)
	onlyCommented := strings.Join(func() []string {
		var lines []string
		for _, m := range commented.FindAllStringSubmatch(string(sample), -1) {
			lines = append(lines, m[1]+": "+m[2])
		}
		return lines
	}(), "\n")
	for k, v := range printConfigOf(t, "--config", writeConfig(t, t.TempDir(), onlyCommented)) {
		if strings.HasPrefix(v.source, "file ") && v.value != defaults[k].value {
			t.Errorf("packaging/umbra.yaml shows #%s: %s, but the default is %q", k, v.value, defaults[k].value)
		}
	}
}

// TestServeConfigBadFile: every mistake in a config file stops serve before
// it opens anything, with an error naming the file, the line and the key.
func TestServeConfigBadFile(t *testing.T) {
	tests := []struct {
		name string
		text string
		env  map[string]string
		want []string // besides the file's path
	}{
		{"unknown key", "log-level: info\ndata-dri: x\n", nil, []string{"line 2", `unknown key "data-dri" (did you mean data-dir?)`}},
		{"mode flag as key", "print-config: true\n", nil, []string{"line 1", `unknown key "print-config"`}},
		{"text for an integer", "max-packet-size: big\n", nil, []string{"line 1", `max-packet-size: "big": want an integer`}},
		{"number for a duration", "url-ttl: 60\n", nil, []string{"line 1", `url-ttl: "60": want a duration`}},
		{"bad duration", "url-ttl: soon\n", nil, []string{"line 1", "url-ttl:", `invalid duration "soon"`}},
		{"list for a string", "mqtt-addr: [a, b]\n", nil, []string{"line 1", "mqtt-addr: want a string", "not a list"}},
		{"mapping for a string", "log-level:\n  a: 1\n", nil, []string{"line 1", "log-level: want a string", "not a mapping"}},
		{"no value", "tls-cert:\n", nil, []string{"line 1", "tls-cert: no value"}},
		{"text for a bool", "insecure-anonymous: \"yes\"\n", nil, []string{"line 1", `insecure-anonymous: "yes": want true or false`}},
		{"bool for a string", "log-level: true\n", nil, []string{"line 1", `log-level: "true": want a string`}},
		{"number in a list", "client-ca: [ca.pem, 7]\n", nil, []string{"line 1", "client-ca: line 1: want a list of strings"}},
		{"value out of range", "\nmax-packet-size: 10\n", nil, []string{"line 2", "max-packet-size: --max-packet-size 10: must be at least 1024"}},
		{"value refused later", "log-level: info\ndevice-rate: 0\n", nil, []string{"line 2", "device-rate: --device-rate 0"}},
		{"bad log format", "log-format: xml\n", nil, []string{"line 1", `log-format: --log-format "xml"`}},
		{"bad value overridden", "max-packet-size: big\n", map[string]string{"UMBRA_MAX_PACKET_SIZE": "4096"}, []string{"line 1", `max-packet-size: "big"`}},
		{"syntax", "data-dir: [unclosed\n", nil, []string{"line 1"}},
		{"key twice", "log-level: info\nlog-level: warn\n", nil, []string{"line 2", "key log-level given twice (first on line 1)"}},
		{"two documents", "log-level: info\n---\nlog-level: warn\n", nil, []string{"line 2", "a second YAML document"}},
		{"not a mapping", "- data-dir\n", nil, []string{"line 1", "want a mapping of keys to values"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			dir := t.TempDir()
			file := writeConfig(t, dir, tc.text)
			dataDir := filepath.Join(dir, "data")
			// Were the file accepted, serve would run on free ports until
			// the context ends.
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			r := runCLI(ctx, "", "serve", "--config", file, "--data-dir", dataDir,
				"--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--http-addr", "")
			if r.err == nil {
				t.Fatalf("serve with %q: no error", tc.text)
			}
			for _, w := range append([]string{"config file " + file + ": "}, tc.want...) {
				if !strings.Contains(r.err.Error(), w) {
					t.Errorf("serve with %q: %v\nwant it to contain %q", tc.text, r.err, w)
				}
			}
			if _, err := os.Stat(dataDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("data dir after the refused file: %v, want it not created", err)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "nope.yaml")
		r := runCLI(t.Context(), "", "serve", "--print-config", "--config", file)
		if r.err == nil || !strings.Contains(r.err.Error(), "config file "+file+": open") {
			t.Fatalf("serve --config %s = %v, want an error naming the file", file, r.err)
		}
	})
	t.Run("environment named", func(t *testing.T) {
		t.Setenv("UMBRA_MAX_PACKET_SIZE", "10")
		r := runCLI(t.Context(), "", "serve", "--data-dir", t.TempDir())
		if r.err == nil || !strings.Contains(r.err.Error(), "environment UMBRA_MAX_PACKET_SIZE: --max-packet-size 10") {
			t.Fatalf("serve with UMBRA_MAX_PACKET_SIZE=10 = %v, want an error naming the variable", r.err)
		}
	})
}

// TestServePrintConfigRoundTrip: --print-config's output is a config file
// that yields the same configuration.
func TestServePrintConfigRoundTrip(t *testing.T) {
	t.Setenv("UMBRA_WS_ADDR", "")
	first := runCLI(t.Context(), "", "serve", "--print-config", "--max-subscriptions", "7",
		"--allowed-origins", "https://a.example,https://b.example", "--url-ttl", "90s", "--device-rate", "-1", "--log-level", "debug")
	if first.err != nil {
		t.Fatal(first.err)
	}
	file := writeConfig(t, t.TempDir(), first.stdout)
	second := printConfigOf(t, "--config", file)
	for k, v := range parsePrinted(t, first.stdout) {
		if second[k].value != v.value {
			t.Errorf("%s: %q after the round trip, want %q", k, second[k].value, v.value)
		}
	}
}

// TestServeConfigFileProcess runs the binary with a config file given
// relative to another working directory: the data dir, relative in the
// file, is the file's neighbour, serve logs it absolute, and
// --print-config shows it so without creating it. A bad file makes the
// process exit 1 with the error on stderr.
func TestServeConfigFileProcess(t *testing.T) {
	bin := buildUmbra(t)
	root := t.TempDir()
	writeConfig(t, filepath.Join(root, "etc"), "data-dir: data\nmqtt-addr: 127.0.0.1:0\nws-addr: \"\"\nhttp-addr: 127.0.0.1:0\n")
	work := filepath.Join(root, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(root, "etc", "data")

	pc := exec.CommandContext(t.Context(), bin, "serve", "--config", "../etc/umbra.yaml", "--print-config")
	pc.Dir = work
	out, err := pc.Output()
	if err != nil {
		t.Fatalf("serve --print-config: %v", err)
	}
	if got := parsePrinted(t, string(out))["data-dir"].value; got != dataDir {
		t.Errorf("print-config data-dir = %q, want %q", got, dataDir)
	}
	if _, err := os.Stat(dataDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data dir after --print-config: %v, want it not created", err)
	}

	cmd := exec.Command(bin, "serve", "--config", "../etc/umbra.yaml")
	cmd.Dir = work
	_, _, line := startServeCmd(t, cmd)
	if !strings.Contains(line, "data_dir="+dataDir+" ") {
		t.Errorf("serving log line %q, want data_dir=%s", line, dataDir)
	}
	if _, err := os.Stat(filepath.Join(dataDir, adminTokenFile)); err != nil {
		t.Errorf("admin token in the file's data dir: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	bad := writeConfig(t, filepath.Join(root, "bad"), "max-packet-size: big\n")
	var stderr bytes.Buffer
	bc := exec.CommandContext(t.Context(), bin, "serve", "--config", bad)
	bc.Stderr = &stderr
	err = bc.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("serve with a bad file: %v, want exit status 1", err)
	}
	if want := "umbra: config file " + bad + `: line 1: max-packet-size: "big": want an integer`; !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
}

// TestServeConfigFromEnvironment: UMBRA_CONFIG names the file as --config
// does, and the flag wins over it.
func TestServeConfigFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	envFile := writeConfig(t, filepath.Join(dir, "env"), "log-level: warn\n")
	flagFile := writeConfig(t, filepath.Join(dir, "flag"), "log-level: error\n")
	t.Setenv("UMBRA_CONFIG", envFile)
	if got := printConfigOf(t)["log-level"]; got.value != "warn" || got.source != "file "+envFile+":1" {
		t.Errorf("with UMBRA_CONFIG: log-level %+v, want warn from %s", got, envFile)
	}
	if got := printConfigOf(t, "--config", flagFile)["log-level"]; got.value != "error" || got.source != "file "+flagFile+":1" {
		t.Errorf("with UMBRA_CONFIG and --config: log-level %+v, want error from %s", got, flagFile)
	}
}

// TestServePathFlagsMarked: every flag that names a file or directory is
// marked as a path, so that a config file's relative value resolves
// against the file's directory.
func TestServePathFlagsMarked(t *testing.T) {
	pathLike := regexp.MustCompile(`(-file|-dir|-cert|-key|-ca)$`)
	notPaths := map[string]bool{"client-cert": true} // optional or required
	newServeFlagSet().VisitAll(func(f *pflag.Flag) {
		if pathLike.MatchString(f.Name) && !notPaths[f.Name] && !isPath(f) {
			t.Errorf("flag --%s looks like a path but is not marked: add it to markPath in addFlags (or to notPaths here)", f.Name)
		}
	})
}
