package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/rolloutwire"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// MaxRolloutBody caps the body of POST /v1/rollouts, which may list many
// devices (Config.MaxBodyBytes caps the other rollout routes).
const MaxRolloutBody = 16 << 20

// Rollouts is what the /v1/rollouts routes call. *rollout.Planner
// implements it.
type Rollouts interface {
	Create(ctx context.Context, spec rollout.Spec) (rollout.Rollout, error)
	Preview(ctx context.Context, spec rollout.Spec) (rollout.Rollout, error)
	Get(ctx context.Context, id string) (rollout.Status, error)
	List(ctx context.Context) ([]rollout.Rollout, error)
	DevicesPage(ctx context.Context, id string, states []rollout.DeviceState, start, limit int) ([]rollout.DeviceStatus, int, error)
	EventsAfter(ctx context.Context, id string, after uint64) ([]rollout.Event, error)
	Pause(ctx context.Context, id string) (rollout.Rollout, error)
	Resume(ctx context.Context, id string) (rollout.Rollout, error)
	Abort(ctx context.Context, id string, rollback bool) (rollout.Rollout, error)
	Rollback(ctx context.Context, id string) (rollout.Rollout, error)
	Retry(ctx context.Context, id string) (rollout.Rollout, error)
	AddDevices(ctx context.Context, id string, devices []device.ID) (rollout.Rollout, error)
}

// MaxIncompatibleListed bounds the devices the JSON body of a refused
// rollout lists (a *rollout.IncompatibleError has them all).
const MaxIncompatibleListed = 100

// decodeCreate reads the body of POST /v1/rollouts: a JSON object of
// wire.CreateRollout's fields and no others, its durations strings. Its
// errors name the field at fault.
func (a *api) decodeCreate(w http.ResponseWriter, r *http.Request) (wire.CreateRollout, error) {
	var req *wire.CreateRollout // stays nil for a body of null
	err := (&api{maxBody: MaxRolloutBody}).decodeJSONWith(w, r, &req, explainCreate)
	switch {
	case err != nil:
		return wire.CreateRollout{}, err
	case req == nil:
		return wire.CreateRollout{}, clientErr(errInvalid, "Body must be a JSON object")
	}
	return *req, nil
}

// explainCreate explains an error decoding a wire.CreateRollout.
func explainCreate(err error) string {
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return "Unknown field " + name
	}
	if pe, ok := errors.AsType[*time.ParseError](err); ok {
		return fmt.Sprintf("Invalid policy: start_at %.40q is not an RFC 3339 time such as \"2026-11-24T02:00:00Z\"", pe.Value)
	}
	ute, ok := errors.AsType[*json.UnmarshalTypeError](err)
	if !ok {
		return err.Error()
	}
	field, policy := strings.CutPrefix(ute.Field, "Policy.")
	switch {
	case ute.Field == "":
		return "Body must be a JSON object"
	case ute.Type == reflect.TypeFor[wire.Duration]():
		return fmt.Sprintf("Field %q must be a duration string such as \"30m\", not %s", field, ute.Value)
	case policy:
		return fmt.Sprintf("Invalid policy: field %q must be %s, not %s", field, jsonKind(ute.Type), ute.Value)
	}
	return fmt.Sprintf("Invalid field %q: must be %s, not %s", field, jsonKind(ute.Type), ute.Value)
}

// jsonKind names the JSON value a Go type decodes from.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "an array"
	}
	return "an object"
}

func (a *api) rolloutRoutes() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"POST /v1/rollouts":               a.createRollout,
		"GET /v1/rollouts":                a.listRollouts,
		"GET /v1/rollouts/{id}":           a.getRollout,
		"GET /v1/rollouts/{id}/devices":   a.rolloutDevices,
		"GET /v1/rollouts/{id}/events":    a.rolloutEvents,
		"POST /v1/rollouts/{id}/pause":    a.control("pause"),
		"POST /v1/rollouts/{id}/resume":   a.control("resume"),
		"POST /v1/rollouts/{id}/abort":    a.control("abort"),
		"POST /v1/rollouts/{id}/rollback": a.control("rollback"),
		"POST /v1/rollouts/{id}/retry":    a.control("retry"),
	}
}

// planner returns the Rollouts, or writes 503 and returns nil.
func (a *api) planner(w http.ResponseWriter, r *http.Request) Rollouts {
	if a.ro == nil {
		a.writeError(w, r, clientErr(errNoRollouts, "Rollout planner not available"), "")
	}
	return a.ro
}

// withRollout validates {id} and calls fn with the planner, or writes the
// error.
func (a *api) withRollout(w http.ResponseWriter, r *http.Request, fn func(rs Rollouts, id string)) {
	rs := a.planner(w, r)
	if rs == nil {
		return
	}
	id, err := wire.ParseRolloutID(r.PathValue("id"))
	if err != nil {
		a.writeError(w, r, clientErr(errInvalid, "Invalid rollout ID %.40q", r.PathValue("id")), "")
		return
	}
	fn(rs, id)
}

func (a *api) createRollout(w http.ResponseWriter, r *http.Request) {
	rs := a.planner(w, r)
	if rs == nil {
		return
	}
	req, err := a.decodeCreate(w, r)
	if err != nil {
		a.writeError(w, r, err, "")
		return
	}
	spec, err := createSpec(req)
	if err != nil {
		a.writeError(w, r, err, "")
		return
	}
	switch dry := r.URL.Query().Get("dry_run"); dry {
	case "":
	case "true":
		// The rollout as it would be created now (no ID), nothing stored.
		ro, err := rs.Preview(r.Context(), spec)
		if err != nil {
			a.writeError(w, r, err, "")
			return
		}
		a.writeValue(w, r, http.StatusOK, rolloutwire.Rollout(ro))
		return
	default:
		a.writeError(w, r, clientErr(errInvalid, "Invalid dry_run %.20q: want true", dry), "")
		return
	}
	ro, err := rs.Create(r.Context(), spec)
	if err != nil {
		a.writeError(w, r, err, "")
		return
	}
	w.Header().Set("Location", "/v1/rollouts/"+ro.ID)
	a.writeValue(w, r, http.StatusCreated, rolloutwire.Rollout(ro))
}

// createSpec checks the shape of req (exactly one kind of target, a
// firmware version, device IDs and labels that parse) and returns the
// planner's Spec of it. The planner applies the rules: it resolves a
// selector or all, checks hardware models and validates the policy.
func createSpec(req wire.CreateRollout) (rollout.Spec, error) {
	if req.TargetKinds() != 1 {
		return rollout.Spec{}, clientErr(errInvalid, "Give exactly one of devices, select and all")
	}
	if req.Firmware == "" {
		return rollout.Spec{}, clientErr(errInvalid, "Missing firmware")
	}
	v, err := firmware.ParseVersion(req.Firmware)
	if err != nil {
		return rollout.Spec{}, clientErr(errInvalid, "Invalid firmware version: %v", err)
	}
	switch {
	case req.Devices != nil:
		if len(req.Devices) == 0 {
			return rollout.Spec{}, clientErr(errInvalid, "No device matches: devices is empty")
		}
		if len(req.Devices) > rollout.MaxTargets {
			return rollout.Spec{}, clientErr(errInvalid, "%d devices, at most %d", len(req.Devices), rollout.MaxTargets)
		}
		for _, id := range req.Devices {
			if _, err := device.ParseID(string(id)); err != nil {
				return rollout.Spec{}, clientErr(errInvalid, "Invalid device ID: %v", err)
			}
		}
	case req.Select != nil:
		if len(req.Select) == 0 {
			return rollout.Spec{}, clientErr(errInvalid, "select must name at least one label")
		}
		if err := identity.ValidateLabels(req.Select); err != nil {
			return rollout.Spec{}, fmt.Errorf("select: %w", err)
		}
	}
	spec := rolloutwire.Spec(req)
	spec.Firmware = v // canonical ("v1.2.0" is 1.2.0), as the store and planner use it
	return spec, nil
}

func (a *api) listRollouts(w http.ResponseWriter, r *http.Request) {
	rs := a.planner(w, r)
	if rs == nil {
		return
	}
	list, err := rs.List(r.Context())
	if err != nil {
		a.writeError(w, r, err, "")
		return
	}
	slices.Reverse(list) // the planner lists oldest first
	a.writeValue(w, r, http.StatusOK, wire.RolloutList{Rollouts: wireList(list, rolloutwire.Rollout)})
}

func (a *api) getRollout(w http.ResponseWriter, r *http.Request) {
	a.withRollout(w, r, func(rs Rollouts, id string) {
		st, err := rs.Get(r.Context(), id)
		if err != nil {
			a.writeError(w, r, err, "")
			return
		}
		a.writeValue(w, r, http.StatusOK, rolloutwire.Status(st))
	})
}

// rolloutDevices serves a page of targets: ?state=a,b (repeatable),
// ?limit=1..MaxListLimit, ?cursor= the Next of the previous page. The cursor
// is a position in rollout order, so a page is stable while states change.
func (a *api) rolloutDevices(w http.ResponseWriter, r *http.Request) {
	a.withRollout(w, r, func(rs Rollouts, id string) {
		q := r.URL.Query()
		var states []rollout.DeviceState
		for _, v := range q["state"] {
			for name := range strings.SplitSeq(v, ",") {
				s, err := rollout.ParseDeviceState(strings.TrimSpace(name))
				if err != nil {
					a.writeError(w, r, clientErr(errInvalid, "Invalid state %.40q: want e.g. failed, timed_out, succeeded", name), "")
					return
				}
				if !slices.Contains(states, s) {
					states = append(states, s)
				}
			}
		}
		limit, err := queryInt(q, "limit", wire.DefaultListLimit, 1, wire.MaxListLimit)
		if err != nil {
			a.writeError(w, r, err, "")
			return
		}
		start, err := queryInt(q, "cursor", 0, 0, rollout.MaxTargets)
		if err != nil {
			a.writeError(w, r, err, "")
			return
		}
		devs, next, err := rs.DevicesPage(r.Context(), id, states, start, limit)
		if err != nil {
			a.writeError(w, r, err, "")
			return
		}
		page := wire.RolloutDevices{Devices: wireList(devs, rolloutwire.Device)}
		if next >= 0 {
			page.Next = strconv.Itoa(next)
		}
		a.writeValue(w, r, http.StatusOK, page)
	})
}

// queryInt parses query parameter name as an integer in [lo, hi], or
// returns def when it is absent or empty.
func queryInt(q url.Values, name string, def, lo, hi int) (int, error) {
	s := q.Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, clientErr(errInvalid, "Invalid %s %.40q: must be an integer from %d to %d", name, s, lo, hi)
	}
	return n, nil
}

func (a *api) rolloutEvents(w http.ResponseWriter, r *http.Request) {
	a.withRollout(w, r, func(rs Rollouts, id string) {
		var after uint64
		if s := r.URL.Query().Get("after"); s != "" {
			n, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				a.writeError(w, r, clientErr(errInvalid, "Invalid after %.40q: want an event sequence number", s), "")
				return
			}
			after = n
		}
		evs, err := rs.EventsAfter(r.Context(), id, after)
		if err != nil {
			a.writeError(w, r, err, "")
			return
		}
		a.writeValue(w, r, http.StatusOK, wire.RolloutEvents{Events: wireList(evs, rolloutwire.Event)})
	})
}

// control serves POST /v1/rollouts/{id}/<op>. The body is optional; abort
// takes {"rollback":true} or ?rollback=true, the others at most {}.
func (a *api) control(op string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a.withRollout(w, r, func(rs Rollouts, id string) {
			var body wire.AbortRequest
			rollback := false
			if op == "abort" {
				if s := r.URL.Query().Get("rollback"); s != "" {
					v, err := strconv.ParseBool(s)
					if err != nil {
						a.writeError(w, r, clientErr(errInvalid, "Invalid rollback %.20q: want true or false", s), "")
						return
					}
					rollback = v
				}
			}
			if r.ContentLength != 0 {
				var err error
				if op == "abort" {
					err = a.decodeJSON(w, r, &body)
				} else {
					err = a.decodeJSON(w, r, &struct{}{})
				}
				if err != nil {
					a.writeError(w, r, err, "")
					return
				}
			}
			rollback = rollback || body.Rollback
			ctx, status := r.Context(), http.StatusOK
			var ro rollout.Rollout
			var err error
			switch op {
			case "pause":
				ro, err = rs.Pause(ctx, id)
			case "resume":
				ro, err = rs.Resume(ctx, id)
			case "abort":
				ro, err = rs.Abort(ctx, id, rollback)
			case "rollback":
				if err = rollbackApplies(ctx, rs, id); err == nil {
					ro, err = rs.Rollback(ctx, id)
				}
			case "retry":
				ro, err = rs.Retry(ctx, id)
				status = http.StatusCreated
				w.Header().Set("Location", "/v1/rollouts/"+ro.ID)
			}
			if err != nil {
				w.Header().Del("Location")
				a.writeError(w, r, err, "")
				return
			}
			a.writeValue(w, r, status, rolloutwire.Rollout(ro))
		})
	}
}
