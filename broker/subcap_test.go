package broker_test

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"slices"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

// subscribeFilters encodes SUBSCRIBE for several filters at QoS 1.
func subscribeFilters(version byte, id uint16, filters ...string) []byte {
	body := binary.BigEndian.AppendUint16(nil, id)
	if version == v5 {
		body = append(body, 0)
	}
	for _, f := range filters {
		body = appendString(body, f)
		body = append(body, 1)
	}
	return frame(typeSubscribe<<4|0x02, body)
}

// subscribeCodes sends SUBSCRIBE for filters and returns SUBACK's codes.
func (rc *rawConn) subscribeCodes(version byte, id uint16, filters ...string) []byte {
	rc.tb.Helper()
	rc.write(subscribeFilters(version, id, filters...))
	ack := rc.expect(typeSuback)
	codes := ack.body[2:]
	if version == v5 {
		n, k := binary.Uvarint(codes)
		codes = codes[k+int(n):]
	}
	return codes
}

// TestHardening07SubscriptionCap is issue 10's case 7: a session's
// subscriptions are capped (devices and service clients apart, offline
// persistent sessions included); a filter beyond the cap gets SUBACK 0x97
// (MQTT 5) or 0x80 (MQTT 3.1.1), is counted and logged once, and is not
// subscribed. Before the fix every filter was granted.
func TestHardening07SubscriptionCap(t *testing.T) {
	const granted, quota, failure = 1, 0x97, 0x80
	tests := []struct {
		name     string
		version  byte
		operator bool
		max      int // the cap that applies
	}{
		{"device MQTT 5", v5, false, 3},
		{"device MQTT 3.1.1", v311, false, 3},
		{"service MQTT 5", v5, true, 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logs := &logBuffer{}
			b := brokertest.New(t, broker.Config{Auth: roleAuth{}, MaxSubscriptions: 3, ServiceSubscriptions: 5,
				Logger: slog.New(slog.NewTextHandler(logs, nil))})
			rc := dialRaw(t, b.Addr())
			user := ""
			if tc.operator {
				user = "operator"
			}
			rc.write(fullConnectPacket(tc.version, "capped", "", user, ""))
			if ack := rc.expect(typeConnack); ack.body[1] != 0 {
				t.Fatalf("CONNACK %v", ack)
			}
			over := byte(quota)
			if tc.version == v311 {
				over = failure
			}
			var filters []string
			for i := range tc.max - 1 {
				filters = append(filters, "f/"+string(rune('a'+i)))
			}
			// Up to the cap less one; then one more, one too many, an
			// existing filter again, and an invalid one (which takes no
			// place); then one more again.
			if got := rc.subscribeCodes(tc.version, 1, filters...); !bytes.Equal(got, bytes.Repeat([]byte{granted}, len(filters))) {
				t.Fatalf("SUBACK codes % x, want all granted", got)
			}
			invalid := byte(failure)
			if tc.version == v5 {
				invalid = 0x8f // topic filter invalid
			}
			got := rc.subscribeCodes(tc.version, 2, "f/last", "f/over", filters[0], "bad/#/filter")
			if want := []byte{granted, over, granted, invalid}; !bytes.Equal(got, want) {
				t.Fatalf("SUBACK codes % x, want % x", got, want)
			}
			if got := rc.subscribeCodes(tc.version, 3, "f/over", "f/over2"); !bytes.Equal(got, []byte{over, over}) {
				t.Fatalf("SUBACK codes % x, want % x % x", got, over, over)
			}
			st := b.Stats()
			if st.Subscriptions != int64(tc.max) || st.SubscriptionsRefused != 3 {
				t.Errorf("Stats.Subscriptions %d, SubscriptionsRefused %d; want %d, 3", st.Subscriptions, st.SubscriptionsRefused, tc.max)
			}
			if b.HasSubscribers("f/over") {
				t.Error("HasSubscribers(f/over) = true for a refused filter")
			}
			if n := logs.count("subscriptions refused"); n != 1 {
				t.Errorf("refusal logged %d times, want once", n)
			}
		})
	}
}

// TestHardening07OfflineSessionCap checks that a persistent session
// keeps its subscriptions, and so its cap, across a reconnect: the cap
// bounds offline sessions too.
func TestHardening07OfflineSessionCap(t *testing.T) {
	b := brokertest.New(t, broker.Config{MaxSubscriptions: 2})
	rc := dialRaw(t, b.Addr())
	rc.connect(v311, "persistent", false)
	if got := rc.subscribeCodes(v311, 1, "p/a", "p/b", "p/c"); !bytes.Equal(got, []byte{1, 1, 0x80}) {
		t.Fatalf("SUBACK codes % x, want 01 01 80", got)
	}
	rc.write([]byte{typeDisconn << 4, 0})
	rc.expectClosed()
	if st := b.Stats(); st.Sessions != 1 || st.Subscriptions != 2 {
		t.Fatalf("offline: Stats.Sessions %d, Subscriptions %d; want 1, 2", st.Sessions, st.Subscriptions)
	}

	rc = dialRaw(t, b.Addr())
	rc.write(connectPacket(v311, "persistent", false, 30))
	if ack := rc.expect(typeConnack); !slices.Equal(ack.body, []byte{1, 0}) {
		t.Fatalf("CONNACK % x, want session present, accepted", ack.body)
	}
	if got := rc.subscribeCodes(v311, 2, "p/c", "p/a"); !bytes.Equal(got, []byte{0x80, 1}) {
		t.Fatalf("SUBACK codes % x after reconnect, want 80 01", got)
	}
	if st := b.Stats(); st.SubscriptionsRefused != 2 {
		t.Errorf("Stats.SubscriptionsRefused %d, want 2", st.SubscriptionsRefused)
	}
}
