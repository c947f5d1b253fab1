package rolloutclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/umbra-iot/umbra/internal/apiclient"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/rollout"
)

// Defaults for Config's zero values.
const (
	DefaultAPI     = apiclient.DefaultAPI
	DefaultTimeout = apiclient.DefaultTimeout
)

// devicesPage is the page size Devices asks for.
const devicesPage = httpapi.MaxListLimit

// ErrInvalid is wrapped by New for a bad Config and by requests whose
// arguments are rejected before anything is sent.
var ErrInvalid = errors.New("rolloutclient: invalid argument")

// Config configures a Client: the API's base URL (default DefaultAPI),
// the bearer token, the timeout of every request (default DefaultTimeout)
// and the http.Client (nil: one of its own).
type Config = apiclient.Config

// Client calls the rollout API of one server.
type Client struct {
	ac *apiclient.Client
}

// New validates cfg and returns a Client. Errors wrap ErrInvalid.
func New(cfg Config) (*Client, error) {
	ac, err := apiclient.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return &Client{ac: ac}, nil
}

// CreateRequest is the body of POST /v1/rollouts: the firmware, exactly one
// of Devices, Select and All, and the policy.
type CreateRequest = httpapi.CreateRollout

// APIError is an error answer from the server.
type APIError struct {
	Status  int    // the HTTP status
	Message string // the server's message
	Rollout string // for 409 on a device conflict: the rollout holding it
}

// Error implements error: "<status> <text>: <message>".
func (e *APIError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// Is matches the rollout sentinel for e's status.
func (e *APIError) Is(target error) bool {
	switch e.Status {
	case http.StatusBadRequest:
		return target == rollout.ErrInvalid
	case http.StatusNotFound:
		return target == rollout.ErrNotFound
	case http.StatusConflict:
		if e.Rollout != "" {
			return target == rollout.ErrConflict
		}
		return target == rollout.ErrState
	case http.StatusServiceUnavailable:
		return target == rollout.ErrClosed
	}
	return false
}

// Create creates a rollout and returns it. A target in another active
// rollout is refused with an *APIError whose Rollout names that rollout.
func (c *Client) Create(ctx context.Context, req CreateRequest) (rollout.Rollout, error) {
	n := 0
	for _, given := range []bool{req.Devices != nil, req.Select != nil, req.All} {
		if given {
			n++
		}
	}
	if n != 1 {
		return rollout.Rollout{}, fmt.Errorf("rolloutclient: create: %w: give exactly one of devices, select and all", ErrInvalid)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return rollout.Rollout{}, fmt.Errorf("rolloutclient: create: %w", err)
	}
	var r rollout.Rollout
	if err := c.call(ctx, http.MethodPost, "/v1/rollouts", body, http.StatusCreated, &r); err != nil {
		return rollout.Rollout{}, fmt.Errorf("rolloutclient: create: %w", err)
	}
	return r, nil
}

// List returns every rollout, newest first.
func (c *Client) List(ctx context.Context) ([]rollout.Rollout, error) {
	var l httpapi.RolloutList
	if err := c.call(ctx, http.MethodGet, "/v1/rollouts", nil, http.StatusOK, &l); err != nil {
		return nil, fmt.Errorf("rolloutclient: list: %w", err)
	}
	return l.Rollouts, nil
}

// Get returns rollout id's status: counts per state and per batch, and the
// failing devices.
func (c *Client) Get(ctx context.Context, id string) (rollout.Status, error) {
	var st rollout.Status
	if err := c.callRollout(ctx, http.MethodGet, id, "", nil, http.StatusOK, &st); err != nil {
		return rollout.Status{}, fmt.Errorf("rolloutclient: status %s: %w", id, err)
	}
	return st, nil
}

// Devices returns rollout id's targets in rollout order, only those in one
// of states when any are given, following the server's pages.
func (c *Client) Devices(ctx context.Context, id string, states ...rollout.DeviceState) ([]rollout.DeviceStatus, error) {
	q := url.Values{"limit": {strconv.Itoa(devicesPage)}}
	if len(states) > 0 {
		names := make([]string, len(states))
		for i, s := range states {
			b, err := s.MarshalText()
			if err != nil {
				return nil, fmt.Errorf("rolloutclient: devices %s: %w: %w", id, ErrInvalid, err)
			}
			names[i] = string(b)
		}
		q.Set("state", strings.Join(names, ","))
	}
	out := []rollout.DeviceStatus{}
	for range rollout.MaxTargets/devicesPage + 1 {
		var page httpapi.RolloutDevices
		if err := c.callRollout(ctx, http.MethodGet, id, "/devices?"+q.Encode(), nil, http.StatusOK, &page); err != nil {
			return nil, fmt.Errorf("rolloutclient: devices %s: %w", id, err)
		}
		out = append(out, page.Devices...)
		if page.Next == "" {
			return out, nil
		}
		if page.Next == q.Get("cursor") {
			return nil, fmt.Errorf("rolloutclient: devices %s: server repeated cursor %q", id, page.Next)
		}
		q.Set("cursor", page.Next)
	}
	return nil, fmt.Errorf("rolloutclient: devices %s: more pages than %d targets need", id, rollout.MaxTargets)
}

// Events returns rollout id's events with a sequence number above after
// (0 for all), oldest first.
func (c *Client) Events(ctx context.Context, id string, after uint64) ([]rollout.Event, error) {
	suffix := "/events"
	if after > 0 {
		suffix += "?after=" + strconv.FormatUint(after, 10)
	}
	var l httpapi.RolloutEvents
	if err := c.callRollout(ctx, http.MethodGet, id, suffix, nil, http.StatusOK, &l); err != nil {
		return nil, fmt.Errorf("rolloutclient: events %s: %w", id, err)
	}
	return l.Events, nil
}

// Pause stops new notifications of rollout id; pausing a paused rollout
// does nothing.
func (c *Client) Pause(ctx context.Context, id string) (rollout.Rollout, error) {
	return c.control(ctx, "pause", id, nil, http.StatusOK)
}

// Resume continues a paused rollout.
func (c *Client) Resume(ctx context.Context, id string) (rollout.Rollout, error) {
	return c.control(ctx, "resume", id, nil, http.StatusOK)
}

// Abort stops rollout id; with rollback, devices that moved get their
// previous version back.
func (c *Client) Abort(ctx context.Context, id string, rollback bool) (rollout.Rollout, error) {
	body, err := json.Marshal(httpapi.AbortRequest{Rollback: rollback})
	if err != nil {
		return rollout.Rollout{}, err
	}
	return c.control(ctx, "abort", id, body, http.StatusOK)
}

// Rollback writes the previous version back to every device rollout id
// moved, aborting it first if it is active.
func (c *Client) Rollback(ctx context.Context, id string) (rollout.Rollout, error) {
	return c.control(ctx, "rollback", id, nil, http.StatusOK)
}

// Retry creates and returns a new rollout over the failed and timed-out
// devices of finished rollout id.
func (c *Client) Retry(ctx context.Context, id string) (rollout.Rollout, error) {
	return c.control(ctx, "retry", id, nil, http.StatusCreated)
}

func (c *Client) control(ctx context.Context, op, id string, body []byte, want int) (rollout.Rollout, error) {
	var r rollout.Rollout
	if err := c.callRollout(ctx, http.MethodPost, id, "/"+op, body, want, &r); err != nil {
		return rollout.Rollout{}, fmt.Errorf("rolloutclient: %s %s: %w", op, id, err)
	}
	return r, nil
}

// callRollout validates id and calls /v1/rollouts/<id><suffix>.
func (c *Client) callRollout(ctx context.Context, method, id, suffix string, body []byte, want int, out any) error {
	if id == "" || len(id) > 64 || strings.ContainsAny(id, "/?#%") {
		return fmt.Errorf("%w: rollout ID %q", ErrInvalid, id)
	}
	return c.call(ctx, method, "/v1/rollouts/"+url.PathEscape(id)+suffix, body, want, out)
}

// call sends one bounded request and turns an error answer into an
// *APIError.
func (c *Client) call(ctx context.Context, method, path string, body []byte, want int, out any) error {
	err := c.ac.Call(ctx, method, path, body, want, out)
	if e, ok := errors.AsType[*apiclient.Error](err); ok {
		return &APIError{Status: e.Status, Message: e.Message, Rollout: e.Rollout}
	}
	return err
}
