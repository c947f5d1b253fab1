package broker

import (
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
				inflight: DefaultMaxInflight, receiveMax: receiveMaximum, maxQoS: 1, messageExpiry: 0,
				topicAliasMax: 0, readBuf: DefaultReadBufferSize, writeBuf: DefaultWriteBufferSize, inline: true,
			}
			if o != want {
				t.Errorf("options: got %+v, want %+v", o, want)
			}
		}},
		{"explicit", Config{MaxPacketSize: 4096, SessionExpiry: 90 * time.Second, ClientWritesPending: 8,
			ReadBufferSize: 64, WriteBufferSize: 128, MaxInflight: 10}, func(t *testing.T, o optionsView) {
			want := optionsView{
				maxPacket: 4096, sessionExpiry: 90, writesPending: 8, inflight: 10, receiveMax: receiveMaximum,
				maxQoS: 1, readBuf: 64, writeBuf: 128, inline: true,
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
