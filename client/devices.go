package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/wire"
)

// ListDevices returns one page of the devices that have a shadow, in ID
// order: up to limit of them (0: the server's default, wire.DefaultListLimit;
// at most wire.MaxListLimit) after cursor ("" for the first page). Pass the
// page's Next as the cursor of the next call; it is "" after the last page.
func (c *Client) ListDevices(ctx context.Context, cursor string, limit int) (wire.DeviceList, error) {
	if limit < 0 || limit > wire.MaxListLimit {
		return wire.DeviceList{}, fmt.Errorf("client: list devices: %w: limit %d not in [0, %d]", ErrInvalid, limit, wire.MaxListLimit)
	}
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	path := "/v1/devices"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var l wire.DeviceList
	if err := c.call(ctx, "list devices", http.MethodGet, path, nil, http.StatusOK, &l); err != nil {
		return wire.DeviceList{}, err
	}
	return l, nil
}

// shadowPath returns the path of device id's shadow name ("" for the
// classic shadow), with clientToken as a query parameter when set.
func shadowPath(id device.ID, name, clientToken string) (string, error) {
	if _, err := device.ParseID(string(id)); err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	q := url.Values{}
	if name != "" {
		q.Set("name", name)
	}
	if clientToken != "" {
		q.Set("clientToken", clientToken)
	}
	path := "/v1/devices/" + url.PathEscape(string(id)) + "/shadow"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return path, nil
}

// shadowCall sends a shadow request; the server answers it as the engine
// answers the same request over MQTT.
func (c *Client) shadowCall(ctx context.Context, op, method string, id device.ID, name string, in any) (wire.Shadow, error) {
	op = op + " " + string(id)
	if name != "" {
		op += " shadow " + name
	}
	path, err := shadowPath(id, name, "")
	if err != nil {
		return wire.Shadow{}, fmt.Errorf("client: %s: %w", op, err)
	}
	var doc wire.Shadow
	if err := c.call(ctx, op, method, path, in, http.StatusOK, &doc); err != nil {
		return wire.Shadow{}, err
	}
	return doc, nil
}

// GetShadow returns device id's shadow name ("" for the classic shadow):
// the whole document with its delta. A device without that shadow is an
// *Error matching ErrNotFound.
func (c *Client) GetShadow(ctx context.Context, id device.ID, name string) (wire.Shadow, error) {
	return c.shadowCall(ctx, "get", http.MethodGet, id, name, nil)
}

// UpdateShadow applies req to device id's shadow name ("" for the classic
// shadow) and returns the update's accepted document: req's state and the
// metadata it wrote, the new version, and req's ClientToken. With
// req.Version set, a shadow at another version refuses the update with an
// *Error matching ErrConflict; the engine's other refusals (an invalid
// document 400, too large 413, too many requests 429) match their
// sentinels too. An update is retried safely with the same ClientToken
// and the same request: the engine answers the first accepted again
// (docs/protocol.md).
func (c *Client) UpdateShadow(ctx context.Context, id device.ID, name string, req wire.ShadowUpdate) (wire.Shadow, error) {
	return c.shadowCall(ctx, "update", http.MethodPost, id, name, req)
}

// DeleteShadow deletes device id's shadow name ("" for the classic
// shadow) and returns the deleted version.
func (c *Client) DeleteShadow(ctx context.Context, id device.ID, name string) (wire.Shadow, error) {
	return c.shadowCall(ctx, "delete", http.MethodDelete, id, name, nil)
}

// ListShadows lists device id's shadows: the classic one (Name "") and the
// named ones. A device without any gets an empty list.
func (c *Client) ListShadows(ctx context.Context, id device.ID) (wire.ShadowList, error) {
	op := "list shadows " + string(id)
	if _, err := device.ParseID(string(id)); err != nil {
		return wire.ShadowList{}, fmt.Errorf("client: %s: %w: %w", op, ErrInvalid, err)
	}
	var l wire.ShadowList
	if err := c.call(ctx, op, http.MethodGet, "/v1/devices/"+url.PathEscape(string(id))+"/shadows", nil, http.StatusOK, &l); err != nil {
		return wire.ShadowList{}, err
	}
	return l, nil
}
