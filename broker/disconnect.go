package broker

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/gorilla/websocket"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Disconnects: the cause Config.OnDisconnect receives.

// OnDisconnect takes the client ID's gate (released by the listener when
// mochi has finished with the connection), forgets an expired session and
// calls Config.OnDisconnect.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	c := connOf(cl)
	if c == nil {
		return // the inline client
	}
	if c.unlock == nil {
		c.unlock = h.gates.lock(cl.ID)
	}
	if expire {
		h.forget(cl)
		if cur, ok := h.s.mq.Clients.Get(cl.ID); !ok || cur == cl {
			h.s.relaySession(cl.ID, false) // mochi deletes the clean session next
		}
	}
	cause := disconnectCause(cl.StopCause(), err)
	if errors.Is(cause, ErrTooLarge) {
		h.packetsTooLarge.Add(1)
	}
	if cb := h.s.cfg.OnDisconnect; cb != nil {
		if c.out != nil {
			if slow := c.out.slowConsumer(); slow != nil {
				cause = slow
			}
		}
		if cause != nil && h.s.closed.Load() && !errors.Is(cause, ErrTakenOver) {
			// Close cuts connections itself (see listener.Close), so
			// their read loops end with "use of closed connection".
			cause = ErrClosed
		}
		cb(c.info(cl, time.Now()), cause)
	}
}

// disconnectCause maps mochi's reasons for a disconnect to the errors
// documented on Config.OnDisconnect. stop (the reason the client was
// stopped first) wins over err (what ended its read loop).
func disconnectCause(stop, err error) error {
	var code packets.Code
	switch {
	case errors.As(stop, &code), errors.As(err, &code):
		switch {
		case code.Code < packets.ErrUnspecifiedError.Code:
			return nil // DISCONNECT, with or without will
		case code.Code == packets.ErrSessionTakenOver.Code:
			return ErrTakenOver
		case code.Code == packets.ErrServerShuttingDown.Code:
			return ErrClosed
		case code.Code == packets.ErrPacketTooLarge.Code:
			return ErrTooLarge
		case code.Code == packets.ErrNotAuthorized.Code:
			return ErrNotAuthorized
		default:
			return fmt.Errorf("%w: %s", ErrProtocol, code.Reason)
		}
	case err != nil:
		return readFailure(err)
	case stop != nil:
		return readFailure(stop)
	}
	return nil
}

// readFailure classifies an error that ended a client's read loop: a
// failing or closed connection, or bytes that are not MQTT.
func readFailure(err error) error {
	var netErr net.Error
	var closeErr *websocket.CloseError
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.As(err, &netErr) || errors.As(err, &closeErr) {
		return fmt.Errorf("%w: %w", ErrConnectionLost, err)
	}
	return fmt.Errorf("%w: %w", ErrProtocol, err)
}
