package fwclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/device"
	"github.com/umbra-iot/umbra/internal/httpapi"
)

// Defaults for Config's zero values.
const (
	DefaultAPI     = "http://127.0.0.1:8080"
	DefaultTimeout = 30 * time.Second

	// maxResponse caps a response body read into memory.
	maxResponse = 32 << 20
	// maxErrorText caps the part of a non-JSON error body kept as message.
	maxErrorText = 200
)

// ErrInvalid is wrapped by New for a bad Config and by requests whose
// arguments are rejected before anything is sent.
var ErrInvalid = errors.New("fwclient: invalid argument")

// Config configures a Client. Zero values mean the documented defaults.
type Config struct {
	// API is the server's base URL, e.g. "http://127.0.0.1:8080". Default
	// DefaultAPI.
	API string
	// Token, if set, is sent as "Authorization: Bearer <Token>".
	Token string
	// Timeout bounds every request except Upload. Default DefaultTimeout.
	Timeout time.Duration
	// HTTPClient sends the requests; nil means a client of its own without
	// an overall timeout (uploads may take long).
	HTTPClient *http.Client
}

// Client calls the firmware API of one server.
type Client struct {
	base    *url.URL
	token   string
	timeout time.Duration
	hc      *http.Client
}

// New validates cfg and returns a Client. Errors wrap ErrInvalid.
func New(cfg Config) (*Client, error) {
	if cfg.API == "" {
		cfg.API = DefaultAPI
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("%w: timeout %s is negative", ErrInvalid, cfg.Timeout)
	}
	u, err := url.Parse(cfg.API)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%w: API URL %q: want http(s)://host[:port][/path]", ErrInvalid, cfg.API)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	if strings.ContainsAny(cfg.Token, "\r\n") {
		return nil, fmt.Errorf("%w: token contains a line break", ErrInvalid)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{}
	}
	return &Client{base: u, token: cfg.Token, timeout: cfg.Timeout, hc: hc}, nil
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
	hreq, err := c.newRequest(ctx, http.MethodPost, "/v1/firmware?"+q.Encode(), io.NopCloser(body))
	if err != nil {
		return firmware.Image{}, fmt.Errorf("fwclient: upload: %w", err)
	}
	hreq.ContentLength = size
	hreq.Header.Set("Content-Type", "application/octet-stream")
	// The server refuses a bad version, a duplicate or an oversized image
	// before reading the body; with 100-continue none of it is sent then.
	hreq.Header.Set("Expect", "100-continue")
	var img firmware.Image
	if err := c.do(hreq, http.StatusCreated, &img); err != nil {
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
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := c.newRequest(ctx, method, path, r)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.do(req, http.StatusOK, out)
}

func (c *Client) newRequest(ctx context.Context, method, pathAndQuery string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+pathAndQuery, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// do sends req and decodes the answer: into out when the status is want,
// as an *APIError otherwise.
func (c *Client) do(req *http.Request, want int, out any) error {
	res, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, maxResponse+1))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if len(b) > maxResponse {
		return fmt.Errorf("answer larger than %d bytes", maxResponse)
	}
	if res.StatusCode != want {
		return apiError(res.StatusCode, b)
	}
	if raw, ok := out.(*json.RawMessage); ok {
		if !json.Valid(b) {
			return errors.New("answer is not JSON")
		}
		*raw = bytes.TrimSpace(b)
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}

// apiError builds the *APIError for an error answer, JSON or not.
func apiError(status int, body []byte) *APIError {
	var eb struct {
		Message string `json:"message"`
		Rollout string `json:"rollout"`
	}
	if json.Unmarshal(body, &eb) == nil && eb.Message != "" {
		return &APIError{Status: status, Message: eb.Message, Rollout: eb.Rollout}
	}
	msg := strings.TrimSpace(string(body))
	if i := strings.IndexAny(msg, "\r\n"); i >= 0 {
		msg = msg[:i]
	}
	if len(msg) > maxErrorText {
		msg = msg[:maxErrorText] + "…"
	}
	if msg == "" {
		msg = "(no message; status " + strconv.Itoa(status) + ")"
	}
	return &APIError{Status: status, Message: msg}
}
