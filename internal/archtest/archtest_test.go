package archtest_test

import (
	"bufio"
	"bytes"
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/internal/testbin"
)

const module = "github.com/umbra-iot/umbra"

// pkg is one package of the module as go list sees it.
type pkg struct {
	path    string   // import path, relative to the module ("." for the root)
	dir     string   // absolute directory
	imports []string // non-test imports
	tests   []string // imports of its _test files (both packages)
	files   []string // its non-test Go files
}

// listPackages lists the module's packages (third_party/ is mochi's fork:
// not ours to check).
func listPackages(t *testing.T) []pkg {
	t.Helper()
	goTool := testbin.Need(t, "go", "golang-go")
	out, err := exec.CommandContext(t.Context(), goTool, "list", "-f",
		"{{.ImportPath}}\t{{.Dir}}\t{{join .Imports \" \"}}\t{{join .TestImports \" \"}} {{join .XTestImports \" \"}}\t{{join .GoFiles \" \"}}",
		module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Split(sc.Text(), "\t")
		if len(f) != 5 {
			t.Fatalf("go list line %q: want 5 fields", sc.Text())
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(f[0], module), "/")
		if rel == "" {
			rel = "."
		}
		if strings.HasPrefix(rel, "third_party/") {
			continue
		}
		p := pkg{path: rel, dir: f[1], imports: strings.Fields(f[2]), tests: strings.Fields(f[3])}
		for _, name := range strings.Fields(f[4]) {
			p.files = append(p.files, filepath.Join(f[1], name))
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages: is the listing broken?", len(pkgs))
	}
	return pkgs
}

// TestOnlyAdaptersImportBbolt: no package outside the bbolt adapters
// (packages named boltstore: one per domain package, and
// internal/boltstore, the opener they share) imports bbolt, in its code or
// its tests. A domain package reaches its store through its own interface.
func TestOnlyAdaptersImportBbolt(t *testing.T) {
	for _, p := range listPackages(t) {
		if path.Base(p.path) == "boltstore" {
			continue
		}
		for _, imp := range append(slices.Clone(p.imports), p.tests...) {
			if strings.HasPrefix(imp, "go.etcd.io/bbolt") {
				t.Errorf("%s imports %s: only the */boltstore adapters may", p.path, imp)
			}
		}
	}
}

// TestClientDependencies: the public client links neither the server
// (internal/…) nor mochi, bbolt or paho (go list -deps).
func TestClientDependencies(t *testing.T) {
	goTool := testbin.Need(t, "go", "golang-go")
	out, err := exec.CommandContext(t.Context(), goTool, "list", "-deps", "-f", "{{.ImportPath}}", module+"/client").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, module+"/wire") {
		t.Fatalf("go list -deps client did not list the wire package (got %v): is the listing broken?", deps)
	}
	for _, d := range deps {
		for _, bad := range []string{module + "/internal/", module + "/broker", module + "/shadow", module + "/rollout",
			"github.com/mochi-mqtt/", "go.etcd.io/bbolt", "github.com/eclipse/paho"} {
			if strings.HasPrefix(d, bad) {
				t.Errorf("client depends on %s", d)
			}
		}
	}
}

// withValueAllowed are the files that may call context.WithValue, each
// for request-scoped HTTP data: nothing is wired through a context.
var withValueAllowed = map[string]string{
	"internal/httpapi/auth.go":      "the authenticated principal of a request (middleware)",
	"internal/httpapi/jsonerror.go": "a request's connection, for the JSON error answers (http.Server.ConnContext)",
}

// TestContextWithValueOnlyRequestScoped: context.WithValue is used only
// for request-scoped HTTP data, never to hand a component to another.
func TestContextWithValueOnlyRequestScoped(t *testing.T) {
	fset := token.NewFileSet()
	for _, p := range listPackages(t) {
		for _, file := range p.files {
			f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				sel, ok := n.(*ast.SelectorExpr)
				if !ok || sel.Sel.Name != "WithValue" {
					return true
				}
				if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "context" {
					return true
				}
				rel := path.Join(p.path, filepath.Base(file))
				if _, ok := withValueAllowed[rel]; !ok {
					t.Errorf("%s: context.WithValue outside request-scoped HTTP middleware", fset.Position(sel.Pos()))
				}
				return true
			})
		}
	}
}

// allowedImports are the module packages each domain package (and the
// public client and wire types) may import in its code: the plan of
// docs/architecture.md. A package of the module not listed here is not
// checked by this table.
var allowedImports = map[string][]string{
	"device":   nil,
	"policy":   nil,
	"wire":     {"device"},
	"client":   {"device", "wire"},
	"identity": {"device", "policy"},
	"shadow":   {"device"},
	"firmware": {"device"},
	"broker":   {"device"},
	"rollout":  {"device", "shadow", "firmware"},
	// The AWS IoT Jobs protocol over the planner.
	"rollout/jobs": {"device", "rollout", "wire"},
}

// TestDomainImports: the domain packages import only what the plan
// allows (none of shadow, firmware, broker and identity imports another
// of them), and nothing imports cmd/ or, besides the wiring and tests,
// a bbolt adapter.
func TestDomainImports(t *testing.T) {
	pkgs := listPackages(t)
	seen := map[string]bool{}
	for _, p := range pkgs {
		seen[p.path] = true
		allowed, checked := allowedImports[p.path]
		for _, imp := range p.imports {
			rel, ours := strings.CutPrefix(imp, module+"/")
			if !ours {
				continue
			}
			if strings.HasPrefix(rel, "cmd/") {
				t.Errorf("%s imports %s: nothing imports a command", p.path, rel)
			}
			if path.Base(rel) == "boltstore" && rel != "internal/boltstore" && p.path != "internal/server" &&
				!strings.HasSuffix(p.path, "test") {
				t.Errorf("%s imports the adapter %s: only the wiring (internal/server) chooses a store", p.path, rel)
			}
			if checked && !slices.Contains(allowed, rel) {
				t.Errorf("%s imports %s; the plan allows %v", p.path, rel, allowed)
			}
		}
	}
	for p := range allowedImports {
		if !seen[p] {
			t.Errorf("the plan names %s, which go list did not find", p)
		}
	}
}
