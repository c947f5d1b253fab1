package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/broker"
	brokerstore "github.com/umbra-iot/umbra/broker/boltstore"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	fwstore "github.com/umbra-iot/umbra/firmware/boltstore"
	"github.com/umbra-iot/umbra/identity"
	idstore "github.com/umbra-iot/umbra/identity/boltstore"
	"github.com/umbra-iot/umbra/internal/metrics"
	"github.com/umbra-iot/umbra/rollout"
	rolloutstore "github.com/umbra-iot/umbra/rollout/boltstore"
	"github.com/umbra-iot/umbra/shadow"
	shadowstore "github.com/umbra-iot/umbra/shadow/boltstore"
)

// stores is one store per persisting component: the only thing that
// differs between a single-node server (bbolt files in the data dir,
// openBoltStores) and another store set. Open takes a stores from one
// opener and hands each field to its component; it owns them and closes
// them (close) after every component.
type stores struct {
	shadow   shadow.Store
	identity identity.Storage
	broker   broker.Store
	firmware firmware.Catalog
	rollout  rollout.Store
	// firmwareDir is firmware.Config.Dir (the keys, uploads in progress
	// and, without firmwareBlobs, the image files); firmwareBlobs, when
	// set, holds the images instead (firmware.Config.Blobs).
	firmwareDir   string
	firmwareBlobs firmware.Blobs
	// firmwareURLSecret, when set, is firmware.Config.URLSecret (cluster
	// mode: the cluster's, shareFirmwareKeys).
	firmwareURLSecret []byte
	// js is cluster mode's JetStream client (the node registry and the
	// cluster status use it), nc its connection (the planner lease and its
	// RPC); nil in single-node mode.
	js jetstream.JetStream
	nc *nats.Conn
	// shadowFeed is the shared shadow store's change feed, which the
	// planner leader watches; nil in single-node mode.
	shadowFeed interface {
		WatchDevices(ctx context.Context) (<-chan device.ID, error)
	}

	closers []namedCloser // in opening order
}

type namedCloser struct {
	name string
	c    interface{ Close(context.Context) error }
}

// add records c to be closed by close, after the ones added before it.
func (st *stores) add(name string, c interface{ Close(context.Context) error }) {
	st.closers = append(st.closers, namedCloser{name, c})
}

// close closes the stores in reverse order of opening; ctx bounds each.
func (st *stores) close(ctx context.Context, log *slog.Logger) error {
	var errs []error
	for i := len(st.closers) - 1; i >= 0; i-- {
		c := st.closers[i]
		if err := c.c.Close(ctx); err != nil {
			log.Error("close", "store", c.name, "err", err)
			errs = append(errs, fmt.Errorf("close %s: %w", c.name, err))
		}
	}
	st.closers = nil
	return errors.Join(errs...)
}

// openBoltStores opens the single-node store set: one bbolt file per
// component in cfg.DataDir (shadow.db, identity.db, broker.db,
// firmware/firmware.db, rollout.db), each through its <pkg>/boltstore
// adapter. Each file's lock makes a second server on the same data dir
// fail here. On error it closes what it opened.
func openBoltStores(ctx context.Context, cfg Config, m *metrics.Metrics) (st stores, err error) {
	defer func() {
		if err != nil {
			err = errors.Join(err, st.close(context.WithoutCancel(ctx), slog.New(slog.DiscardHandler)))
		}
	}()
	sh, err := shadowstore.Open(ctx, shadowstore.Config{
		Path:           filepath.Join(cfg.DataDir, "shadow.db"),
		CommitObserved: m.ObserveCommit,
	})
	if err != nil {
		return st, fmt.Errorf("shadow: %w", err)
	}
	st.shadow = sh
	st.add("shadow.db", sh)

	ids, err := idstore.Open(ctx, idstore.Config{Path: filepath.Join(cfg.DataDir, "identity.db"), Logger: cfg.Logger})
	if err != nil {
		return st, err
	}
	st.identity = ids
	st.add("identity.db", ids)

	if err := st.openBoltBroker(ctx, cfg); err != nil {
		return st, err
	}
	if err := st.makeFirmwareDir(cfg); err != nil {
		return st, err
	}
	fw, err := fwstore.Open(ctx, fwstore.Config{Path: filepath.Join(st.firmwareDir, fwstore.File)})
	if err != nil {
		return st, fmt.Errorf("firmware: %w", err)
	}
	st.firmware = fw
	st.add("firmware.db", fw)
	return st, st.openBoltRollout(ctx, cfg)
}

// openBoltBroker opens broker.db in the data dir.
func (st *stores) openBoltBroker(ctx context.Context, cfg Config) error {
	brk, err := brokerstore.Open(ctx, brokerstore.Config{Path: filepath.Join(cfg.DataDir, "broker.db")})
	if err != nil {
		return brokerStateError(err)
	}
	st.broker = brk
	st.add("broker.db", brk)
	return nil
}

// makeFirmwareDir creates the firmware directory of the data dir.
func (st *stores) makeFirmwareDir(cfg Config) error {
	st.firmwareDir = filepath.Join(cfg.DataDir, "firmware")
	if err := os.MkdirAll(st.firmwareDir, 0o750); err != nil {
		return fmt.Errorf("firmware: %w", err)
	}
	return nil
}

// openBoltRollout opens rollout.db in the data dir.
func (st *stores) openBoltRollout(ctx context.Context, cfg Config) error {
	ro, err := rolloutstore.Open(ctx, rolloutstore.Config{Path: filepath.Join(cfg.DataDir, "rollout.db")})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	st.rollout = ro
	st.add("rollout.db", ro)
	return nil
}

// brokerStateError explains what to do about a broker.db serve cannot
// use: it never starts without the state it holds.
func brokerStateError(err error) error {
	switch {
	case errors.Is(err, brokerstore.ErrCorrupt):
		return fmt.Errorf("server: %w (the broker's retained messages and persistent sessions; "+
			"to start without them, move broker.db out of the data dir)", err)
	case errors.Is(err, brokerstore.ErrLocked):
		return fmt.Errorf("server: %w", err)
	}
	return err
}
