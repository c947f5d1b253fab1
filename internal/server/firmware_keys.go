package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/firmware"
	fwnats "github.com/umbra-iot/umbra/firmware/natsstore"
)

// firmwareSigningFile is firmware's default signing key file in its
// directory (firmware.Config.SigningKeyPath's default).
const firmwareSigningFile = "signing.key"

// shareFirmwareKeys makes every node of a cluster use one signing key and
// one download-URL secret (docs/cluster.md): the first node stores its
// signing key (its --signing-key, or its data dir's, or a new one) and a
// new URL secret in the keys bucket; the others take them from there. A
// node without a signing key of its own writes the cluster's to its
// default file, 0600, for firmware.Open to load; a node whose own key is
// another one refuses to start (devices pin the fleet key: silently
// signing with another would strand them). The secrets are never logged.
func (st *stores) shareFirmwareKeys(ctx context.Context, cfg Config, js jetstream.JetStream, replicas int) error {
	path, explicit := cfg.SigningKey, cfg.SigningKey != ""
	if !explicit {
		path = filepath.Join(st.firmwareDir, firmwareSigningFile)
	}
	local, err := os.ReadFile(path)
	if err != nil && (explicit || !errors.Is(err, os.ErrNotExist)) {
		return fmt.Errorf("firmware: read signing key: %w", err)
	}
	propose := fwnats.Keys{SigningKey: local, URLSecret: make([]byte, 32)}
	_, _ = rand.Read(propose.URLSecret)
	if local == nil {
		if propose.SigningKey, err = firmware.NewSigningKey(); err != nil {
			return err
		}
	}
	shared, err := fwnats.ShareKeys(ctx, fwnats.KeysConfig{JetStream: js, Replicas: replicas}, propose)
	if err != nil {
		return fmt.Errorf("firmware: %w", err)
	}
	clusterPub, err := firmware.SigningPublicKey(shared.SigningKey)
	if err != nil {
		return fmt.Errorf("firmware: the cluster's signing key (bucket %s): %w", fwnats.DefaultKeysBucket, err)
	}
	if local != nil {
		pub, err := firmware.SigningPublicKey(local)
		if err != nil {
			return fmt.Errorf("firmware: signing key %s: %w", path, err)
		}
		if !pub.Equal(clusterPub) {
			return fmt.Errorf("%w: firmware signing key %s (public key %s) is not the cluster's (public key %s): devices pin the fleet key; "+
				"give every node the cluster's key, or remove %s to take it from the cluster", ErrInvalidConfig, path,
				hex.EncodeToString(pub), hex.EncodeToString(clusterPub), path)
		}
	} else if err := writeSecretFile(path, shared.SigningKey); err != nil {
		return fmt.Errorf("firmware: write the cluster's signing key: %w", err)
	}
	st.firmwareURLSecret = shared.URLSecret
	return nil
}

// writeSecretFile writes b to path, mode 0600, through a temporary file
// renamed into place.
func writeSecretFile(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err == nil {
		err = errors.Join(f.Sync(), f.Close())
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}
