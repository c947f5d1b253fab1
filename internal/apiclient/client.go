package apiclient

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

// Config configures a Client. Zero values mean the documented defaults.
type Config struct {
	// API is the server's base URL, e.g. "http://127.0.0.1:8080". Default
	// DefaultAPI.
	API string
	// Token, if set, is sent as "Authorization: Bearer <Token>".
	Token string
	// Timeout bounds every Call. Default DefaultTimeout.
	Timeout time.Duration
	// HTTPClient sends the requests; nil means a client of its own without
	// an overall timeout.
	HTTPClient *http.Client
}

// Client sends requests to one server.
type Client struct {
	base    *url.URL
	token   string
	timeout time.Duration
	hc      *http.Client
}

// New validates cfg and returns a Client. The error describes the bad
// field, for the caller to wrap with its own sentinel.
func New(cfg Config) (*Client, error) {
	if cfg.API == "" {
		cfg.API = DefaultAPI
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("timeout %s is negative", cfg.Timeout)
	}
	u, err := url.Parse(cfg.API)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("API URL %q: want http(s)://host[:port][/path]", cfg.API)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	if strings.ContainsAny(cfg.Token, "\r\n") {
		return nil, errors.New("token contains a line break")
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{}
	}
	return &Client{base: u, token: cfg.Token, timeout: cfg.Timeout, hc: hc}, nil
}

// Error is an error answer from the server.
type Error struct {
	Status  int    // the HTTP status
	Message string // the server's message
	Rollout string // the rollout named by a 409, if any
}

// Error implements error: "<status> <text>: <message>".
func (e *Error) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// Call sends one request bounded by Config.Timeout, with body (if not nil)
// as JSON, and decodes an answer of status want into out (see Do).
func (c *Client) Call(ctx context.Context, method, path string, body []byte, want int, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := c.NewRequest(ctx, method, path, r)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.Do(req, want, out)
}

// NewRequest returns a request for pathAndQuery under the base URL, with
// the Accept and Authorization headers set.
func (c *Client) NewRequest(ctx context.Context, method, pathAndQuery string, body io.Reader) (*http.Request, error) {
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

// Do sends req and decodes the answer: into out when the status is want
// (a *json.RawMessage receives the body as is), as an *Error otherwise.
func (c *Client) Do(req *http.Request, want int, out any) error {
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

// apiError builds the *Error for an error answer, JSON or not.
func apiError(status int, body []byte) *Error {
	var eb struct {
		Message string `json:"message"`
		Rollout string `json:"rollout"`
	}
	if json.Unmarshal(body, &eb) == nil && eb.Message != "" {
		return &Error{Status: status, Message: eb.Message, Rollout: eb.Rollout}
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
