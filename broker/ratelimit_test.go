package broker_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// TestMessageRate: a connection may send MaxMessageBurst PUBLISHes at once
// and MaxMessageRate a second after that. Beyond it a PUBLISH is refused:
// MQTT 5 gets PUBACK or PUBREC 0x96, MQTT 3.1.1 the usual acknowledgement;
// either way it is neither delivered nor retained, it is counted, and the
// episode is logged once. Requests on RequestFilters are never refused,
// and another client is not affected.
func TestMessageRate(t *testing.T) {
	logs := &logBuffer{}
	b := brokertest.New(t, broker.Config{
		MaxMessageRate:  0.001, // no token comes back during the test
		MaxMessageBurst: 3,
		RequestFilters:  []string{"req/+"},
		Logger:          slog.New(slog.NewTextHandler(logs, nil)),
	})
	got := make(chan string, 64)
	if err := b.Subscribe("#", func(_, topic string, _ []byte) { got <- topic }); err != nil {
		t.Fatal(err)
	}
	for _, version := range []byte{v311, v5} {
		id := fmt.Sprintf("fast-v%d", version)
		t.Run(id, func(t *testing.T) {
			before := b.Stats()
			rc := dialRaw(t, b.Addr())
			rc.connect(version, id, true)
			for i := range uint16(3) { // the burst
				rc.write(publishPacket(version, "tele/"+id, 1, i+1, nil))
				rc.expectAck(typePuback, i+1)
			}
			rc.write(retainedPublish(version, "tele/"+id, 1, 4, nil))
			rc.expectRefused(version, 1, 4, 0x96)
			rc.write(publishPacket(version, "tele/"+id, 2, 5, nil))
			rc.expectRefused(version, 2, 5, 0x96)
			rc.write(publishPacket(version, "tele/"+id, 0, 0, nil))
			// A request is never refused by the message rate.
			rc.write(publishPacket(version, "req/"+id, 1, 6, nil))
			rc.expectAck(typePuback, 6)

			// PUBACK comes before delivery; a client's messages are
			// delivered in order.
			want := []string{"tele/" + id, "tele/" + id, "tele/" + id, "req/" + id}
			for _, w := range want {
				if topic := recv(t, got, w); topic != w {
					t.Fatalf("delivered %q, want %q (in order: %v)", topic, w, want)
				}
			}
			// Another client is not affected.
			other := dialRaw(t, b.Addr())
			other.connect(version, "calm-"+id, true)
			other.write(publishPacket(version, "calm/"+id, 1, 1, nil))
			other.expectAck(typePuback, 1)
			if topic := recv(t, got, "calm"); topic != "calm/"+id {
				t.Fatalf("delivered %q, want calm/%s", topic, id)
			}
			after := b.Stats()
			if n := after.RateLimited - before.RateLimited; n != 3 {
				t.Errorf("RateLimited: got +%d, want +3", n)
			}
			if after.PublishesDenied != before.PublishesDenied {
				t.Errorf("PublishesDenied: got +%d, want 0 (a message over the rate is not denied)", after.PublishesDenied-before.PublishesDenied)
			}
			if after.Retained != before.Retained {
				t.Errorf("Retained: got %d, want %d", after.Retained, before.Retained)
			}
			if n := logs.count(`msg="message rate exceeded`); n != int(version-3) {
				t.Errorf("rate log lines so far: got %d, want %d (one per client and episode)", n, version-3)
			}
		})
	}
}

// rolesAuth makes a client whose user name is "svc" a service client and
// every other client the device named by its client ID.
type rolesAuth struct{}

func (rolesAuth) Authenticate(_ context.Context, c broker.Credentials) (broker.Identity, error) {
	if c.Username == "svc" {
		return broker.Identity{Name: "svc"}, nil
	}
	return broker.Identity{Name: c.ClientID, Device: device.ID(c.ClientID)}, nil
}

func (rolesAuth) Allow(broker.Identity, string, bool) bool { return true }

// TestMessageRateServiceClients: service clients (identities without a
// device) get ServiceMessageRate, devices MaxMessageRate.
func TestMessageRateServiceClients(t *testing.T) {
	b := brokertest.New(t, broker.Config{
		Auth:               rolesAuth{},
		MaxMessageRate:     0.001,
		MaxMessageBurst:    2,
		ServiceMessageRate: -1,
	})
	for _, tc := range []struct {
		user       string
		wantRefuse bool
	}{
		{"dev", true},
		{"svc", false},
	} {
		t.Run(tc.user, func(t *testing.T) {
			rc := dialRaw(t, b.Addr())
			rc.write(fullConnectPacket(v5, "client-"+tc.user, "", tc.user, "pw"))
			rc.expect(typeConnack)
			refused := 0
			for i := range uint16(10) {
				rc.write(publishPacket(v5, "t/"+tc.user, 1, i+1, nil))
				if p := rc.expect(typePuback); ackCode(p) == 0x96 {
					refused++
				}
			}
			if (refused > 0) != tc.wantRefuse || tc.wantRefuse && refused != 8 {
				t.Errorf("refused %d of 10, want %v (8 past a burst of 2)", refused, map[bool]string{true: "8", false: "none"}[tc.wantRefuse])
			}
		})
	}
}

// TestMessageRateConfig: invalid rates and bursts are refused by Open.
func TestMessageRateConfig(t *testing.T) {
	for _, cfg := range []broker.Config{
		{MaxMessageBurst: -1},
		{ServiceMessageBurst: -5},
		{SysInterval: 100 * time.Millisecond},
	} {
		if _, err := broker.Open(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "invalid config") {
			t.Errorf("Open(%+v): got %v, want ErrInvalidConfig", cfg, err)
		}
	}
}
