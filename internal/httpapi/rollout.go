package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
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
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/wire"
)

// MaxRolloutBody caps the body of POST /v1/rollouts, which may list many
// devices (Config.MaxBodyBytes caps the other rollout routes).
const MaxRolloutBody = 16 << 20

// Rollouts is what the /v1/rollouts routes call. *rollout.Planner
// implements it.
type Rollouts interface {
	Create(ctx context.Context, spec rollout.Spec) (rollout.Rollout, error)
	Get(ctx context.Context, id string) (rollout.Status, error)
	List(ctx context.Context) ([]rollout.Rollout, error)
	DevicesPage(ctx context.Context, id string, states []rollout.DeviceState, start, limit int) ([]rollout.DeviceStatus, int, error)
	Events(ctx context.Context, id string) ([]rollout.Event, error)
	Pause(ctx context.Context, id string) (rollout.Rollout, error)
	Resume(ctx context.Context, id string) (rollout.Rollout, error)
	Abort(ctx context.Context, id string, rollback bool) (rollout.Rollout, error)
	Rollback(ctx context.Context, id string) (rollout.Rollout, error)
	Retry(ctx context.Context, id string) (rollout.Rollout, error)
	AddDevices(ctx context.Context, id string, devices []device.ID) (rollout.Rollout, error)
}

// TargetResolver turns a label selector (every pair must match), or all,
// into a sorted, de-duplicated list of device IDs, and tells the hardware
// model of devices.
type TargetResolver interface {
	Resolve(ctx context.Context, selector map[string]string, all bool) ([]device.ID, error)
	// Hardware returns the hardware model (the HardwareLabel enrolment
	// label) of each of ids that has one.
	Hardware(ctx context.Context, ids []device.ID) (map[device.ID]string, error)
}

// HardwareLabel is the enrolment label naming a device's hardware model
// (umbra device add d1 --label hw=m2). A rollout of an image built for one
// model (firmware upload --hw) refuses targets labelled with another, or
// leaves them out with skip_incompatible; devices without the label are
// taken, and must check the manifest's hw themselves.
const HardwareLabel = "hw"

// MaxIncompatibleListed bounds the devices an IncompatibleError's JSON
// body lists.
const MaxIncompatibleListed = 100

// IncompatibleError refuses a rollout whose targets include devices of
// another hardware model than the image's. It is a 409 whose body lists
// the devices.
type IncompatibleError struct {
	Firmware firmware.Version
	HW       string                    // the image's hardware model
	Devices  []wire.IncompatibleDevice // in target order
}

func (e *IncompatibleError) Error() string {
	d := e.Devices[0]
	return fmt.Sprintf("%d target devices have another hardware model than firmware %s (hw %q), for example %s (hw %q): leave them out with skip_incompatible (umbra rollout create --skip-incompatible)",
		len(e.Devices), e.Firmware, e.HW, d.ID, d.HW)
}

func (e *IncompatibleError) Unwrap() error { return errIncompatible }

// IdentityTargets returns the TargetResolver over enrolled devices and
// shadows: a selector matches enrolled devices by their labels; all is every
// enrolled device and every device that has a shadow (with anonymous access
// devices are not enrolled). Either argument may be nil.
func IdentityTargets(ids *identity.Store, eng *shadow.Engine) TargetResolver {
	return identityTargets{ids: ids, eng: eng}
}

type identityTargets struct {
	ids *identity.Store
	eng *shadow.Engine
}

func (t identityTargets) Resolve(ctx context.Context, selector map[string]string, all bool) ([]device.ID, error) {
	if !all && len(selector) == 0 {
		return nil, clientErr(errInvalid, "Give a label selector or all")
	}
	set := map[device.ID]struct{}{}
	if t.ids != nil {
		devs, err := t.ids.ListDevices(ctx)
		if err != nil {
			return nil, fmt.Errorf("resolve targets: %w", err)
		}
		for _, d := range devs {
			if all || labelsMatch(selector, d.Labels) {
				set[d.ID] = struct{}{}
			}
		}
	}
	if all && t.eng != nil {
		cursor := ""
		for {
			sums, next, err := t.eng.List(ctx, cursor, wire.MaxListLimit)
			if err != nil {
				return nil, fmt.Errorf("resolve targets: %w", err)
			}
			for _, s := range sums {
				set[s.ID] = struct{}{}
			}
			if next == "" || next == cursor {
				break
			}
			cursor = next
		}
	}
	return slices.Sorted(maps.Keys(set)), nil
}

func (t identityTargets) Hardware(ctx context.Context, ids []device.ID) (map[device.ID]string, error) {
	out := map[device.ID]string{}
	if t.ids == nil {
		return out, nil
	}
	devs, err := t.ids.ListDevices(ctx)
	if err != nil {
		return nil, fmt.Errorf("hardware of targets: %w", err)
	}
	want := make(map[device.ID]struct{}, len(ids))
	for _, id := range ids {
		want[id] = struct{}{}
	}
	for _, d := range devs {
		if hw, ok := d.Labels[HardwareLabel]; ok {
			if _, ok := want[d.ID]; ok {
				out[d.ID] = hw
			}
		}
	}
	return out, nil
}

// labelsMatch reports whether labels carry every pair of selector.
func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if have, ok := labels[k]; !ok || have != v {
			return false
		}
	}
	return true
}

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

// rolloutsRef holds the Rollouts in an atomic.Pointer.
type rolloutsRef struct{ r Rollouts }

func (a *api) setRollouts(r Rollouts) {
	if r == nil || reflect.ValueOf(r).Kind() == reflect.Pointer && reflect.ValueOf(r).IsNil() {
		a.ro.Store(nil)
		return
	}
	a.ro.Store(&rolloutsRef{r})
}

// SetRollouts installs the planner the /v1/rollouts routes use, replacing
// Config.Rollouts (the planner needs the firmware store, which needs the
// API's address). It is safe to call while serving.
func (s *Server) SetRollouts(r Rollouts) { s.api.setRollouts(r) }

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
	ref := a.ro.Load()
	if ref == nil {
		a.writeError(w, r, clientErr(errNoRollouts, "Rollout planner not available"), "")
		return nil
	}
	return ref.r
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
	spec, err := a.spec(r.Context(), req)
	if err == nil {
		err = a.checkHardware(r.Context(), &spec, req.SkipIncompatible)
	}
	if err != nil {
		a.writeError(w, r, err, "")
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

// spec validates req's targets, resolves a selector or all into devices,
// and returns the planner's Spec. The policy is validated by the planner.
func (a *api) spec(ctx context.Context, req wire.CreateRollout) (rollout.Spec, error) {
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
	spec := rolloutwire.Spec(req)
	spec.Firmware = v // canonical ("v1.2.0" is 1.2.0), as the store and planner use it
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
		return spec, nil
	case req.Select != nil:
		if len(req.Select) == 0 {
			return rollout.Spec{}, clientErr(errInvalid, "select must name at least one label")
		}
		if err := identity.ValidateLabels(req.Select); err != nil {
			return rollout.Spec{}, fmt.Errorf("select: %w", err)
		}
	}
	if a.targets == nil {
		return rollout.Spec{}, clientErr(errNoRollouts, "Target selection by labels or all is not available")
	}
	ids, err := a.targets.Resolve(ctx, req.Select, req.All)
	if err != nil {
		return rollout.Spec{}, err
	}
	if len(ids) == 0 {
		return rollout.Spec{}, clientErr(errInvalid, "No device matches the selector")
	}
	spec.Devices = ids
	return spec, nil
}

// checkHardware refuses spec (an *IncompatibleError) if a target is
// labelled with another hardware model than the image's, or with skip
// leaves such targets out and counts them in spec.Excluded. It lets
// everything through when the image names no model, when there is no
// firmware store or target resolver, or when the image is missing (the
// planner reports that).
func (a *api) checkHardware(ctx context.Context, spec *rollout.Spec, skip bool) error {
	fw := a.fw.Load()
	if fw == nil || a.targets == nil {
		return nil
	}
	img, err := fw.Get(ctx, spec.Firmware)
	switch {
	case errors.Is(err, firmware.ErrNotFound):
		return nil // the planner refuses the rollout with a 400
	case err != nil:
		return fmt.Errorf("hardware check: %w", err)
	case img.HW == "":
		return nil
	}
	hw, err := a.targets.Hardware(ctx, spec.Devices)
	if err != nil {
		return err
	}
	var bad []wire.IncompatibleDevice
	keep := make([]device.ID, 0, len(spec.Devices))
	seen := make(map[device.ID]struct{}, len(spec.Devices))
	for _, id := range spec.Devices {
		if _, dup := seen[id]; dup {
			continue // the planner drops duplicates too
		}
		seen[id] = struct{}{}
		if h, ok := hw[id]; ok && h != img.HW {
			bad = append(bad, wire.IncompatibleDevice{ID: id, HW: h})
		} else {
			keep = append(keep, id)
		}
	}
	switch {
	case len(bad) == 0:
		return nil
	case !skip:
		return &IncompatibleError{Firmware: img.Version, HW: img.HW, Devices: bad}
	case len(keep) == 0:
		return clientErr(errInvalid, "No target can run firmware %s: all %d have another hardware model than %q", img.Version, len(bad), img.HW)
	}
	spec.Devices, spec.Excluded = keep, len(bad)
	return nil
}

// runsOn reports whether firmware v may go to a device of hardware model
// hw; true when that cannot be told.
func (a *api) runsOn(ctx context.Context, v firmware.Version, hw string) bool {
	fw := a.fw.Load()
	if fw == nil || hw == "" {
		return true
	}
	img, err := fw.Get(ctx, v)
	return err != nil || img.HW == "" || img.HW == hw
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
		evs, err := rs.Events(r.Context(), id)
		if err != nil {
			a.writeError(w, r, err, "")
			return
		}
		out := []wire.RolloutEvent{}
		for _, ev := range evs {
			if ev.Seq > after {
				out = append(out, rolloutwire.Event(ev))
			}
		}
		a.writeValue(w, r, http.StatusOK, wire.RolloutEvents{Events: out})
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
				ro, err = rs.Rollback(ctx, id)
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

// enrolled adds a newly enrolled device to every active dynamic rollout
// whose selector matches its labels (or that targets all devices). Errors
// are logged: enrolment succeeds regardless.
func (a *api) enrolled(ctx context.Context, id device.ID, labels map[string]string) {
	ref := a.ro.Load()
	if ref == nil {
		return
	}
	list, err := ref.r.List(ctx)
	if err != nil {
		a.log.Warn("dynamic rollouts: list", "device", id, "err", err)
		return
	}
	for _, ro := range list {
		if !ro.State.Active() || !ro.Policy.Dynamic || !(ro.All || len(ro.Selector) > 0 && labelsMatch(ro.Selector, labels)) {
			continue
		}
		if hw := labels[HardwareLabel]; !a.runsOn(ctx, ro.Firmware, hw) {
			a.log.Info("dynamic rollout: enrolled device not added: another hardware model", "rollout", ro.ID, "device", id, "hw", hw)
			continue
		}
		if _, err := ref.r.AddDevices(ctx, ro.ID, []device.ID{id}); err != nil {
			a.log.Warn("dynamic rollout: add enrolled device", "rollout", ro.ID, "device", id, "err", err)
			continue
		}
		a.log.Info("dynamic rollout: added enrolled device", "rollout", ro.ID, "device", id)
	}
}

type apiKey struct{}

// withAPI makes a reachable from every handler's context, mounts included,
// so that enrolment (IdentityRoutes) can reach the rollout planner.
func (a *api) withAPI(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), apiKey{}, a)))
	})
}

// notifyEnrolled tells the API serving r, if any, that device id was
// enrolled with labels.
func notifyEnrolled(r *http.Request, id device.ID, labels map[string]string) {
	if a, ok := r.Context().Value(apiKey{}).(*api); ok {
		a.enrolled(r.Context(), id, labels)
	}
}
