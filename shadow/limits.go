package shadow

import (
	"context"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// deviceState serialises one device's requests and carries its limits.
type deviceState struct {
	// sem serialises read-modify-write of this device's documents (all
	// its shadows): a lock whose wait honours a context.
	sem chan struct{}

	// Fields below are guarded by Engine.mu.
	inFlight int
	tokens   float64
	last     time.Time
}

// acquire admits one request for id: it applies the in-flight and rate
// limits and registers the request so Close can wait for it. The caller must
// call release.
func (e *Engine) acquire(id device.ID, token string) (*deviceState, *RequestError) {
	now := e.cfg.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, &RequestError{Code: 503, Message: "Service unavailable", ClientToken: token, Err: ErrClosed}
	}
	ds := e.devices[id]
	if ds == nil {
		ds = &deviceState{sem: make(chan struct{}, 1), tokens: float64(e.cfg.DeviceBurst), last: now}
		e.devices[id] = ds
	}
	if e.cfg.MaxInFlight > 0 && ds.inFlight >= e.cfg.MaxInFlight {
		return nil, reject(ErrRateLimited, token, "Too many requests: more than %d in flight for this device", e.cfg.MaxInFlight)
	}
	if e.cfg.DeviceRate > 0 {
		ds.tokens += now.Sub(ds.last).Seconds() * e.cfg.DeviceRate
		if ds.tokens > float64(e.cfg.DeviceBurst) {
			ds.tokens = float64(e.cfg.DeviceBurst)
		}
		if ds.tokens < 1 {
			ds.last = now
			return nil, reject(ErrRateLimited, token, "Too many requests: more than %g per second for this device", e.cfg.DeviceRate)
		}
		ds.tokens--
	}
	ds.last = now
	ds.inFlight++
	e.active.Add(1)
	return ds, nil
}

func (e *Engine) release(ds *deviceState) {
	e.mu.Lock()
	ds.inFlight--
	e.mu.Unlock()
	e.active.Done()
}

// lock takes the device's lock, or returns ctx's error if ctx ends first.
func (ds *deviceState) lock(ctx context.Context) error {
	select {
	case ds.sem <- struct{}{}:
		return nil
	default:
	}
	select {
	case ds.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (ds *deviceState) unlock() { <-ds.sem }
