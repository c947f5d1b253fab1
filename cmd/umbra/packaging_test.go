package main

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/umbra-iot/umbra/internal/testbin"
)

// The packaging files are checked here as far as this machine allows: no
// Docker engine runs on it (docker build and docker compose cannot run),
// and systemd is installed but not running (systemd-analyze verify and
// security --offline work on a unit file). What these tests cannot check
// is listed in README "Running as a service".

// repoRoot is the module's root, from cmd/umbra.
const repoRoot = "../.."

// instruction is one Dockerfile instruction.
type instruction struct {
	cmd  string // upper case
	args string
}

// parseDockerfile returns the instructions of a Dockerfile, continuation
// lines joined, comments dropped.
func parseDockerfile(t *testing.T, path string) []instruction {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []instruction
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || line == "" && cur.Len() == 0 {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			cur.WriteString(strings.TrimSuffix(line, `\`) + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// execForm parses a JSON exec form ["a", "b"].
func execForm(t *testing.T, what, s string) []string {
	t.Helper()
	var argv []string
	if err := json.Unmarshal([]byte(s), &argv); err != nil || len(argv) == 0 {
		t.Fatalf("%s %s: want the JSON exec form [\"…\"]: %v", what, s, err)
	}
	return argv
}

// checkCommandLine parses argv (without the program) as umbra's command
// line, as main would, without running it; it returns the command.
func checkCommandLine(t *testing.T, what string, argv []string) *cobra.Command {
	t.Helper()
	root := newRootCmd()
	cmd, rest, err := root.Find(argv)
	if err != nil || cmd == root {
		t.Fatalf("%s: %q is no umbra command: %v", what, argv, err)
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Fatalf("%s: %q: %v", what, argv, err)
	}
	if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
		t.Fatalf("%s: %q: %v", what, argv, err)
	}
	return cmd
}

// checkEnvNames checks that each UMBRA_<FLAG> variable names a flag of cmd.
func checkEnvNames(t *testing.T, what string, cmd *cobra.Command, names []string) {
	t.Helper()
	for _, name := range names {
		flag, ok := strings.CutPrefix(name, "UMBRA_")
		if !ok {
			continue
		}
		flag = strings.ToLower(strings.ReplaceAll(flag, "_", "-"))
		if cmd.Flags().Lookup(flag) == nil {
			t.Errorf("%s: %s names no flag of umbra %s (--%s)", what, name, cmd.Name(), flag)
		}
	}
}

// serveDefaultPorts are the ports of serve's default listeners.
func serveDefaultPorts(t *testing.T) []string {
	t.Helper()
	fs := newServeFlagSet()
	var ports []string
	for _, name := range []string{"mqtt-addr", "ws-addr", "http-addr"} {
		_, port, err := net.SplitHostPort(fs.Lookup(name).DefValue)
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, port)
	}
	return ports
}

// TestDockerfile checks the Dockerfile without a Docker engine: it runs the
// build stage's go build line, and checks that what the final stage copies
// exists, the user is not root, the exposed ports are serve's, the volume is
// the data dir, and the variables, the command and the health check are
// valid umbra command lines.
func TestDockerfile(t *testing.T) {
	ins := parseDockerfile(t, filepath.Join(repoRoot, "Dockerfile"))
	var (
		froms, copies, runs, exposes []string
		env                          = map[string]string{}
		user, volume, health, entry  string
		cmd                          string
		goVersion                    string
	)
	for _, in := range ins {
		switch in.cmd {
		case "ARG":
			if v, ok := strings.CutPrefix(in.args, "GO_VERSION="); ok {
				goVersion = v
			}
		case "FROM":
			froms = append(froms, in.args)
		case "COPY":
			copies = append(copies, in.args)
		case "RUN":
			runs = append(runs, in.args)
		case "ENV":
			for _, kv := range strings.Fields(in.args) {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = v
			}
		case "USER":
			user = in.args
		case "VOLUME":
			volume = in.args
		case "EXPOSE":
			exposes = strings.Fields(in.args)
		case "HEALTHCHECK":
			health = in.args
		case "ENTRYPOINT":
			entry = in.args
		case "CMD":
			cmd = in.args
		}
	}

	// The Go release is go.mod's.
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod); m == nil || string(m[1]) != goVersion {
		t.Errorf("Dockerfile ARG GO_VERSION=%s, want go.mod's go line %s", goVersion, m[1])
	}
	if len(froms) != 2 || !strings.HasPrefix(froms[0], "golang:${GO_VERSION}") || !strings.HasSuffix(froms[0], " AS build") ||
		!strings.HasPrefix(froms[1], "gcr.io/distroless/static") {
		t.Errorf("FROM %q: want a golang:${GO_VERSION} build stage and a distroless/static final stage", froms)
	}

	// The build stage's go build line, run here as the Dockerfile runs it.
	var build string
	for _, r := range runs {
		if strings.Contains(r, "go build") {
			build = r
		}
	}
	if build == "" || !strings.Contains(build, "CGO_ENABLED=0") || !strings.Contains(build, "-trimpath") || !strings.Contains(build, "-o /out/umbra") {
		t.Fatalf("RUN %q: want a static (CGO_ENABLED=0), -trimpath go build of /out/umbra", build)
	}
	out := t.TempDir()
	sh := exec.CommandContext(t.Context(), "sh", "-c", strings.ReplaceAll(build, "/out/", out+"/"))
	sh.Dir = repoRoot
	sh.Env = append(os.Environ(), "VERSION=v0.0.0-docker-test")
	if b, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("the Dockerfile's build line: %v\n%s", err, b)
	}
	bin := filepath.Join(out, "umbra")
	if b, err := exec.CommandContext(t.Context(), bin, "version").Output(); err != nil || !strings.HasPrefix(string(b), "umbra v0.0.0-docker-test ") {
		t.Errorf("umbra version of the image's binary = %q, %v; want the VERSION build argument", b, err)
	}
	if f, err := elf.Open(bin); err != nil {
		t.Error(err)
	} else {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Error("the image's binary is dynamically linked; distroless/static has no libc")
			}
		}
		f.Close()
	}

	// What the final stage copies from the context exists and is not
	// excluded; what it copies from the build stage is made there.
	ignore, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	ignored := strings.Fields(string(regexp.MustCompile(`(?m)#.*$`).ReplaceAll(ignore, nil)))
	for _, must := range []string{"umbra-data", "**/umbra-data", ".git", "bin", "dist", "scratch"} {
		if !slices.Contains(ignored, must) {
			t.Errorf(".dockerignore lacks %s: it must never reach the build context", must)
		}
	}
	for _, c := range copies {
		fields := strings.Fields(c)
		var from string
		var srcs []string
		for _, f := range fields[:len(fields)-1] {
			if v, ok := strings.CutPrefix(f, "--from="); ok {
				from = v
			} else if !strings.HasPrefix(f, "--") {
				srcs = append(srcs, f)
			}
		}
		for _, src := range srcs {
			switch {
			case from == "build":
				if !strings.HasPrefix(src, "/out/") || !slices.ContainsFunc(runs, func(r string) bool { return strings.Contains(r, src) }) {
					t.Errorf("COPY --from=build %s: not made by a RUN of the build stage", src)
				}
			case src == ".":
			default:
				if _, err := os.Stat(filepath.Join(repoRoot, src)); err != nil {
					t.Errorf("COPY %s: %v", src, err)
				}
				if slices.Contains(ignored, strings.TrimSuffix(src, "/")) {
					t.Errorf("COPY %s: excluded by .dockerignore", src)
				}
			}
		}
	}

	// Not root.
	if uid, _, _ := strings.Cut(user, ":"); uid == "" || uid == "0" || uid == "root" {
		t.Errorf("USER %q: want a non-root user", user)
	} else if n, err := strconv.Atoi(uid); err != nil || n < 1000 {
		t.Errorf("USER %q: want a numeric non-system uid (distroless nonroot is 65532)", user)
	}

	// The command, the health check and the variables are umbra's.
	argv := append(execForm(t, "ENTRYPOINT", entry), execForm(t, "CMD", cmd)...)
	if argv[0] != "/usr/local/bin/umbra" {
		t.Errorf("ENTRYPOINT %s: want /usr/local/bin/umbra", entry)
	}
	serve := checkCommandLine(t, "ENTRYPOINT+CMD", argv[1:])
	if serve.Name() != "serve" {
		t.Errorf("the image runs umbra %s, want serve", serve.Name())
	}
	names := slices.Collect(func(yield func(string) bool) {
		for k := range env {
			if !yield(k) {
				return
			}
		}
	})
	checkEnvNames(t, "ENV", serve, names)
	hc := regexp.MustCompile(`CMD (\[.*\])$`).FindStringSubmatch(health)
	if hc == nil {
		t.Fatalf("HEALTHCHECK %q: want CMD [\"/usr/local/bin/umbra\", \"serve\", \"--healthcheck\"]", health)
	}
	hargv := execForm(t, "HEALTHCHECK", hc[1])
	if hargv[0] != argv[0] || !slices.Contains(hargv, "--healthcheck") || checkCommandLine(t, "HEALTHCHECK", hargv[1:]).Name() != "serve" {
		t.Errorf("HEALTHCHECK %q: want umbra serve --healthcheck", hc[1])
	}

	// The image's configuration (the file UMBRA_CONFIG names, with the
	// image's variables): it loads, its listeners use serve's default
	// ports, which are the exposed ones, and the data dir is the volume.
	conf := strings.TrimPrefix(env["UMBRA_CONFIG"], "/etc/umbra/")
	if conf == env["UMBRA_CONFIG"] || !slices.Contains(copies, "packaging/docker.yaml "+env["UMBRA_CONFIG"]) {
		t.Fatalf("UMBRA_CONFIG=%s: want /etc/umbra/<file>, copied from packaging/docker.yaml", env["UMBRA_CONFIG"])
	}
	pc := exec.CommandContext(t.Context(), bin, "serve", "--print-config")
	pc.Env = append(os.Environ(), "UMBRA_CONFIG="+filepath.Join(repoRoot, "packaging", "docker.yaml"), "UMBRA_DATA_DIR="+env["UMBRA_DATA_DIR"])
	printed, err := pc.Output()
	if err != nil {
		t.Fatalf("serve --print-config with the image's configuration: %v", err)
	}
	got := parsePrinted(t, string(printed))
	var ports []string
	for _, name := range []string{"mqtt-addr", "ws-addr", "http-addr"} {
		host, port, err := net.SplitHostPort(got[name].value)
		if err != nil || host != "" {
			t.Errorf("image %s = %q: want :<port>, every interface of the container", name, got[name].value)
		}
		ports = append(ports, port)
	}
	if want := serveDefaultPorts(t); !slices.Equal(ports, want) || !slices.Equal(exposes, want) {
		t.Errorf("image listeners on %v, EXPOSE %v; want serve's default ports %v", ports, exposes, want)
	}
	if vol := execForm(t, "VOLUME", volume); len(vol) != 1 || vol[0] != env["UMBRA_DATA_DIR"] || got["data-dir"].value != vol[0] {
		t.Errorf("VOLUME %s, UMBRA_DATA_DIR %s, effective data-dir %s: want one and the same", volume, env["UMBRA_DATA_DIR"], got["data-dir"].value)
	}
	if !slices.ContainsFunc(copies, func(c string) bool {
		return strings.Contains(c, "--chown=65532:65532") && strings.HasSuffix(c, " "+env["UMBRA_DATA_DIR"])
	}) {
		t.Errorf("no COPY --chown=65532:65532 … %s: a new volume would be root's and not writable", env["UMBRA_DATA_DIR"])
	}
}

// TestDockerCompose checks docker-compose.yml against the Dockerfile and
// umbra's command line: the fleet's command is a valid umbra sim line that
// reaches the server by its service name on its ports, both services see
// the data volume where the image keeps it, and the published ports are
// exposed ones.
func TestDockerCompose(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Name     string
		Services map[string]struct {
			Build       string
			Image       string
			Command     []string
			Ports       []string
			Environment map[string]string
			Volumes     []string
			DependsOn   map[string]struct{ Condition string } `yaml:"depends_on"`
			Restart     string
		}
		Volumes map[string]any
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	var dataDir string
	for _, in := range parseDockerfile(t, filepath.Join(repoRoot, "Dockerfile")) {
		if in.cmd == "ENV" {
			for _, kv := range strings.Fields(in.args) {
				if v, ok := strings.CutPrefix(kv, "UMBRA_DATA_DIR="); ok {
					dataDir = v
				}
			}
		}
	}
	ports := serveDefaultPorts(t) // mqtt, ws, http: the image's too (TestDockerfile)

	srv, ok := compose.Services["umbra"]
	if !ok || srv.Build != "." || srv.Image == "" || len(srv.Command) != 0 {
		t.Fatalf("service umbra: want build . of the image, running its default command (serve)")
	}
	serve := checkCommandLine(t, "service umbra", []string{"serve"})
	checkEnvNames(t, "service umbra environment", serve, slices.Sorted(mapKeys(srv.Environment)))
	if u, err := url.Parse(srv.Environment["UMBRA_PUBLIC_URL"]); err != nil || u.Hostname() != "umbra" || u.Port() != ports[2] {
		t.Errorf("umbra UMBRA_PUBLIC_URL %q: want http://umbra:%s, reachable by the fleet", srv.Environment["UMBRA_PUBLIC_URL"], ports[2])
	}
	for _, p := range srv.Ports {
		parts := strings.Split(p, ":")
		if !slices.Contains(ports, parts[len(parts)-1]) || len(parts) != 3 || parts[0] != "127.0.0.1" {
			t.Errorf("umbra port %q: want 127.0.0.1:<host port>:<one of %v>", p, ports)
		}
	}
	if !slices.Contains(srv.Volumes, "umbra-data:"+dataDir) {
		t.Errorf("umbra volumes %v: want umbra-data:%s", srv.Volumes, dataDir)
	}

	fleet, ok := compose.Services["fleet"]
	if !ok || fleet.Image != srv.Image {
		t.Fatalf("service fleet: want the umbra image %q", srv.Image)
	}
	sim := checkCommandLine(t, "service fleet", fleet.Command)
	if sim.Name() != "sim" {
		t.Fatalf("service fleet runs umbra %s, want sim", sim.Name())
	}
	checkEnvNames(t, "service fleet environment", sim, slices.Sorted(mapKeys(fleet.Environment)))
	if got := sim.Flags().Lookup("mqtt").Value.String(); got != "tcp://umbra:"+ports[0] {
		t.Errorf("fleet --mqtt %s, want tcp://umbra:%s", got, ports[0])
	}
	if got := sim.Flags().Lookup("api").Value.String(); got != "http://umbra:"+ports[2] {
		t.Errorf("fleet --api %s, want http://umbra:%s", got, ports[2])
	}
	if fleet.Environment["UMBRA_DATA_DIR"] != dataDir || !slices.Contains(fleet.Volumes, "umbra-data:"+dataDir+":ro") {
		t.Errorf("fleet: UMBRA_DATA_DIR %q, volumes %v; want the data volume read-only at %s for the operator token",
			fleet.Environment["UMBRA_DATA_DIR"], fleet.Volumes, dataDir)
	}
	if fleet.DependsOn["umbra"].Condition != "service_healthy" {
		t.Errorf("fleet depends_on %v: want umbra: service_healthy (the image's HEALTHCHECK)", fleet.DependsOn)
	}
	if _, ok := compose.Volumes["umbra-data"]; !ok {
		t.Error("no top-level volume umbra-data")
	}
}

func mapKeys[M ~map[string]V, V any](m M) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestSystemdUnit checks packaging/umbra.service: its ExecStart is a valid
// serve command line whose config (the sample, installed where the unit
// reads it) loads, with the data dir in the unit's StateDirectory; it has
// the hardening options; systemd-analyze verify accepts it and systemd-
// analyze security rates its exposure at most 2.0 ("OK").
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "packaging", "umbra.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string][]string{} // Section.Key → values
	section := ""
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("umbra.service: line %q is no Key=value", line)
			}
			unit[section+"."+k] = append(unit[section+"."+k], v)
		}
	}
	one := func(key string) string {
		if v := unit[key]; len(v) == 1 {
			return v[0]
		}
		t.Errorf("umbra.service: want one %s, have %q", key, unit[key])
		return ""
	}

	execStart := strings.Fields(one("Service.ExecStart"))
	if len(execStart) < 2 || execStart[0] != "/usr/local/bin/umbra" { // make install's PREFIX
		t.Fatalf("ExecStart %q: want /usr/local/bin/umbra serve …", execStart)
	}
	serve := checkCommandLine(t, "ExecStart", execStart[1:])
	config := serve.Flags().Lookup("config").Value.String()
	if serve.Name() != "serve" || config != "/etc/umbra/umbra.yaml" || one("Service.ConfigurationDirectory") != "umbra" {
		t.Errorf("ExecStart %q, ConfigurationDirectory %q: want umbra serve --config /etc/umbra/umbra.yaml", execStart, unit["Service.ConfigurationDirectory"])
	}
	// The sample config, as installed at /etc/umbra/umbra.yaml.
	sampleArgs := append(slices.Clone(execStart[1:]), "--print-config")
	sampleArgs[slices.Index(sampleArgs, config)] = filepath.Join(repoRoot, "packaging", "umbra.yaml")
	got := printConfigOf(t, sampleArgs[1:]...)
	if want := "/var/lib/" + one("Service.StateDirectory"); got["data-dir"].value != want {
		t.Errorf("the sample's data-dir %q, want the unit's StateDirectory %s", got["data-dir"].value, want)
	}
	if one("Service.ExecReload") != "/bin/kill -HUP $MAINPID" {
		t.Errorf("ExecReload %q: want SIGHUP (reloads the ACL file and the TLS certificates)", unit["Service.ExecReload"])
	}

	for key, want := range map[string]string{
		"DynamicUser": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
		"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
		"ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes",
		"LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
		"StateDirectoryMode": "0700", "UMask": "0077",
	} {
		if got := one("Service." + key); got != want {
			t.Errorf("umbra.service %s=%q, want %q", key, got, want)
		}
	}
	if !slices.Contains(unit["Service.SystemCallFilter"], "@system-service") {
		t.Errorf("SystemCallFilter %q: want @system-service", unit["Service.SystemCallFilter"])
	}

	// systemd's own checks, on a copy whose ExecStart is a real binary.
	analyze := testbin.Need(t, "systemd-analyze", "systemd")
	bin := buildUmbra(t)
	dir := t.TempDir()
	copyPath := filepath.Join(dir, "umbra.service")
	if err := os.WriteFile(copyPath, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/umbra", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(t.Context(), analyze, "verify", "--man=no", copyPath).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err := exec.CommandContext(t.Context(), analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", copyPath).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for umbra\.service: (\d+\.\d+)`).FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	t.Logf("systemd-analyze security: exposure %s", m[1])
}

// TestMakeDist runs make dist for linux/amd64 (the arm64 build is the same
// loop; cross-compiling the tree for it costs about 45 s on a cold cache,
// so it is left to make dist itself, see docs/packaging.md) and checks the
// archive: named with the version, reproducible, with a static binary
// stamped with the version, the licences of everything it links, the
// unit and the sample config; and the checksum file.
func TestMakeDist(t *testing.T) {
	mk, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^DIST_ARCHES \?= amd64 arm64$`).Match(mk) {
		t.Error("Makefile: want DIST_ARCHES ?= amd64 arm64")
	}
	const version = "v0.0.0-dist-test"
	dist := func() (string, []byte) {
		dir := t.TempDir()
		cmd := exec.CommandContext(t.Context(), "make", "--no-print-directory", "dist", "VERSION="+version, "DIST_DIR="+dir, "DIST_ARCHES=amd64")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make dist: %v\n%s", err, out)
		}
		tgz, err := os.ReadFile(filepath.Join(dir, "umbra-"+version+"-linux-amd64.tar.gz"))
		if err != nil {
			t.Fatal(err)
		}
		return dir, tgz
	}
	dir, tgz := dist()
	sums, err := os.ReadFile(filepath.Join(dir, "umbra-"+version+"-SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	if want := sha256Hex(tgz) + "  umbra-" + version + "-linux-amd64.tar.gz\n"; string(sums) != want {
		t.Errorf("SHA256SUMS = %q, want %q", sums, want)
	}
	if _, again := dist(); sha256Hex(again) != sha256Hex(tgz) {
		t.Error("two make dist runs made different archives: the build is not reproducible")
	}

	x := t.TempDir()
	if out, err := exec.CommandContext(t.Context(), "tar", "xzf", filepath.Join(dir, "umbra-"+version+"-linux-amd64.tar.gz"), "-C", x).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	listing, err := exec.CommandContext(t.Context(), "tar", "tzvf", filepath.Join(dir, "umbra-"+version+"-linux-amd64.tar.gz")).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(listing)), "\n") {
		if f := strings.Fields(line); len(f) < 2 || f[1] != "0/0" {
			t.Errorf("archive entry %q: want owner 0/0", line)
		}
	}
	root := filepath.Join(x, "umbra-"+version+"-linux-amd64")
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"LICENSE", "README.md", "THIRD_PARTY_LICENSES", "umbra", "umbra.service", "umbra.yaml"}; !slices.Equal(names, want) {
		t.Errorf("archive holds %v, want %v", names, want)
	}
	bin := filepath.Join(root, "umbra")
	if out, err := exec.CommandContext(t.Context(), bin, "version").Output(); err != nil || !strings.HasPrefix(string(out), "umbra "+version+" (") {
		t.Errorf("umbra version = %q, %v; want %s", out, err, version)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP }) {
		t.Errorf("binary: machine %v, want a static x86-64 binary", f.Machine)
	}
	info, err := exec.CommandContext(t.Context(), "go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath=true", "GOARCH=amd64"} {
		if !strings.Contains(string(info), want) {
			t.Errorf("go version -m: no %s in\n%s", want, info)
		}
	}
	licences, err := os.ReadFile(filepath.Join(root, "THIRD_PARTY_LICENSES"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(info), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "dep" && !strings.Contains(string(licences), "==== "+f[1]+" "+f[2]+": ") {
			t.Errorf("THIRD_PARTY_LICENSES lacks %s %s", f[1], f[2])
		}
	}
	if !strings.Contains(string(licences), "==== Go standard library") {
		t.Error("THIRD_PARTY_LICENSES lacks the Go standard library")
	}
}
