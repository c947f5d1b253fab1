package httpapi

import (
	"errors"
	"net/http"
	"strings"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/errtext"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// userMessage is the message of an error answer in the client's terms:
// the error's text without the internal packages and steps it went
// through (errtext.Strip), and for a 404 naming the missing thing, from
// the request's path, when the text does not.
func userMessage(r *http.Request, err error) string {
	msg := errtext.Strip(err.Error())
	if _, ok := errors.AsType[*clientError](err); ok {
		return msg
	}
	var what, name string
	switch {
	case errors.Is(err, firmware.ErrNotFound):
		what, name = "firmware version", r.PathValue("version")
	case errors.Is(err, rollout.ErrNotFound):
		what, name = "rollout", r.PathValue("id")
	case errors.Is(err, identity.ErrNotFound):
		what, name = "device or token", r.PathValue("id")
		if n := r.PathValue("name"); n != "" {
			what, name = "token", n
		}
	}
	if what != "" && name != "" && !strings.Contains(msg, name) {
		return "No " + what + " " + name + ": " + msg
	}
	return msg
}

// marshalJSON is wire.Marshal: no HTML escaping.
func marshalJSON(v any) ([]byte, error) { return wire.Marshal(v) }
