package loadgen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// Publisher publishes one message. Umbra's *broker.Server and mochi's
// *mqtt.Server (with its inline client enabled) both satisfy it.
type Publisher interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
}

// Echo returns an in-process responder for the baseline benchmark: it
// answers every request by publishing the same payload (so the clientToken
// comes back) at qos on the request topic + "/accepted". Its signature is
// that of broker.HandlerFunc, so with Umbra's broker:
//
//	brk.Subscribe("state/+/update", loadgen.Echo(brk, 1))
//
// It does the routing work of a shadow engine without parsing or
// persisting anything.
func Echo(p Publisher, qos byte) func(clientID, topic string, payload []byte) {
	return func(_, topic string, payload []byte) {
		_ = p.Publish(topic+"/accepted", payload, false, qos)
	}
}

// EchoConfig configures an external echo responder (for brokers without an
// in-process hook, such as mosquitto).
type EchoConfig struct {
	// Server is the broker URL. Required.
	Server string
	// Filter is the request filter to answer (default "state/+/update").
	Filter string
	// Suffix is appended to the request topic to form the response topic
	// (default "/accepted").
	Suffix string
	// QoS of the subscription and the responses (0 or 1).
	QoS byte
	// ClientID of the responder (default "loadgen-echo").
	ClientID string
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
}

// EchoClient is an MQTT client that answers requests like Echo, through
// the broker: request → broker → echo client → broker → requester.
type EchoClient struct {
	cl paho.Client
}

// OpenEcho connects and subscribes an echo client.
func OpenEcho(ctx context.Context, cfg EchoConfig) (*EchoClient, error) {
	if cfg.Server == "" {
		return nil, fmt.Errorf("%w: echo server is required", ErrInvalidConfig)
	}
	if cfg.QoS > 1 {
		return nil, fmt.Errorf("%w: echo qos %d: want 0 or 1", ErrInvalidConfig, cfg.QoS)
	}
	if cfg.Filter == "" {
		cfg.Filter = "state/+/update"
	}
	if cfg.Suffix == "" {
		cfg.Suffix = "/accepted"
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "loadgen-echo"
	}
	if strings.HasSuffix(cfg.Filter, "#") {
		return nil, fmt.Errorf("%w: echo filter %q would match its own responses", ErrInvalidConfig, cfg.Filter)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	var e EchoClient
	opts := paho.NewClientOptions().AddBroker(cfg.Server).SetClientID(cfg.ClientID).
		SetCleanSession(true).SetOrderMatters(false).SetAutoReconnect(false).
		SetDefaultPublishHandler(func(c paho.Client, m paho.Message) {
			c.Publish(m.Topic()+cfg.Suffix, cfg.QoS, false, m.Payload())
		})
	e.cl = paho.NewClient(opts)
	wait := func(what string, tok paho.Token) error {
		select {
		case <-tok.Done():
			if err := tok.Error(); err != nil {
				return fmt.Errorf("loadgen: echo %s: %w", what, err)
			}
			return nil
		case <-ctx.Done():
			return fmt.Errorf("loadgen: echo %s: %w", what, ctx.Err())
		case <-time.After(30 * time.Second):
			return fmt.Errorf("loadgen: echo %s: %w", what, errors.New("timeout"))
		}
	}
	if err := wait("connect", e.cl.Connect()); err != nil {
		e.cl.Disconnect(0)
		return nil, err
	}
	if err := wait("subscribe", e.cl.Subscribe(cfg.Filter, cfg.QoS, nil)); err != nil {
		e.cl.Disconnect(100)
		return nil, err
	}
	cfg.Logger.Info("echo responder ready", "filter", cfg.Filter)
	return &e, nil
}

// Close disconnects the echo client. It is safe to call more than once.
func (e *EchoClient) Close(context.Context) error {
	if e.cl.IsConnected() {
		e.cl.Disconnect(250)
	}
	return nil
}
