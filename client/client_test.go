package client_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/wire"
)

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		cfg  client.Config
		want string // part of the error; "" = valid
	}{
		{client.Config{}, ""},
		{client.Config{URL: "https://umbra.example:8443/base/"}, ""},
		{client.Config{URL: "ftp://host"}, "URL"},
		{client.Config{URL: "http://"}, "URL"},
		{client.Config{URL: "http://host/?q=1"}, "URL"},
		{client.Config{URL: "http://host/#frag"}, "URL"},
		{client.Config{URL: "http://user:pw@host/"}, "URL"},
		{client.Config{URL: "::"}, "URL"},
		{client.Config{Timeout: -time.Second}, "negative"},
		{client.Config{Token: "a\r\nb"}, "line break"},
	} {
		_, err := client.New(tc.cfg)
		if tc.want == "" && err != nil || tc.want != "" && (!errors.Is(err, client.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("New(%+v) = %v, want ErrInvalidConfig with %q (no error if empty)", tc.cfg, err, tc.want)
		}
	}
}

// TestErrorAnswers: an error answer, JSON or not, becomes an *Error with
// the server's fields, matching the sentinel of its status; the request
// carries the token and asks for JSON.
func TestErrorAnswers(t *testing.T) {
	var answer atomic.Pointer[func(w http.ResponseWriter)]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/base/v1/rollouts" || r.Header.Get("Authorization") != "Bearer tok" || r.Header.Get("Accept") != "application/json" {
			http.Error(w, "wrong request "+r.URL.Path, http.StatusTeapot)
			return
		}
		(*answer.Load())(w)
	}))
	t.Cleanup(srv.Close)
	c, err := client.New(client.Config{URL: srv.URL + "/base/", Token: "tok", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	jsonAnswer := func(status int, body string) func(w http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			w.Write([]byte(body))
		}
	}
	tests := []struct {
		name   string
		answer func(w http.ResponseWriter)
		want   client.Error
		is     error
	}{
		{"conflict names the rollout", jsonAnswer(409, `{"code":409,"message":"device d1 is busy","rollout":"r2"}`),
			client.Error{Status: 409, Code: 409, Message: "device d1 is busy", Rollout: "r2"}, client.ErrConflict},
		{"incompatible targets", jsonAnswer(409, `{"code":409,"message":"2 targets","incompatible":[{"id":"d1","hw":"m1"}]}`),
			client.Error{Status: 409, Code: 409, Message: "2 targets", Incompatible: []wire.IncompatibleDevice{{ID: "d1", HW: "m1"}}}, client.ErrConflict},
		{"import problems", jsonAnswer(400, `{"code":400,"message":"1 of 2 devices are bad","problems":[{"index":1,"id":"x","message":"bad"}]}`),
			client.Error{Status: 400, Code: 400, Message: "1 of 2 devices are bad", Problems: []wire.ImportProblem{{Index: 1, ID: "x", Message: "bad"}}}, client.ErrInvalid},
		{"shadow rejection", jsonAnswer(429, `{"code":429,"message":"slow down","clientToken":"c1","timestamp":1700000000}`),
			client.Error{Status: 429, Code: 429, Message: "slow down", ClientToken: "c1"}, client.ErrRateLimited},
		{"unauthorized", jsonAnswer(401, `{"code":401,"message":"who are you"}`),
			client.Error{Status: 401, Code: 401, Message: "who are you"}, client.ErrUnauthorized},
		{"forbidden", jsonAnswer(403, `{"code":403,"message":"no"}`), client.Error{Status: 403, Code: 403, Message: "no"}, client.ErrForbidden},
		{"not found", jsonAnswer(404, `{"code":404,"message":"gone"}`), client.Error{Status: 404, Code: 404, Message: "gone"}, client.ErrNotFound},
		{"too large", jsonAnswer(413, `{"code":413,"message":"big"}`), client.Error{Status: 413, Code: 413, Message: "big"}, client.ErrTooLarge},
		{"checksum", jsonAnswer(422, `{"code":422,"message":"sum"}`), client.Error{Status: 422, Code: 422, Message: "sum"}, client.ErrChecksumMismatch},
		{"unavailable", jsonAnswer(503, `{"code":503,"message":"later"}`), client.Error{Status: 503, Code: 503, Message: "later"}, client.ErrUnavailable},
		{"text", func(w http.ResponseWriter) {
			http.Error(w, strings.Repeat("x", 300)+"\nsecond line", http.StatusBadGateway)
		},
			client.Error{Status: 502, Message: strings.Repeat("x", 200) + "…"}, nil},
		{"empty", func(w http.ResponseWriter) { w.WriteHeader(http.StatusTeapot) },
			client.Error{Status: 418, Message: "(no message; status 418)"}, nil},
	}
	sentinels := []error{client.ErrInvalid, client.ErrUnauthorized, client.ErrForbidden, client.ErrNotFound, client.ErrConflict,
		client.ErrTooLarge, client.ErrChecksumMismatch, client.ErrRateLimited, client.ErrUnavailable}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			answer.Store(&tc.answer)
			_, err := c.ListRollouts(t.Context())
			e, ok := errors.AsType[*client.Error](err)
			if !ok || !reflect.DeepEqual(*e, tc.want) {
				t.Fatalf("ListRollouts = %#v, want %#v", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "client: list rollouts: ") || !strings.HasSuffix(err.Error(), tc.want.Message) {
				t.Errorf("error text %q, want the operation, the status and the message", err)
			}
			for _, s := range sentinels {
				if got := errors.Is(err, s); got != (s == tc.is) {
					t.Errorf("errors.Is(err, %v) = %v", s, got)
				}
			}
		})
	}
	garbage := jsonAnswer(200, `{"rollouts":`)
	answer.Store(&garbage)
	if _, err := c.ListRollouts(t.Context()); err == nil || !strings.Contains(err.Error(), "decode answer") {
		t.Errorf("ListRollouts of a truncated answer = %v, want a decode error", err)
	}
}

// TestNonJSONErrors: a non-JSON error from a proxy in front of the server
// keeps its first line.
func TestNonJSONErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		http.Error(w, "bad gateway\nsecond line", http.StatusBadGateway)
	}))
	t.Cleanup(srv.Close)
	for _, tc := range []struct{ token, want string }{
		{"", "401 Unauthorized: no token"},
		{"tok", "502 Bad Gateway: bad gateway"},
	} {
		c, err := client.New(client.Config{URL: srv.URL, Token: tc.token})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.ListFirmware(t.Context())
		if err == nil || !strings.HasSuffix(err.Error(), tc.want) {
			t.Errorf("token %q: got %v, want an error ending %q", tc.token, err, tc.want)
		}
	}
}
