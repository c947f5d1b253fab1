package shadow

import (
	"cmp"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// load reads r's document. A missing document is returned as a zero
// Document with Deleted set (never existed), so callers treat both alike.
func (e *Engine) load(r ref) (doc Document, err error) {
	raw, err := e.store.get(r)
	if err != nil {
		return Document{}, fmt.Errorf("read %s: %w", r, err)
	}
	if raw == nil {
		return Document{Deleted: true}, nil
	}
	if err := decodeJSON(raw, &doc); err != nil {
		return Document{}, fmt.Errorf("decode %s: %w", r, err)
	}
	return doc, nil
}

func (e *Engine) update(r ref, payload []byte, src source) ([]byte, *RequestError) {
	if len(payload) > e.cfg.MaxPayload {
		return nil, reject(ErrTooLarge, "", "The payload exceeds the maximum size allowed (%d bytes)", e.cfg.MaxPayload)
	}
	req, rerr := parseUpdate(payload, e.cfg.MaxDepth)
	if rerr != nil {
		return nil, rerr
	}
	tok := req.clientToken
	ds, rerr := e.acquire(r.id, tok)
	if rerr != nil {
		return nil, rerr
	}
	defer e.release(ds)
	ds.mu.Lock()
	defer ds.mu.Unlock()

	doc, err := e.load(r)
	if err != nil {
		e.log.Error("load shadow", "shadow", r, "err", err)
		return nil, AsRequestError(err, tok)
	}
	current := doc.Version

	remember := tok != "" && e.retry != nil
	var sum [sha256.Size]byte
	if remember {
		sum = sha256.Sum256(payload)
	}
	if remember && !doc.Deleted {
		if ts, ok := e.retry.lookup(r, tok, sum, current, e.cfg.Now()); ok {
			// A retry of the last update: the same bytes, so the same
			// accepted message as before.
			accepted := e.acceptedPayload(req, current, ts)
			if src == fromMQTT {
				e.emit(r, "update/accepted", accepted)
			}
			return accepted, nil
		}
	}
	if req.hasVersion && req.version != current {
		return nil, reject(ErrVersionConflict, tok, "Version conflict: expected version %d, current version is %d", req.version, current)
	}
	// Creating a named shadow: within the device's cap, and dropping
	// tombstones of other names that would exceed it.
	var displaced []op
	creating := doc.Deleted && r.name != ""
	if creating {
		if displaced, rerr = e.makeRoom(r, tok); rerr != nil {
			return nil, rerr
		}
	}
	// The documents message carries the previous document: copy it only if
	// somebody listens (on either tree), as the merge below changes doc in
	// place.
	stateDocs := e.wanted(TreeState.Topic(r.id, r.name, "update/documents"))
	awsDocs := e.wanted(TreeAWS.Topic(r.id, r.name, "update/documents"))
	var prev *docSnapshot
	if !doc.Deleted && (stateDocs || awsDocs) {
		prev = &docSnapshot{State: cloneState(doc.State), Metadata: cloneState(doc.Metadata), Version: doc.Version}
	}
	var prevDelta map[string]any
	if req.hasDesired || req.clearState {
		prevDelta = doc.Delta()
	}

	now := e.cfg.Now()
	ts := now.Unix()
	if doc.Deleted {
		doc.State, doc.Metadata = State{}, State{}
	}
	if req.clearState {
		doc.State, doc.Metadata = State{}, State{}
	} else {
		doc.State.Desired, doc.Metadata.Desired = applySection(doc.State.Desired, doc.Metadata.Desired, req.desired, req.hasDesired, ts)
		doc.State.Reported, doc.Metadata.Reported = applySection(doc.State.Reported, doc.Metadata.Reported, req.reported, req.hasReported, ts)
	}
	size, err := sectionSize(doc.State)
	if err != nil {
		return nil, AsRequestError(fmt.Errorf("size %s: %w", r, err), tok)
	}
	if size > e.cfg.MaxDocumentSize {
		return nil, reject(ErrTooLarge, tok, "The payload exceeds the maximum size allowed: the merged state would be %d bytes, the limit is %d", size, e.cfg.MaxDocumentSize)
	}
	doc.Version = current + 1
	doc.Updated = now.UnixMilli()
	doc.Deleted = false
	raw, err := json.Marshal(&doc)
	if err != nil {
		return nil, AsRequestError(fmt.Errorf("encode %s: %w", r, err), tok)
	}
	if err := e.store.put(append(displaced, op{r, raw})...); err != nil {
		if errors.Is(err, ErrClosed) {
			return nil, AsRequestError(err, tok)
		}
		e.log.Error("commit shadow", "shadow", r, "err", err)
		return nil, AsRequestError(fmt.Errorf("commit %s: %w", r, err), tok)
	}
	if creating {
		e.stats.named.Add(1)
	}

	// Committed: from here on the update is durable; publish its messages.
	accepted := e.acceptedPayload(req, doc.Version, ts)
	if remember {
		e.retry.put(r, tok, sum, doc.Version, ts, now)
	} else if e.retry != nil {
		e.retry.drop(r) // its entry no longer answers a retry
	}
	e.emit(r, "update/accepted", accepted)
	newDelta := doc.Delta()
	// Beyond AWS: a desired-side change that withdraws keys from a
	// non-empty delta is announced too (AWS stays silent, so a device never
	// learns that a command was cancelled).
	if newDelta != nil || (prevDelta != nil && !equal(prevDelta, newDelta)) {
		e.emit(r, "update/delta", e.deltaPayload(newDelta, doc.Metadata.Desired, doc.Version, ts, tok))
	}
	if stateDocs || awsDocs {
		b, _ := json.Marshal(documentsMessage{
			Previous:    prev,
			Current:     docSnapshot{State: doc.State, Metadata: doc.Metadata, Version: doc.Version},
			Timestamp:   ts,
			ClientToken: tok,
		})
		if stateDocs {
			e.publish(TreeState.Topic(r.id, r.name, "update/documents"), b)
		}
		if awsDocs {
			e.publish(TreeAWS.Topic(r.id, r.name, "update/documents"), b)
		}
	}
	if e.cfg.OnChange != nil && r.name == "" {
		e.cfg.OnChange(r.id, doc.Version)
	}
	return accepted, nil
}

// makeRoom checks that device r.id may create the named shadow r (new, or
// over its own tombstone) without exceeding MaxNamedShadows, and
// returns the deletions of other names' tombstones needed to keep the
// device's stored named shadows within the cap, oldest first. The caller
// holds the device's lock.
func (e *Engine) makeRoom(r ref, tok string) ([]op, *RequestError) {
	limit := max(e.cfg.MaxNamedShadows, 0)
	entries, err := e.store.named(r.id)
	if err != nil {
		e.log.Error("list named shadows", "device", r.id, "err", err)
		return nil, AsRequestError(err, tok)
	}
	live := 0
	var tombs []namedEntry
	for _, n := range entries {
		switch {
		case n.name == r.name:
		case n.Deleted:
			tombs = append(tombs, n)
		default:
			live++
		}
	}
	if live >= limit {
		e.stats.namedLimited.Add(1)
		return nil, reject(ErrShadowLimit, tok, "Too many named shadows: device %s has %d, the limit is %d; delete one first", r.id, live, limit)
	}
	excess := live + len(tombs) + 1 - limit // r itself counts once, tombstone or not
	if excess <= 0 {
		return nil, nil
	}
	slices.SortFunc(tombs, func(a, b namedEntry) int { return cmp.Compare(a.Updated, b.Updated) })
	ops := make([]op, 0, excess)
	for _, t := range tombs[:excess] {
		ops = append(ops, op{r: ref{r.id, t.name}}) // nil val: delete
	}
	return ops, nil
}

// loadExisting reads r's document and turns a missing or deleted one into
// a 404 for the request with clientToken tok.
func (e *Engine) loadExisting(r ref, tok string) (Document, *RequestError) {
	doc, err := e.load(r)
	if err != nil {
		e.log.Error("load shadow", "shadow", r, "err", err)
		return Document{}, AsRequestError(err, tok)
	}
	if doc.Deleted {
		if r.name != "" {
			return Document{}, reject(ErrNotFound, tok, "No shadow exists with name: %s (device %s)", r.name, r.id)
		}
		return Document{}, reject(ErrNotFound, tok, "No shadow exists for device: %s", r.id)
	}
	return doc, nil
}

func (e *Engine) get(r ref, payload []byte, src source) ([]byte, *RequestError) {
	tok, rerr := parseTokenOnly(payload)
	if rerr != nil {
		return nil, rerr
	}
	ds, rerr := e.acquire(r.id, tok)
	if rerr != nil {
		return nil, rerr
	}
	defer e.release(ds)
	doc, rerr := e.loadExisting(r, tok)
	if rerr != nil {
		return nil, rerr
	}
	var m getMessage
	m.State.Desired, m.State.Reported, m.State.Delta = doc.State.Desired, doc.State.Reported, doc.Delta()
	m.Metadata, m.Version, m.Timestamp, m.ClientToken = doc.Metadata, doc.Version, e.cfg.Now().Unix(), tok
	b, _ := json.Marshal(&m)
	if src == fromMQTT {
		if len(b) > e.cfg.MaxReply {
			return nil, reject(ErrTooLarge, tok, "The shadow document is too large to send in one MQTT message (%d bytes, the limit is %d); read it over HTTP", len(b), e.cfg.MaxReply)
		}
		e.emit(r, "get/accepted", b)
	}
	return b, nil
}

func (e *Engine) del(r ref, payload []byte, src source) ([]byte, *RequestError) {
	tok, rerr := parseTokenOnly(payload)
	if rerr != nil {
		return nil, rerr
	}
	ds, rerr := e.acquire(r.id, tok)
	if rerr != nil {
		return nil, rerr
	}
	defer e.release(ds)
	ds.mu.Lock()
	defer ds.mu.Unlock()
	doc, rerr := e.loadExisting(r, tok)
	if rerr != nil {
		return nil, rerr
	}
	now := e.cfg.Now()
	tomb := Document{Version: doc.Version, Updated: now.UnixMilli(), Deleted: true}
	raw, _ := json.Marshal(&tomb)
	if err := e.store.put(op{r, raw}); err != nil {
		if errors.Is(err, ErrClosed) {
			return nil, AsRequestError(err, tok)
		}
		e.log.Error("commit shadow delete", "shadow", r, "err", err)
		return nil, AsRequestError(fmt.Errorf("commit %s: %w", r, err), tok)
	}
	if r.name != "" {
		e.stats.named.Add(-1)
	}
	if e.retry != nil {
		e.retry.drop(r) // a retry of the update before the delete is a new request
	}
	b, _ := json.Marshal(deleteMessage{Version: doc.Version, Timestamp: now.Unix(), ClientToken: tok})
	e.emit(r, "delete/accepted", b)
	if e.cfg.OnChange != nil && r.name == "" {
		e.cfg.OnChange(r.id, doc.Version)
	}
	return b, nil
}
