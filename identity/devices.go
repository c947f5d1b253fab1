package identity

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// maxRetries bounds how often a change that lost a compare-and-set
// (ErrConflict) is read and tried again.
const maxRetries = 3

// Device describes an enrolled device. It never holds the secret. The JSON
// form is the one umbra device list --json and GET /v1/devices may use.
type Device struct {
	ID        device.ID         `json:"id"`
	Labels    map[string]string `json:"labels,omitempty"` // nil when there are none
	CreatedAt time.Time         `json:"createdAt"`
	RotatedAt time.Time         `json:"rotatedAt,omitzero"` // zero if the secret was never rotated
	// CertSHA256 is the SHA-256 fingerprint (lowercase hex) of the client
	// certificate bound to the device; "" if none.
	CertSHA256 string `json:"certSha256,omitempty"`
	// Presence is the device's last known connection state; the zero
	// value if it never connected.
	Presence Presence `json:"presence"`
}

// AddDevice enrolls id with labels and returns its secret, which is not
// stored and cannot be shown again. Enrolling an ID that was removed
// before starts a new enrolment: sessions, certificates and firmware URLs
// of the earlier one stay refused (see the package documentation). It
// fails with ErrInvalidLabel for bad labels, ErrExists when id is already
// a device or a token name, and ErrClosed after Close. EnrollDevice also
// binds a certificate.
func (s *Store) AddDevice(ctx context.Context, id device.ID, labels map[string]string) (string, error) {
	return s.EnrollDevice(ctx, Enrollment{ID: id, Labels: labels})
}

// EnrollDevice enrolls one device as AddDevice does, binding the
// certificate e.CertSHA256 if set (the secret is then ""). Besides
// AddDevice's errors it fails with ErrInvalidCert for a malformed
// fingerprint and ErrExists for a certificate bound to another device.
func (s *Store) EnrollDevice(ctx context.Context, e Enrollment) (string, error) {
	secrets, err := s.EnrollDevices(ctx, []Enrollment{e}, false)
	if ee, ok := errors.AsType[*EnrollError](err); ok {
		return "", fmt.Errorf("add device %s: %w", clip(string(e.ID)), ee.Problems[0].Err)
	}
	if err != nil {
		return "", fmt.Errorf("add device %s: %w", e.ID, err)
	}
	return secrets[0], nil
}

// RotateDevice replaces id's secret with a fresh one and returns it. The
// old secret stops working at once: new connections with it are refused,
// Allow refuses the sessions that logged in with it, and Config.OnRevoke
// is told (umbra serve then disconnects every session of the device that
// does not use the new secret). A client certificate of the device stays
// valid. It fails with ErrNotFound for an unknown device.
func (s *Store) RotateDevice(ctx context.Context, id device.ID) (string, error) {
	secret, err := s.rotateDevice(ctx, id)
	if err != nil {
		return "", err
	}
	s.revoked(ctx, Principal{Role: RoleDevice, Name: string(id), Device: id}, RevokeRotated)
	return secret, nil
}

func (s *Store) rotateDevice(ctx context.Context, id device.ID) (string, error) {
	secret := newSecret()
	s.credMu.Lock()
	defer s.credMu.Unlock()
	var next Record
	err := s.retry(ctx, func() error {
		prev, err := s.getDevice(ctx, id)
		if err != nil {
			return err
		}
		next = prev
		next.Labels = cloneLabels(prev.Labels)
		next.MAC = secretMAC(s.key, RoleDevice, string(id), []byte(secret))
		next.RotatedAt = s.cfg.Now().UTC()
		next.SecretGen = newGeneration() // the enrolment stays
		return s.st.Replace(ctx, prev, next)
	})
	if err != nil {
		return "", fmt.Errorf("rotate device %s: %w", id, err)
	}
	s.setCurrent(string(id), next.credential())
	s.log.Info("device secret rotated", "device", id)
	return secret, nil
}

// retry runs change, which reads a record and replaces it, again while it
// fails with ErrConflict, at most maxRetries times. It fails with
// ErrClosed after Close.
func (s *Store) retry(ctx context.Context, change func() error) error {
	var err error
	for range maxRetries {
		if err = s.check(ctx); err != nil {
			return err
		}
		if err = closedErr(change()); !errors.Is(err, ErrConflict) {
			return err
		}
	}
	return err
}

// getDevice returns device id's record; ErrNotFound if id is not a device.
func (s *Store) getDevice(ctx context.Context, id device.ID) (Record, error) {
	rec, err := s.st.Get(ctx, string(id))
	if err == nil && !rec.IsDevice() {
		return Record{}, ErrNotFound
	}
	return rec, closedErr(err)
}

// RemoveDevice deletes id and its presence, and records when it was
// removed. Its sessions lose all rights at once (Allow refuses them), new
// connections are refused, and Config.OnRevoke is told (umbra serve then
// disconnects them). Certificates issued before the removal stay refused
// if the ID is enrolled again. It fails with ErrNotFound for an unknown
// device.
func (s *Store) RemoveDevice(ctx context.Context, id device.ID) error {
	if err := s.removeDevice(ctx, id); err != nil {
		return err
	}
	s.revoked(ctx, Principal{Role: RoleDevice, Name: string(id), Device: id}, RevokeRemoved)
	return nil
}

func (s *Store) removeDevice(ctx context.Context, id device.ID) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.credMu.Lock()
	err := s.check(ctx)
	if err == nil {
		_, err = s.st.RemoveDevice(ctx, id, s.cfg.Now().UTC())
		err = closedErr(err)
	}
	if err == nil {
		s.setCurrent(string(id), nil)
	}
	s.credMu.Unlock()
	if err != nil {
		return fmt.Errorf("remove device %s: %w", id, err)
	}
	s.presenceMu.Lock()
	delete(s.presence, id)
	delete(s.dirty, id)
	s.presenceMu.Unlock()
	s.log.Info("device removed", "device", id)
	return nil
}

// GetDevice returns id with its labels and presence. It fails with
// ErrNotFound for an unknown device.
func (s *Store) GetDevice(ctx context.Context, id device.ID) (Device, error) {
	err := s.check(ctx)
	var rec Record
	if err == nil {
		rec, err = s.getDevice(ctx, id)
	}
	if err != nil {
		return Device{}, fmt.Errorf("get device %s: %w", id, err)
	}
	d := rec.device()
	d.Presence, _ = s.Presence(id)
	return d, nil
}

// ListDevices returns every enrolled device in ID order, with labels and
// presence. It reads the storage a page at a time and fails with ctx's
// error when ctx ends between pages.
func (s *Store) ListDevices(ctx context.Context) ([]Device, error) {
	var list []Device
	if err := s.scanDevices(ctx, func(r Record) { list = append(list, r.device()) }); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	s.presenceMu.Lock()
	for i := range list {
		if e := s.presence[list[i].ID]; e != nil {
			list[i].Presence = e.Presence
		}
	}
	s.presenceMu.Unlock()
	return list, nil
}

// scan calls fn with every record that page returns, reading from the
// first a page of pageSize records at a time, in order, and checking ctx
// (and Close) before each page.
func (s *Store) scan(ctx context.Context, page func(ctx context.Context, after string, limit int) ([]Record, error), fn func(Record)) error {
	for after := ""; ; {
		if err := s.check(ctx); err != nil {
			return err
		}
		recs, err := page(ctx, after, pageSize)
		if err != nil {
			return closedErr(err)
		}
		if len(recs) == 0 {
			return nil
		}
		for _, r := range recs {
			fn(r)
		}
		after = recs[len(recs)-1].Name
	}
}

// scanDevices is scan over Storage.Devices.
func (s *Store) scanDevices(ctx context.Context, fn func(Record)) error {
	return s.scan(ctx, func(ctx context.Context, after string, limit int) ([]Record, error) {
		return s.st.Devices(ctx, device.ID(after), limit)
	}, fn)
}

func (r Record) device() Device {
	return Device{ID: device.ID(r.Name), Labels: cloneLabels(r.Labels), CreatedAt: r.CreatedAt, RotatedAt: r.RotatedAt, CertSHA256: r.CertSHA256}
}

// taken returns the error wrapping ErrExists for a name that a device
// (RoleDevice) or a token (any other role) has.
func taken(name string, by Role) error {
	if by == RoleDevice {
		return fmt.Errorf("%w: %q is a device", ErrExists, name)
	}
	return fmt.Errorf("%w: %q is a token", ErrExists, name)
}
