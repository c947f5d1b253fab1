package httpapi

import (
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/wire"
)

// The conversions from the domain types to their wire form (package wire)
// for the routes other than the rollouts' (internal/rolloutwire converts
// those). Every answer of this package is a wire type.

func wireImage(img firmware.Image) wire.Image {
	return wire.Image{Version: string(img.Version), HW: img.HW, Size: img.Size, SHA256: img.SHA256,
		Notes: img.Notes, Created: img.Created, Signature: img.Signature}
}

func wirePresence(p identity.Presence) wire.Presence {
	return wire.Presence{Connected: p.Connected, ConnectedAt: p.ConnectedAt, DisconnectedAt: p.DisconnectedAt,
		DisconnectReason: p.DisconnectReason, RemoteAddr: p.RemoteAddr, Node: p.Node}
}

func wireSummary(s shadow.Summary) wire.DeviceSummary {
	return wire.DeviceSummary{ID: s.ID, Version: uint64(s.Version), Updated: s.Updated}
}

func wireShadowInfo(s shadow.ShadowInfo) wire.ShadowInfo {
	return wire.ShadowInfo{Name: string(s.Name), Version: uint64(s.Version), Updated: s.Updated}
}

func wireEnrolled(d identity.Device) wire.EnrolledDevice {
	return wire.EnrolledDevice{ID: d.ID, Labels: d.Labels, CreatedAt: d.CreatedAt, RotatedAt: d.RotatedAt,
		CertSHA256: d.CertSHA256, Presence: wirePresence(d.Presence)}
}

func wireToken(t identity.Token) wire.Token {
	return wire.Token{Name: t.Name, Role: wire.Role(t.Role), CreatedAt: t.CreatedAt}
}

// wireList converts every element of s with f; an empty list, never nil,
// so that the JSON is [] rather than null.
func wireList[S, T any](s []S, f func(S) T) []T {
	out := make([]T, len(s))
	for i, v := range s {
		out[i] = f(v)
	}
	return out
}
