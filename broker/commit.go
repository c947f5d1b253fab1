package broker

import (
	"context"
	"fmt"
	"time"
)

// The committer: one goroutine that writes the ledger's dirty keys to
// Config.Store, one Store.Apply (one bbolt transaction, one fsync) per
// commit. Like shadow/store.go's group commit, it fills each commit
// without an artificial delay: while one commit is on its way to disk,
// every change made meanwhile accumulates in the dirty set and goes into
// the next one, so the commit rate adapts to the disk and the number of
// writers, and a caller waits for at most two commits. Because a commit
// writes the ledger's state at that moment, not a log of changes, a
// message queued and acknowledged between two commits is never written,
// and a commit's size is bounded by the state, not by the change rate.

// Committer timing.
const (
	// lazyCommitDelay is how long changes nobody waits for (subscribers'
	// acknowledgements, session metadata, the broker's own messages) may
	// wait for a commit. Commits for them are then at most this frequent,
	// so they hardly add fsyncs to the disk the shadow engine commits to,
	// and a message queued and acknowledged within it is never written: a
	// commit writes the messages still unacknowledged at that moment, so
	// under a steady load the bytes written per second shrink in
	// proportion (100 ms wrote every reply to a device with a persistent
	// session once, and cost a fifth of the CPU; see docs/benchmarks.md).
	lazyCommitDelay = time.Second
	// Backoff after a failed commit.
	minCommitBackoff = 50 * time.Millisecond
	maxCommitBackoff = 5 * time.Second
)

// start starts the committer, if there is a Store.
func (l *ledger) start() {
	if l.store == nil {
		close(l.done)
		return
	}
	ctx := context.WithoutCancel(l.s.ctx) // the last commit runs after Close cancelled s.ctx
	go func() {
		defer close(l.done)
		l.run(ctx)
	}()
}

// run commits until close, then makes a last commit: at once when
// someone waits for a change, otherwise lazyCommitDelay after the first
// change nobody waits for.
func (l *ledger) run(ctx context.Context) {
	var backoff time.Duration
	lazy := time.NewTimer(lazyCommitDelay)
	lazy.Stop()
	defer lazy.Stop()
	lazyArmed := false
	for {
		select {
		case <-l.kick:
			l.mu.Lock()
			urgent := l.urgent
			l.mu.Unlock()
			if !urgent {
				if !lazyArmed {
					lazy.Reset(lazyCommitDelay)
					lazyArmed = true
				}
				continue
			}
		case <-lazy.C:
		case <-l.stop:
			l.lastErr = l.commit(ctx, true)
			return
		}
		if lazyArmed {
			lazy.Stop()
			lazyArmed = false
		}
		if l.commit(ctx, false) == nil {
			backoff = 0
			continue
		}
		backoff = min(max(2*backoff, minCommitBackoff), maxCommitBackoff)
		t := time.NewTimer(backoff)
		select {
		case <-l.stop:
			t.Stop()
			l.lastErr = l.commit(ctx, true)
			return
		case <-t.C:
		}
		l.mu.Lock()
		l.urgent = true // retry the rewrite now, even if nothing changes
		l.mu.Unlock()
		l.wake()
	}
}

// close stops the committer after its last commit and returns that
// commit's error. Every client must be gone: nothing may wait for a
// commit afterwards.
func (l *ledger) close() error {
	if l.store == nil {
		return nil
	}
	close(l.stop)
	<-l.done
	return l.lastErr
}

// commit writes the dirty keys (everything after a failed commit) and
// completes the waits of the changes it includes. last marks the final
// commit: later changes are not written, and waits for them fail with
// ErrClosed.
func (l *ledger) commit(ctx context.Context, last bool) error {
	l.mu.Lock()
	var ops []StoreOp
	if l.rewrite {
		ops = l.snapshotOps()
		l.rewrite = false
	} else {
		ops = l.dirtyOps()
	}
	l.dirty = newDirtySet()
	l.urgent = false
	w := l.next
	if last {
		l.stopped = true
	} else {
		l.next = newCommitWait()
	}
	l.mu.Unlock()
	if len(ops) == 0 {
		close(w.done)
		return nil
	}
	start := time.Now()
	err := l.store.Apply(ctx, ops)
	l.commitNanos.Add(int64(time.Since(start)))
	l.commits.Add(1)
	l.commitOps.Add(int64(len(ops)))
	if err != nil {
		l.commitErrors.Add(1)
		l.mu.Lock()
		l.rewrite = true
		l.mu.Unlock()
		err = fmt.Errorf("broker: store: %w", err)
		l.log.Error("broker state not written: acknowledgements that wait for it are refused until a commit succeeds; retrying with the whole state",
			"ops", len(ops), "error", err)
	}
	w.err = err
	close(w.done)
	return err
}

// dirtyOps returns the ops that write the dirty keys' current state.
// Session ops come first: a fresh session's subscriptions and messages
// follow its OpDeleteSession and OpPutSession. l.mu is held.
func (l *ledger) dirtyOps() []StoreOp {
	d := &l.dirty
	if d.empty() {
		return nil
	}
	ops := make([]StoreOp, 0, len(d.sessions)+len(d.retained)+len(d.subs)+len(d.queued))
	for id := range d.sessions {
		se := l.sessions[id]
		if se == nil {
			ops = append(ops, StoreOp{Kind: OpDeleteSession, ClientID: id})
			continue
		}
		if se.fresh {
			ops = append(ops, StoreOp{Kind: OpDeleteSession, ClientID: id})
			se.fresh = false
		}
		ops = append(ops, StoreOp{Kind: OpPutSession, ClientID: id, Session: se.Session})
	}
	for topic := range d.retained {
		if m, ok := l.retained[topic]; ok {
			ops = append(ops, StoreOp{Kind: OpPutRetained, Message: m})
		} else {
			ops = append(ops, StoreOp{Kind: OpDeleteRetained, Topic: topic})
		}
	}
	for k := range d.subs {
		se := l.sessions[k.client]
		if se == nil {
			continue // its OpDeleteSession covers it
		}
		if sub, ok := se.subs[k.filter]; ok {
			ops = append(ops, StoreOp{Kind: OpPutSubscription, ClientID: k.client, Subscription: sub})
		} else {
			ops = append(ops, StoreOp{Kind: OpDeleteSubscription, ClientID: k.client, Topic: k.filter})
		}
	}
	for k, wasWritten := range d.queued {
		se := l.sessions[k.client]
		if se == nil {
			continue
		}
		switch r := se.records[k.seq]; {
		case r != nil && r.written:
			ops = append(ops, StoreOp{Kind: OpSetQueuedState, ClientID: k.client,
				Queued: QueuedMessage{Seq: r.seq, PacketID: r.pid, Released: r.released}})
		case r != nil:
			ops = append(ops, putQueued(r))
		case wasWritten:
			ops = append(ops, StoreOp{Kind: OpDeleteQueued, ClientID: k.client, Queued: QueuedMessage{Seq: k.seq}})
		}
	}
	return ops
}

// snapshotOps returns the ops that replace the stored state with the
// ledger's. l.mu is held.
func (l *ledger) snapshotOps() []StoreOp {
	ops := []StoreOp{{Kind: OpReset}}
	for _, m := range l.retained {
		ops = append(ops, StoreOp{Kind: OpPutRetained, Message: m})
	}
	for id, se := range l.sessions {
		se.fresh = false
		ops = append(ops, StoreOp{Kind: OpPutSession, ClientID: id, Session: se.Session})
		for _, sub := range se.subs {
			ops = append(ops, StoreOp{Kind: OpPutSubscription, ClientID: id, Subscription: sub})
		}
		for _, r := range se.records {
			ops = append(ops, putQueued(r))
		}
	}
	return ops
}

// putQueued returns the op that writes r, and marks it written.
func putQueued(r *record) StoreOp {
	r.written = true
	return StoreOp{Kind: OpPutQueued, ClientID: r.client,
		Queued: QueuedMessage{Seq: r.seq, PacketID: r.pid, Released: r.released, Message: r.msg}}
}
