package httpapi

import (
	"mime"
	"net/http"
	"strings"
)

// Media types of request bodies. Each is checked where the body is read:
// every JSON body must be declared application/json, a raw firmware image
// application/octet-stream. None of them is a type a web page may send to
// another origin without asking first (a CORS preflight, which this API
// never grants), unlike text/plain, application/x-www-form-urlencoded and
// multipart/form-data; and a body without a Content-Type is refused too
// (a page may send a Blob without one). Only multipart/form-data uploads
// rely on the cross-origin check alone.
const (
	mediaJSON      = "application/json"
	mediaRaw       = "application/octet-stream"
	mediaMultipart = "multipart/form-data"
)

// crossOrigin refuses, with 403, a state-changing request (any method but
// GET, HEAD and OPTIONS) that a browser sent from a page of another origin:
// one whose Sec-Fetch-Site is not same-origin or none, or, from a browser
// too old to send it, whose Origin does not match the Host. Requests
// without either header (curl, the CLI, devices) and requests from
// Config.TrustedOrigins pass. It guards every route, mounts included, with
// credentials on or off: with --insecure-anonymous a page the developer
// visits could otherwise change shadows and create tokens on loopback.
func (a *api) crossOrigin(cop *http.CrossOriginProtection, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := cop.Check(r); err != nil {
			a.log.Debug("cross-origin request refused", "method", r.Method, "path", r.URL.Path,
				"origin", r.Header.Get("Origin"), "sec_fetch_site", r.Header.Get("Sec-Fetch-Site"), "remote", r.RemoteAddr)
			a.writeError(w, r, clientErr(errCrossOrigin, "Cross-origin request refused: a browser page of another origin may not change anything here (Origin %.100q, Sec-Fetch-Site %.20q)",
				r.Header.Get("Origin"), r.Header.Get("Sec-Fetch-Site")), "")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// newCrossOriginProtection returns the check crossOrigin applies, trusting
// origins (each scheme://host[:port], exactly as a browser sends it).
func newCrossOriginProtection(origins []string) (*http.CrossOriginProtection, error) {
	cop := http.NewCrossOriginProtection()
	for _, o := range origins {
		if err := cop.AddTrustedOrigin(o); err != nil {
			return nil, err
		}
	}
	return cop, nil
}

// hasBody reports whether r carries a body: a Content-Length above zero or
// a chunked body of unknown length.
func hasBody(r *http.Request) bool { return r.ContentLength != 0 }

// requireJSON refuses, with 415, a request body not declared
// application/json (parameters such as charset=utf-8 are allowed; another
// charset is not). A request without a body needs no Content-Type.
func requireJSON(r *http.Request) error {
	if !hasBody(r) {
		return nil
	}
	if mediaType(r) != mediaJSON {
		return clientErr(errMediaType, "Unsupported Content-Type %.60q: a JSON body must be sent as %s", r.Header.Get("Content-Type"), mediaJSON)
	}
	return nil
}

// mediaType returns r's media type in lower case, or "" when Content-Type
// is missing, given twice, malformed, or names a charset other than UTF-8.
func mediaType(r *http.Request) string {
	v := r.Header.Values("Content-Type")
	if len(v) != 1 {
		return ""
	}
	mt, params, err := mime.ParseMediaType(v[0])
	if err != nil {
		return ""
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return ""
	}
	return mt
}
