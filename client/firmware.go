package client

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/wire"
)

// pubkeyName is the path segment under /v1/firmware/ that serves the
// public key, never a version.
const pubkeyName = "pubkey"

// versionPath returns /v1/firmware/<version><suffix>. The server checks the
// version (a semantic version; 400 otherwise); the client refuses only
// what would address another route.
func versionPath(version, suffix string) (string, error) {
	seg, err := segment("firmware version", version)
	if err == nil && version == pubkeyName {
		err = fmt.Errorf("%w: firmware version %q", ErrInvalid, version)
	}
	if err != nil {
		return "", err
	}
	return "/v1/firmware/" + seg + suffix, nil
}

// UploadFirmware streams size bytes of body as image up.Version; up's
// other fields are optional. size is sent as the Content-Length, so the
// server refuses an image over its limit (ErrTooLarge), a duplicate
// version (ErrConflict) or a bad version (ErrInvalid) before the body is
// sent (Expect: 100-continue); -1 means unknown (chunked). With up.SHA256
// set, an image that hashes otherwise is refused with ErrChecksumMismatch.
// Only ctx bounds an upload, not Config.Timeout.
func (c *Client) UploadFirmware(ctx context.Context, up wire.ImageUpload, body io.Reader, size int64) (wire.Image, error) {
	op := "upload " + up.Version
	if up.Version == "" {
		return wire.Image{}, fmt.Errorf("client: %s: %w: no version", op, ErrInvalid)
	}
	if size == 0 || size < -1 {
		return wire.Image{}, fmt.Errorf("client: %s: %w: size %d", op, ErrInvalid, size)
	}
	q := url.Values{"version": {up.Version}}
	for name, v := range map[string]string{"hw": up.HW, "notes": up.Notes, "sha256": up.SHA256} {
		if v != "" {
			q.Set(name, v)
		}
	}
	req, err := c.newRequest(ctx, http.MethodPost, "/v1/firmware?"+q.Encode(), io.NopCloser(body))
	if err != nil {
		return wire.Image{}, fmt.Errorf("client: %s: %w", op, err)
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	// The server refuses a bad version, a duplicate or an oversized image
	// before reading the body; with 100-continue none of it is sent then.
	req.Header.Set("Expect", "100-continue")
	var img wire.Image
	if err := c.receive(op, req, http.StatusCreated, &img); err != nil {
		return wire.Image{}, err
	}
	return img, nil
}

// ListFirmware returns every stored image, lowest version first.
func (c *Client) ListFirmware(ctx context.Context) ([]wire.Image, error) {
	var l wire.ImageList
	if err := c.call(ctx, "list firmware", http.MethodGet, "/v1/firmware", nil, http.StatusOK, &l); err != nil {
		return nil, err
	}
	return l.Images, nil
}

// GetFirmware returns image version.
func (c *Client) GetFirmware(ctx context.Context, version string) (wire.Image, error) {
	op := "show " + version
	path, err := versionPath(version, "")
	if err != nil {
		return wire.Image{}, fmt.Errorf("client: %s: %w", op, err)
	}
	var img wire.Image
	if err := c.call(ctx, op, http.MethodGet, path, nil, http.StatusOK, &img); err != nil {
		return wire.Image{}, err
	}
	return img, nil
}

// DeleteFirmware removes image version. A version a rollout uses is
// refused with an *Error matching ErrConflict whose Rollout names it.
func (c *Client) DeleteFirmware(ctx context.Context, version string) error {
	op := "delete " + version
	path, err := versionPath(version, "")
	if err != nil {
		return fmt.Errorf("client: %s: %w", op, err)
	}
	return c.call(ctx, op, http.MethodDelete, path, nil, http.StatusOK, &wire.DeletedImage{})
}

// DeleteFirmwareForce deletes a firmware version even while devices have
// it as their desired firmware (which DeleteFirmware refuses with a 409
// counting them); their download URLs then answer 410. A rollout that
// uses the version still refuses it.
func (c *Client) DeleteFirmwareForce(ctx context.Context, version string) error {
	op := "delete " + version
	path, err := versionPath(version, "")
	if err != nil {
		return fmt.Errorf("client: %s: %w", op, err)
	}
	return c.call(ctx, op, http.MethodDelete, path+"?force=true", nil, http.StatusOK, &wire.DeletedImage{})
}

// FirmwarePublicKey returns the fleet public key devices pin to verify
// firmware manifests. A key whose PEM is not the ed25519 key it claims is
// an error.
func (c *Client) FirmwarePublicKey(ctx context.Context) (wire.PublicKey, error) {
	var pk wire.PublicKey
	if err := c.call(ctx, "pubkey", http.MethodGet, "/v1/firmware/"+pubkeyName, nil, http.StatusOK, &pk); err != nil {
		return wire.PublicKey{}, err
	}
	blk, _ := pem.Decode([]byte(pk.PEM))
	var key any
	err := errors.New("no PEM block")
	if blk != nil {
		key, err = x509.ParsePKIXPublicKey(blk.Bytes)
	}
	if ek, ok := key.(ed25519.PublicKey); err != nil || !ok || pk.Algorithm != "ed25519" || !bytes.Equal(ek, pk.Key) {
		return wire.PublicKey{}, fmt.Errorf("client: pubkey: server sent an invalid %s key (%v)", pk.Algorithm, err)
	}
	return pk, nil
}

// FirmwareURL mints a download URL of image version that only device id
// can use, valid for ttl (0 means the server's default).
func (c *Client) FirmwareURL(ctx context.Context, version string, id device.ID, ttl time.Duration) (wire.URLResponse, error) {
	var u wire.URLResponse
	if err := c.deviceCall(ctx, "url "+version+" for "+string(id), version, "/url", id, ttl, &u); err != nil {
		return wire.URLResponse{}, err
	}
	return u, nil
}

// AssignFirmware writes the firmware command for image version (with a
// URL valid for ttl, 0 = the server's default) into device id's desired
// state, an update without a rollout, and returns the update's accepted
// document.
func (c *Client) AssignFirmware(ctx context.Context, version string, id device.ID, ttl time.Duration) (wire.Shadow, error) {
	var doc wire.Shadow
	if err := c.deviceCall(ctx, "assign "+version+" to "+string(id), version, "/assign", id, ttl, &doc); err != nil {
		return wire.Shadow{}, err
	}
	return doc, nil
}

func (c *Client) deviceCall(ctx context.Context, op, version, suffix string, id device.ID, ttl time.Duration, out any) error {
	path, err := versionPath(version, suffix)
	if err == nil {
		_, err = device.ParseID(string(id))
		if err != nil {
			err = fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	}
	if err == nil && ttl < 0 {
		err = fmt.Errorf("%w: ttl %s is negative", ErrInvalid, ttl)
	}
	if err != nil {
		return fmt.Errorf("client: %s: %w", op, err)
	}
	body := wire.URLRequest{Device: string(id)}
	if ttl > 0 {
		body.TTL = ttl.String()
	}
	return c.call(ctx, op, http.MethodPost, path, body, http.StatusOK, out)
}
