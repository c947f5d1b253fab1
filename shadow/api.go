package shadow

import (
	"context"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// Update applies an update request (the same JSON as on
// state/<id>/update) to id's classic shadow and returns the accepted
// message. Errors are *RequestError wrapping ErrInvalid,
// ErrVersionConflict, ErrTooLarge, ErrRateLimited, ErrClosed,
// ErrUnavailable or ErrInternal. Accepted, delta and documents messages are also published
// over MQTT, on both trees.
func (e *Engine) Update(ctx context.Context, id device.ID, payload []byte) ([]byte, error) {
	return e.UpdateNamed(ctx, id, "", payload)
}

// Get returns the get-accepted document of id's classic shadow, or a
// *RequestError wrapping ErrNotFound. payload may be empty or
// {"clientToken":"…"}.
func (e *Engine) Get(ctx context.Context, id device.ID, payload []byte) ([]byte, error) {
	return e.GetNamed(ctx, id, "", payload)
}

// Delete deletes id's classic shadow and returns the delete-accepted
// message, or a *RequestError wrapping ErrNotFound. The version is kept: a
// re-created shadow continues from it.
func (e *Engine) Delete(ctx context.Context, id device.ID, payload []byte) ([]byte, error) {
	return e.DeleteNamed(ctx, id, "", payload)
}

// UpdateNamed is Update for the shadow name of device id ("" is the
// classic shadow). Creating a named shadow beyond Config.MaxNamedShadows
// is a *RequestError wrapping ErrShadowLimit; an invalid name one wrapping
// ErrInvalid.
func (e *Engine) UpdateNamed(ctx context.Context, id device.ID, name Name, payload []byte) ([]byte, error) {
	return e.apiCall(ctx, OpUpdate, id, name, payload, (*Engine).update)
}

// GetNamed is Get for the shadow name of device id ("" is the classic
// shadow).
func (e *Engine) GetNamed(ctx context.Context, id device.ID, name Name, payload []byte) ([]byte, error) {
	return e.apiCall(ctx, OpGet, id, name, payload, (*Engine).get)
}

// DeleteNamed is Delete for the shadow name of device id ("" is the
// classic shadow). A deleted named shadow no longer counts against
// Config.MaxNamedShadows.
func (e *Engine) DeleteNamed(ctx context.Context, id device.ID, name Name, payload []byte) ([]byte, error) {
	return e.apiCall(ctx, OpDelete, id, name, payload, (*Engine).del)
}

// apiCall validates an in-process caller's id and name, runs the operation
// do on that shadow and records its outcome.
func (e *Engine) apiCall(ctx context.Context, op Op, id device.ID, name Name, payload []byte,
	do func(e *Engine, ctx context.Context, r Key, payload []byte, src source) ([]byte, *RequestError)) ([]byte, error) {
	start := time.Now()
	r, rerr := checkRef(id, name)
	var b []byte
	if rerr == nil {
		b, rerr = do(e, ctx, r, payload, fromAPI)
	}
	return e.apiResult(op, start, b, rerr)
}

// checkRef validates an in-process caller's device ID and shadow name (an
// unchecked Name could break the store's key layout).
func checkRef(id device.ID, name Name) (Key, *RequestError) {
	if _, err := device.ParseID(string(id)); err != nil {
		return Key{}, reject(ErrInvalid, "", "Invalid device ID: %v", err)
	}
	if name != "" {
		if _, err := ParseName(string(name)); err != nil {
			return Key{}, AsRequestError(err, "")
		}
	}
	return Key{id, name}, nil
}

// ShadowInfo is one of a device's shadows in a listing (Shadows).
type ShadowInfo struct {
	// Name is "" for the classic shadow.
	Name    Name      `json:"name"`
	Version Version   `json:"version"`
	Updated time.Time `json:"updated"`
}

// Shadows lists the shadows device id has: its classic shadow first (if it
// exists), then its named shadows in name order; deleted ones are left
// out. A device without any gets an empty list, not an error. Errors are
// *RequestError wrapping ErrInvalid (a bad ID), ErrClosed or ErrInternal.
func (e *Engine) Shadows(ctx context.Context, id device.ID) ([]ShadowInfo, error) {
	if _, err := device.ParseID(string(id)); err != nil {
		return nil, reject(ErrInvalid, "", "Invalid device ID: %v", err)
	}
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return nil, AsRequestError(ErrClosed, "")
	}
	out := []ShadowInfo{}
	doc, _, err := e.load(ctx, Key{Device: id})
	if err != nil {
		return nil, e.failed("load shadow", Key{Device: id}, err, "")
	}
	if !doc.Deleted {
		out = append(out, ShadowInfo{Version: doc.Version, Updated: time.UnixMilli(doc.Updated).UTC()})
	}
	named, err := e.named(ctx, id)
	if err != nil {
		return nil, e.failed("list named shadows", Key{Device: id}, err, "")
	}
	for _, n := range named {
		if !n.Deleted {
			out = append(out, ShadowInfo{Name: n.name, Version: n.Version, Updated: time.UnixMilli(n.Updated).UTC()})
		}
	}
	return out, nil
}

func (e *Engine) apiResult(op Op, start time.Time, b []byte, rerr *RequestError) ([]byte, error) {
	if rerr != nil {
		e.observe(op, rerr.Code, time.Since(start))
		return nil, rerr
	}
	e.observe(op, 200, time.Since(start))
	return b, nil
}

// Read returns id's current document for in-process consumers such as the
// rollout planner: no rate limit, nothing published. It returns a
// *RequestError wrapping ErrNotFound if the shadow does not exist.
func (e *Engine) Read(ctx context.Context, id device.ID) (Document, error) {
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return Document{}, AsRequestError(ErrClosed, "")
	}
	doc, _, rerr := e.loadExisting(ctx, Key{Device: id}, "")
	if rerr != nil {
		return Document{}, rerr
	}
	return doc, nil
}

// List returns up to limit shadows (1..1000, default 100) with IDs after the
// cursor, and the cursor of the next page ("" when there is none). Errors
// are *RequestError wrapping ErrInvalid (a bad cursor), ErrClosed,
// ErrInternal or ctx's error.
func (e *Engine) List(ctx context.Context, cursor string, limit int) ([]Summary, string, error) {
	if limit <= 0 {
		limit = 100
	}
	if limit > 1000 {
		limit = 1000
	}
	if cursor != "" {
		if _, err := device.ParseID(cursor); err != nil {
			return nil, "", reject(ErrInvalid, "", "Invalid cursor")
		}
	}
	page, next, err := e.list(ctx, device.ID(cursor), limit)
	if err != nil {
		return nil, "", e.failed("list shadows", Key{}, err, "")
	}
	return page, next, nil
}
