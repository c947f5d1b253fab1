package console

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"net/http"
	"strings"
)

//go:embed assets/index.html assets/app.js assets/style.css
var assets embed.FS

// CSP is the Content-Security-Policy of every console answer.
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Routes returns the console's routes, to be served beside the API
// (httpapi.Config.Mounts): the page at GET / and its assets under
// /console/.
func Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /{$}":               file("assets/index.html", "text/html; charset=utf-8"),
		"GET /console/app.js":    file("assets/app.js", "text/javascript; charset=utf-8"),
		"GET /console/style.css": file("assets/style.css", "text/css; charset=utf-8"),
	}
}

func file(name, ctype string) http.Handler {
	b, err := assets.ReadFile(name)
	if err != nil {
		panic("console: " + err.Error()) // embedded above: cannot happen
	}
	sum := sha256.Sum256(b)
	etag := `"` + hex.EncodeToString(sum[:8]) + `"`
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", CSP)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Content-Type", ctype)
		h.Set("ETag", etag)
		// Revalidated every time: a new binary serves new assets at once.
		h.Set("Cache-Control", "no-cache")
		if strings.Contains(r.Header.Get("If-None-Match"), etag) {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		_, _ = w.Write(b)
	})
}
