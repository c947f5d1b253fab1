package broker_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// TestMochiPatchSysPublishRefused: a client's PUBLISH to $SYS (any case,
// as mochi matches it) is refused like a denied one: MQTT 5 gets PUBACK or
// PUBREC 0x87, MQTT 3.1.1 the usual acknowledgement; nothing is delivered
// or retained, and the denial is counted. Unpatched mochi dropped it
// without any answer, so a QoS 1 or 2 publisher waited forever
// (third_party/mochi/PATCHES.md, patch 3).
func TestMochiPatchSysPublishRefused(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	got := make(chan string, 64)
	if err := b.Subscribe("$SYS/#", func(_, topic string, _ []byte) {
		if strings.Contains(topic, "fake") {
			got <- topic
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe("open/#", func(_, topic string, _ []byte) { got <- topic }); err != nil {
		t.Fatal(err)
	}
	for _, version := range []byte{v311, v5} {
		for qos := range byte(3) {
			for _, topic := range []string{"$SYS/broker/fake", "$sys/fake"} {
				id := fmt.Sprintf("sys-v%d-qos%d-%s", version, qos, topic[1:4])
				t.Run(id, func(t *testing.T) {
					before := b.Stats()
					rc := dialRaw(t, b.Addr())
					rc.connect(version, id, true)
					rc.write(retainedPublish(version, topic, qos, 3, []byte("fake")))
					rc.expectRefused(version, qos, 3, 0x87)
					rc.write(publishPacket(version, "open/"+id, 1, 4, nil))
					rc.expectAck(typePuback, 4)
					if topic := recv(t, got, "delivery"); topic != "open/"+id {
						t.Fatalf("delivered %q first, want open/%s", topic, id)
					}
					after := b.Stats()
					if n := after.PublishesDenied - before.PublishesDenied; n != 1 {
						t.Errorf("PublishesDenied: got +%d, want +1", n)
					}
					if after.Retained != before.Retained {
						t.Errorf("Retained: got %d, want %d", after.Retained, before.Retained)
					}
				})
			}
		}
	}
}

// TestMochiPatchDollarTopics: a filter whose first level is a wildcard
// matches no topic starting with "$" [MQTT-4.7.2-1], also for retained
// messages sent on SUBSCRIBE and for shared subscriptions. Unpatched mochi
// skipped only $SYS in the retained scan and no $ topic in shared
// subscriptions (third_party/mochi/PATCHES.md, patch 4).
func TestMochiPatchDollarTopics(t *testing.T) {
	b := brokertest.New(t, broker.Config{})
	for _, topic := range []string{"$app/x", "app/x"} {
		if err := b.Publish(topic, []byte("retained "+topic), true, 1); err != nil {
			t.Fatal(err)
		}
	}
	firstTopics := func(rc *rawConn, version byte, n int) []string {
		var topics []string
		for range n {
			topic, _, _ := parsePublish(version, rc.expect(typePublish))
			topics = append(topics, topic)
		}
		return topics
	}
	for _, version := range []byte{v311, v5} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			// Retained on SUBSCRIBE: "#" and "+/x" get app/x, never $app/x;
			// the marker published after the SUBSCRIBE comes after them.
			rc := dialRaw(t, b.Addr())
			rc.connect(version, fmt.Sprintf("wild-v%d", version), true)
			for i, filter := range []string{"#", "+/x"} {
				if codes := rc.subscribeCodes(version, uint16(i+1), filter); codes[0] != 1 {
					t.Fatalf("SUBACK %s: % x", filter, codes)
				}
				rc.write(publishPacket(version, "app/marker", 0, 0, nil))
				// The marker comes through "#" (+/x does not match it), after
				// the retained messages; reading it also awaits its delivery,
				// which must not reach the shared subscription made below.
				want := []string{"app/x", "app/marker"}
				if got := firstTopics(rc, version, len(want)); strings.Join(got, " ") != strings.Join(want, " ") {
					t.Errorf("after SUBSCRIBE %s: got %v, want %v", filter, got, want)
				}
			}

			// Live, through a shared subscription: $app/y is not delivered.
			sh := dialRaw(t, b.Addr())
			sh.connect(version, fmt.Sprintf("shared-v%d", version), true)
			if codes := sh.subscribeCodes(version, 1, "$share/g/#", "$share/g/+/y"); codes[0] != 1 || codes[1] != 1 {
				t.Fatalf("SUBACK: % x", codes)
			}
			for _, topic := range []string{"$app/y", "$SYS/y", "app/y"} {
				if err := b.Publish(topic, []byte("live"), false, 0); err != nil && topic != "$SYS/y" {
					t.Fatal(err)
				}
			}
			if got := firstTopics(sh, version, 1); got[0] != "app/y" {
				t.Errorf("shared subscriber got %v first, want app/y", got)
			}
		})
	}
}

// sysAuth lets the identity "operator" read $SYS and everyone read and
// write everything else (the policy itself is policy's).
type sysAuth struct{}

func (sysAuth) Authenticate(_ context.Context, c broker.Credentials) (broker.Identity, error) {
	return broker.Identity{Name: c.Username}, nil
}

func (sysAuth) Allow(id broker.Identity, topic string, _ bool) bool {
	return !strings.HasPrefix(topic, "$SYS") || id.Name == "operator"
}

// TestSysTopics: the broker publishes its statistics on $SYS/broker/…,
// retained, every SysInterval; a client the Authenticator lets read $SYS
// gets them, one it does not gets SUBACK failure, and "#" never matches
// them.
func TestSysTopics(t *testing.T) {
	b := brokertest.New(t, broker.Config{Auth: sysAuth{}, SysInterval: time.Second})
	op := brokertest.Connect(t, brokertest.URL(b), "op-1", withUser("operator"))
	uptime := brokertest.Subscribe(t, op, "$SYS/broker/uptime", 0)
	first := brokertest.Next(t, uptime, wait)
	if !first.Retained {
		t.Errorf("first $SYS/broker/uptime %v: want retained", first)
	}
	// The next refresh comes within SysInterval, live.
	if next := brokertest.Next(t, uptime, 3*time.Second); next.Retained || next.Topic != "$SYS/broker/uptime" {
		t.Errorf("refresh %v: want a live $SYS/broker/uptime", next)
	}

	dev := dialRaw(t, b.Addr())
	dev.write(fullConnectPacket(v311, "dev-1", "", "dev-1", "x"))
	dev.expect(typeConnack)
	if codes := dev.subscribeCodes(v311, 1, "$SYS/#", "#"); codes[0] != 0x80 || codes[1] != 1 {
		t.Fatalf("SUBACK $SYS/#, #: got % x, want 80 01", codes)
	}
	dev.write(publishPacket(v311, "dev/marker", 0, 0, nil))
	// The next $SYS refresh does not reach "#" either: wait for one on the
	// operator's subscription, then for the marker after it.
	brokertest.Next(t, uptime, 3*time.Second)
	dev.write(publishPacket(v311, "dev/marker2", 0, 0, nil))
	for _, want := range []string{"dev/marker", "dev/marker2"} {
		if topic, _, _ := parsePublish(v311, dev.expect(typePublish)); topic != want {
			t.Fatalf("dev-1 on #: got %q, want %q", topic, want)
		}
	}
}

func withUser(name string) func(*mqtt.ClientOptions) {
	return func(o *mqtt.ClientOptions) { o.SetUsername(name) }
}
