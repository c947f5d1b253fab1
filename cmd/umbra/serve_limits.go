package main

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/fleet"
	umbraserver "github.com/umbra-iot/umbra/internal/server"
)

// addLimitFlags adds the flags of umbra serve's per-client MQTT limits
// beyond packets, pending bytes and subscriptions (docs/threat-model.md,
// MQTT clients), each to its field of c.
func addLimitFlags(f *pflag.FlagSet, c *umbraserver.Config) {
	f.Float64Var(&c.MaxMessageRate, "max-message-rate", broker.DefaultMaxMessageRate, "PUBLISHes per second a device connection may send on average (MQTT 5: 0x96 beyond, MQTT 3.1.1: acknowledged and dropped); -1 for no limit")
	f.IntVar(&c.MaxMessageBurst, "max-message-burst", broker.DefaultMaxMessageBurst, "PUBLISHes a device connection may send at once, above --max-message-rate")
	f.Float64Var(&c.ServiceMessageRate, "service-max-message-rate", broker.DefaultServiceMessageRate, "--max-message-rate for operators and integrators")
	f.IntVar(&c.ServiceMessageBurst, "service-max-message-burst", broker.DefaultServiceMessageBurst, "--max-message-burst for operators and integrators")
	f.IntVar(&c.MaxConnsPerIdentity, "max-connections-per-identity", broker.DefaultMaxConnsPerIdentity, "simultaneous MQTT connections of one device or token (CONNACK not authorized beyond); -1 for no cap; not applied with --insecure-anonymous, where every client is the same identity")
	f.DurationVar(&c.ConnectTimeout, "connect-timeout", broker.DefaultConnectTimeout, "time a new MQTT connection has to complete TLS and send CONNECT")
	f.DurationVar(&c.SysInterval, "sys-interval", broker.DefaultSysInterval, "how often the broker publishes its statistics on $SYS/broker/…")
}

// validateLimits reports the first invalid limit of addLimitFlags, naming
// its flag.
func validateLimits(c *umbraserver.Config) error {
	for name, v := range map[string]float64{"--max-message-rate": c.MaxMessageRate, "--service-max-message-rate": c.ServiceMessageRate} {
		if v == 0 || (v < 0 && v != -1) {
			return fmt.Errorf("%s %v: must be positive, or -1 for no limit", name, v)
		}
	}
	for name, v := range map[string]int{"--max-message-burst": c.MaxMessageBurst, "--service-max-message-burst": c.ServiceMessageBurst} {
		if v < 1 {
			return fmt.Errorf("%s %d: must be at least 1", name, v)
		}
	}
	if c.MaxConnsPerIdentity == 0 || c.MaxConnsPerIdentity < -1 {
		return fmt.Errorf("--max-connections-per-identity %d: must be positive, or -1 for no cap", c.MaxConnsPerIdentity)
	}
	if c.ConnectTimeout < time.Second || c.ConnectTimeout > 5*time.Minute {
		return fmt.Errorf("--connect-timeout %v: must be between 1s and 5m", c.ConnectTimeout)
	}
	if c.SysInterval < time.Second {
		return fmt.Errorf("--sys-interval %v: must be at least 1s", c.SysInterval)
	}
	return nil
}

// addLiveFlags adds the flags of the web console's live feed (GET
// /v1/events, Server-Sent Events; docs/console.md), each to its field of c.
func addLiveFlags(f *pflag.FlagSet, c *umbraserver.Config) {
	f.IntVar(&c.MaxSSEConns, "max-sse-connections", fleet.DefaultMaxConns, "live-feed streams (GET /v1/events, the web console's live updates) open at once in all; 429 beyond")
	f.IntVar(&c.MaxSSEConnsPerToken, "max-sse-connections-per-token", fleet.DefaultMaxConnsPerPrincipal, "live-feed streams one token may have open at once; 429 beyond")
	f.IntVar(&c.SSEBuffer, "sse-buffer", fleet.DefaultBuffer, "events a live-feed stream may have waiting; a client that falls further behind is disconnected (it reconnects and reloads)")
}

// validateLive reports the first invalid limit of addLiveFlags, naming its
// flag.
func validateLive(c *umbraserver.Config) error {
	for _, l := range []struct {
		name string
		v    int
	}{{"--max-sse-connections", c.MaxSSEConns}, {"--max-sse-connections-per-token", c.MaxSSEConnsPerToken}, {"--sse-buffer", c.SSEBuffer}} {
		if l.v < 1 {
			return fmt.Errorf("%s %d: must be at least 1", l.name, l.v)
		}
	}
	return nil
}
