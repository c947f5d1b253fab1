package console_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/internal/sim"
	"github.com/umbra-iot/umbra/rollout"
)

// The browser tests drive Debian's chromium headless (chromedp) against a
// whole Umbra (internal/server, as umbra serve runs it) with fleetSize
// enrolled devices, of which simSize are simulated over MQTT
// (internal/sim) and take part in rollouts; the others report their
// firmware through the shadow engine. One browser serves every subtest,
// one tab each. Every wait is for a DOM condition, never a sleep.
const (
	fleetSize = 1000
	simSize   = 100
	// waitTimeout bounds one subtest's waits; generous for -race on two
	// busy cores.
	waitTimeout = 90 * time.Second
)

// consoleRig is the server, the fleet and the browser of the tests.
type consoleRig struct {
	srv      *server.Server
	url      string
	operator string
	viewer   string
	browser  context.Context
}

func chromiumPath(t testing.TB) string {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium not found: install chromium: make deps (Debian package chromium)")
	return ""
}

func openConsoleRig(t *testing.T) *consoleRig {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := server.Open(t.Context(), server.Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		RolloutTick: 50 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Errorf("server Close: %v", err)
		}
	})
	ctx := t.Context()
	r := &consoleRig{srv: srv, url: "http://" + srv.HTTPAddr().String()}
	b, err := os.ReadFile(filepath.Join(srv.DataDir(), server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	r.operator = strings.TrimSpace(string(b))
	secret, err := srv.Identity().CreateToken(ctx, identity.RoleIntegrator, "viewer")
	if err != nil {
		t.Fatal(err)
	}
	r.viewer = secret
	if !strings.Contains(secret, ":") {
		r.viewer = "viewer:" + secret
	}

	// The fleet: dev-0001 … dev-1000, hw m1/m2 alternating; the first
	// simSize are simulated (sim=yes), the others report 0.9.0 or 1.0.0.
	var list []identity.Enrollment
	for i := 1; i <= fleetSize; i++ {
		labels := map[string]string{"hw": []string{"m1", "m2"}[i%2], "sim": map[bool]string{true: "yes", false: "no"}[i <= simSize]}
		list = append(list, identity.Enrollment{ID: device.ID(fmt.Sprintf("dev-%04d", i)), Labels: labels})
	}
	secrets, err := srv.Identity().EnrollDevices(ctx, list, false)
	if err != nil {
		t.Fatal(err)
	}
	for i := simSize; i < fleetSize; i++ {
		v := []string{"0.9.0", "1.0.0"}[i%2]
		if _, err := srv.Engine().Update(ctx, list[i].ID, fmt.Appendf(nil, `{"state":{"reported":{"firmware":{"version":%q,"state":"updated"}}}}`, v)); err != nil {
			t.Fatal(err)
		}
	}
	creds := map[device.ID]string{}
	for i := range simSize {
		creds[list[i].ID] = secrets[i]
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	fleet, err := sim.Open(ctx, sim.Config{Server: "tcp://" + srv.Broker().Addr().String(), Devices: simSize, IDPrefix: "dev-",
		Credentials: func(id device.ID) (string, string) { return string(id), creds[id] },
		PublicKey:   base64.StdEncoding.EncodeToString(srv.Firmware().PublicKey()), QoS: 1, Seed: 1, Logger: log,
		HTTPClient: &http.Client{Transport: tr, Timeout: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = fleet.Close(ctx)
	})
	wctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	if _, err := fleet.Wait(wctx, func(s sim.Stats) bool { return s.Connected == simSize }); err != nil {
		t.Fatalf("the simulated fleet did not connect: %v", err)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox, chromedp.WindowSize(1280, 900), chromedp.Flag("disable-gpu", true))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	browser, cancelBrowser := chromedp.NewContext(alloc)
	t.Cleanup(cancelBrowser)
	if err := chromedp.Do(browser); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	r.browser = browser
	return r
}

// tab opens a new tab, bounded by waitTimeout.
func (r *consoleRig) tab(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(r.browser)
	t.Cleanup(cancel)
	ctx, cancelT := context.WithTimeout(ctx, waitTimeout)
	t.Cleanup(cancelT)
	return ctx
}

// run runs actions in ctx, failing the test with what and the page's text.
func run(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, actions...); err != nil {
		body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('#main')?.innerText || ''`))
		t.Fatalf("%s: %v\npage text: %.2000s", what, err, body)
	}
}

// get returns the value of an action that returns one, failing the test
// with what.
func get[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// js runs a script for its effect.
func js(expr string) chromedp.Action[chromedp.Void] { return chromedp.Evaluate[chromedp.Void](expr) }

// text returns the text of the element sel.
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	return get(t, ctx, "text of "+sel, chromedp.Evaluate[string](`document.querySelector('`+sel+`')?.textContent || ''`))
}

// until waits for a JavaScript condition to hold.
func until(cond string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(waitTimeout))
}

func visible(sel string) chromedp.Action[chromedp.Void] {
	return chromedp.WaitVisible(chromedp.CSS(sel))
}

// unlabelled counts the form controls of the page without an accessible
// name (a <label>, aria-label or aria-labelledby).
const unlabelled = `[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
	.filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby')).map(e => e.id || e.name || e.type)`

// checkLabels fails the test if a control of the page has no label.
func checkLabels(t *testing.T, ctx context.Context, page string) {
	t.Helper()
	if bad := get(t, ctx, "labels on "+page, chromedp.Evaluate[[]string](unlabelled)); len(bad) > 0 {
		t.Errorf("controls without a label on the %s page: %v", page, bad)
	}
}

// signIn loads the console and signs in with token.
func (r *consoleRig) signIn(t *testing.T, ctx context.Context, token string) {
	t.Helper()
	run(t, ctx, "sign in",
		chromedp.Navigate(r.url+"/"),
		visible("#signin input"),
		chromedp.SendKeys(chromedp.CSS("#signin input"), token),
		js(`document.querySelector('#signin').requestSubmit()`),
		visible("#fleet-table"),
		until(fmt.Sprintf(`document.querySelector('#fleet-status')?.dataset.matched === '%d'`, fleetSize)))
}

func (r *consoleRig) shot(t *testing.T, ctx context.Context, name string) {
	dir := os.Getenv("UMBRA_SCREENSHOTS")
	if dir == "" {
		return
	}
	buf := get(t, ctx, "screenshot "+name, chromedp.CaptureScreenshot())
	if err := os.WriteFile(filepath.Join(dir, "console-"+name+".png"), buf, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestConsoleInBrowser(t *testing.T) {
	r := openConsoleRig(t)

	t.Run("bad token refused", func(t *testing.T) {
		ctx := r.tab(t)
		run(t, ctx, "sign-in page", chromedp.Navigate(r.url+"/"), visible("#signin input"))
		checkLabels(t, ctx, "sign-in")
		// Keyboard: the token field has the focus, Enter submits.
		run(t, ctx, "bad token",
			until(`document.activeElement === document.querySelector('#signin input')`),
			chromedp.SendKeys(chromedp.CSS("#signin input"), "admin:not-the-secret\r"),
			until(`document.querySelector('#signin-error').textContent.length > 0`))
		msg := text(t, ctx, "#signin-error")
		if !strings.Contains(msg, "refused") {
			t.Errorf("sign-in error %q, want it to say the token was refused", msg)
		}
		stored := get(t, ctx, "storage", chromedp.Evaluate[string](`sessionStorage.getItem('umbra.token') || ''`))
		if stored != "" {
			t.Errorf("a refused token was kept in sessionStorage")
		}
	})

	t.Run("sign in and filter the fleet", func(t *testing.T) {
		ctx := r.tab(t)
		start := time.Now()
		r.signIn(t, ctx, r.operator)
		t.Logf("sign-in to a usable fleet table of %d devices: %v", fleetSize, time.Since(start))
		url := get(t, ctx, "location", chromedp.Location())
		if strings.Contains(url, strings.Split(r.operator, ":")[1]) {
			t.Errorf("the token is in the URL %s", url)
		}
		r.shot(t, ctx, "fleet")
		checkLabels(t, ctx, "fleet")
		// No request left the server's origin (no CDN, font or icon).
		if other := get(t, ctx, "resources", chromedp.Evaluate[[]string](
			`performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin + '/'))`)); len(other) > 0 {
			t.Errorf("requests to other origins: %v", other)
		}
		cases := []struct {
			name    string
			set     string // JavaScript setting the filter inputs
			matched int
		}{
			{"label selector", `f.selector.value='hw=m2'`, fleetSize / 2},
			{"selector and firmware", `f.selector.value='hw=m2'; f.firmware.value='0.9.0'`, (fleetSize - simSize) / 2},
			{"search", `f.q.value='dev-00'`, 99},
			{"offline", `f.online.value='false'`, fleetSize - simSize},
			{"simulated and online", `f.selector.value='sim=yes'; f.online.value='true'`, simSize},
		}
		for _, c := range cases {
			run(t, ctx, c.name,
				js(`location.hash='#/fleet'`),
				until(`document.querySelector('#fleet-status')?.dataset.matched === '`+fmt.Sprint(fleetSize)+`'`),
				js(`{const f=document.querySelector('#fleet-filters'); `+c.set+`; f.requestSubmit()}`),
				until(fmt.Sprintf(`document.querySelector('#fleet-status')?.dataset.matched === '%d'`, c.matched)))
		}
		rows := get(t, ctx, "rows", chromedp.Evaluate[int](`document.querySelectorAll('#fleet-table tbody tr[data-device]').length`))
		if rows != simSize {
			t.Errorf("%d rows shown, want %d", rows, simSize)
		}
		// Readable on a 360-pixel-wide phone: nothing but the table's own
		// scroller is wider than the screen.
		run(t, ctx, "narrow", chromedp.EmulateViewport(360, 740), until(`document.documentElement.clientWidth === 360`))
		if w := get(t, ctx, "width", chromedp.Evaluate[int](`document.documentElement.scrollWidth`)); w > 360 {
			t.Errorf("at 360 px wide the page is %d px wide", w)
		}
		r.shot(t, ctx, "fleet-narrow")
		run(t, ctx, "wide", chromedp.ResetViewport())
		total := text(t, ctx, "#total-devices b")
		if total != fmt.Sprint(fleetSize) {
			t.Errorf("total devices %q, want %d", total, fleetSize)
		}
	})

	t.Run("integrator is read-only", func(t *testing.T) {
		ctx := r.tab(t)
		r.signIn(t, ctx, r.viewer)
		who := text(t, ctx, "#who")
		run(t, ctx, "rollouts page", js(`location.hash='#/rollouts'`), visible("#readonly"))
		controls := get(t, ctx, "create form", chromedp.Evaluate[int](`document.querySelectorAll('#create-rollout').length`))
		run(t, ctx, "device page", js(`location.hash='#/device/dev-0200'`), until(`document.querySelector('#shadow-doc-version') !== null`))
		disabled := get(t, ctx, "save button", chromedp.Evaluate[int](`document.querySelector('#edit-desired button[type=submit]').disabled ? 1 : 0`))
		controls += get(t, ctx, "actions", chromedp.Evaluate[int](`document.querySelectorAll('#device-actions button').length`))
		// The server refuses the write whatever the page shows.
		status := get(t, ctx, "write", chromedp.Evaluate[int](`fetch('/v1/devices/dev-0200/shadow', {method: 'POST', headers: {'Content-Type': 'application/json',
				Authorization: 'Bearer ' + sessionStorage.getItem('umbra.token')}, body: '{"state":{"desired":{"x":1}}}'}).then(r => r.status)`,
			chromedp.EvalAwaitPromise))
		if !strings.Contains(who, "read-only") || disabled != 1 || controls != 0 || status != http.StatusForbidden {
			t.Errorf("who %q, save disabled %d, action buttons %d, POST status %d; want read-only, 1, 0, 403", who, disabled, controls, status)
		}
	})

	t.Run("edit a shadow and the 409", func(t *testing.T) {
		ctx := r.tab(t)
		r.signIn(t, ctx, r.operator)
		run(t, ctx, "save desired",
			js(`location.hash='#/device/dev-0300'`),
			until(`document.querySelector('#shadow-doc-version')?.textContent === '1'`),
			js(`{const t=document.querySelector('#desired'); t.value='{"color":"red"}'; t.dispatchEvent(new Event('input')); document.querySelector('#edit-desired').requestSubmit()}`),
			until(`document.querySelector('#edit-msg').textContent.includes('version 2')`),
			until(`document.querySelector('#shadow-desired').textContent.includes('red')`))
		r.shot(t, ctx, "device")
		checkLabels(t, ctx, "device")
		// Start an edit, let someone else change the shadow, then save.
		run(t, ctx, "start editing",
			js(`{const t=document.querySelector('#desired'); t.value='{"color":"blue"}'; t.dispatchEvent(new Event('input'))}`))
		if _, err := r.srv.Engine().Update(t.Context(), "dev-0300", []byte(`{"state":{"desired":{"color":"green"}}}`)); err != nil {
			t.Fatal(err)
		}
		run(t, ctx, "409",
			until(`document.querySelector('#shadow-doc-version')?.textContent === '3'`),
			js(`document.querySelector('#edit-desired').requestSubmit()`),
			visible("#conflict"))
		conflict := text(t, ctx, "#conflict")
		if !strings.Contains(conflict, "now at version 3") || !strings.Contains(conflict, "green") || strings.Contains(conflict, "{\"code\"") {
			t.Errorf("conflict shown as %q; want words, the current version and document", conflict)
		}
		doc, err := r.srv.Engine().Read(t.Context(), "dev-0300")
		if err != nil || doc.State.Desired["color"] != "green" {
			t.Errorf("after the 409 the shadow is %+v, %v; want green kept", doc.State.Desired, err)
		}
	})

	t.Run("upload an image", func(t *testing.T) {
		ctx := r.tab(t)
		r.signIn(t, ctx, r.operator)
		img := filepath.Join(t.TempDir(), "fw.bin")
		if err := os.WriteFile(img, []byte(strings.Repeat("umbra firmware 2.0.0\n", 50_000)), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, ctx, "upload",
			js(`location.hash='#/firmware'`),
			visible("#upload-file"),
			chromedp.SetUploadFiles(chromedp.CSS("#upload-file"), []string{img}),
			chromedp.SendKeys(chromedp.CSS("#upload-version"), "2.0.0"),
			js(`document.querySelector('#upload').requestSubmit()`),
			until(`document.querySelector('#upload-msg').textContent.includes('Uploaded')`),
			visible(`#firmware-table tr[data-version="2.0.0"]`))
		msg := text(t, ctx, "#upload-msg")
		progress := get(t, ctx, "progress", chromedp.Evaluate[int](`document.querySelector('#upload-progress').value`))
		r.shot(t, ctx, "firmware")
		checkLabels(t, ctx, "firmware")
		if _, err := r.srv.Firmware().Get(t.Context(), "2.0.0"); err != nil || progress != 100 {
			t.Errorf("after the upload (%q, progress %d): %v", msg, progress, err)
		}
	})

	t.Run("create a rollout and watch it finish live", func(t *testing.T) {
		ctx := r.tab(t)
		r.signIn(t, ctx, r.operator)
		run(t, ctx, "preview",
			js(`location.hash='#/rollouts'`),
			until(`[...document.querySelectorAll('#create-firmware option')].some(o => o.value === '2.0.0')`),
			js(`{document.querySelector('#create-firmware').value='2.0.0';
				document.querySelector('#create-targets').value='select';
				document.querySelector('#create-select').value='sim=yes';
				document.querySelector('#create-first-batch').value='10';
				document.querySelector('#create-batch-size').value='30';
				document.querySelector('#create-preview-btn').click()}`),
			visible("#preview-result"))
		preview := text(t, ctx, "#preview-result")
		if !strings.Contains(preview, fmt.Sprintf("%d target devices", simSize)) || !strings.Contains(preview, "10, 30, 30, 30") {
			t.Errorf("preview %q", preview)
		}
		r.shot(t, ctx, "rollout-create")
		checkLabels(t, ctx, "rollouts")
		start := time.Now()
		run(t, ctx, "create and watch",
			js(`window.umbraNoReload = true; document.querySelector('#create-rollout').requestSubmit()`),
			visible("#rollout-counters"),
			until(fmt.Sprintf(`document.querySelector('#rollout-counters')?.dataset.done === '%d'`, simSize)),
			until(`document.querySelector('#rollout-head')?.dataset.state === 'succeeded'`),
			until(`document.querySelector('#rollout-log').textContent.includes('succeeded')`))
		t.Logf("rollout of %d devices watched to the end in %v", simSize, time.Since(start))
		r.shot(t, ctx, "rollout")
		same := get(t, ctx, "no reload", chromedp.Evaluate[bool](`window.umbraNoReload === true`))
		if !same {
			t.Errorf("the page was reloaded")
		}
	})

	t.Run("pause and resume", func(t *testing.T) {
		if _, err := r.srv.Firmware().Upload(t.Context(), firmware.UploadRequest{Version: "2.1.0"}, strings.NewReader("fw 2.1.0")); err != nil {
			t.Fatal(err)
		}
		ro, err := r.srv.Planner().Create(t.Context(), rollout.Spec{Firmware: "2.1.0", Selector: map[string]string{"sim": "yes"},
			Policy: rollout.Policy{BatchSize: 10, StartAt: time.Now().Add(time.Hour)}})
		if err != nil {
			t.Fatal(err)
		}
		ctx := r.tab(t)
		r.signIn(t, ctx, r.operator)
		run(t, ctx, "pause and resume",
			js(`location.hash='#/rollout/`+ro.ID+`'`),
			until(`document.querySelector('#rollout-head')?.dataset.state === 'running'`),
			chromedp.Click(chromedp.CSS(`#rollout-controls button[data-op="pause"]`)),
			until(`document.querySelector('#rollout-head')?.dataset.state === 'paused'`),
			chromedp.Click(chromedp.CSS(`#rollout-controls button[data-op="resume"]`)),
			until(`document.querySelector('#rollout-head')?.dataset.state === 'running'`),
			until(`document.querySelector('#rollout-log').textContent.includes('paused')`))
		st, err := r.srv.Planner().Get(t.Context(), ro.ID)
		if err != nil || st.State != rollout.StateRunning {
			t.Errorf("rollout after pause and resume: %v, %v", st.State, err)
		}
		if _, err := r.srv.Planner().Abort(t.Context(), ro.ID, false); err != nil {
			t.Error(err)
		}
	})
}
