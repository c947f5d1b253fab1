package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/internal/server"
)

func testConfig(t *testing.T, dir string) server.Config {
	t.Helper()
	return server.Config{
		DataDir:   dir,
		MQTTAddr:  "127.0.0.1:0",
		HTTPAddr:  "127.0.0.1:0",
		Anonymous: true,
	}
}

func TestOpenClose(t *testing.T) {
	dir := t.TempDir()
	s, err := server.Open(t.Context(), testConfig(t, dir))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if s.Broker().Addr() == nil || s.HTTPAddr() == nil {
		t.Fatalf("got mqtt %v http %v, want both bound", s.Broker().Addr(), s.HTTPAddr())
	}
	if s.Engine() == nil || s.Identity() == nil || s.Firmware() == nil || s.Planner() == nil || s.API() == nil {
		t.Fatal("a component is nil")
	}

	// A second server on the same data dir fails on the database lock and
	// closes what it opened; the first keeps working.
	_, err = server.Open(t.Context(), testConfig(t, dir))
	if err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("second Open: got %v, want a lock error", err)
	}
	if _, err := s.Engine().Update(t.Context(), "d1", []byte(`{"state":{"reported":{"a":1}}}`)); err != nil {
		t.Fatalf("Update after failed second Open: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatalf("second Close: got %v, want the first result (nil)", err)
	}
	// Closed: the data dir may be opened again.
	s2, err := server.Open(t.Context(), testConfig(t, dir))
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	if err := s2.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestOpenInvalid(t *testing.T) {
	tests := []struct {
		name string
		cfg  server.Config
	}{
		{"no data dir", server.Config{MQTTAddr: "127.0.0.1:0"}},
		{"no mqtt listener", server.Config{DataDir: t.TempDir()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := server.Open(t.Context(), tt.cfg)
			if !errors.Is(err, server.ErrInvalidConfig) {
				t.Fatalf("got %v, want ErrInvalidConfig", err)
			}
		})
	}
}
