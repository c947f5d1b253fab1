package apiclient_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/apiclient"
)

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		cfg  apiclient.Config
		want string // part of the error; "" = valid
	}{
		{apiclient.Config{}, ""},
		{apiclient.Config{API: "https://umbra.example:8443/base/"}, ""},
		{apiclient.Config{API: "ftp://host"}, "API URL"},
		{apiclient.Config{API: "http://"}, "API URL"},
		{apiclient.Config{API: "http://host/?q=1"}, "API URL"},
		{apiclient.Config{API: "http://host/#frag"}, "API URL"},
		{apiclient.Config{Timeout: -time.Second}, "negative"},
		{apiclient.Config{Token: "a\r\nb"}, "line break"},
	} {
		_, err := apiclient.New(tc.cfg)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("New(%+v) = %v, want an error with %q (none if empty)", tc.cfg, err, tc.want)
		}
	}
}

func TestCall(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/base/ok":
			if r.Header.Get("Authorization") != "Bearer tok" || r.Header.Get("Accept") != "application/json" {
				http.Error(w, "headers", http.StatusBadRequest)
				return
			}
			w.Write([]byte(` {"n":1} `))
		case "/base/conflict":
			w.WriteHeader(http.StatusConflict)
			w.Write([]byte(`{"code":409,"message":"device d1 is busy","rollout":"r2"}`))
		case "/base/text":
			http.Error(w, strings.Repeat("x", 300)+"\nsecond line", http.StatusBadGateway)
		case "/base/empty":
			w.WriteHeader(http.StatusTeapot)
		case "/base/garbage":
			w.Write([]byte(`{"n":`))
		}
	}))
	t.Cleanup(srv.Close)
	c, err := apiclient.New(apiclient.Config{API: srv.URL + "/base/", Token: "tok", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ N int }
	if err := c.Call(t.Context(), "GET", "/ok", nil, http.StatusOK, &v); err != nil || v.N != 1 {
		t.Errorf("Call(/ok) = %+v, %v; want n=1", v, err)
	}
	var raw json.RawMessage
	if err := c.Call(t.Context(), "GET", "/ok", nil, http.StatusOK, &raw); err != nil || string(raw) != `{"n":1}` {
		t.Errorf("Call(/ok) raw = %s, %v; want the trimmed body", raw, err)
	}
	for _, tc := range []struct {
		path string
		want apiclient.Error
	}{
		{"/conflict", apiclient.Error{Status: 409, Message: "device d1 is busy", Rollout: "r2"}},
		{"/text", apiclient.Error{Status: 502, Message: strings.Repeat("x", 200) + "…"}},
		{"/empty", apiclient.Error{Status: 418, Message: "(no message; status 418)"}},
	} {
		err := c.Call(t.Context(), "POST", tc.path, []byte(`{}`), http.StatusOK, &v)
		if e, ok := errors.AsType[*apiclient.Error](err); !ok || *e != tc.want {
			t.Errorf("Call(%s) = %v, want %+v", tc.path, err, tc.want)
		}
	}
	if err := c.Call(t.Context(), "GET", "/garbage", nil, http.StatusOK, &v); err == nil || !strings.Contains(err.Error(), "decode answer") {
		t.Errorf("Call(/garbage) = %v, want a decode error", err)
	}
	if err := c.Call(t.Context(), "GET", "/garbage", nil, http.StatusOK, &raw); err == nil {
		t.Errorf("Call(/garbage) into raw = nil error, want one")
	}
}
