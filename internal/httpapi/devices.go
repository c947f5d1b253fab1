package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/wire"
)

// GET /v1/devices/{id}: one device's enrolment, presence, classic shadow
// and firmware versions (wire.Device), the one place that brings together
// what GET /v1/identities/devices, GET /v1/devices and the shadow routes
// show separately. 404 when the device is neither enrolled nor has a
// shadow.

// shadowFirmware is the part of a shadow document GET /v1/devices/{id}
// and the firmware delete check read.
type shadowFirmware struct {
	State struct {
		Desired struct {
			Firmware struct {
				Version string `json:"version"`
			} `json:"firmware"`
		} `json:"desired"`
		Reported struct {
			Firmware struct {
				Version string `json:"version"`
			} `json:"firmware"`
		} `json:"reported"`
	} `json:"state"`
	Version   uint64 `json:"version"`
	Timestamp int64  `json:"timestamp"`
}

func (a *api) getDevice(w http.ResponseWriter, r *http.Request) {
	id, err := device.ParseID(r.PathValue("id"))
	if err != nil {
		a.writeError(w, r, clientErr(errInvalid, "Invalid device ID: %v", err), "")
		return
	}
	out := wire.Device{ID: id}
	found := false
	if a.enrolled != nil {
		d, err := a.enrolled(r.Context(), id)
		switch {
		case err == nil:
			found = true
			out.Enrolled, out.Labels, out.CreatedAt, out.RotatedAt, out.CertSHA256 = true, d.Labels, d.CreatedAt, d.RotatedAt, d.CertSHA256
		case !errors.Is(err, identity.ErrNotFound):
			a.writeError(w, r, err, "")
			return
		}
	}
	if a.presence != nil {
		p, _ := a.presence(id)
		out.Presence = wirePresence(p)
	}
	list, err := a.eng.Shadows(r.Context(), id)
	if err != nil {
		a.writeError(w, r, err, "")
		return
	}
	for _, s := range list {
		if s.Name != "" {
			continue
		}
		found = true
		info := wireShadowInfo(s)
		out.Shadow = &info
		doc, err := a.eng.Get(r.Context(), id, nil)
		var sf shadowFirmware
		if err == nil && json.Unmarshal(doc, &sf) == nil {
			out.Firmware = wire.DeviceFirmware{Reported: sf.State.Reported.Firmware.Version, Desired: sf.State.Desired.Firmware.Version}
		} else if err != nil && !errors.Is(err, shadow.ErrNotFound) {
			a.writeError(w, r, err, "")
			return
		}
	}
	if !found {
		a.writeError(w, r, clientErr(errNoRoute, "No device %s: it is not enrolled and has no shadow (umbra device list lists the enrolled ones)", id), "")
		return
	}
	a.writeValue(w, r, http.StatusOK, out)
}
