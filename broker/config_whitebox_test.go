package broker

import (
	"context"
	"testing"
	"time"
)

// TestOptions checks the mochi settings that Umbra relies on, which no
// black-box test can observe in reasonable time (retained messages that
// survive mochi's default 24h expiry, for one).
func TestOptions(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want func(t *testing.T, o optionsView)
	}{
		{"defaults", Config{}, func(t *testing.T, o optionsView) {
			want := optionsView{
				maxPacket: DefaultMaxPacketSize, sessionExpiry: 3600, writesPending: DefaultClientWritesPending,
				inflight: DefaultMaxInflight, receiveMax: receiveMaximum, maxQoS: 2, messageExpiry: 0,
				topicAliasMax: 0, readBuf: DefaultReadBufferSize, writeBuf: DefaultWriteBufferSize, inline: true,
			}
			if o != want {
				t.Errorf("options: got %+v, want %+v", o, want)
			}
		}},
		{"services", Config{Auth: stubAuth{}}, func(t *testing.T, o optionsView) {
			if o.inflight != DefaultServiceInflight || o.writesPending != DefaultClientWritesPending {
				t.Errorf("inflight, writes pending: got %d, %d, want %d, %d (the device queue: services get theirs later)",
					o.inflight, o.writesPending, DefaultServiceInflight, DefaultClientWritesPending)
			}
		}},
		{"services no larger than devices", Config{Auth: stubAuth{}, MaxInflight: 300, ServiceInflight: 200},
			func(t *testing.T, o optionsView) {
				if o.inflight != 300 {
					t.Errorf("inflight: got %d, want 300", o.inflight)
				}
			}},
		{"explicit", Config{MaxPacketSize: 4096, SessionExpiry: 90 * time.Second, ClientWritesPending: 8,
			ReadBufferSize: 64, WriteBufferSize: 128, MaxInflight: 10}, func(t *testing.T, o optionsView) {
			want := optionsView{
				maxPacket: 4096, sessionExpiry: 90, writesPending: 8, inflight: 10, receiveMax: receiveMaximum,
				maxQoS: 2, readBuf: 64, writeBuf: 128, inline: true,
			}
			if o != want {
				t.Errorf("options: got %+v, want %+v", o, want)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.setDefaults()
			if err := tc.cfg.validate(); err != nil {
				t.Fatalf("validate: %v", err)
			}
			o := tc.cfg.options(tc.cfg.Logger)
			if o.Logger != tc.cfg.Logger {
				t.Errorf("options logger: got %p, want the configured one %p", o.Logger, tc.cfg.Logger)
			}
			c := o.Capabilities
			tc.want(t, optionsView{
				maxPacket: c.MaximumPacketSize, sessionExpiry: c.MaximumSessionExpiryInterval,
				writesPending: c.MaximumClientWritesPending, inflight: c.MaximumInflight, receiveMax: c.ReceiveMaximum,
				maxQoS: c.MaximumQos, messageExpiry: c.MaximumMessageExpiryInterval, topicAliasMax: c.TopicAliasMaximum,
				readBuf: o.ClientNetReadBufferSize, writeBuf: o.ClientNetWriteBufferSize, inline: o.InlineClient,
			})
		})
	}
}

// optionsView is the comparable subset of mochi's options under test.
type optionsView struct {
	maxPacket, sessionExpiry uint32
	writesPending            int32
	inflight, receiveMax     uint16
	maxQoS                   byte
	messageExpiry            int64
	topicAliasMax            uint16
	readBuf, writeBuf        int
	inline                   bool
}

// stubAuth admits everyone everywhere.
type stubAuth struct{}

func (stubAuth) Authenticate(context.Context, Credentials) (Identity, error) { return Identity{}, nil }

func (stubAuth) Allow(Identity, string, bool) bool { return true }

// TestServiceDefaults checks the service sizes after setDefaults: never
// below the device sizes.
func TestServiceDefaults(t *testing.T) {
	tests := []struct {
		name        string
		cfg         Config
		writes      int32
		inflight    uint16
		hasServices bool
	}{
		{"defaults", Config{}, DefaultServiceWritesPending, DefaultServiceInflight, false},
		{"defaults with auth", Config{Auth: stubAuth{}}, DefaultServiceWritesPending, DefaultServiceInflight, true},
		{"explicit", Config{Auth: stubAuth{}, ServiceWritesPending: 500, ServiceInflight: 600}, 500, 600, true},
		{"raised to device sizes", Config{Auth: stubAuth{}, ClientWritesPending: 900, ServiceWritesPending: 10,
			MaxInflight: 700, ServiceInflight: 20}, 900, 700, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.setDefaults()
			if tc.cfg.ServiceWritesPending != tc.writes || tc.cfg.ServiceInflight != tc.inflight {
				t.Errorf("service sizes: got %d/%d, want %d/%d", tc.cfg.ServiceWritesPending, tc.cfg.ServiceInflight,
					tc.writes, tc.inflight)
			}
			if got := tc.cfg.hasServices(); got != tc.hasServices {
				t.Errorf("hasServices: got %t, want %t", got, tc.hasServices)
			}
		})
	}
}
