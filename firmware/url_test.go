package firmware_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
)

// enrolments is a Config.Enrolment backed by a map the test changes.
type enrolments struct {
	mu  sync.Mutex // guards gen
	gen map[device.ID]string
}

func (e *enrolments) get(id device.ID) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.gen[id]
}

func (e *enrolments) set(id device.ID, gen string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.gen[id] = gen
}

// TestDownloadRevokedEnrolment (issue 10, case 13): a URL carries the
// device's enrolment generation; once Config.Enrolment reports another
// one (the device was removed, or removed and enrolled again) the URL gets
// 410 with a JSON error and serves nothing, while a URL minted for the
// current enrolment works.
func TestDownloadRevokedEnrolment(t *testing.T) {
	enr := &enrolments{gen: map[device.ID]string{"dev-1": "gen-1"}}
	e := mustOpen(t, func(c *firmware.Config) { c.Enrolment = enr.get })
	img := mustUpload(t, e.st, "1.0.0", image(1000, 4))
	old, _ := e.st.URL(img, "dev-1", time.Minute)
	if q := query(t, old); q.Get("g") != "gen-1" {
		t.Fatalf("URL %s: g = %q, want the enrolment gen-1", old, q.Get("g"))
	}
	if resp, body := get(t, http.MethodGet, old, nil); resp.StatusCode != http.StatusOK || len(body) != 1000 {
		t.Fatalf("GET of the current enrolment's URL: %d with %d bytes, want 200 with 1000", resp.StatusCode, len(body))
	}

	for _, step := range []struct{ name, gen string }{
		{"device removed", ""},
		{"device enrolled again", "gen-2"},
	} {
		enr.set("dev-1", step.gen)
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			resp, body := get(t, method, old, nil)
			if resp.StatusCode != http.StatusGone || resp.Header.Get("Content-Type") != "application/json" ||
				resp.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("%s: %s = %d %q, want 410 application/json, no-store", step.name, method, resp.StatusCode, resp.Header)
			}
			if method == http.MethodHead {
				continue
			}
			var e struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			if err := json.Unmarshal(body, &e); err != nil || e.Code != http.StatusGone || !strings.Contains(e.Message, "revoked") {
				t.Errorf("%s: body %q (%v), want a JSON error saying the URL was revoked", step.name, body, err)
			}
		}
	}
	wantServed(t, e.st, 1000) // more would mean a revoked URL served bytes
	if got := e.st.DeniedDownloads(); got != 4 {
		t.Errorf("DeniedDownloads = %d, want 4", got)
	}
	fresh, _ := e.st.URL(img, "dev-1", time.Minute)
	if resp, _ := get(t, http.MethodGet, fresh, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("GET of a URL minted for the new enrolment: %d, want 200", resp.StatusCode)
	}

	// A URL minted before the device was enrolled is bound to no
	// enrolment (a rollout to devices enrolled later).
	early, _ := e.st.URL(img, "dev-2", time.Minute)
	enr.set("dev-2", "gen-3")
	if resp, _ := get(t, http.MethodGet, early, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("GET of a URL minted before the device was enrolled: %d, want 200", resp.StatusCode)
	}
}

// TestDownloadEnrolmentTampered: the enrolment generation is signed, and
// malformed or missing ones are refused like any bad URL, before the
// enrolment is looked at.
func TestDownloadEnrolmentTampered(t *testing.T) {
	enr := &enrolments{gen: map[device.ID]string{"dev-1": "gen-1", "dev-2": "gen-2"}}
	e := mustOpen(t, func(c *firmware.Config) { c.Enrolment = enr.get })
	img := mustUpload(t, e.st, "1.0.0", image(100, 4))
	u, _ := e.st.URL(img, "dev-1", time.Minute)
	q := query(t, u)
	v1 := strings.Replace(u, "&g="+q.Get("g"), "", 1) // the format before generations
	tests := []struct{ name, url string }{
		{"other enrolment", tamper(t, u, "g", "gen-2")},
		{"empty enrolment", strings.Replace(u, "g="+q.Get("g"), "g=", 1)},
		{"missing enrolment (a v1 URL)", v1},
		{"duplicate enrolment", u + "&g=gen-1"},
		{"over-long enrolment", tamper(t, u, "g", strings.Repeat("a", 65))},
		{"enrolment with other characters", tamper(t, u, "g", "gen/1")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, http.MethodGet, tc.url, nil)
			if resp.StatusCode != http.StatusForbidden || string(body) != denyBody {
				t.Errorf("GET %s: got %d %q, want 403 %q", tc.url, resp.StatusCode, body, denyBody)
			}
		})
	}
	if got := e.st.BytesServed(); got != 0 {
		t.Errorf("BytesServed = %d, want 0", got)
	}
}

// TestURLWithoutEnrolment: without Config.Enrolment a URL carries an empty
// generation and is bound to no enrolment.
func TestURLWithoutEnrolment(t *testing.T) {
	e := mustOpen(t, nil)
	img := mustUpload(t, e.st, "1.0.0", image(100, 4))
	u, _ := e.st.URL(img, "dev-1", time.Minute)
	if q := query(t, u); !q.Has("g") || q.Get("g") != "" {
		t.Errorf("URL %s: want an empty g", u)
	}
	if resp, _ := get(t, http.MethodGet, u, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("GET: %d, want 200", resp.StatusCode)
	}
}

// query returns the query of URL u.
func query(t *testing.T, u string) url.Values {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return p.Query()
}
