package shadow

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// maxAttempts bounds how often a request reads and writes again after
// its write found the shadow changed (ErrRevisionMismatch: another engine
// on the same Store wrote it meanwhile; never with one engine per Store).
const maxAttempts = 3

// load reads r's document and its revision. A missing document is
// returned as a zero Document with Deleted set (never existed), so callers
// treat both alike.
func (e *Engine) load(ctx context.Context, r Key) (doc Document, rev Rev, err error) {
	rec, err := e.store.Get(ctx, r)
	if err != nil {
		return Document{}, 0, fmt.Errorf("read %s: %w", r, err)
	}
	if rec.Rev == 0 {
		return Document{Deleted: true}, 0, nil
	}
	if err := decodeJSON(rec.Value, &doc); err != nil {
		return Document{}, 0, fmt.Errorf("decode %s: %w", r, err)
	}
	return doc, rec.Rev, nil
}

// failed turns an error from the store, or from waiting for a device's
// lock, into the rejection of the request with clientToken tok: ErrClosed
// (also when the engine's own context ended), ErrUnavailable (the Store
// cannot be reached) and the end of the caller's context are expected
// (503) and not logged; anything else is logged as what failed and
// answered with a generic 500.
func (e *Engine) failed(what string, r Key, err error, tok string) *RequestError {
	switch {
	case errors.Is(err, ErrClosed), e.ctx.Err() != nil && errors.Is(err, context.Canceled):
		return AsRequestError(ErrClosed, tok)
	case errors.Is(err, ErrUnavailable):
		return AsRequestError(ErrUnavailable, tok)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return AsRequestError(err, tok)
	}
	e.log.Error(what, "shadow", r, "err", err)
	return AsRequestError(fmt.Errorf("%s %s: %w", what, r, err), tok)
}

// commit writes ws durably for the request on r with clientToken tok.
// stale reports that a record changed since it was read: nothing was
// written, and the caller reads again and retries.
func (e *Engine) commit(ctx context.Context, r Key, tok string, ws ...Write) (stale bool, rerr *RequestError) {
	err := e.store.Commit(ctx, ws...)
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, ErrRevisionMismatch):
		return true, nil
	}
	return false, e.failed("commit shadow", r, err, tok)
}

// conflicted is the rejection of a request that found the shadow changed
// at every one of its maxAttempts writes.
func conflicted(r Key, tok string) *RequestError {
	return reject(ErrVersionConflict, tok, "Version conflict: shadow %s kept changing while the request was applied; retry", r)
}

func (e *Engine) update(ctx context.Context, r Key, payload []byte, src source) ([]byte, *RequestError) {
	if len(payload) > e.cfg.MaxPayload {
		return nil, reject(ErrTooLarge, "", "The payload exceeds the maximum size allowed (%d bytes)", e.cfg.MaxPayload)
	}
	req, rerr := parseUpdate(payload, e.cfg.MaxDepth)
	if rerr != nil {
		return nil, rerr
	}
	return e.serialised(ctx, r, req.clientToken, func() ([]byte, bool, *RequestError) {
		return e.applyUpdate(ctx, r, req, payload, src)
	})
}

// serialised admits a request with clientToken tok for shadow r (see
// acquire), waits for the device's lock (or ctx), and runs attempt with
// it held, again while attempt reports the shadow changed before its
// commit (stale), at most maxAttempts times (then 409).
func (e *Engine) serialised(ctx context.Context, r Key, tok string, attempt func() (b []byte, stale bool, rerr *RequestError)) ([]byte, *RequestError) {
	ds, rerr := e.acquire(r.Device, tok)
	if rerr != nil {
		return nil, rerr
	}
	defer e.release(ds)
	if err := ds.lock(ctx); err != nil {
		return nil, e.failed("wait for device", r, err, tok)
	}
	defer ds.unlock()
	for range maxAttempts {
		b, stale, rerr := attempt()
		if !stale {
			return b, rerr
		}
	}
	return nil, conflicted(r, tok)
}

// applyUpdate reads r, applies the update req (whose bytes are payload)
// and commits the result; stale reports that r changed before the commit
// (nothing was written or published). The caller holds the device's lock.
func (e *Engine) applyUpdate(ctx context.Context, r Key, req updateRequest, payload []byte, src source) (_ []byte, stale bool, _ *RequestError) {
	tok := req.clientToken
	doc, rev, err := e.load(ctx, r)
	if err != nil {
		return nil, false, e.failed("load shadow", r, err, tok)
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
			return accepted, false, nil
		}
	}
	if req.hasVersion && req.version != current {
		return nil, false, reject(ErrVersionConflict, tok, "Version conflict: expected version %d, current version is %d", req.version, current)
	}
	// Creating a named shadow: within the device's cap, and dropping
	// tombstones of other names that would exceed it.
	var writes []Write
	creating := doc.Deleted && r.Name != ""
	if creating {
		var rerr *RequestError
		if writes, rerr = e.makeRoom(ctx, r, tok); rerr != nil {
			return nil, false, rerr
		}
	}
	// The documents message carries the previous document: copy it only if
	// somebody listens (on either tree), as the merge below changes doc in
	// place.
	stateDocs := e.wanted(TreeState.Topic(r.Device, r.Name, "update/documents"))
	awsDocs := e.wanted(TreeAWS.Topic(r.Device, r.Name, "update/documents"))
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
		return nil, false, AsRequestError(fmt.Errorf("size %s: %w", r, err), tok)
	}
	if size > e.cfg.MaxDocumentSize {
		return nil, false, reject(ErrTooLarge, tok, "The payload exceeds the maximum size allowed: the merged state would be %d bytes, the limit is %d", size, e.cfg.MaxDocumentSize)
	}
	doc.Version = current + 1
	doc.Updated = now.UnixMilli()
	doc.Deleted = false
	raw, err := json.Marshal(&doc)
	if err != nil {
		return nil, false, AsRequestError(fmt.Errorf("encode %s: %w", r, err), tok)
	}
	// The displaced tombstones go first: a Store without transactions
	// across keys that fails half-way has then only dropped tombstones.
	if stale, rerr := e.commit(ctx, r, tok, append(writes, Write{Key: r, Value: raw, Rev: rev})...); stale || rerr != nil {
		return nil, stale, rerr
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
			e.publish(TreeState.Topic(r.Device, r.Name, "update/documents"), b)
		}
		if awsDocs {
			e.publish(TreeAWS.Topic(r.Device, r.Name, "update/documents"), b)
		}
	}
	if e.cfg.OnChange != nil && r.Name == "" {
		e.cfg.OnChange(r.Device, doc.Version)
	}
	return accepted, false, nil
}

// makeRoom checks that device r.Device may create the named shadow r (new, or
// over its own tombstone) without exceeding MaxNamedShadows, and
// returns the deletions of other names' tombstones needed to keep the
// device's stored named shadows within the cap, oldest first, each
// conditional on the revision it was read at. The caller holds the
// device's lock.
func (e *Engine) makeRoom(ctx context.Context, r Key, tok string) ([]Write, *RequestError) {
	limit := max(e.cfg.MaxNamedShadows, 0)
	entries, err := e.named(ctx, r.Device)
	if err != nil {
		return nil, e.failed("list named shadows", r, err, tok)
	}
	live := 0
	var tombs []namedEntry
	for _, n := range entries {
		switch {
		case n.name == r.Name:
		case n.Deleted:
			tombs = append(tombs, n)
		default:
			live++
		}
	}
	if live >= limit {
		e.stats.namedLimited.Add(1)
		return nil, reject(ErrShadowLimit, tok, "Too many named shadows: device %s has %d, the limit is %d; delete one first", r.Device, live, limit)
	}
	excess := live + len(tombs) + 1 - limit // r itself counts once, tombstone or not
	if excess <= 0 {
		return nil, nil
	}
	slices.SortFunc(tombs, func(a, b namedEntry) int { return cmp.Compare(a.Updated, b.Updated) })
	ws := make([]Write, 0, excess)
	for _, t := range tombs[:excess] {
		ws = append(ws, Write{Key: Key{r.Device, t.name}, Rev: t.rev}) // nil Value: delete
	}
	return ws, nil
}

// loadExisting reads r's document and its revision, and turns a missing or
// deleted one into a 404 for the request with clientToken tok.
func (e *Engine) loadExisting(ctx context.Context, r Key, tok string) (Document, Rev, *RequestError) {
	doc, rev, err := e.load(ctx, r)
	if err != nil {
		return Document{}, 0, e.failed("load shadow", r, err, tok)
	}
	if doc.Deleted {
		if r.Name != "" {
			return Document{}, 0, reject(ErrNotFound, tok, "No shadow exists with name: %s (device %s)", r.Name, r.Device)
		}
		return Document{}, 0, reject(ErrNotFound, tok, "No shadow exists for device: %s", r.Device)
	}
	return doc, rev, nil
}

func (e *Engine) get(ctx context.Context, r Key, payload []byte, src source) ([]byte, *RequestError) {
	tok, rerr := parseTokenOnly(payload)
	if rerr != nil {
		return nil, rerr
	}
	ds, rerr := e.acquire(r.Device, tok)
	if rerr != nil {
		return nil, rerr
	}
	defer e.release(ds)
	doc, _, rerr := e.loadExisting(ctx, r, tok)
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

func (e *Engine) del(ctx context.Context, r Key, payload []byte, src source) ([]byte, *RequestError) {
	tok, rerr := parseTokenOnly(payload)
	if rerr != nil {
		return nil, rerr
	}
	return e.serialised(ctx, r, tok, func() ([]byte, bool, *RequestError) {
		return e.applyDelete(ctx, r, tok)
	})
}

// applyDelete reads r and replaces it with its tombstone; stale reports
// that r changed before the commit (nothing was written or published).
// The caller holds the device's lock.
func (e *Engine) applyDelete(ctx context.Context, r Key, tok string) (_ []byte, stale bool, _ *RequestError) {
	doc, rev, rerr := e.loadExisting(ctx, r, tok)
	if rerr != nil {
		return nil, false, rerr
	}
	now := e.cfg.Now()
	tomb := Document{Version: doc.Version, Updated: now.UnixMilli(), Deleted: true}
	raw, _ := json.Marshal(&tomb)
	if stale, rerr := e.commit(ctx, r, tok, Write{Key: r, Value: raw, Rev: rev}); stale || rerr != nil {
		return nil, stale, rerr
	}
	if r.Name != "" {
		e.stats.named.Add(-1)
	}
	if e.retry != nil {
		e.retry.drop(r) // a retry of the update before the delete is a new request
	}
	b, _ := json.Marshal(deleteMessage{Version: doc.Version, Timestamp: now.Unix(), ClientToken: tok})
	e.emit(r, "delete/accepted", b)
	if e.cfg.OnChange != nil && r.Name == "" {
		e.cfg.OnChange(r.Device, doc.Version)
	}
	return b, false, nil
}
