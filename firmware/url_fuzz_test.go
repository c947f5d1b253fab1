package firmware_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
)

// FuzzDownloadURL feeds arbitrary paths and queries to the download handler:
// it must never panic, and must accept only the minted (blob, device,
// enrolment, expiry, signature), however the query is encoded.
func FuzzDownloadURL(f *testing.F) {
	e := mustOpen(f, func(c *firmware.Config) { c.Enrolment = func(device.ID) string { return "gen-1" } })
	img := mustUpload(f, e.st, "1.0.0", image(64, 1))
	minted, _ := e.st.URL(img, "dev-1", 0)
	mu, err := url.Parse(minted)
	if err != nil {
		f.Fatal(err)
	}
	want := mu.Query()
	q := mu.RawQuery
	seeds := [][2]string{
		{mu.Path, q},
		{mu.Path, strings.Replace(q, "dev-1", "dev-2", 1)},
		{mu.Path, strings.Replace(q, "e=", "e=1", 1)},
		{mu.Path, strings.Replace(q, "g=gen-1", "g=gen-2", 1)},
		{mu.Path, strings.Replace(q, "&g=gen-1", "", 1)},
		{mu.Path, strings.Replace(q, "g=gen-1", "g=gen%2D1", 1)},
		{mu.Path, strings.Replace(q, "e=", "e=+", 1)},
		{mu.Path, q + "="},
		{mu.Path, q + "&s=x"},
		{mu.Path, strings.ReplaceAll(q, "&", ";")},
		{mu.Path, "d=%zz&e=1&s=1"},
		{mu.Path + "/", q},
		{"/fw/../firmware.db", q},
		{"/fw/%2e%2e/url.key", q},
		{"/fw/" + strings.ToUpper(img.SHA256), q},
		{"", ""},
		{"/fw/", "d=&e=&s="},
		{"/fw/", "d=&g=&e=&s="},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	h := e.st.DownloadHandler()
	f.Fuzz(func(t *testing.T, path, query string) {
		req := &http.Request{
			Method:     http.MethodHead,
			URL:        &url.URL{Path: path, RawQuery: query},
			Header:     http.Header{},
			RemoteAddr: "127.0.0.1:1",
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK:
			got, err := url.ParseQuery(query)
			if path != mu.Path || err != nil || got.Get("d") != want.Get("d") || got.Get("g") != want.Get("g") || got.Get("e") != want.Get("e") || got.Get("s") != want.Get("s") {
				t.Fatalf("accepted %q?%q, which is not the minted URL %q", path, query, minted)
			}
		case http.StatusForbidden:
			if body := rec.Body.String(); body != "" && body != denyBody {
				t.Fatalf("403 body %q leaks detail", body)
			}
		default:
			t.Fatalf("status %d for %q?%q, want 200 or 403", rec.Code, path, query)
		}
	})
}
