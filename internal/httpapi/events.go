package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/fleet"
	"github.com/umbra-iot/umbra/wire"
)

// Live is the live feed GET /v1/events streams. *fleet.Hub implements it.
type Live interface {
	Subscribe(principal string, f fleet.Filter) (*fleet.Sub, error)
	Unsubscribe(s *fleet.Sub)
}

// SSE timing.
const (
	// sseHeartbeat is how often an idle stream gets a comment line, so
	// that proxies and the browser see it alive.
	sseHeartbeat = 15 * time.Second
	// sseWriteTimeout bounds one write to the stream: a browser that
	// stops reading is cut off after it, besides being dropped when its
	// buffer fills.
	sseWriteTimeout = 10 * time.Second
	// maxEventDevices caps ?devices=.
	maxEventDevices = 200
)

// eventsFilter reads GET /v1/events' query: kinds (comma-separated, of
// fleet.EventKinds), devices (comma-separated IDs) and rollout (an ID).
func eventsFilter(r *http.Request) (fleet.Filter, error) {
	q := r.URL.Query()
	var f fleet.Filter
	if s := q.Get("kinds"); s != "" {
		f.Kinds = map[string]bool{}
		for k := range strings.SplitSeq(s, ",") {
			if !fleetKind(k) {
				return f, clientErr(errInvalid, "Invalid kinds: %.40q is not one of %s", k, strings.Join(fleet.EventKinds, ", "))
			}
			f.Kinds[k] = true
		}
	}
	if s := q.Get("devices"); s != "" {
		f.Devices = map[device.ID]bool{}
		for d := range strings.SplitSeq(s, ",") {
			id, err := device.ParseID(d)
			if err != nil {
				return f, clientErr(errInvalid, "Invalid devices: %v", err)
			}
			f.Devices[id] = true
		}
		if len(f.Devices) > maxEventDevices {
			return f, clientErr(errInvalid, "Invalid devices: %d devices, at most %d", len(f.Devices), maxEventDevices)
		}
	}
	if s := q.Get("rollout"); s != "" {
		id, err := wire.ParseRolloutID(s)
		if err != nil {
			return f, clientErr(errInvalid, "Invalid rollout: %v", err)
		}
		f.Rollout = id
	}
	return f, nil
}

func fleetKind(k string) bool {
	for _, have := range fleet.EventKinds {
		if k == have {
			return true
		}
	}
	return false
}

// events serves GET /v1/events: a text/event-stream of the live feed,
// each event "event: <kind>" with data {"device"|"rollout", "payload"},
// first a "ready" event. A stream that falls behind is ended with a
// "dropped" event; the client reconnects and reloads what it shows.
func (a *api) events(w http.ResponseWriter, r *http.Request) {
	f, err := eventsFilter(r)
	if err != nil {
		a.writeError(w, r, err, "")
		return
	}
	principal := "anonymous"
	if p, ok := PrincipalFrom(r.Context()); ok {
		principal = string(p.Role) + ":" + p.Name
	}
	sub, err := a.live.Subscribe(principal, f)
	switch {
	case errors.Is(err, fleet.ErrTooMany):
		w.Header().Set("Retry-After", "5")
		writeErrorBody(w, http.StatusTooManyRequests, "Too many live connections: "+err.Error())
		return
	case err != nil:
		writeErrorBody(w, http.StatusServiceUnavailable, "Live feed not available: shutting down")
		return
	}
	defer a.live.Unsubscribe(sub)
	rc := http.NewResponseController(w)
	// The server's read and write timeouts are for requests, not for a
	// stream: each write gets its own deadline instead.
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(s string) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout))
		if _, err := fmt.Fprint(w, s); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send("retry: 2000\nevent: ready\ndata: {}\n\n") {
		return
	}
	beat := time.NewTicker(sseHeartbeat)
	defer beat.Stop()
	var b strings.Builder
	for {
		select {
		case <-r.Context().Done():
			return
		case <-a.shutdown:
			send("event: closing\ndata: {}\n\n")
			return
		case <-sub.Gone():
			send("event: dropped\ndata: {}\n\n")
			return
		case <-beat.C:
			if !send(": " + strconv.FormatInt(time.Now().Unix(), 10) + "\n\n") {
				return
			}
		case e := <-sub.C():
			b.Reset()
			writeEvent(&b, e)
			// Send what else is queued in the same write.
			for more := true; more && b.Len() < 64<<10; {
				select {
				case e := <-sub.C():
					writeEvent(&b, e)
				default:
					more = false
				}
			}
			if !send(b.String()) {
				return
			}
		}
	}
}

func writeEvent(b *strings.Builder, e fleet.Event) {
	b.WriteString("event: ")
	b.WriteString(e.Kind)
	b.WriteString("\ndata: {")
	if e.Device != "" {
		b.WriteString(`"device":"`)
		b.WriteString(string(e.Device)) // IDs are JSON-safe (device.ParseID)
		b.WriteString(`",`)
	}
	if e.Rollout != "" {
		b.WriteString(`"rollout":"`)
		b.WriteString(e.Rollout) // wire.ParseRolloutID
		b.WriteString(`",`)
	}
	b.WriteString(`"payload":`)
	b.Write(e.Payload)
	b.WriteString("}\n\n")
}
