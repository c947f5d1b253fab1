package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/shadow"
)

// EngineShadows adapts a shadow engine to the planner's Shadows interface:
// commands are written as desired.firmware through the engine's normal
// update path (so they are durable and the device gets its delta), and
// progress is read from reported.firmware.
func EngineShadows(e *shadow.Engine) Shadows { return engineShadows{e} }

type engineShadows struct{ e *shadow.Engine }

// SetDesiredFirmware writes cmd (nil clears it) as desired.firmware, with
// token as the clientToken so a retry after a crash is de-duplicated.
func (s engineShadows) SetDesiredFirmware(ctx context.Context, id device.ID, cmd map[string]any, token string) error {
	// A nil map encodes as null, which removes desired.firmware.
	body, err := json.Marshal(map[string]any{
		"state":       map[string]any{"desired": map[string]any{"firmware": cmd}},
		"clientToken": token,
	})
	if err != nil {
		return fmt.Errorf("encode firmware command for %s: %w", id, err)
	}
	if _, err := s.e.Update(ctx, id, body); err != nil {
		return fmt.Errorf("set desired firmware of %s: %w", id, err)
	}
	return nil
}

// ReportedFirmware returns the device's reported.firmware; ok is false when
// the shadow or the section does not exist.
func (s engineShadows) ReportedFirmware(ctx context.Context, id device.ID) (firmware.Report, bool, error) {
	doc, err := s.e.Read(ctx, id)
	if errors.Is(err, shadow.ErrNotFound) {
		return firmware.Report{}, false, nil
	}
	if err != nil {
		return firmware.Report{}, false, err
	}
	raw, ok := doc.State.Reported["firmware"]
	if !ok {
		return firmware.Report{}, false, nil
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return firmware.Report{}, false, err
	}
	var r firmware.Report
	if err := json.Unmarshal(b, &r); err != nil {
		// A device reporting garbage is not an engine failure: report it as
		// a non-retryable failure the planner can show.
		return firmware.Report{State: firmware.StateFailed, Error: "malformed reported.firmware: " + err.Error()}, true, nil
	}
	return r, true, nil
}

// EngineInventory returns the Inventory of the devices that enrolled lists
// (nil: none are enrolled) and of the devices that have a shadow in e.
// internal/server passes the identity store's devices as enrolled.
func EngineInventory(e *shadow.Engine, enrolled func(ctx context.Context) ([]EnrolledDevice, error)) Inventory {
	return engineInventory{e: e, enrolled: enrolled}
}

type engineInventory struct {
	e        *shadow.Engine
	enrolled func(ctx context.Context) ([]EnrolledDevice, error)
}

// EnrolledDevices calls enrolled.
func (i engineInventory) EnrolledDevices(ctx context.Context) ([]EnrolledDevice, error) {
	if i.enrolled == nil {
		return nil, nil
	}
	return i.enrolled(ctx)
}

// shadowPage is how many shadows ShadowDevices lists at a time (the
// engine's most).
const shadowPage = 1000

// ShadowDevices lists every shadow of the engine, page by page.
func (i engineInventory) ShadowDevices(ctx context.Context) ([]device.ID, error) {
	var out []device.ID
	cursor := ""
	for {
		sums, next, err := i.e.List(ctx, cursor, shadowPage)
		if err != nil {
			return nil, fmt.Errorf("list shadows: %w", err)
		}
		for _, s := range sums {
			out = append(out, s.ID)
		}
		if next == "" || next == cursor {
			return out, nil
		}
		cursor = next
	}
}
