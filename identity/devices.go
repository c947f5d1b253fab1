package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/umbra-iot/umbra/device"
)

// deviceRecord is a device as stored in the devices bucket.
type deviceRecord struct {
	MAC       []byte            `json:"mac"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"createdAt"`
	RotatedAt time.Time         `json:"rotatedAt,omitzero"`
	// Enrolment identifies this enrolment of the device: new in AddDevice,
	// kept by RotateDevice. Certificate sessions and firmware URLs are
	// bound to it.
	Enrolment string `json:"enrolment,omitempty"`
	// SecretGen identifies the current secret: new in AddDevice and
	// RotateDevice. Password sessions are bound to it.
	SecretGen string `json:"secretGen,omitempty"`
	// CertSHA256 is the fingerprint of the client certificate bound to
	// the device (Enrollment.CertSHA256); "" if none. bucketCerts maps it
	// back to the device.
	CertSHA256 string `json:"certSha256,omitempty"`
}

// tokenRecord is a token as stored in the tokens bucket.
type tokenRecord struct {
	Role      Role      `json:"role"`
	MAC       []byte    `json:"mac"`
	CreatedAt time.Time `json:"createdAt"`
	// SecretGen identifies this token's secret: sessions are bound to it,
	// so a token revoked and created again does not revive them.
	SecretGen string `json:"secretGen,omitempty"`
}

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
	var rec deviceRecord
	s.credMu.Lock()
	defer s.credMu.Unlock()
	err := s.update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		if err := getJSON(b, string(id), &rec); err != nil {
			return err
		}
		rec.MAC = secretMAC(s.key, RoleDevice, string(id), []byte(secret))
		rec.RotatedAt = s.cfg.Now().UTC()
		rec.SecretGen = newGeneration() // the enrolment stays
		return putJSON(b, string(id), rec)
	})
	if err != nil {
		return "", fmt.Errorf("rotate device %s: %w", id, err)
	}
	s.setCurrent(string(id), rec.credential())
	s.log.Info("device secret rotated", "device", id)
	return secret, nil
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
	err := s.update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		var rec deviceRecord
		if err := getJSON(b, string(id), &rec); err != nil {
			return err
		}
		if err := b.Delete([]byte(id)); err != nil {
			return err
		}
		if rec.CertSHA256 != "" {
			// The bound certificate stops working with the device.
			if err := tx.Bucket(bucketCerts).Delete([]byte(rec.CertSHA256)); err != nil {
				return err
			}
		}
		at, err := s.cfg.Now().UTC().MarshalText()
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketRemoved).Put([]byte(id), at); err != nil {
			return err
		}
		return tx.Bucket(bucketPresence).Delete([]byte(id))
	})
	if err == nil {
		s.setCurrent(string(id), nil)
	}
	s.credMu.Unlock()
	if err != nil {
		return fmt.Errorf("remove device %s: %w", id, err)
	}
	s.presenceMu.Lock()
	delete(s.presence, string(id))
	delete(s.dirty, string(id))
	s.presenceMu.Unlock()
	s.log.Info("device removed", "device", id)
	return nil
}

// GetDevice returns id with its labels and presence. It fails with
// ErrNotFound for an unknown device.
func (s *Store) GetDevice(ctx context.Context, id device.ID) (Device, error) {
	var rec deviceRecord
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return getJSON(tx.Bucket(bucketDevices), string(id), &rec)
	})
	if err != nil {
		return Device{}, fmt.Errorf("get device %s: %w", id, err)
	}
	d := rec.device(id)
	d.Presence, _ = s.Presence(id)
	return d, nil
}

// ListDevices returns every enrolled device in ID order, with labels and
// presence.
func (s *Store) ListDevices(ctx context.Context) ([]Device, error) {
	var list []Device
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			var rec deviceRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode device %q: %w", k, err)
			}
			list = append(list, rec.device(device.ID(k)))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	s.presenceMu.Lock()
	for i := range list {
		if e := s.presence[string(list[i].ID)]; e != nil {
			list[i].Presence = e.Presence
		}
	}
	s.presenceMu.Unlock()
	return list, nil
}

func (r deviceRecord) device(id device.ID) Device {
	return Device{ID: id, Labels: cloneLabels(r.Labels), CreatedAt: r.CreatedAt, RotatedAt: r.RotatedAt, CertSHA256: r.CertSHA256}
}

// nameFree fails with ErrExists if name is a device or a token.
func nameFree(tx *bolt.Tx, name string) error {
	if tx.Bucket(bucketDevices).Get([]byte(name)) != nil {
		return fmt.Errorf("%w: %q is a device", ErrExists, name)
	}
	if tx.Bucket(bucketTokens).Get([]byte(name)) != nil {
		return fmt.Errorf("%w: %q is a token", ErrExists, name)
	}
	return nil
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), data)
}

// getJSON decodes key's value into v; ErrNotFound if absent.
func getJSON(b *bolt.Bucket, key string, v any) error {
	data := b.Get([]byte(key))
	if data == nil {
		return ErrNotFound
	}
	return json.Unmarshal(data, v)
}
