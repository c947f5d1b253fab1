package fwclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/apiclient"
	"github.com/umbra-iot/umbra/internal/device"
	"github.com/umbra-iot/umbra/internal/httpapi"
)

// Defaults for Config's zero values.
const (
	DefaultAPI     = apiclient.DefaultAPI
	DefaultTimeout = apiclient.DefaultTimeout
)

// ErrInvalid is wrapped by New for a bad Config and by requests whose
// arguments are rejected before anything is sent.
var ErrInvalid = errors.New("fwclient: invalid argument")

// Config configures a Client: the server's base URL, the bearer token,
// the timeout of every request except Upload, and an optional HTTP client.
// It is apiclient.Config, as for the other API clients.
type Config = apiclient.Config

// Client calls the firmware API of one server.
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

// APIError is an error answer from the server.
type APIError struct {
	Status  int    // the HTTP status
	Message string // the server's message
	Rollout string // for 409 on Delete: the rollout using the version
}

// Error implements error: "<status> <text>: <message>".
func (e *APIError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// Is matches the firmware sentinel for e's status.
func (e *APIError) Is(target error) bool {
	switch e.Status {
	case http.StatusBadRequest:
		return target == firmware.ErrInvalid
	case http.StatusNotFound:
		return target == firmware.ErrNotFound
	case http.StatusConflict:
		if e.Rollout != "" {
			return target == firmware.ErrInUse
		}
		return target == firmware.ErrExists
	case http.StatusRequestEntityTooLarge:
		return target == firmware.ErrTooLarge
	case http.StatusUnprocessableEntity:
		return target == firmware.ErrChecksumMismatch
	}
	return false
}

// Upload streams size bytes of body as image req.Version; req's other
// fields are optional (see firmware.UploadRequest). size is sent as the
// Content-Length, so the server refuses an image over its limit before it
// is sent; -1 means unknown (chunked). Only ctx bounds an upload.
func (c *Client) Upload(ctx context.Context, req firmware.UploadRequest, body io.Reader, size int64) (firmware.Image, error) {
	if _, err := firmware.ParseVersion(req.Version); err != nil {
		return firmware.Image{}, fmt.Errorf("fwclient: upload: %w: %w", ErrInvalid, err)
	}
	if size == 0 || size < -1 {
		return firmware.Image{}, fmt.Errorf("fwclient: upload: %w: size %d", ErrInvalid, size)
	}
	q := url.Values{"version": {req.Version}}
	for name, v := range map[string]string{"hw": req.HW, "notes": req.Notes, "sha256": req.SHA256} {
		if v != "" {
			q.Set(name, v)
		}
	}
	hreq, err := c.ac.NewRequest(ctx, http.MethodPost, "/v1/firmware?"+q.Encode(), io.NopCloser(body))
	if err != nil {
		return firmware.Image{}, fmt.Errorf("fwclient: upload: %w", err)
	}
	hreq.ContentLength = size
	hreq.Header.Set("Content-Type", "application/octet-stream")
	// The server refuses a bad version, a duplicate or an oversized image
	// before reading the body; with 100-continue none of it is sent then.
	hreq.Header.Set("Expect", "100-continue")
	var img firmware.Image
	if err := apiErr(c.ac.Do(hreq, http.StatusCreated, &img)); err != nil {
		return firmware.Image{}, fmt.Errorf("fwclient: upload %s: %w", req.Version, err)
	}
	return img, nil
}

// List returns every stored image, lowest version first.
func (c *Client) List(ctx context.Context) ([]firmware.Image, error) {
	var l httpapi.ImageList
	if err := c.call(ctx, http.MethodGet, "/v1/firmware", nil, &l); err != nil {
		return nil, fmt.Errorf("fwclient: list: %w", err)
	}
	return l.Images, nil
}

// Get returns image v.
func (c *Client) Get(ctx context.Context, v firmware.Version) (firmware.Image, error) {
	var img firmware.Image
	if err := c.callVersion(ctx, http.MethodGet, v, "", nil, &img); err != nil {
		return firmware.Image{}, fmt.Errorf("fwclient: show %s: %w", v, err)
	}
	return img, nil
}

// Delete removes image v. A version a rollout uses is refused with an
// *APIError whose Rollout names it.
func (c *Client) Delete(ctx context.Context, v firmware.Version) error {
	if err := c.callVersion(ctx, http.MethodDelete, v, "", nil, &httpapi.DeletedImage{}); err != nil {
		return fmt.Errorf("fwclient: delete %s: %w", v, err)
	}
	return nil
}

// PublicKey returns the fleet public key devices pin.
func (c *Client) PublicKey(ctx context.Context) (httpapi.PublicKey, error) {
	var pk httpapi.PublicKey
	if err := c.call(ctx, http.MethodGet, "/v1/firmware/pubkey", nil, &pk); err != nil {
		return httpapi.PublicKey{}, fmt.Errorf("fwclient: pubkey: %w", err)
	}
	if _, err := firmware.ParsePublicKey([]byte(pk.PEM)); err != nil {
		return httpapi.PublicKey{}, fmt.Errorf("fwclient: pubkey: server sent an invalid key: %w", err)
	}
	return pk, nil
}

// URL mints a download URL of image v for device id; ttl 0 means the
// server's default lifetime.
func (c *Client) URL(ctx context.Context, v firmware.Version, id device.ID, ttl time.Duration) (httpapi.URLResponse, error) {
	var u httpapi.URLResponse
	if err := c.callDevice(ctx, v, "/url", id, ttl, &u); err != nil {
		return httpapi.URLResponse{}, fmt.Errorf("fwclient: url %s for %s: %w", v, id, err)
	}
	return u, nil
}

// Assign writes the firmware command for image v (with a URL valid for ttl,
// 0 = the server's default) into device id's desired state and returns the
// shadow engine's accepted document.
func (c *Client) Assign(ctx context.Context, v firmware.Version, id device.ID, ttl time.Duration) (json.RawMessage, error) {
	var doc json.RawMessage
	if err := c.callDevice(ctx, v, "/assign", id, ttl, &doc); err != nil {
		return nil, fmt.Errorf("fwclient: assign %s to %s: %w", v, id, err)
	}
	return doc, nil
}

func (c *Client) callDevice(ctx context.Context, v firmware.Version, suffix string, id device.ID, ttl time.Duration, out any) error {
	if _, err := device.ParseID(string(id)); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if ttl < 0 || ttl > firmware.MaxURLTTL || (ttl > 0 && ttl < time.Second) {
		return fmt.Errorf("%w: ttl %s not in [1s, %s]", ErrInvalid, ttl, firmware.MaxURLTTL)
	}
	body := httpapi.URLRequest{Device: string(id)}
	if ttl > 0 {
		body.TTL = ttl.String()
	}
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	return c.callVersion(ctx, http.MethodPost, v, suffix, b, out)
}

// callVersion validates v and calls /v1/firmware/<v><suffix>.
func (c *Client) callVersion(ctx context.Context, method string, v firmware.Version, suffix string, body []byte, out any) error {
	if _, err := firmware.ParseVersion(string(v)); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return c.call(ctx, method, "/v1/firmware/"+url.PathEscape(string(v))+suffix, body, out)
}

// call sends one bounded request with an optional JSON body and decodes a
// 200 answer into out.
func (c *Client) call(ctx context.Context, method, path string, body []byte, out any) error {
	return apiErr(c.ac.Call(ctx, method, path, body, http.StatusOK, out))
}

// apiErr turns an error answer into an *APIError.
func apiErr(err error) error {
	if e, ok := errors.AsType[*apiclient.Error](err); ok {
		return &APIError{Status: e.Status, Message: e.Message, Rollout: e.Rollout}
	}
	return err
}
