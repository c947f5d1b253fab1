package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/umbra-iot/umbra/wire"
)

// maxDevicePages bounds the pages RolloutDevices follows: enough for the
// planner's largest rollout (a million targets) at wire.MaxListLimit a page.
const maxDevicePages = 1_000_000/wire.MaxListLimit + 1

// rolloutPath returns /v1/rollouts/<id><suffix> for a valid rollout ID.
func rolloutPath(id, suffix string) (string, error) {
	if _, err := wire.ParseRolloutID(id); err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return "/v1/rollouts/" + id + suffix, nil
}

// CreateRollout creates a rollout of req.Firmware over exactly one of
// req.Devices, req.Select (the enrolled devices carrying those labels) and
// req.All, with req's policy, and returns it. A target in another active
// rollout is refused with an *Error matching ErrConflict whose Rollout
// names that rollout; targets of another hardware model than the image's
// with one whose Incompatible lists them (unless req.SkipIncompatible).
func (c *Client) CreateRollout(ctx context.Context, req wire.CreateRollout) (wire.Rollout, error) {
	if req.TargetKinds() != 1 {
		return wire.Rollout{}, fmt.Errorf("client: create rollout: %w: give exactly one of devices, select and all", ErrInvalid)
	}
	var r wire.Rollout
	if err := c.call(ctx, "create rollout", http.MethodPost, "/v1/rollouts", req, http.StatusCreated, &r); err != nil {
		return wire.Rollout{}, err
	}
	return r, nil
}

// ListRollouts returns every rollout, newest first.
func (c *Client) ListRollouts(ctx context.Context) ([]wire.Rollout, error) {
	var l wire.RolloutList
	if err := c.call(ctx, "list rollouts", http.MethodGet, "/v1/rollouts", nil, http.StatusOK, &l); err != nil {
		return nil, err
	}
	return l.Rollouts, nil
}

// GetRollout returns rollout id's status: its counts per device state and
// per batch, and its failing devices. Poll it to watch a rollout: it is
// done when its State is no longer Active.
func (c *Client) GetRollout(ctx context.Context, id string) (wire.RolloutStatus, error) {
	op := "status " + id
	path, err := rolloutPath(id, "")
	if err != nil {
		return wire.RolloutStatus{}, fmt.Errorf("client: %s: %w", op, err)
	}
	var st wire.RolloutStatus
	if err := c.call(ctx, op, http.MethodGet, path, nil, http.StatusOK, &st); err != nil {
		return wire.RolloutStatus{}, err
	}
	return st, nil
}

// RolloutDevices returns rollout id's targets in rollout order, only those
// in one of states when any are given, following the server's pages.
func (c *Client) RolloutDevices(ctx context.Context, id string, states ...wire.DeviceState) ([]wire.RolloutDevice, error) {
	op := "devices " + id
	path, err := rolloutPath(id, "/devices")
	if err != nil {
		return nil, fmt.Errorf("client: %s: %w", op, err)
	}
	q := url.Values{"limit": {strconv.Itoa(wire.MaxListLimit)}}
	if len(states) > 0 {
		names := make([]string, len(states))
		for i, s := range states {
			if !s.Valid() {
				return nil, fmt.Errorf("client: %s: %w: device state %q", op, ErrInvalid, s)
			}
			names[i] = string(s)
		}
		q.Set("state", strings.Join(names, ","))
	}
	out := []wire.RolloutDevice{}
	for range maxDevicePages {
		var page wire.RolloutDevices
		if err := c.call(ctx, op, http.MethodGet, path+"?"+q.Encode(), nil, http.StatusOK, &page); err != nil {
			return nil, err
		}
		out = append(out, page.Devices...)
		if page.Next == "" {
			return out, nil
		}
		if page.Next == q.Get("cursor") {
			return nil, fmt.Errorf("client: %s: server repeated cursor %q", op, page.Next)
		}
		q.Set("cursor", page.Next)
	}
	return nil, fmt.Errorf("client: %s: more than %d pages", op, maxDevicePages)
}

// RolloutEvents returns rollout id's events with a sequence number above
// after (0 for all), oldest first.
func (c *Client) RolloutEvents(ctx context.Context, id string, after uint64) ([]wire.RolloutEvent, error) {
	op := "events " + id
	suffix := "/events"
	if after > 0 {
		suffix += "?after=" + strconv.FormatUint(after, 10)
	}
	path, err := rolloutPath(id, suffix)
	if err != nil {
		return nil, fmt.Errorf("client: %s: %w", op, err)
	}
	var l wire.RolloutEvents
	if err := c.call(ctx, op, http.MethodGet, path, nil, http.StatusOK, &l); err != nil {
		return nil, err
	}
	return l.Events, nil
}

// PauseRollout stops new notifications of rollout id; devices notified
// carry on. Pausing a paused rollout does nothing. A finished rollout is
// refused with an *Error matching ErrConflict.
func (c *Client) PauseRollout(ctx context.Context, id string) (wire.Rollout, error) {
	return c.control(ctx, "pause", id, nil, http.StatusOK)
}

// ResumeRollout continues a paused rollout, overriding once the threshold
// that paused it.
func (c *Client) ResumeRollout(ctx context.Context, id string) (wire.Rollout, error) {
	return c.control(ctx, "resume", id, nil, http.StatusOK)
}

// AbortRollout stops rollout id: pending devices are canceled and the
// command of notified ones cleared; with rollback, devices that moved get
// their previous version back.
func (c *Client) AbortRollout(ctx context.Context, id string, rollback bool) (wire.Rollout, error) {
	return c.control(ctx, "abort", id, wire.AbortRequest{Rollback: rollback}, http.StatusOK)
}

// RollbackRollout writes the previous version back to every device
// rollout id moved, aborting it first if it is active.
func (c *Client) RollbackRollout(ctx context.Context, id string) (wire.Rollout, error) {
	return c.control(ctx, "rollback", id, nil, http.StatusOK)
}

// RetryRollout creates and returns a new rollout over the failed and
// timed-out devices of finished rollout id. It is not idempotent: each
// call that succeeds creates a rollout.
func (c *Client) RetryRollout(ctx context.Context, id string) (wire.Rollout, error) {
	return c.control(ctx, "retry", id, nil, http.StatusCreated)
}

// control sends POST /v1/rollouts/<id>/<verb>.
func (c *Client) control(ctx context.Context, verb, id string, body any, want int) (wire.Rollout, error) {
	op := verb + " " + id
	path, err := rolloutPath(id, "/"+verb)
	if err != nil {
		return wire.Rollout{}, fmt.Errorf("client: %s: %w", op, err)
	}
	var r wire.Rollout
	if err := c.call(ctx, op, http.MethodPost, path, body, want, &r); err != nil {
		return wire.Rollout{}, err
	}
	return r, nil
}
