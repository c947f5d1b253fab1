package fleet

import (
	"cmp"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
)

// Limits of a query.
const (
	// MaxLimit is the most devices one page holds.
	MaxLimit = 1000
	// DefaultLimit is a page's size when the query gives none.
	DefaultLimit = 100
	// MaxVersionTotals is the most firmware versions Totals counts one by
	// one; the devices running the others are counted under OtherVersions.
	MaxVersionTotals = 50
	// OtherVersions is the Totals.Firmware key of the versions beyond
	// MaxVersionTotals; NoVersion the key of devices that report none.
	OtherVersions = "(other)"
	NoVersion     = "(none)"
)

// MaxHistory is the most presence changes the index keeps per device.
const MaxHistory = 5

// PresenceChange is one connection or disconnection of a device.
type PresenceChange struct {
	Connected bool
	At        time.Time
	Reason    string // why it disconnected ("" for a clean DISCONNECT)
}

// Firmware is a device's reported.firmware as the index holds it.
type Firmware struct {
	Version string `json:"version,omitempty"`
	State   string `json:"state,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Device is one device of the index.
type Device struct {
	ID device.ID
	// Enrolled reports whether the identity store holds the device;
	// Labels and EnrolledAt are then its enrolment's.
	Enrolled   bool
	Labels     map[string]string // shared: never modified in place
	EnrolledAt time.Time
	CertBound  bool
	Presence   identity.Presence
	// Shadow reports whether the device has a classic shadow; Version and
	// Updated are then its version and last change.
	Shadow   bool
	Version  uint64
	Updated  time.Time
	Firmware Firmware
	// LastReport is when the device last updated its reported state.
	LastReport time.Time
	// History is the device's latest presence changes seen since the
	// server started, newest first, at most MaxHistory (shared: replaced,
	// never modified in place).
	History []PresenceChange

	gone bool // removed from the index; pruned from sorted at the next sort
}

// Online reports whether the device is connected.
func (d *Device) Online() bool { return d.Presence.Connected }

// Failing reports whether the device reports a failed firmware update.
func (d *Device) Failing() bool { return d.Firmware.State == "failed" }

// Updating reports whether the device reports a firmware update in
// progress.
func (d *Device) Updating() bool {
	switch d.Firmware.State {
	case "downloading", "verifying", "installing", "rebooting":
		return true
	}
	return false
}

// Index is the in-memory fleet index. The zero value is not usable: call
// New.
type Index struct {
	mu       sync.RWMutex
	devs     map[device.ID]*Device
	sorted   []*Device // by ID; may hold removed devices until re-sorted
	unsorted bool      // sorted needs sorting (and pruning)
	loaded   bool
}

// New returns an empty index.
func New() *Index {
	return &Index{devs: map[device.ID]*Device{}}
}

// get returns id's device, adding it; the caller holds mu.
func (x *Index) get(id device.ID) *Device {
	d := x.devs[id]
	if d == nil {
		d = &Device{ID: id}
		x.devs[id] = d
		x.sorted = append(x.sorted, d)
		x.unsorted = true
	}
	return d
}

// drop removes d if nothing keeps it; the caller holds mu.
func (x *Index) drop(d *Device) {
	if !d.Enrolled && !d.Shadow {
		delete(x.devs, d.ID)
		d.gone = true
		x.unsorted = true // prune it from sorted
	}
}

// Enrolled records an enrolment (a new device, or a new enrolment of an
// ID): its labels, time and whether a certificate is bound.
func (x *Index) Enrolled(id device.ID, labels map[string]string, at time.Time, certBound bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	d := x.get(id)
	d.Enrolled, d.Labels, d.EnrolledAt, d.CertBound = true, cloneLabels(labels), at, certBound
}

// Removed records a device's removal from the identity store. A device
// with a shadow stays, unenrolled.
func (x *Index) Removed(id device.ID) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if d := x.devs[id]; d != nil {
		d.Enrolled, d.Labels, d.EnrolledAt, d.CertBound = false, nil, time.Time{}, false
		d.Presence = identity.Presence{}
		x.drop(d)
	}
}

// SetPresence records a device's presence (the state/<id>/presence
// message). A device the index does not hold is ignored: presence alone
// does not make a device.
func (x *Index) SetPresence(id device.ID, p identity.Presence) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if d := x.devs[id]; d != nil {
		d.Presence = p
		c := PresenceChange{Connected: p.Connected, At: p.ConnectedAt}
		if !p.Connected {
			c.At, c.Reason = p.DisconnectedAt, p.DisconnectReason
		}
		if c.At.IsZero() || (len(d.History) > 0 && d.History[0] == c) {
			return
		}
		h := make([]PresenceChange, 0, min(len(d.History)+1, MaxHistory))
		d.History = append(append(h, c), d.History[:min(len(d.History), MaxHistory-1)]...)
	}
}

// PresenceMessage applies a state/<id>/presence payload; a payload that is
// not a presence is ignored and reported false.
func (x *Index) PresenceMessage(id device.ID, payload []byte) bool {
	var p identity.Presence
	if len(payload) == 0 || json.Unmarshal(payload, &p) != nil {
		return false
	}
	x.SetPresence(id, p)
	return true
}

// ShadowDoc sets a device's shadow from a full document read from the
// engine: its version, last change and reported.firmware. It is ignored
// when the index holds a newer version (an event was applied since the
// document was read), except that an unknown firmware is filled in.
func (x *Index) ShadowDoc(id device.ID, version uint64, updated, lastReport time.Time, fw Firmware) {
	x.mu.Lock()
	defer x.mu.Unlock()
	d := x.get(id)
	if d.Shadow && d.Version > version {
		if d.Firmware == (Firmware{}) {
			d.Firmware = fw
		}
		return
	}
	d.Shadow, d.Version, d.Updated, d.Firmware = true, version, updated, fw
	if lastReport.After(d.LastReport) {
		d.LastReport = lastReport
	}
}

// acceptedMessage is the part of an update/accepted payload the index
// reads.
type acceptedMessage struct {
	State *struct {
		Reported json.RawMessage `json:"reported"`
	} `json:"state"`
	Version      uint64 `json:"version"`
	Timestamp    int64  `json:"timestamp"`
	StateOmitted bool   `json:"stateOmitted"`
}

// Reader reads a device's shadow when an accepted message omitted its
// state: the document's version, its last change and reported.firmware.
type Reader func(id device.ID) (version uint64, updated time.Time, fw Firmware, ok bool)

// Accepted applies an update/accepted payload of id's classic shadow. With
// read nil, an accepted message without its state only moves the version.
// It reports false for a payload it cannot read.
func (x *Index) Accepted(id device.ID, payload []byte, read Reader) bool {
	var m acceptedMessage
	if json.Unmarshal(payload, &m) != nil || m.Version == 0 {
		return false
	}
	var raw map[string]json.RawMessage
	_ = json.Unmarshal(payload, &raw)
	stateNull := string(raw["state"]) == "null"
	at := time.Unix(m.Timestamp, 0).UTC()
	if m.StateOmitted && read != nil {
		if v, upd, fw, ok := read(id); ok {
			x.ShadowDoc(id, v, upd, at, fw)
			return true
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	d := x.get(id)
	if d.Shadow && d.Version >= m.Version {
		return true // an older message than the state held
	}
	d.Shadow, d.Version, d.Updated = true, m.Version, at
	switch {
	case stateNull:
		d.Firmware = Firmware{}
	case m.State != nil && m.State.Reported != nil:
		d.LastReport = at
		d.Firmware = mergeFirmware(d.Firmware, m.State.Reported)
	}
	return true
}

// mergeFirmware merges the firmware section of a reported update into fw,
// as the engine merges the update into the document.
func mergeFirmware(fw Firmware, reported json.RawMessage) Firmware {
	if string(reported) == "null" {
		return Firmware{}
	}
	var rep map[string]json.RawMessage
	if json.Unmarshal(reported, &rep) != nil {
		return fw
	}
	sec, ok := rep["firmware"]
	if !ok {
		return fw
	}
	var keys map[string]json.RawMessage
	if string(sec) == "null" || json.Unmarshal(sec, &keys) != nil {
		return Firmware{}
	}
	for k, p := range map[string]*string{"version": &fw.Version, "state": &fw.State, "error": &fw.Error} {
		if v, ok := keys[k]; ok {
			var s string
			if json.Unmarshal(v, &s) != nil {
				s = "" // null or not a string: removed or unusable
			}
			*p = s
		}
	}
	return fw
}

// FirmwareOf returns the firmware section of a reported state (a
// document's State.Reported).
func FirmwareOf(reported map[string]any) Firmware {
	sec, _ := reported["firmware"].(map[string]any)
	str := func(k string) string { s, _ := sec[k].(string); return s }
	return Firmware{Version: str("version"), State: str("state"), Error: str("error")}
}

// ShadowDeleted applies a delete/accepted message of id's classic shadow.
func (x *Index) ShadowDeleted(id device.ID) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if d := x.devs[id]; d != nil {
		d.Shadow, d.Version, d.Updated, d.Firmware, d.LastReport = false, 0, time.Time{}, Firmware{}, time.Time{}
		x.drop(d)
	}
}

// SetLoaded marks the initial load done (Loaded reports it).
func (x *Index) SetLoaded() {
	x.mu.Lock()
	x.loaded = true
	x.mu.Unlock()
}

// Loaded reports whether the initial load is done: before, queries see
// part of the fleet.
func (x *Index) Loaded() bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.loaded
}

// Len returns the number of devices held.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.devs)
}

// Get returns a copy of id's device.
func (x *Index) Get(id device.ID) (Device, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	d := x.devs[id]
	if d == nil {
		return Device{}, false
	}
	return *d, true
}

// Query selects devices. The zero value selects every device, the first
// DefaultLimit of them.
type Query struct {
	// Selector: every label pair must match the device's labels.
	Selector map[string]string
	// Online: nil for any; else only devices whose connected state is it.
	Online *bool
	// Firmware: only devices reporting this version (NoVersion: none).
	Firmware string
	// State: "" for any, "failed", "updating" (an update in progress),
	// "updated", or "idle" (no firmware state reported).
	State string
	// Search: only devices whose ID contains it.
	Search string
	// After: only devices whose ID sorts after it (the cursor).
	After device.ID
	// Limit: the page's size, 1 to MaxLimit; 0 is DefaultLimit.
	Limit int
}

// States are the values Query.State accepts.
var States = []string{"failed", "updating", "updated", "idle"}

// Totals counts the whole fleet, whatever the query.
type Totals struct {
	Devices  int            `json:"devices"`
	Online   int            `json:"online"`
	Offline  int            `json:"offline"`
	Failing  int            `json:"failing"`
	Updating int            `json:"updating"`
	Firmware map[string]int `json:"firmware"`
}

// Page is a query's answer.
type Page struct {
	Devices []Device
	// Next is the cursor of the next page, "" after the last.
	Next device.ID
	// Matched counts every device that matches the query (on every page).
	Matched int
	Totals  Totals
	// Loading reports that the initial load is not done.
	Loading bool
}

func (q *Query) match(d *Device) bool {
	if q.Online != nil && d.Online() != *q.Online {
		return false
	}
	if q.Firmware != "" {
		v := d.Firmware.Version
		if v == "" {
			v = NoVersion
		}
		if v != q.Firmware {
			return false
		}
	}
	switch q.State {
	case "failed":
		if !d.Failing() {
			return false
		}
	case "updating":
		if !d.Updating() {
			return false
		}
	case "updated":
		if d.Firmware.State != "updated" {
			return false
		}
	case "idle":
		if d.Firmware.State != "" {
			return false
		}
	}
	if q.Search != "" && !strings.Contains(string(d.ID), q.Search) {
		return false
	}
	for k, v := range q.Selector {
		if have, ok := d.Labels[k]; !ok || have != v {
			return false
		}
	}
	return true
}

// Query answers q in one pass over the fleet.
func (x *Index) Query(q Query) Page {
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultLimit
	}
	limit = min(limit, MaxLimit)
	for {
		x.sortIfNeeded()
		x.mu.RLock()
		if !x.unsorted {
			break
		}
		x.mu.RUnlock() // an enrolment came in between: sort again
	}
	defer x.mu.RUnlock()
	p := Page{Loading: !x.loaded, Totals: Totals{Firmware: map[string]int{}}}
	var vc versionCounter
	start, _ := slices.BinarySearchFunc(x.sorted, q.After, func(d *Device, id device.ID) int { return cmp.Compare(d.ID, id) })
	for i, d := range x.sorted {
		if d.gone {
			continue // removed since the last sort
		}
		vc.add(&p.Totals, d)
		if !q.match(d) {
			continue
		}
		p.Matched++
		if i < start || (i == start && d.ID == q.After) {
			continue
		}
		if len(p.Devices) < limit {
			p.Devices = append(p.Devices, *d)
		} else if p.Next == "" {
			p.Next = p.Devices[len(p.Devices)-1].ID
		}
	}
	vc.flush(&p.Totals)
	p.Totals.fold()
	return p
}

// versionCounter counts devices per firmware version, adding runs of the
// same version (the common case: neighbours run the same firmware) to the
// map at once.
type versionCounter struct {
	v string
	n int
}

func (c *versionCounter) add(t *Totals, d *Device) {
	t.Devices++
	if d.Online() {
		t.Online++
	} else {
		t.Offline++
	}
	if d.Failing() {
		t.Failing++
	}
	if d.Updating() {
		t.Updating++
	}
	v := d.Firmware.Version
	if v == "" {
		v = NoVersion
	}
	if v != c.v {
		c.flush(t)
		c.v = v
	}
	c.n++
}

func (c *versionCounter) flush(t *Totals) {
	if c.n > 0 {
		t.Firmware[c.v] += c.n
	}
	c.n = 0
}

// fold keeps the MaxVersionTotals most common versions and counts the
// others under OtherVersions.
func (t *Totals) fold() {
	if len(t.Firmware) <= MaxVersionTotals {
		return
	}
	vs := slices.SortedFunc(maps.Keys(t.Firmware), func(a, b string) int {
		return cmp.Or(cmp.Compare(t.Firmware[b], t.Firmware[a]), cmp.Compare(a, b))
	})
	for _, v := range vs[MaxVersionTotals:] {
		t.Firmware[OtherVersions] += t.Firmware[v]
		delete(t.Firmware, v)
	}
}

// sortIfNeeded sorts (and prunes) the ID slice after enrolments and
// removals.
func (x *Index) sortIfNeeded() {
	x.mu.RLock()
	need := x.unsorted
	x.mu.RUnlock()
	if !need {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.unsorted {
		return
	}
	x.sorted = slices.DeleteFunc(x.sorted, func(d *Device) bool { return d.gone })
	slices.SortFunc(x.sorted, func(a, b *Device) int { return cmp.Compare(a.ID, b.ID) })
	x.unsorted = false
}

func cloneLabels(l map[string]string) map[string]string {
	if len(l) == 0 {
		return nil
	}
	return maps.Clone(l)
}
