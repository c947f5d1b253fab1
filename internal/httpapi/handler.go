package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/wire"
)

// Errors the handlers build at this edge. Each is wrapped in a clientError
// whose text is safe to send; statusTable gives its status.
var (
	errInvalid  = errors.New("httpapi: invalid request")
	errTooLarge = errors.New("httpapi: request body too large")
	errNoRoute  = errors.New("httpapi: no such route")
	errMethod   = errors.New("httpapi: method not allowed")
	errNoStore  = errors.New("httpapi: firmware store not available")
	// errNoRollouts: no rollout planner (or target resolver) configured.
	errNoRollouts = errors.New("httpapi: rollouts not available")
	// errCrossOrigin: a state-changing request from a browser page of
	// another origin (see crossOrigin).
	errCrossOrigin = errors.New("httpapi: cross-origin request")
	// errMediaType: a body of a type the route does not take.
	errMediaType = errors.New("httpapi: unsupported media type")
)

// RetryAfterPlanner is the Retry-After (seconds) of a 503 for an
// unavailable rollout planner (rollout.ErrUnavailable): about the planner
// lease's takeover bound at its default TTL.
const RetryAfterPlanner = "5"

// statusTable is the one table from this edge's errors to HTTP statuses.
// Rejections from the engine (*shadow.RequestError) carry their own code;
// anything else is a 500.
var statusTable = []struct {
	err    error
	status int
}{
	// Rollout errors come first: a missing firmware in a rollout request
	// wraps both rollout.ErrInvalid and firmware.ErrNotFound, and is a 400.
	{rollout.ErrInvalid, http.StatusBadRequest},
	{rollout.ErrNotFound, http.StatusNotFound},
	{rollout.ErrConflict, http.StatusConflict},
	{rollout.ErrState, http.StatusConflict},
	{rollout.ErrClosed, http.StatusServiceUnavailable},
	{rollout.ErrUnavailable, http.StatusServiceUnavailable},
	{errNoRollouts, http.StatusServiceUnavailable},
	{rollout.ErrIncompatible, http.StatusConflict},
	{errInvalid, http.StatusBadRequest},
	{device.ErrInvalidID, http.StatusBadRequest},
	{errNoRoute, http.StatusNotFound},
	{errMethod, http.StatusMethodNotAllowed},
	{errTooLarge, http.StatusRequestEntityTooLarge},
	{errCrossOrigin, http.StatusForbidden},
	{errMediaType, http.StatusUnsupportedMediaType},
	{errNoStore, http.StatusServiceUnavailable},
	{firmware.ErrInvalid, http.StatusBadRequest},
	{firmware.ErrInvalidVersion, http.StatusBadRequest},
	{firmware.ErrNotFound, http.StatusNotFound},
	{firmware.ErrExists, http.StatusConflict},
	{firmware.ErrInUse, http.StatusConflict},
	{firmware.ErrTooLarge, http.StatusRequestEntityTooLarge},
	{firmware.ErrChecksumMismatch, http.StatusUnprocessableEntity},
	{firmware.ErrClosed, http.StatusServiceUnavailable},
	{identity.ErrNotFound, http.StatusNotFound},
	{identity.ErrExists, http.StatusConflict},
	{identity.ErrInvalidName, http.StatusBadRequest},
	{identity.ErrInvalidRole, http.StatusBadRequest},
	{identity.ErrInvalidLabel, http.StatusBadRequest},
	{identity.ErrInvalidCert, http.StatusBadRequest},
	{device.ErrInvalidID, http.StatusBadRequest},
	{identity.ErrClosed, http.StatusServiceUnavailable},
}

// clientError is an error whose message may be shown to the client.
type clientError struct {
	err error // the sentinel, a key of statusTable
	msg string
}

func (e *clientError) Error() string { return e.msg }
func (e *clientError) Unwrap() error { return e.err }

func clientErr(sentinel error, format string, args ...any) error {
	return &clientError{err: sentinel, msg: fmt.Sprintf(format, args...)}
}

// api holds what the handlers need.
type api struct {
	eng     *shadow.Engine
	fw      *firmware.Store // nil: the firmware routes answer 503
	log     *slog.Logger
	maxBody int64
	// presence reports a device's presence for GET /v1/devices; nil
	// leaves it out.
	presence func(device.ID) (identity.Presence, bool)
	// enrolled is Config.Enrolled; nil leaves the enrolment out of GET
	// /v1/devices/{id}.
	enrolled func(context.Context, device.ID) (identity.Device, error)
	ro       Rollouts // nil: the rollout routes answer 503
	// observe is Config.Observe; nil when not set.
	observe func(route string, code int, d time.Duration)
	// routes are the "METHOD /path" patterns registered, sorted.
	routes []string
	// fleet and live are Config.Fleet and Config.Live, nil when not set;
	// shutdown is closed when Open's server shuts down (ends the streams).
	fleet    Fleet
	live     Live
	shutdown chan struct{}
}

// NewHandler returns the API's routes (and cfg.Mounts) as an http.Handler,
// for use with httptest or an http.Server of the caller's. cfg.Addr is
// ignored. Errors wrap ErrInvalidConfig.
func NewHandler(cfg Config) (http.Handler, error) {
	cfg.setDefaults()
	h, _, err := newHandler(cfg)
	return h, err
}

func newHandler(cfg Config) (h http.Handler, a *api, err error) {
	if err := cfg.validate(); err != nil {
		return nil, nil, err
	}
	cop, err := newCrossOriginProtection(cfg.TrustedOrigins)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: TrustedOrigins: %w", ErrInvalidConfig, err)
	}
	a = &api{eng: cfg.Shadow, log: cfg.Logger.With(logKeyComponent, "httpapi"), maxBody: cfg.MaxBodyBytes}
	a.fw = cfg.Firmware
	a.presence = cfg.Presence
	a.enrolled = cfg.Enrolled
	a.fleet, a.live, a.shutdown = cfg.Fleet, cfg.Live, make(chan struct{})
	if r := cfg.Rollouts; r != nil && !(reflect.ValueOf(r).Kind() == reflect.Pointer && reflect.ValueOf(r).IsNil()) {
		a.ro = r
	}
	v1 := func(h http.HandlerFunc) http.Handler {
		if cfg.Middleware != nil {
			return cfg.Middleware(h)
		}
		return h
	}
	routes := map[string]http.Handler{
		"GET /healthz":                   http.HandlerFunc(a.health),
		"GET " + OpenAPIPath:             http.HandlerFunc(a.openAPI),
		"GET /v1":                        http.HandlerFunc(a.index),
		"GET /v1/devices":                v1(a.list),
		"GET /v1/devices/{id}/shadow":    v1(a.getShadow),
		"POST /v1/devices/{id}/shadow":   v1(a.updateShadow),
		"DELETE /v1/devices/{id}/shadow": v1(a.deleteShadow),
		"GET /v1/devices/{id}/shadows":   v1(a.listShadows),
		"GET /v1/devices/{id}":           v1(a.getDevice),
		"/":                              http.HandlerFunc(a.notFound),
	}
	if cfg.Live != nil {
		routes["GET /v1/events"] = v1(a.events)
	}
	for pattern, h := range a.firmwareRoutes() {
		routes[pattern] = v1(h)
	}
	for pattern, h := range a.rolloutRoutes() {
		routes[pattern] = v1(h)
	}
	for pattern, h := range cfg.Mounts {
		if h == nil {
			return nil, nil, fmt.Errorf("%w: mount %q has a nil handler", ErrInvalidConfig, pattern)
		}
		if _, dup := routes[pattern]; dup {
			return nil, nil, fmt.Errorf("%w: mount %q is an API route", ErrInvalidConfig, pattern)
		}
		routes[pattern] = h
	}
	for pattern := range routes {
		if strings.Contains(pattern, " ") {
			a.routes = append(a.routes, pattern)
		}
	}
	slices.Sort(a.routes)
	// Every path that some method serves answers other methods with a JSON
	// 405 (the mux's own 405 is plain text).
	allowed := map[string][]string{}
	for pattern := range routes {
		if method, path, ok := strings.Cut(pattern, " "); ok {
			allowed[strings.TrimSpace(path)] = append(allowed[strings.TrimSpace(path)], method)
		}
	}
	for path, methods := range allowed {
		if _, taken := routes[path]; !taken {
			routes[path] = a.methodNotAllowed(methods)
		}
	}

	mux := http.NewServeMux()
	defer func() {
		// ServeMux panics on malformed or conflicting patterns; only Mounts
		// can bring those.
		if r := recover(); r != nil {
			h, a, err = nil, nil, fmt.Errorf("%w: %v", ErrInvalidConfig, r)
		}
	}()
	for _, pattern := range slices.Sorted(maps.Keys(routes)) {
		mux.Handle(pattern, routes[pattern])
	}
	a.observe = cfg.Observe
	return a.logRequests(mux, jsonErrors(a.recoverPanics(a.crossOrigin(cop, mux)))), a, nil
}

func (a *api) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, []byte(`{"status":"ok"}`))
}

func (a *api) notFound(w http.ResponseWriter, r *http.Request) {
	a.writeError(w, r, clientErr(errNoRoute, "No route for %s", r.URL.Path), "")
}

func (a *api) methodNotAllowed(methods []string) http.Handler {
	if slices.Contains(methods, http.MethodGet) && !slices.Contains(methods, http.MethodHead) {
		methods = append(methods, http.MethodHead)
	}
	slices.Sort(methods)
	allow := strings.Join(methods, ", ")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		a.writeError(w, r, clientErr(errMethod, "Method %s not allowed; allowed: %s", r.Method, allow), "")
	})
}

func (a *api) list(w http.ResponseWriter, r *http.Request) {
	if a.fleet != nil {
		a.fleetList(w, r)
		return
	}
	q := r.URL.Query()
	limit := wire.DefaultListLimit
	if s := q.Get("limit"); q.Has("limit") {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > wire.MaxListLimit {
			a.writeError(w, r, clientErr(errInvalid, "Invalid limit %q: must be an integer from 1 to %d", s, wire.MaxListLimit), "")
			return
		}
		limit = n
	}
	sums, next, err := a.eng.List(r.Context(), q.Get("cursor"), limit)
	if err != nil {
		a.writeError(w, r, err, "")
		return
	}
	entries := wireList(sums, wireSummary)
	if a.presence != nil {
		for i := range entries {
			p, _ := a.presence(entries[i].ID)
			wp := wirePresence(p)
			entries[i].Presence = &wp
		}
	}
	b, err := marshalJSON(wire.DeviceList{Devices: entries, Next: next})
	if err != nil {
		a.writeError(w, r, fmt.Errorf("encode list: %w", err), "")
		return
	}
	writeJSON(w, http.StatusOK, b)
}

// shadowOp is one of the engine's request methods (the *Named ones).
type shadowOp func(e *shadow.Engine, r *http.Request, id device.ID, name shadow.Name, payload []byte) ([]byte, error)

func (a *api) getShadow(w http.ResponseWriter, r *http.Request) {
	a.serveShadow(w, r, false, func(e *shadow.Engine, r *http.Request, id device.ID, n shadow.Name, p []byte) ([]byte, error) {
		return e.GetNamed(r.Context(), id, n, p)
	})
}

func (a *api) updateShadow(w http.ResponseWriter, r *http.Request) {
	a.serveShadow(w, r, true, func(e *shadow.Engine, r *http.Request, id device.ID, n shadow.Name, p []byte) ([]byte, error) {
		return e.UpdateNamed(r.Context(), id, n, p)
	})
}

func (a *api) deleteShadow(w http.ResponseWriter, r *http.Request) {
	a.serveShadow(w, r, true, func(e *shadow.Engine, r *http.Request, id device.ID, n shadow.Name, p []byte) ([]byte, error) {
		return e.DeleteNamed(r.Context(), id, n, p)
	})
}

// listShadows lists a device's shadows: the classic one (name "") and its
// named ones.
func (a *api) listShadows(w http.ResponseWriter, r *http.Request) {
	id, err := device.ParseID(r.PathValue("id"))
	if err != nil {
		a.writeError(w, r, clientErr(errInvalid, "Invalid device ID: %v", err), "")
		return
	}
	list, err := a.eng.Shadows(r.Context(), id)
	if err != nil {
		a.writeError(w, r, err, "")
		return
	}
	b, err := marshalJSON(wire.ShadowList{Device: id, Shadows: wireList(list, wireShadowInfo)})
	if err != nil {
		a.writeError(w, r, fmt.Errorf("encode shadows: %w", err), "")
		return
	}
	writeJSON(w, http.StatusOK, b)
}

// serveShadow validates the device ID and the shadow name (?name=, absent
// for the classic shadow), reads the body (if readBody) and the
// clientToken query parameter into the engine's payload, and writes the
// engine's answer.
func (a *api) serveShadow(w http.ResponseWriter, r *http.Request, readBody bool, op shadowOp) {
	q := r.URL.Query()
	qtok, hasQtok := q.Get("clientToken"), q.Has("clientToken")
	id, err := device.ParseID(r.PathValue("id"))
	if err != nil {
		a.writeError(w, r, clientErr(errInvalid, "Invalid device ID: %v", err), qtok)
		return
	}
	var name shadow.Name
	if names := q["name"]; len(names) > 1 {
		a.writeError(w, r, clientErr(errInvalid, "Invalid shadow name: ?name= given %d times", len(names)), qtok)
		return
	} else if len(names) == 1 {
		// Present but empty is an error too: leave ?name= out for the
		// classic shadow.
		if name, err = shadow.ParseName(names[0]); err != nil {
			a.writeError(w, r, err, qtok)
			return
		}
	}
	var body []byte
	if readBody {
		if err := requireJSON(r); err != nil {
			a.writeError(w, r, err, qtok)
			return
		}
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, a.maxBody))
		if err != nil {
			if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok {
				err = clientErr(errTooLarge, "Request body larger than %d bytes", mbe.Limit)
				closeAfter(w) // do not drain the rest
			} else {
				err = clientErr(errInvalid, "Reading request body: %v", err)
			}
			a.writeError(w, r, err, qtok)
			return
		}
	}
	payload := body
	if hasQtok {
		if payload, err = withClientToken(body, qtok); err != nil {
			a.writeError(w, r, err, qtok)
			return
		}
	}
	b, err := op(a.eng, r, id, name, payload)
	if err != nil {
		a.writeError(w, r, err, qtok)
		return
	}
	writeJSON(w, http.StatusOK, b)
}

// withClientToken returns the request payload body with "clientToken": tok
// added. An empty body becomes {"clientToken":tok}; a body that already
// names the same token is returned as is, one that names another is an
// error. A body that is not a JSON object is returned unchanged, for the
// engine to reject as it would over MQTT.
func withClientToken(body []byte, tok string) ([]byte, error) {
	rawTok, err := json.Marshal(tok)
	if err != nil {
		return nil, clientErr(errInvalid, "Invalid clientToken")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return []byte(`{"clientToken":` + string(rawTok) + `}`), nil
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil || top == nil {
		return body, nil
	}
	if have, ok := top["clientToken"]; ok {
		var s string
		if json.Unmarshal(have, &s) != nil || s != tok {
			return nil, clientErr(errInvalid, "clientToken in the query and in the body differ")
		}
		return body, nil
	}
	top["clientToken"] = rawTok
	return json.Marshal(top)
}

// writeError writes err as a JSON error with the status from statusTable
// (or the engine's code); token, if the error does not carry one, is echoed.
// Errors this edge does not know are logged and sent as a generic 500.
func (a *api) writeError(w http.ResponseWriter, r *http.Request, err error, token string) {
	if re, ok := errors.AsType[*shadow.RequestError](err); ok {
		if re.ClientToken == "" && token != "" && len(token) <= shadow.MaxClientTokenLen {
			c := *re
			c.ClientToken = token
			re = &c
		}
		writeJSON(w, re.Code, re.Payload(time.Now()))
		return
	}
	status, msg := http.StatusInternalServerError, "Internal server error"
	for _, row := range statusTable {
		if errors.Is(err, row.err) {
			status, msg = row.status, userMessage(r, err)
			break
		}
	}
	if status == http.StatusInternalServerError {
		a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	if errors.Is(err, rollout.ErrUnavailable) {
		// Cluster mode: no node holds the planner lease now; the next
		// holder takes over within seconds (docs/cluster.md).
		w.Header().Set("Retry-After", RetryAfterPlanner)
	}
	body := wire.ErrorBody{Code: status, Message: msg}
	if iu, ok := errors.AsType[*firmware.InUseError](err); ok {
		body.Rollout = iu.Rollout
	}
	if ce, ok := errors.AsType[*rollout.ConflictError](err); ok {
		body.Rollout = ce.Rollout
	}
	if ie, ok := errors.AsType[*rollout.IncompatibleError](err); ok {
		for _, d := range ie.Devices[:min(len(ie.Devices), MaxIncompatibleListed)] {
			body.Incompatible = append(body.Incompatible, wire.IncompatibleDevice{ID: d.ID, HW: d.HW})
		}
	}
	b, _ := marshalJSON(body)
	writeJSON(w, status, b)
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body)
	_, _ = w.Write([]byte("\n"))
}

// statusRecorder remembers the status and size of a response for the log.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.bytes += n
	return n, err
}

// ReadFrom keeps sendfile for file downloads.
func (s *statusRecorder) ReadFrom(r io.Reader) (int64, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := s.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(struct{ io.Writer }{s.ResponseWriter}, r)
	}
	s.bytes += int(n)
	return n, err
}

// Flush passes a flush through.
func (s *statusRecorder) Flush() {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// logRequests reports every answered request to Config.Observe and logs
// it at debug level.
func (a *api) logRequests(mux *http.ServeMux, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		debug := a.log.Enabled(r.Context(), slog.LevelDebug)
		if !debug && a.observe == nil {
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		// The route that serves r, known before next runs, so that
		// refusals made in front of the mux (cross-origin) name it too.
		_, route := mux.Handler(r)
		if route == "" {
			route = "unmatched"
		}
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if rec.status == 0 {
			rec.status = http.StatusOK // nothing written: net/http answers 200
		}
		d := time.Since(start)
		if a.observe != nil {
			a.observe(route, rec.status, d)
		}
		if debug {
			a.log.Debug("http request", "method", r.Method, "path", r.URL.Path, "route", route, "status", rec.status,
				"bytes", rec.bytes, "duration", d, "remote", r.RemoteAddr)
		}
	})
}

// recoverPanics turns a handler's panic into a logged 500 JSON error instead
// of a dropped connection.
func (a *api) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				a.writeError(w, r, fmt.Errorf("panic: %v", v), "")
			}
		}()
		next.ServeHTTP(w, r)
	})
}
