package broker

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// CONNECT, CONNACK and PUBREC edges mochi gets wrong.
//
// A zero-length password is valid MQTT (3.1.1 §3.1.3.5, 5 §3.1.3.5), but
// mochi refuses a CONNECT with the password flag and an empty password as
// a protocol error, before authentication, and sends that code (130) even
// to an MQTT 3.1.1 client, whose CONNACK return codes end at 5.
// OnPacketRead therefore clears the flag of an empty password and
// remembers it, so that Config.Auth decides (Credentials.Password is then
// empty, not nil) and a refusal is "not authorized" (5; 0x86 "bad user
// name or password" for MQTT 5).
//
// More generally, OnPacketEncode never lets a CONNACK code above 5 reach an
// MQTT 3.1.1 client: a malformed CONNECT (0x81, 0x82: reserved flag,
// will flag without will, …) gets no CONNACK and the connection is closed,
// as 3.1.1 requires; a refused empty client ID with a persistent session
// (0x80) gets 2 "identifier rejected" [MQTT-3.1.3-8]; anything else 3
// "server unavailable".

// connackV3 is the MQTT 3.1.1 CONNACK return code for a refusal with the
// MQTT 5 reason code, and false when the CONNECT gets no CONNACK.
func connackV3(code byte) (byte, bool) {
	switch {
	case code <= packets.Err3NotAuthorized.Code:
		return code, true
	case code == packets.ErrUnspecifiedError.Code:
		return packets.Err3ClientIdentifierNotValid.Code, true
	case code == packets.ErrMalformedPacket.Code, code == packets.ErrProtocolViolation.Code:
		return 0, false
	}
	return packets.Err3ServerUnavailable.Code, true
}

// OnPacketRead turns a CONNECT's empty password into no password for
// mochi, and remembers it for authentication; it drops the retain flag of
// a PUBLISH on a request topic (see retain.go), counts a PUBLISH to $SYS
// as denied (see deny.go) and marks a PUBLISH over the client's message
// rate (see ratelimit.go).
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Publish {
		h.dropRequestRetain(cl, &pk)
		if c := connOf(cl); c != nil && !cl.Net.Inline {
			c.rateRefused = !h.sysPublish(cl, &pk) && h.overRate(cl, c, &pk)
		}
		return pk, nil
	}
	if pk.FixedHeader.Type != packets.Connect || !pk.Connect.PasswordFlag || len(pk.Connect.Password) > 0 {
		return pk, nil
	}
	pk.Connect.PasswordFlag = false
	pk.Connect.Password = nil
	if c := connOf(cl); c != nil {
		c.emptyPassword = true
	}
	return pk, nil
}

// OnPacketEncode corrects CONNACKs to MQTT 3.1.1 clients and PUBRECs (see
// fixAck); other packets pass unchanged. It runs on the goroutine writing
// the packet.
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	return fixAck(cl, pk)
}

// fixesAck reports whether fixAck may change a packet of type typ with
// reason code code; it passes every other packet unchanged.
func fixesAck(typ, code byte) bool {
	switch typ {
	case packets.Connack:
		return true
	case packets.Puback:
		return code == packets.ErrNotAuthorized.Code
	case packets.Pubrec:
		return code == packets.ErrNotAuthorized.Code || code == packets.ErrPacketIdentifierInUse.Code
	}
	return false
}

// fixAck corrects mochi's acknowledgements: a CONNACK to an MQTT 3.1.1
// client gets a 3.1.1 return code, or becomes a packet that cannot be
// encoded (nothing is written, and mochi closes the connection); a CONNACK
// refusing an MQTT 5 client for its will topic says "not authorized"
// (0x87), and one for its identity's connection cap "quota exceeded"
// (0x97), not "bad user name or password"; a PUBACK or PUBREC refusing a
// PUBLISH over the message rate says 0x96, not 0x87 (see ratelimit.go);
// and a
// PUBREC for a QoS 2 PUBLISH resent before PUBREL, which mochi marks
// "packet identifier in use", says success, as MQTT 5 §4.3.3 wants for a
// duplicate (the message is not delivered again).
func fixAck(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if (pk.FixedHeader.Type == packets.Puback || pk.FixedHeader.Type == packets.Pubrec) && pk.ReasonCode == packets.ErrNotAuthorized.Code {
		if c := connOf(cl); c != nil && c.rateRefused {
			pk.ReasonCode = packets.ErrMessageRateTooHigh.Code // see ratelimit.go
			pk.Properties.ReasonString = packets.ErrMessageRateTooHigh.Reason
		}
		return pk
	}
	if pk.FixedHeader.Type == packets.Pubrec && pk.ReasonCode == packets.ErrPacketIdentifierInUse.Code {
		pk.ReasonCode = packets.CodeSuccess.Code
		pk.Properties.ReasonString = ""
		return pk
	}
	if pk.FixedHeader.Type != packets.Connack {
		return pk
	}
	if cl.Properties.ProtocolVersion >= 5 {
		if c := connOf(cl); c != nil && c.refusal != nil && pk.ReasonCode == packets.ErrBadUsernameOrPassword.Code {
			// The credentials were good: the will topic was not allowed,
			// or the identity has too many connections.
			pk.ReasonCode = c.refusal.Code
			pk.Properties.ReasonString = c.refusal.Reason
		}
		return pk
	}
	code, ok := connackV3(pk.ReasonCode)
	if !ok {
		pk.FixedHeader.Type = packets.Reserved
		return pk
	}
	pk.ReasonCode = code
	return pk
}
