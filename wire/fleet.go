package wire

import (
	"time"

	"github.com/umbra-iot/umbra/device"
)

// FleetList is the body of GET /v1/devices on a server that keeps a fleet
// index (umbra serve): a DeviceList whose entries say more, plus the count
// of devices matching the filters and the whole fleet's totals. Its
// devices are the enrolled ones and those with a classic shadow, in ID
// order; Next is the cursor of the next page ("" after the last). Loading
// is true while the server is still loading the index after a start.
type FleetList struct {
	Devices []FleetDevice `json:"devices"`
	Next    string        `json:"next"`
	Matched int           `json:"matched"`
	Totals  FleetTotals   `json:"totals"`
	Loading bool          `json:"loading,omitempty"`
}

// FleetDevice is one device of a FleetList. ID, Version, Updated and
// Presence are DeviceSummary's (Version and Updated are zero for a device
// without a classic shadow).
type FleetDevice struct {
	ID         device.ID         `json:"id"`
	Version    uint64            `json:"version"`
	Updated    time.Time         `json:"updated,omitzero"`
	Presence   *Presence         `json:"presence,omitempty"`
	Enrolled   bool              `json:"enrolled"`
	EnrolledAt time.Time         `json:"enrolled_at,omitzero"`
	Labels     map[string]string `json:"labels,omitempty"`
	CertBound  bool              `json:"cert_bound,omitempty"`
	Firmware   FleetFirmware     `json:"firmware"`
	// LastReport is when the device last updated its reported state.
	LastReport time.Time `json:"last_report,omitzero"`
	// PresenceHistory, given only for ?id=, is the device's latest
	// connections and disconnections seen since the server started
	// (newest first, at most 5).
	PresenceHistory []PresenceChange `json:"presence_history,omitempty"`
}

// PresenceChange is one connection (Connected) or disconnection of a
// device, with the disconnection's reason ("" for a clean DISCONNECT).
type PresenceChange struct {
	Connected bool      `json:"connected"`
	At        time.Time `json:"at"`
	Reason    string    `json:"reason,omitempty"`
}

// FleetFirmware is a device's reported.firmware: the running version and
// the state and error of its current update.
type FleetFirmware struct {
	Version string `json:"version,omitempty"`
	State   string `json:"state,omitempty"`
	Error   string `json:"error,omitempty"`
}

// FleetTotals counts the whole fleet, whatever the filters: devices,
// online and offline ones, those reporting a failed or an in-progress
// update, and devices per running firmware version ("(none)" for those
// reporting none; beyond the 50 most common versions, "(other)").
type FleetTotals struct {
	Devices  int            `json:"devices"`
	Online   int            `json:"online"`
	Offline  int            `json:"offline"`
	Failing  int            `json:"failing"`
	Updating int            `json:"updating"`
	Firmware map[string]int `json:"firmware"`
}
