package brokertest

import (
	"strings"
	"testing"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
)

func TestLeakedGoroutines(t *testing.T) {
	b := New(t, broker.Config{})
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(URL(b)).SetClientID("leaky"))
	if tok := c.Connect(); !tok.WaitTimeout(Timeout) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	if got := leakedGoroutines(0); !strings.Contains(got, "paho.mqtt.golang") {
		t.Errorf("leakedGoroutines with a connected client: got %q, want paho goroutines", got)
	}
	c.Disconnect(100)
	if err := b.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := leakedGoroutines(Timeout); got != "" {
		t.Errorf("leakedGoroutines after Disconnect and Close: got %q, want none", got)
	}
}
