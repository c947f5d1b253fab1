package cluster_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/cluster"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/rollout/natsstore"
)

// fleet is the devices' side, shared by every node: each shadow write is
// logged (device, job, URL) and the device installs at once. A write
// takes a little while, like a real shadow commit, so that a rollout is
// still mid-way when its planner's node dies.
type fleet struct {
	mu      sync.Mutex // guards the fields below
	writes  []write
	reports map[device.ID]firmware.Report
	notify  func(device.ID) // the active planner's Notify
}

type write struct {
	id       device.ID
	job, url string
}

func (f *fleet) SetDesiredFirmware(ctx context.Context, id device.ID, cmd map[string]any, token string) error {
	time.Sleep(5 * time.Millisecond) // simulated commit latency, not synchronisation
	f.mu.Lock()
	f.writes = append(f.writes, write{id, token, fmt.Sprint(cmd["url"])})
	f.reports[id] = firmware.Report{Version: cmd["version"].(string), State: firmware.StateUpdated, Job: token}
	n := f.notify
	f.mu.Unlock()
	if n != nil {
		n(id)
	}
	return nil
}

func (f *fleet) ReportedFirmware(ctx context.Context, id device.ID) (firmware.Report, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.reports[id]
	return r, ok, nil
}

func (f *fleet) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.writes)
}

// images is a firmware store with one version whose every minted URL
// differs, so a re-issued command can be told from a new one.
type images struct {
	mu sync.Mutex // guards n
	n  int
}

func (i *images) Get(ctx context.Context, v firmware.Version) (firmware.Image, error) {
	return firmware.Image{Version: v, HW: "m1", Size: 10, SHA256: strings.Repeat("ab", 32)}, nil
}

func (i *images) Command(img firmware.Image, id device.ID, ttl time.Duration, job string) firmware.Command {
	i.mu.Lock()
	i.n++
	n := i.n
	i.mu.Unlock()
	return firmware.Command{Version: string(img.Version), HW: img.HW, SHA256: img.SHA256, Size: img.Size,
		URL: fmt.Sprintf("http://127.0.0.1/fw/%s?d=%s&n=%d", img.SHA256, id, n), Signature: "c2ln", Job: job}
}

// plannerNode is one Umbra node: its own NATS connection, the shared
// rollout bucket, and a planner that runs while it holds the lease.
type plannerNode struct {
	name  string
	nc    *nats.Conn
	lease *cluster.Lease
	kill  context.CancelFunc // ends the node's planner loop, as its process dying would

	mu      sync.Mutex // guards planner
	planner *rollout.Planner
}

// runPlanner opens a planner whenever the node gains the lease and closes
// it when it loses it, until ctx ends.
func (n *plannerNode) runPlanner(ctx context.Context, t *testing.T, js jetstream.JetStream, f *fleet) {
	changes := n.lease.Changes()
	held := n.lease.Held()
	for {
		if held && n.current() == nil {
			st, err := natsstore.Open(ctx, natsstore.Config{JetStream: js, Replicas: 3, Timeout: 2 * time.Second})
			if err == nil {
				var p *rollout.Planner
				p, err = rollout.Open(ctx, rollout.Config{Store: st, Shadows: f, Firmware: &images{}, Tick: 5 * time.Millisecond, WriteConcurrency: 8})
				if err == nil {
					n.mu.Lock()
					n.planner = p
					n.mu.Unlock()
					f.mu.Lock()
					f.notify = p.Notify
					f.mu.Unlock()
					t.Logf("%s: planner started", n.name)
				}
			}
			if err != nil && ctx.Err() == nil {
				t.Logf("%s: open planner: %v", n.name, err)
			}
		}
		if !held {
			n.stopPlanner()
		}
		select {
		case <-ctx.Done():
			n.stopPlanner()
			return
		case held = <-changes:
		case <-time.After(100 * time.Millisecond): // re-check Held: a belief may end without a message
			held = n.lease.Held()
		}
	}
}

func (n *plannerNode) current() *rollout.Planner {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.planner
}

func (n *plannerNode) stopPlanner() {
	n.mu.Lock()
	p := n.planner
	n.planner = nil
	n.mu.Unlock()
	if p != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		p.Close(ctx)
		cancel()
	}
}

// TestPlannerFailover: two nodes campaign for the planner lease; the
// holder's planner starts a rollout of 200 devices in batches of 50; the
// holder dies mid-rollout (its NATS connection drops and its planner
// stops where it is, as under kill -9). The other node takes the lease
// within the bound, opens its planner on the shared rollout bucket and
// finishes the rollout: every device installs, each is commanded for one
// attempt only (a command re-issued after the takeover carries the same
// URL), and each batch started once.
func TestPlannerFailover(t *testing.T) {
	c := natstest.StartCluster(t)
	f := &fleet{reports: map[device.ID]firmware.Report{}}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var nodes []*plannerNode
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range 2 {
		nc := natstest.Connect(t, append([]string{c.Servers[i].URL()}, c.URLs()...))
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		n := &plannerNode{name: fmt.Sprintf("node-%d", i), nc: nc}
		n.lease, err = cluster.OpenLease(ctx, cluster.LeaseConfig{JetStream: js, Name: "planner", Holder: n.name, TTL: testTTL, Replicas: 3})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.lease.Close(context.Background()) })
		nodeCtx, kill := context.WithCancel(ctx)
		n.kill = kill
		nodes = append(nodes, n)
		wg.Go(func() { n.runPlanner(nodeCtx, t, js, f) })
	}

	var first *plannerNode
	deadline := time.Now().Add(cluster.TakeoverBound(testTTL) + 5*time.Second)
	for first == nil && time.Now().Before(deadline) {
		for _, n := range nodes {
			if n.current() != nil {
				first = n
			}
		}
		time.Sleep(10 * time.Millisecond) // no event spans the nodes: poll
	}
	if first == nil {
		t.Fatal("no node started a planner")
	}
	devices := make([]device.ID, 200)
	for i := range devices {
		devices[i] = device.ID(fmt.Sprintf("d%03d", i))
	}
	r, err := first.current().Create(ctx, rollout.Spec{Firmware: "2.0.0", Devices: devices, Policy: rollout.Policy{BatchSize: 50}})
	if err != nil {
		t.Fatal(err)
	}

	for f.count() < 60 && ctx.Err() == nil {
		time.Sleep(time.Millisecond) // the shadow writes are the planner's side effect: poll
	}
	killed := time.Now()
	first.nc.Close()    // its NATS connection drops: no renewal, no release
	first.stopPlanner() // and its planner stops where it is
	first.lease.Close(context.Background())
	before := f.count()

	var second *plannerNode
	for second == nil && time.Since(killed) < cluster.TakeoverBound(testTTL)+5*time.Second {
		for _, n := range nodes {
			if n != first && n.current() != nil {
				second = n
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if second == nil {
		t.Fatalf("no other node took over within %v", cluster.TakeoverBound(testTTL)+5*time.Second)
	}
	t.Logf("%s died after %d of 200 commands; %s runs the planner %v later", first.name, before, second.name, time.Since(killed).Round(time.Millisecond))

	var st rollout.Status
	for {
		st, err = second.current().Get(ctx, r.ID)
		if err == nil && st.State == rollout.StateSucceeded {
			break
		}
		if time.Since(killed) > 60*time.Second {
			t.Fatalf("rollout not finished 60 s after the takeover: %+v, %v", st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.Counts[rollout.DeviceSucceeded] != 200 {
		t.Errorf("counts %v, want 200 succeeded", st.Counts)
	}
	f.mu.Lock()
	urls := map[device.ID]string{}
	reissued := 0
	for _, w := range f.writes {
		if w.job != r.ID+"/1" {
			t.Errorf("%s commanded with job %s, want only %s/1", w.id, w.job, r.ID)
		}
		if u, seen := urls[w.id]; seen && u != w.url {
			t.Errorf("%s commanded twice with different URLs: %s then %s", w.id, u, w.url)
		} else if seen {
			reissued++
		}
		urls[w.id] = w.url
	}
	f.mu.Unlock()
	if len(urls) != 200 {
		t.Errorf("%d devices commanded, want 200", len(urls))
	}
	evs, err := second.current().Events(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	started := map[int]int{}
	for _, ev := range evs {
		if ev.Kind == rollout.EventBatchStarted {
			started[ev.Batch]++
		}
	}
	for b := range 4 {
		if started[b] != 1 {
			t.Errorf("batch %d started %d times, want once", b, started[b])
		}
	}
	t.Logf("%d commands re-issued with the same URL after the takeover", reissued)
}
