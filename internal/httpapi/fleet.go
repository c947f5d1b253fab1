package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/fleet"
	"github.com/umbra-iot/umbra/wire"
)

// Fleet answers GET /v1/devices from the in-memory fleet index.
// *fleet.Index implements it.
type Fleet interface {
	Query(q fleet.Query) fleet.Page
	Get(id device.ID) (fleet.Device, bool)
}

// maxSearch caps ?q= and ?firmware=.
const maxSearch = 128

// fleetQuery reads GET /v1/devices' query: limit, cursor, selector
// (k=v,k2=v2: the rollout selector's syntax), online (true or false),
// firmware (a version, or "(none)"), state (failed, updating, updated,
// idle), q (a substring of the ID) and id (exactly this device).
func fleetQuery(r *http.Request) (fleet.Query, error) {
	q := r.URL.Query()
	for k, v := range q {
		if len(v) > 1 {
			return fleet.Query{}, clientErr(errInvalid, "Invalid query: %s given %d times", k, len(v))
		}
	}
	var fq fleet.Query
	fq.Limit = wire.DefaultListLimit
	if s := q.Get("limit"); q.Has("limit") {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > wire.MaxListLimit {
			return fq, clientErr(errInvalid, "Invalid limit %q: must be an integer from 1 to %d", s, wire.MaxListLimit)
		}
		fq.Limit = n
	}
	if c := q.Get("cursor"); c != "" {
		id, err := device.ParseID(c)
		if err != nil {
			return fq, clientErr(errInvalid, "Invalid cursor: %v", err)
		}
		fq.After = id
	}
	if s := q.Get("selector"); q.Has("selector") {
		sel, err := identity.ParseSelector(s)
		if err != nil {
			return fq, clientErr(errInvalid, "Invalid selector: %v", err)
		}
		fq.Selector = sel
	}
	switch s := q.Get("online"); s {
	case "":
	case "true", "false":
		on := s == "true"
		fq.Online = &on
	default:
		return fq, clientErr(errInvalid, "Invalid online %.20q: want true or false", s)
	}
	if s := q.Get("firmware"); len(s) > maxSearch {
		return fq, clientErr(errInvalid, "Invalid firmware: longer than %d bytes", maxSearch)
	} else {
		fq.Firmware = s
	}
	if s := q.Get("state"); s != "" && !slices.Contains(fleet.States, s) {
		return fq, clientErr(errInvalid, "Invalid state %.20q: want one of %s", s, strings.Join(fleet.States, ", "))
	} else {
		fq.State = s
	}
	if s := q.Get("q"); len(s) > maxSearch {
		return fq, clientErr(errInvalid, "Invalid q: longer than %d bytes", maxSearch)
	} else {
		fq.Search = s
	}
	return fq, nil
}

// fleetList serves GET /v1/devices from the fleet index.
func (a *api) fleetList(w http.ResponseWriter, r *http.Request) {
	q, err := fleetQuery(r)
	if err != nil {
		a.writeError(w, r, err, "")
		return
	}
	var p fleet.Page
	one := r.URL.Query().Get("id") != ""
	if s := r.URL.Query().Get("id"); one {
		// One device: the console's device page.
		id, err := device.ParseID(s)
		if err != nil {
			a.writeError(w, r, clientErr(errInvalid, "Invalid id: %v", err), "")
			return
		}
		p = a.fleet.Query(fleet.Query{Limit: 1}) // for the totals
		p.Devices, p.Matched, p.Next = nil, 0, ""
		if d, ok := a.fleet.Get(id); ok {
			p.Devices, p.Matched = []fleet.Device{d}, 1
		}
	} else {
		p = a.fleet.Query(q)
	}
	out := wire.FleetList{Devices: make([]wire.FleetDevice, len(p.Devices)), Next: string(p.Next), Matched: p.Matched,
		Loading: p.Loading, Totals: wire.FleetTotals(p.Totals)}
	for i, d := range p.Devices {
		pr := wirePresence(d.Presence)
		out.Devices[i] = wire.FleetDevice{ID: d.ID, Version: d.Version, Updated: d.Updated, Presence: &pr,
			Enrolled: d.Enrolled, EnrolledAt: d.EnrolledAt, Labels: d.Labels, CertBound: d.CertBound,
			Firmware: wire.FleetFirmware(d.Firmware), LastReport: d.LastReport}
		if one {
			for _, c := range d.History {
				out.Devices[i].PresenceHistory = append(out.Devices[i].PresenceHistory, wire.PresenceChange(c))
			}
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		a.writeError(w, r, fmt.Errorf("encode fleet: %w", err), "")
		return
	}
	writeJSON(w, http.StatusOK, b)
}
