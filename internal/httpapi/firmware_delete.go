package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/wire"
)

// DELETE /v1/firmware/{version} is refused with 409 while any device's
// desired state names the version (desired.firmware.version), unless
// ?force=true: deleting it would leave those devices with a download URL
// that answers 410. The check reads every classic shadow (a rare operator
// action; the cost is one read per device).

// maxDesiredListed caps the device IDs a 409 names.
const maxDesiredListed = 10

// checkDesired answers 409 and returns false when devices still have v as
// their desired firmware and the request is not forced.
func (a *api) checkDesired(w http.ResponseWriter, r *http.Request, v firmware.Version) bool {
	force := r.URL.Query().Get("force")
	switch force {
	case "", "false", "0":
	case "true", "1":
		return true
	default:
		a.writeError(w, r, clientErr(errInvalid, "Invalid force %q: want true or false", force), "")
		return false
	}
	var ids []string
	n := 0
	for cursor := ""; ; {
		sums, next, err := a.eng.List(r.Context(), cursor, wire.MaxListLimit)
		if err != nil {
			a.writeError(w, r, fmt.Errorf("check desired firmware: %w", err), "")
			return false
		}
		for _, s := range sums {
			doc, err := a.eng.Get(r.Context(), s.ID, nil)
			if err != nil {
				continue // deleted meanwhile
			}
			var d shadowFirmware
			if json.Unmarshal(doc, &d) == nil && d.State.Desired.Firmware.Version == string(v) {
				n++
				if len(ids) < maxDesiredListed {
					ids = append(ids, string(s.ID))
				}
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	if n == 0 {
		return true
	}
	more := ""
	if n > len(ids) {
		more = ", …"
	}
	body := wire.ErrorBody{Code: http.StatusConflict, DesiredBy: n, Devices: ids,
		Message: fmt.Sprintf("Firmware %s is the desired firmware of %d device(s) (%s%s): assign them another version first, "+
			"or delete with ?force=true (umbra firmware delete %s --force), after which their download URLs answer 410", v, n, strings.Join(ids, ", "), more, v)}
	b, _ := marshalJSON(body)
	writeJSON(w, http.StatusConflict, b)
	return false
}
