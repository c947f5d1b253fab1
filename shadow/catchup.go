package shadow

import "context"

// HandleSubscribe is called by the broker when a client's SUBSCRIBE was
// processed, with the filters it granted. For every shadow whose delta
// topic one of the filters matches, on either tree, with the device ID
// spelled out (the exact delta topic, or a wildcard form such as
// state/<id>/update/+, state/<id>/#, $aws/things/<id>/shadow/update/#,
// $aws/things/<id>/shadow/#, state/<id>/shadow/+/update/delta), the engine
// sends that shadow's current delta, if it is not empty, on that tree's
// delta topic to the subscribing client only, so a device that was offline
// while its desired state changed catches up without a get. It sends at
// most one delta per shadow, tree and call (one SUBSCRIBE packet), however
// many of its filters match the topic, and only through a ClientPublisher
// (see Publisher): other subscribers of the delta topic receive nothing.
func (e *Engine) HandleSubscribe(clientID string, filters []string) {
	if e.direct == nil {
		return
	}
	type target struct {
		tree Tree
		r    Key
	}
	var seen map[target]bool
	var payloads map[Key][]byte // the catch-up delta of each shadow (nil: none)
	for _, f := range filters {
		m, ok := parseDeltaFilter(f)
		if !ok {
			continue
		}
		var refs []Key
		if m.classic {
			refs = append(refs, Key{Device: m.id})
		}
		if m.name != "" {
			refs = append(refs, Key{m.id, m.name})
		}
		if m.allNamed {
			named, err := e.named(e.ctx, m.id)
			if err != nil {
				e.log.Warn("list named shadows for catch-up deltas", "device", m.id, "err", err)
			}
			for _, n := range named {
				if !n.Deleted {
					refs = append(refs, Key{m.id, n.name})
				}
			}
		}
		for _, r := range refs {
			t := target{m.tree, r}
			if seen[t] {
				continue
			}
			if seen == nil {
				seen, payloads = make(map[target]bool), make(map[Key][]byte)
			}
			seen[t] = true
			b, loaded := payloads[r]
			if !loaded {
				b = e.catchUpDelta(e.ctx, r)
				payloads[r] = b
			}
			if b == nil {
				continue
			}
			if err := e.direct.PublishTo(clientID, m.tree.Topic(r.Device, r.Name, "update/delta"), b, 1); err != nil {
				// Benign: the client left or unsubscribed meanwhile, or its
				// queue is full (the broker counts that); it can still get.
				e.log.Debug("catch-up delta not delivered", "client", clientID, "shadow", r, "err", err)
				continue
			}
			e.stats.published.Add(1)
		}
	}
}

// catchUpDelta returns the delta message HandleSubscribe sends for r, nil
// if r has no delta (or cannot be read).
func (e *Engine) catchUpDelta(ctx context.Context, r Key) []byte {
	doc, _, err := e.load(ctx, r)
	if err != nil {
		e.log.Warn("load shadow for catch-up delta", "shadow", r, "err", err)
		return nil
	}
	if doc.Deleted {
		return nil
	}
	d := doc.Delta()
	if d == nil {
		return nil
	}
	return e.deltaPayload(d, doc.Metadata.Desired, doc.Version, e.cfg.Now().Unix(), "")
}
