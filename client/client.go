package client

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

	"github.com/umbra-iot/umbra/wire"
)

// Defaults for Config's zero values.
const (
	DefaultURL     = "http://127.0.0.1:8080"
	DefaultTimeout = 30 * time.Second

	// maxResponse caps an answer read into memory.
	maxResponse = 32 << 20
	// maxErrorText caps the part of a non-JSON error answer kept as its
	// message.
	maxErrorText = 200
)

// Sentinel errors. An *Error from the server matches the one for its
// status with errors.Is (see Error.Is); arguments the client refuses
// before sending anything wrap ErrInvalid too, without an *Error.
var (
	// ErrInvalidConfig is wrapped by New for a bad Config.
	ErrInvalidConfig = errors.New("client: invalid config")
	// ErrInvalid: the request is invalid (400), or an argument was refused
	// before sending.
	ErrInvalid = errors.New("client: invalid request")
	// ErrUnauthorized: no token, or an invalid or revoked one (401).
	ErrUnauthorized = errors.New("client: unauthorized")
	// ErrForbidden: the token's role may not do this (403).
	ErrForbidden = errors.New("client: forbidden")
	// ErrNotFound: no such shadow, device, token, image or rollout (404).
	ErrNotFound = errors.New("client: not found")
	// ErrConflict (409): a shadow version conflict, a device, token or
	// image that exists already, an image a rollout uses, a device in
	// another active rollout, a rollout in the wrong state, or targets of
	// another hardware model. Error.Rollout and Error.Incompatible tell
	// which, when they are set.
	ErrConflict = errors.New("client: conflict")
	// ErrTooLarge: the body or image is over the server's limit (413).
	ErrTooLarge = errors.New("client: too large")
	// ErrChecksumMismatch: an uploaded image does not hash to the given
	// SHA-256 (422).
	ErrChecksumMismatch = errors.New("client: checksum mismatch")
	// ErrRateLimited: the device sent too many shadow requests (429).
	ErrRateLimited = errors.New("client: rate limited")
	// ErrUnavailable: the server is shutting down, or the feature (the
	// firmware store, the rollout planner) is not configured (503).
	ErrUnavailable = errors.New("client: unavailable")
)

// statusSentinels maps a status to the sentinel its *Error matches.
var statusSentinels = map[int]error{
	http.StatusBadRequest:            ErrInvalid,
	http.StatusUnauthorized:          ErrUnauthorized,
	http.StatusForbidden:             ErrForbidden,
	http.StatusNotFound:              ErrNotFound,
	http.StatusConflict:              ErrConflict,
	http.StatusRequestEntityTooLarge: ErrTooLarge,
	http.StatusUnprocessableEntity:   ErrChecksumMismatch,
	http.StatusTooManyRequests:       ErrRateLimited,
	http.StatusServiceUnavailable:    ErrUnavailable,
}

// Error is an error answer from the server: its HTTP status and the
// fields of its JSON body (wire.ErrorBody). A body that is not JSON gives
// its first line as the Message and a zero Code.
type Error struct {
	Status  int    // the HTTP status
	Code    int    // the body's code: the status, for every answer of Umbra's
	Message string // the server's message
	// Rollout names the rollout that holds a device or uses an image
	// (409).
	Rollout string
	// Incompatible lists the targets of another hardware model than the
	// image's (409 on CreateRollout).
	Incompatible []wire.IncompatibleDevice
	// Problems lists the bad devices of an import (400 on ImportDevices):
	// nothing was imported.
	Problems []wire.ImportProblem
	// ClientToken is the token of a refused shadow request.
	ClientToken string
}

// Error returns "<status> <text>: <message>", e.g. "404 Not Found: No
// shadow exists".
func (e *Error) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// Is reports whether target is the sentinel of e's status: ErrInvalid for
// 400, ErrUnauthorized 401, ErrForbidden 403, ErrNotFound 404, ErrConflict
// 409, ErrTooLarge 413, ErrChecksumMismatch 422, ErrRateLimited 429 and
// ErrUnavailable 503. Other statuses (405, 415, 500) match none.
func (e *Error) Is(target error) bool {
	s, ok := statusSentinels[e.Status]
	return ok && s == target
}

// newError builds the *Error of an answer with status and body, JSON or
// not.
func newError(status int, body []byte) *Error {
	var eb wire.ErrorBody
	if json.Unmarshal(body, &eb) == nil && eb.Message != "" {
		return &Error{Status: status, Code: eb.Code, Message: eb.Message, Rollout: eb.Rollout,
			Incompatible: eb.Incompatible, Problems: eb.Problems, ClientToken: eb.ClientToken}
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
	return &Error{Status: status, Message: msg}
}

// Config configures a Client. Zero values mean the documented defaults.
type Config struct {
	// URL is the server's base URL, e.g. "http://127.0.0.1:8080" or
	// "https://umbra.example.com/api". Default DefaultURL.
	URL string
	// Token, if set, is sent as "Authorization: Bearer <Token>": a token
	// "<name>:<secret>" from umbra token create (or a device's
	// "<id>:<secret>", which may only use the device's own shadows).
	Token string
	// Timeout bounds every call but UploadFirmware, which only its context
	// bounds. Default DefaultTimeout.
	Timeout time.Duration
	// HTTPClient sends the requests; nil means a client of its own (no
	// overall timeout, the default transport).
	HTTPClient *http.Client
}

// Client calls the HTTP API of one Umbra server. It is safe for concurrent
// use and holds no resources of its own beyond its http.Client's idle
// connections.
type Client struct {
	base    string // the base URL without a trailing slash
	token   string
	timeout time.Duration
	hc      *http.Client
}

// New validates cfg and returns a Client. Errors wrap ErrInvalidConfig.
func New(cfg Config) (*Client, error) {
	if cfg.URL == "" {
		cfg.URL = DefaultURL
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("%w: timeout %s is negative", ErrInvalidConfig, cfg.Timeout)
	}
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("%w: URL %q: want http(s)://host[:port][/path]", ErrInvalidConfig, cfg.URL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	if strings.ContainsAny(cfg.Token, "\r\n") {
		return nil, fmt.Errorf("%w: token contains a line break", ErrInvalidConfig)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{}
	}
	return &Client{base: u.String(), token: cfg.Token, timeout: cfg.Timeout, hc: hc}, nil
}

// call sends one request bounded by the Client's timeout, with in (if not
// nil) as its JSON body, and decodes an answer of status want into out
// (see receive). op names the call in errors.
func (c *Client) call(ctx context.Context, op, method, path string, in any, want int, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("client: %s: encode request: %w", op, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		return fmt.Errorf("client: %s: %w", op, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.receive(op, req, want, out)
}

// newRequest returns a request for pathAndQuery under the base URL, with
// the Accept and Authorization headers set.
func (c *Client) newRequest(ctx context.Context, method, pathAndQuery string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+pathAndQuery, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// receive sends req and decodes the answer: into out when the status is
// want (out nil discards it), as an *Error otherwise. Every error is
// wrapped as "client: <op>: …".
func (c *Client) receive(op string, req *http.Request, want int, out any) error {
	res, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("client: %s: %w", op, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, maxResponse+1))
	switch {
	case err != nil:
		return fmt.Errorf("client: %s: read answer: %w", op, err)
	case len(b) > maxResponse:
		return fmt.Errorf("client: %s: answer larger than %d bytes", op, maxResponse)
	case res.StatusCode != want:
		return fmt.Errorf("client: %s: %w", op, newError(res.StatusCode, b))
	case out == nil:
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("client: %s: decode answer: %w", op, err)
	}
	return nil
}

// segment returns s escaped as one URL path segment, or an error wrapping
// ErrInvalid when no path segment can carry it (empty, "." or "..").
func segment(what, s string) (string, error) {
	if s == "" || s == "." || s == ".." {
		return "", fmt.Errorf("%w: %s %q", ErrInvalid, what, s)
	}
	return url.PathEscape(s), nil
}

// Health checks that the server answers GET /healthz with {"status":"ok"}.
func (c *Client) Health(ctx context.Context) error {
	var h wire.Health
	if err := c.call(ctx, "health", http.MethodGet, "/healthz", nil, http.StatusOK, &h); err != nil {
		return err
	}
	if h.Status != "ok" {
		return fmt.Errorf("client: health: status %q", h.Status)
	}
	return nil
}
