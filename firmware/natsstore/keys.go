package natsstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/natskv"
)

// DefaultKeysBucket is KeysConfig.Bucket's default.
const DefaultKeysBucket = "umbra_firmware_keys"

// keysKey is the one key of the keys bucket: both secrets in one value,
// so that the first node stores them together or not at all.
const keysKey = "fleet"

// Keys are the fleet's firmware secrets, which every node of a cluster
// must share: a download URL minted on one node is checked on another
// (URLSecret), and every node signs manifests with the key devices pin
// (SigningKey).
type Keys struct {
	// SigningKey is the fleet's ed25519 signing key, PEM PKCS#8, as
	// firmware.Config.SigningKeyPath's file holds it.
	SigningKey []byte `json:"signing_key"`
	// URLSecret is firmware.Config.URLSecret.
	URLSecret []byte `json:"url_secret"`
}

// KeysConfig configures ShareKeys.
type KeysConfig struct {
	// JetStream is the client to use; the caller owns its connection.
	// Required.
	JetStream jetstream.JetStream
	// Bucket is the bucket's name. Default DefaultKeysBucket.
	Bucket string
	// Replicas is the bucket's replica count when ShareKeys creates it.
	// Default 1.
	Replicas int
}

// ShareKeys returns the cluster's firmware keys: those the keys bucket
// holds, or, when it holds none yet, propose, which it then stores (the
// first node to store its proposal wins; the others get its keys). The
// bucket (created if missing) is inside the cluster's trust boundary, as
// the NATS servers are: whoever may read it can sign firmware and mint
// download URLs. The keys are never logged.
func ShareKeys(ctx context.Context, cfg KeysConfig, propose Keys) (Keys, error) {
	if cfg.JetStream == nil {
		return Keys{}, fmt.Errorf("firmware/natsstore: %w: KeysConfig.JetStream is required", firmware.ErrInvalid)
	}
	if len(propose.SigningKey) == 0 || len(propose.URLSecret) < firmware.MinURLSecret {
		return Keys{}, fmt.Errorf("firmware/natsstore: %w: the proposed keys need a signing key and a URL secret of at least %d bytes",
			firmware.ErrInvalid, firmware.MinURLSecret)
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultKeysBucket
	}
	b, err := natskv.Open(ctx, cfg.JetStream, natskv.BucketConfig{Name: cfg.Bucket, Replicas: cfg.Replicas,
		Schema: natskv.Schema{Kind: "firmware_keys", Version: SchemaVersion}})
	if err != nil {
		return Keys{}, fmt.Errorf("firmware/natsstore: keys: %w", err)
	}
	for range 3 {
		e, err := b.Read(ctx, keysKey)
		if err != nil {
			return Keys{}, fmt.Errorf("firmware/natsstore: keys: %w", err)
		}
		if e.Rev != 0 {
			var k Keys
			if err := json.Unmarshal(e.Value, &k); err != nil || len(k.SigningKey) == 0 || len(k.URLSecret) < firmware.MinURLSecret {
				return Keys{}, fmt.Errorf("firmware/natsstore: keys: bucket %s holds no valid keys (remove its key %q to start again)", cfg.Bucket, keysKey)
			}
			return k, nil
		}
		raw, _ := json.Marshal(propose)
		_, err = b.Apply(ctx, natskv.Op{Key: keysKey, Value: raw, Check: true, Expect: e.Last})
		if err == nil {
			return propose, nil
		}
		if !errors.Is(err, natskv.ErrConflict) {
			return Keys{}, fmt.Errorf("firmware/natsstore: keys: store: %w", err)
		}
		// Another node stored its keys first: read them.
	}
	return Keys{}, fmt.Errorf("firmware/natsstore: keys: %w", natskv.ErrConflict)
}
