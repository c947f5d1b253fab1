package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/fleet"
	"github.com/umbra-iot/umbra/internal/metrics"
	"github.com/umbra-iot/umbra/shadow"
)

// fleetFeed is the console's fleet index and live hub, fed from the
// broker's in-process subscriptions to the feed topics (fleet.Filters) and
// the identity store's enrolments and removals, and loaded once at start
// by a goroutine of its own.
type fleetFeed struct {
	idx *fleet.Index
	hub *fleet.Hub
	eng atomic.Pointer[shadow.Engine] // for read; set once the engine is open

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newFleetFeed(cfg Config) *fleetFeed {
	return &fleetFeed{idx: fleet.New(), hub: fleet.NewHub(fleet.HubConfig{
		MaxConns: cfg.MaxSSEConns, MaxConnsPerPrincipal: cfg.MaxSSEConnsPerToken, Buffer: cfg.SSEBuffer})}
}

// enrolled records enrolments in the index.
func (f *fleetFeed) enrolled(list []identity.Enrollment) {
	now := time.Now().UTC()
	for _, e := range list {
		f.idx.Enrolled(e.ID, e.Labels, now, e.CertSHA256 != "")
	}
}

// revoked records a removed device.
func (f *fleetFeed) revoked(r identity.Revocation) {
	if r.Reason == identity.RevokeRemoved && r.Principal.Device != "" {
		f.idx.Removed(r.Principal.Device)
	}
}

// tap feeds the index and the hub with a message the server publishes:
// the engine's, the presence and the rollout feed's go through it just
// before the broker delivers them (tapBroker). It taps the
// publishers rather than subscribing in process so that the broker's
// HasSubscribers keeps meaning that a client listens. Only the server
// publishes on the feed topics (the topic policy keeps clients off them).
func (f *fleetFeed) tap(topic string, payload []byte) {
	e, ok := fleet.ParseTopic(topic)
	if !ok {
		return
	}
	switch e.Kind {
	case fleet.KindShadow:
		f.idx.Accepted(e.Device, payload, f.read)
	case fleet.KindDeleted:
		f.idx.ShadowDeleted(e.Device)
	case fleet.KindPresence:
		f.idx.PresenceMessage(e.Device, payload)
	}
	f.hub.Publish(topic, payload)
}

// read reads a shadow for an accepted message that omitted its state.
func (f *fleetFeed) read(id device.ID) (uint64, time.Time, fleet.Firmware, bool) {
	eng := f.eng.Load()
	if eng == nil {
		return 0, time.Time{}, fleet.Firmware{}, false
	}
	doc, err := eng.Read(context.Background(), id)
	if err != nil {
		return 0, time.Time{}, fleet.Firmware{}, false
	}
	return uint64(doc.Version), time.UnixMilli(doc.Updated).UTC(), fleet.FirmwareOf(doc.State.Reported), true
}

// tapBroker is the broker as the server's own publishers see it: every
// message they publish is also tapped (fleetFeed.tap) before the broker
// delivers it, so that a client that received a presence or accepted
// message and then asks GET /v1/devices finds the index up to date (the
// broker hands the message to its subscribers' queues before Publish
// returns). A message the broker then refuses (after Close, or over
// MaxPacketSize, which the engine's replies avoid) is tapped all the same:
// it tells of state already stored. Embedding keeps the broker's
// PublishTo, SendTo and HasSubscribers, which the shadow engine looks for.
type tapBroker struct {
	*broker.Server
	tap func(topic string, payload []byte)
}

// Publish taps the message, then publishes it through the broker.
func (b tapBroker) Publish(topic string, payload []byte, retain bool, qos byte) error {
	b.tap(topic, payload)
	return b.Server.Publish(topic, payload, retain, qos)
}

// load fills the index from the identity store and the shadows, in the
// background; Close stops it.
func (f *fleetFeed) load(ctx context.Context, ids *identity.Store, eng *shadow.Engine, log interface {
	Warn(string, ...any)
	Info(string, ...any)
}) {
	ctx, f.cancel = context.WithCancel(context.WithoutCancel(ctx))
	f.wg.Go(func() {
		start := time.Now()
		err := f.loadAll(ctx, ids, eng)
		if err != nil && !errors.Is(err, context.Canceled) {
			log.Warn("fleet index load", "err", err)
		}
		f.idx.SetLoaded()
		log.Info("fleet index loaded", "devices", f.idx.Len(), "took", time.Since(start).Round(time.Millisecond))
	})
}

func (f *fleetFeed) loadAll(ctx context.Context, ids *identity.Store, eng *shadow.Engine) error {
	devs, err := ids.ListDevices(ctx)
	if err != nil {
		return fmt.Errorf("list devices: %w", err)
	}
	for _, d := range devs {
		f.idx.Enrolled(d.ID, d.Labels, d.CreatedAt, d.CertSHA256 != "")
		f.idx.SetPresence(d.ID, d.Presence)
	}
	cursor := ""
	for {
		sums, next, err := eng.List(ctx, cursor, 1000)
		if err != nil {
			return fmt.Errorf("list shadows: %w", err)
		}
		for _, s := range sums {
			if err := ctx.Err(); err != nil {
				return err
			}
			doc, err := eng.Read(ctx, s.ID)
			if errors.Is(err, shadow.ErrNotFound) {
				continue
			}
			if err != nil {
				return fmt.Errorf("read shadow %s: %w", s.ID, err)
			}
			last := metaTime(doc.Metadata.Reported)
			f.idx.ShadowDoc(s.ID, uint64(doc.Version), time.UnixMilli(doc.Updated).UTC(), last, fleet.FirmwareOf(doc.State.Reported))
		}
		if next == "" || next == cursor {
			return nil
		}
		cursor = next
	}
}

// metaTime returns the latest timestamp in a metadata subtree.
func metaTime(meta map[string]any) time.Time {
	var latest int64
	var walk func(v any)
	walk = func(v any) {
		m, ok := v.(map[string]any)
		if !ok {
			return
		}
		for k, c := range m {
			if k == "timestamp" {
				switch ts := c.(type) {
				case float64:
					latest = max(latest, int64(ts))
				case int64:
					latest = max(latest, ts)
				case json.Number:
					n, _ := ts.Int64()
					latest = max(latest, n)
				}
				continue
			}
			walk(c)
		}
	}
	walk(meta)
	if latest == 0 {
		return time.Time{}
	}
	return time.Unix(latest, 0).UTC()
}

// Close stops the load and ends every live stream.
func (f *fleetFeed) Close(context.Context) error {
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
	f.hub.Close()
	return nil
}

// registerMetrics exposes the hub's counters.
func (f *fleetFeed) registerMetrics(m *metrics.Metrics) {
	m.RegisterLive(func() metrics.LiveStats {
		st := f.hub.Stats()
		return metrics.LiveStats{Conns: st.Conns, RefusedTotal: st.RefusedTotal, RefusedPerToken: st.RefusedIdentity,
			Dropped: st.Dropped, Events: st.Events}
	})
}
