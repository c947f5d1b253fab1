package main

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/umbra-iot/umbra/broker"
	umbraserver "github.com/umbra-iot/umbra/internal/server"
)

// mqttLimits are the flags of umbra serve's per-client MQTT limits beyond
// packets, pending bytes and subscriptions (docs/threat-model.md, MQTT
// clients).
type mqttLimits struct {
	messageRate, serviceMessageRate   float64
	messageBurst, serviceMessageBurst int
	connsPerIdentity                  int
	connectTimeout                    time.Duration
	sysInterval                       time.Duration
}

func (l *mqttLimits) addFlags(f *pflag.FlagSet) {
	f.Float64Var(&l.messageRate, "max-message-rate", broker.DefaultMaxMessageRate, "PUBLISHes per second a device connection may send on average (MQTT 5: 0x96 beyond, MQTT 3.1.1: acknowledged and dropped); -1 for no limit")
	f.IntVar(&l.messageBurst, "max-message-burst", broker.DefaultMaxMessageBurst, "PUBLISHes a device connection may send at once, above --max-message-rate")
	f.Float64Var(&l.serviceMessageRate, "service-max-message-rate", broker.DefaultServiceMessageRate, "--max-message-rate for operators and integrators")
	f.IntVar(&l.serviceMessageBurst, "service-max-message-burst", broker.DefaultServiceMessageBurst, "--max-message-burst for operators and integrators")
	f.IntVar(&l.connsPerIdentity, "max-connections-per-identity", broker.DefaultMaxConnsPerIdentity, "simultaneous MQTT connections of one device or token (CONNACK not authorized beyond); -1 for no cap; not applied with --insecure-anonymous, where every client is the same identity")
	f.DurationVar(&l.connectTimeout, "connect-timeout", broker.DefaultConnectTimeout, "time a new MQTT connection has to complete TLS and send CONNECT")
	f.DurationVar(&l.sysInterval, "sys-interval", broker.DefaultSysInterval, "how often the broker publishes its statistics on $SYS/broker/…")
}

// validate reports the first invalid limit, naming its flag.
func (l *mqttLimits) validate() error {
	for name, v := range map[string]float64{"--max-message-rate": l.messageRate, "--service-max-message-rate": l.serviceMessageRate} {
		if v == 0 || (v < 0 && v != -1) {
			return fmt.Errorf("%s %v: must be positive, or -1 for no limit", name, v)
		}
	}
	for name, v := range map[string]int{"--max-message-burst": l.messageBurst, "--service-max-message-burst": l.serviceMessageBurst} {
		if v < 1 {
			return fmt.Errorf("%s %d: must be at least 1", name, v)
		}
	}
	if l.connsPerIdentity == 0 || l.connsPerIdentity < -1 {
		return fmt.Errorf("--max-connections-per-identity %d: must be positive, or -1 for no cap", l.connsPerIdentity)
	}
	if l.connectTimeout < time.Second || l.connectTimeout > 5*time.Minute {
		return fmt.Errorf("--connect-timeout %v: must be between 1s and 5m", l.connectTimeout)
	}
	if l.sysInterval < time.Second {
		return fmt.Errorf("--sys-interval %v: must be at least 1s", l.sysInterval)
	}
	return nil
}

// apply sets the limits in c.
func (l *mqttLimits) apply(c *umbraserver.Config) {
	c.MaxMessageRate, c.MaxMessageBurst = l.messageRate, l.messageBurst
	c.ServiceMessageRate, c.ServiceMessageBurst = l.serviceMessageRate, l.serviceMessageBurst
	c.MaxConnsPerIdentity = l.connsPerIdentity
	c.ConnectTimeout = l.connectTimeout
	c.SysInterval = l.sysInterval
}
