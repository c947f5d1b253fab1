package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	fwnats "github.com/umbra-iot/umbra/firmware/natsstore"
	idnats "github.com/umbra-iot/umbra/identity/natsstore"
	"github.com/umbra-iot/umbra/internal/metrics"
	rolloutnats "github.com/umbra-iot/umbra/rollout/natsstore"
	shadownats "github.com/umbra-iot/umbra/shadow/natsstore"
)

// ErrNATSUnreachable is wrapped by Open in cluster mode when no NATS
// server of Config.NATS answers.
var ErrNATSUnreachable = errors.New("server: NATS unreachable")

// Cluster mode's defaults.
const (
	// DefaultNATSReplicas is Config.NATSReplicas's default: a three-server
	// NATS cluster, so that losing one server loses nothing.
	DefaultNATSReplicas = 3
	// DefaultPlannerOpenRetries is Config.PlannerOpenRetries's default.
	DefaultPlannerOpenRetries = 3
	// DefaultPlannerStayOut is Config.PlannerStayOut's default.
	DefaultPlannerStayOut = 30 * time.Second
	// natsOpenTimeout bounds connecting to NATS and opening the buckets.
	natsOpenTimeout = 30 * time.Second
)

// openStores is the one store-choice point: the cluster store set when
// Config.NATS is set, the single-node bbolt files otherwise.
func openStores(ctx context.Context, cfg Config, m *metrics.Metrics) (stores, error) {
	if len(cfg.NATS) > 0 {
		return openNATSStores(ctx, cfg, m)
	}
	return openBoltStores(ctx, cfg, m)
}

// natsConn closes a NATS connection as a store (the last to close).
type natsConn struct{ nc *nats.Conn }

func (c natsConn) Close(context.Context) error { c.nc.Close(); return nil }

// openNATSStores opens cluster mode's store set (docs/cluster.md): the
// shadows, the identities, the firmware records and images and the
// rollouts in JetStream buckets on Config.NATS, shared by every node (the
// rollouts are planned by the planner lease's holder alone, see
// planner.go). The broker's state (broker.db) stays in the data dir. It
// fails with an error wrapping ErrNATSUnreachable when no
// NATS server answers.
func openNATSStores(ctx context.Context, cfg Config, m *metrics.Metrics) (st stores, err error) {
	defer func() {
		if err != nil {
			err = errors.Join(err, st.close(context.WithoutCancel(ctx), slog.New(slog.DiscardHandler)))
		}
	}()
	urls := strings.Join(cfg.NATS, ",")
	nc, err := nats.Connect(urls, nats.Name("umbra "+cfg.NodeID), nats.Timeout(5*time.Second),
		nats.MaxReconnects(-1), nats.ReconnectWait(time.Second))
	if err != nil {
		return st, fmt.Errorf("%w: cluster mode cannot reach NATS at %s: %v (start the NATS servers, or serve without --nats for single-node mode)",
			ErrNATSUnreachable, urls, err)
	}
	st.add("nats", natsConn{nc})
	st.nc = nc
	js, err := jetstream.New(nc)
	if err != nil {
		return st, fmt.Errorf("server: jetstream: %w", err)
	}
	st.js = js
	replicas := cfg.NATSReplicas
	if replicas == 0 {
		replicas = DefaultNATSReplicas
	}
	octx, cancel := context.WithTimeout(ctx, natsOpenTimeout)
	defer cancel()
	hint := func(err error) error {
		if strings.Contains(err.Error(), "replicas > 1 not supported") {
			return fmt.Errorf("%w (a single NATS server holds one replica: serve with --nats-replicas 1)", err)
		}
		return err
	}

	sh, err := shadownats.Open(octx, shadownats.Config{JetStream: js, Replicas: replicas})
	if err != nil {
		return st, fmt.Errorf("shadow: %w", hint(err))
	}
	st.shadow, st.shadowFeed = sh, sh
	st.add("shadow bucket", sh)

	ids, err := idnats.Open(octx, idnats.Config{JetStream: js, Replicas: replicas})
	if err != nil {
		return st, fmt.Errorf("identity: %w", hint(err))
	}
	st.identity = ids
	st.add("identity bucket", ids)

	if err := st.openBoltBroker(ctx, cfg); err != nil {
		return st, err
	}

	if err := st.makeFirmwareDir(cfg); err != nil {
		return st, err
	}
	if err := st.shareFirmwareKeys(octx, cfg, js, replicas); err != nil {
		return st, hint(err)
	}
	fw, err := fwnats.OpenCatalog(octx, fwnats.CatalogConfig{JetStream: js, Replicas: replicas})
	if err != nil {
		return st, fmt.Errorf("firmware: %w", hint(err))
	}
	st.firmware = fw
	st.add("firmware bucket", fw)
	blobs, err := fwnats.OpenBlobs(octx, fwnats.BlobsConfig{JetStream: js, Replicas: replicas,
		CacheDir: filepath.Join(st.firmwareDir, "cache")})
	if err != nil {
		return st, fmt.Errorf("firmware images: %w", hint(err))
	}
	st.firmwareBlobs = blobs

	ro, err := rolloutnats.Open(octx, rolloutnats.Config{JetStream: js, Replicas: replicas})
	if err != nil {
		return st, fmt.Errorf("rollout: %w", hint(err))
	}
	st.rollout = ro
	st.add("rollout bucket", ro)
	return st, nil
}
