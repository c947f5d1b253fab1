package natskv

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// followRetry is how long Follow waits before watching again.
const followRetry = 250 * time.Millisecond

// Feed is a watch of the keys matching a filter, started by StartFeed:
// every key's current value first, then every change, in the stream's
// order. Its holder calls Follow once.
type Feed struct {
	nc     interface{ Stats() nats.Statistics }
	kv     jetstream.KeyValue
	filter string
	w      jetstream.KeyWatcher
	last   uint64 // revision of the last entry applied
}

// StartFeed watches the keys of b matching filter and passes every
// current entry (deletes and purges included) to apply, in order,
// before it returns: the caller holds the state of the bucket as of its
// return. It fails if ctx ends first or the watch cannot start.
func (b *Bucket) StartFeed(ctx context.Context, filter string, apply func(jetstream.KeyValueEntry)) (*Feed, error) {
	w, err := b.KV.Watch(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("natskv: watch %s: %w", filter, err)
	}
	f := &Feed{nc: b.nc, kv: b.KV, filter: filter, w: w}
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				StopWatch(w)
				return nil, fmt.Errorf("natskv: watch %s: %w", filter, errors.New("closed while loading"))
			}
			if e == nil { // the current values are all delivered
				return f, nil
			}
			f.last = e.Revision()
			apply(e)
		case <-ctx.Done():
			StopWatch(w)
			return nil, fmt.Errorf("natskv: watch %s: %w", filter, ctx.Err())
		}
	}
}

// Follow passes every later change to apply, in order, until ctx ends.
// When the watch ends, or its connection has reconnected (the client
// library's watch notices a lost server only after missed heartbeats,
// about 20 s), it watches again from the revision after the last one
// applied, every 250 ms until that succeeds, telling live (when not nil)
// whether the feed is live.
func (f *Feed) Follow(ctx context.Context, apply func(jetstream.KeyValueEntry), live func(bool)) {
	if live == nil {
		live = func(bool) {}
	}
	w := f.w
	defer func() {
		if w != nil {
			StopWatch(w)
		}
	}()
	live(true)
	tick := time.NewTicker(followRetry)
	defer tick.Stop()
	reconnects := f.nc.Stats().Reconnects
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if ok {
				if e != nil {
					f.last = e.Revision()
					apply(e)
				}
				continue
			}
		case <-tick.C:
			if n := f.nc.Stats().Reconnects; n != reconnects {
				reconnects = n
				StopWatch(w) // what it still holds comes again from f.last+1
				break
			}
			continue
		}
		live(false)
		w = nil
		for w == nil {
			nw, err := f.kv.Watch(ctx, f.filter, jetstream.ResumeFromRevision(f.last+1))
			if err == nil {
				w = nw
				live(true)
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(followRetry):
			}
		}
	}
}

// Stop stops a feed that will not be followed.
func (f *Feed) Stop() { StopWatch(f.w) }
