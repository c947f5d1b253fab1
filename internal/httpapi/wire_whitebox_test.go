package httpapi

import (
	"testing"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/wiretest"
	"github.com/umbra-iot/umbra/shadow"
)

// TestWireConversions: every field of the domain types this package
// answers with reaches the wire, with the same JSON.
func TestWireConversions(t *testing.T) {
	img := wiretest.Filled[firmware.Image](t)
	wiretest.SameFields(t, "firmware.Image", img, wireImage(img))
	p := wiretest.Filled[identity.Presence](t)
	// The identity types keep their stored (camelCase) names; the HTTP API
	// speaks snake_case (docs/cli.md).
	wiretest.SameFieldsSnake(t, "identity.Presence", p, wirePresence(p))
	d := wiretest.Filled[identity.Device](t)
	wiretest.SameFieldsSnake(t, "identity.Device", d, wireEnrolled(d))
	tok := wiretest.Filled[identity.Token](t)
	wiretest.SameFieldsSnake(t, "identity.Token", tok, wireToken(tok))
	sum := wiretest.Filled[shadow.Summary](t)
	wiretest.SameFields(t, "shadow.Summary", sum, wireSummary(sum))
	info := wiretest.Filled[shadow.ShadowInfo](t)
	wiretest.SameFields(t, "shadow.ShadowInfo", info, wireShadowInfo(info))
}
