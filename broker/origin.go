package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// checkWSOrigins reports the first entry of origins that is not an origin
// "scheme://host[:port]".
func checkWSOrigins(origins []string) error {
	for _, o := range origins {
		u, err := url.Parse(o)
		if err != nil || u.Scheme == "" || u.Host == "" || u.Opaque != "" || u.User != nil ||
			u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("%w: WSAllowedOrigins: %q is not scheme://host[:port]", ErrInvalidConfig, o)
		}
	}
	return nil
}

// wsOriginChecker returns the WebSocket upgrader's CheckOrigin for the
// allow-list origins (validated by checkWSOrigins). A request is allowed
// when it has no Origin header (not a browser: MQTT clients, devices),
// when its Origin names the same host as its Host header (any port: a
// console served by the HTTP API on another port of the same host), or when
// its Origin is listed (compared case-insensitively). Any other page, and the opaque origin "null", is refused, so
// a page the user visits cannot use the broker from their browser, above
// all with authentication off on loopback.
func wsOriginChecker(origins []string) func(*http.Request) bool {
	allowed := make(map[string]bool, len(origins))
	for _, o := range origins {
		allowed[strings.ToLower(o)] = true
	}
	return func(r *http.Request) bool {
		vs := r.Header.Values("Origin")
		switch {
		case len(vs) == 0:
			return true
		case len(vs) > 1:
			return false
		case allowed[strings.ToLower(vs[0])]:
			return true
		}
		u, err := url.Parse(vs[0])
		if err != nil || u.Host == "" {
			return false
		}
		return strings.EqualFold(u.Hostname(), requestHostname(r.Host))
	}
}

// requestHostname is the host of a Host header value, without its port.
func requestHostname(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}

// wsNotFound answers paths other than "/mqtt" and "/" on the WebSocket
// listener.
func wsNotFound(w http.ResponseWriter, r *http.Request) {
	wsError(w, r, http.StatusNotFound, errors.New("no such path: MQTT over WebSocket is served at /mqtt"))
}

// wsError is the WebSocket upgrader's Error: a JSON body
// {"code":N,"message":"…"}, like the HTTP API's errors.
func wsError(w http.ResponseWriter, r *http.Request, status int, reason error) {
	msg := reason.Error()
	if status == http.StatusForbidden {
		msg = fmt.Sprintf("WebSocket from origin %.100q refused: not the same host and not in the allowed origins", r.Header.Get("Origin"))
	}
	b, _ := json.Marshal(struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}{status, msg})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Sec-Websocket-Version", "13")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
