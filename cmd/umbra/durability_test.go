package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/internal/pahostore"
)

// durabilityConfig is what TestDurabilityKill9 runs; its defaults are the
// short version `go test` runs, and `make durability` sets the
// UMBRA_DURABILITY_* variables for the full one (docs/durability.md).
type durabilityConfig struct {
	rounds  int           // kill -9 and restart this many times
	devices int           // devices sending updates concurrently
	minLoad time.Duration // each round's load runs between minLoad and maxLoad
	maxLoad time.Duration // before the kill, chosen at random
	seed    uint64        // of the random kill moments
}

func durabilitySettings(t *testing.T) durabilityConfig {
	t.Helper()
	c := durabilityConfig{rounds: 1, devices: 20, minLoad: 500 * time.Millisecond, maxLoad: 2 * time.Second, seed: uint64(time.Now().UnixNano())}
	for _, v := range []struct {
		env string
		set func(string) error
	}{
		{"UMBRA_DURABILITY_ROUNDS", func(s string) (err error) { c.rounds, err = strconv.Atoi(s); return err }},
		{"UMBRA_DURABILITY_DEVICES", func(s string) (err error) { c.devices, err = strconv.Atoi(s); return err }},
		{"UMBRA_DURABILITY_MIN_LOAD", func(s string) (err error) { c.minLoad, err = time.ParseDuration(s); return err }},
		{"UMBRA_DURABILITY_MAX_LOAD", func(s string) (err error) { c.maxLoad, err = time.ParseDuration(s); return err }},
		{"UMBRA_DURABILITY_SEED", func(s string) (err error) { c.seed, err = strconv.ParseUint(s, 10, 64); return err }},
	} {
		if s := os.Getenv(v.env); s != "" {
			if err := v.set(s); err != nil {
				t.Fatalf("%s=%q: %v", v.env, s, err)
			}
		}
	}
	if c.rounds < 1 || c.rounds > 50 || c.devices < 1 || c.devices > 2000 || c.minLoad <= 0 || c.maxLoad < c.minLoad || c.maxLoad > time.Minute {
		t.Fatalf("durability settings %+v out of bounds (rounds 1-50, devices 1-2000, 0 < min load <= max load <= 1m)", c)
	}
	return c
}

// ack is the last update a device saw accepted: the sequence number it
// sent (reported.seq, also the clientToken) and the version the server
// answered.
type ack struct {
	seq     int
	version int
}

// TestDurabilityKill9 is issue 10's durability method against a real
// `umbra serve` binary with authentication on: enrolled devices each send
// updates with an increasing sequence number (reported.seq) over MQTT and
// record the last one answered with accepted; the server is killed with
// SIGKILL at a random moment of the load, restarted on the same data dir,
// and every shadow is read back over HTTP. Nothing acknowledged may be
// missing: each stored shadow is at least at the acknowledged version,
// and at exactly that version it holds exactly that seq. The devices then
// continue from what was stored, for the next round.
//
// By default one short round runs (20 devices, up to 2 s of load); `make
// durability` runs the five rounds of 200 devices recorded in
// docs/durability.md. Everything is on loopback and bounded in time.
func TestDurabilityKill9(t *testing.T) {
	cfg := durabilitySettings(t)
	rng := rand.New(rand.NewPCG(cfg.seed, 10))
	t.Logf("durability: %d rounds, %d devices, load %v to %v per round, seed %d (UMBRA_DURABILITY_SEED)",
		cfg.rounds, cfg.devices, cfg.minLoad, cfg.maxLoad, cfg.seed)
	bin := buildUmbra(t)
	dataDir := t.TempDir()
	serve := func() *processServer {
		cmd, mqttAddr, httpAddr := startServe(t, bin, dataDir, "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--http-addr", "127.0.0.1:0")
		return &processServer{cmd: cmd, mqttURL: "tcp://" + mqttAddr, apiURL: "http://" + httpAddr}
	}
	srv := serve()
	admin := adminToken(t, dataDir)
	ids := make([]string, cfg.devices)
	secrets := make([]string, cfg.devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("dur-%04d", i)
		r := runCLI(t.Context(), "", "device", "add", ids[i], "--api", srv.apiURL, "--token", admin)
		if r.err != nil {
			t.Fatalf("device add %s: %v (%s)", ids[i], r.err, r.stderr)
		}
		secrets[i] = strings.TrimSpace(r.stdout)
	}

	acked := make([]ack, cfg.devices) // the last acknowledged update of each device, over all rounds
	var totalAcked, totalSent, totalLost int64
	for round := 1; round <= cfg.rounds; round++ {
		load := cfg.minLoad + time.Duration(rng.Int64N(int64(cfg.maxLoad-cfg.minLoad)+1))
		run := runDurabilityLoad(t, srv, ids, secrets, acked, load)
		if err := srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		srv.cmd.Wait()
		run.stop() // every device has stopped: its last acknowledgement is recorded
		srv = serve()

		lost := 0
		for i, id := range ids {
			st, _, body := httpDo(t, http.MethodGet, srv.apiURL+"/v1/devices/"+id+"/shadow", admin, "")
			var doc struct {
				Version int `json:"version"`
				State   struct {
					Reported struct {
						Seq int `json:"seq"`
					} `json:"reported"`
				} `json:"state"`
			}
			switch {
			case st == http.StatusNotFound && acked[i].version == 0:
				continue // never acknowledged, never stored
			case st != http.StatusOK:
				t.Fatalf("round %d: GET shadow of %s = %d %s", round, id, st, body)
			}
			if err := json.Unmarshal(body, &doc); err != nil {
				t.Fatalf("round %d: shadow of %s: %v (%s)", round, id, err, body)
			}
			a := acked[i]
			switch {
			case doc.Version < a.version || doc.State.Reported.Seq < a.seq:
				lost++
				t.Errorf("round %d: %s acknowledged seq %d as version %d; after kill -9 the shadow is at version %d with seq %d",
					round, id, a.seq, a.version, doc.Version, doc.State.Reported.Seq)
			case doc.Version == a.version && doc.State.Reported.Seq != a.seq:
				t.Errorf("round %d: %s version %d was acknowledged with seq %d, stored with seq %d",
					round, id, a.version, a.seq, doc.State.Reported.Seq)
			}
			// Updates applied but not acknowledged before the kill are
			// kept: the devices continue from what is stored.
			acked[i] = ack{seq: doc.State.Reported.Seq, version: doc.Version}
		}
		totalLost += int64(lost)
		totalAcked += run.acked.Load()
		totalSent += run.sent.Load()
		t.Logf("round %d: killed after %v of load; %d updates sent, %d acknowledged, %d rejected; %d devices lost acknowledged updates",
			round, load, run.sent.Load(), run.acked.Load(), run.rejected.Load(), lost)
	}
	t.Logf("durability: %d rounds of kill -9 with %d devices: %d updates sent, %d acknowledged, %d devices lost acknowledged updates",
		cfg.rounds, cfg.devices, totalSent, totalAcked, totalLost)
}

// processServer is a running `umbra serve` child process.
type processServer struct {
	cmd     *exec.Cmd
	mqttURL string
	apiURL  string
}

// loadRun is one round of device load.
type loadRun struct {
	wg       sync.WaitGroup
	cancel   context.CancelFunc
	sent     atomic.Int64 // updates sent
	acked    atomic.Int64 // updates answered with accepted
	rejected atomic.Int64 // updates answered with rejected (429 when a device exceeds its rate)
}

// stop ends the load and waits until every device has stopped, its last
// acknowledgement recorded.
func (l *loadRun) stop() {
	l.cancel()
	l.wg.Wait()
}

// runDurabilityLoad connects every device to srv and makes each send
// updates one at a time ({"state":{"reported":{"seq":n}},"clientToken":"n"},
// n increasing from acked[i].seq+1), recording in acked[i] every one
// answered with accepted. It returns after load, leaving the devices
// sending: the caller kills the server, then stops the run.
func runDurabilityLoad(t *testing.T, srv *processServer, ids, secrets []string, acked []ack, load time.Duration) *loadRun {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	run := &loadRun{cancel: cancel}
	t.Cleanup(run.stop)
	clients := make([]*durabilityDevice, len(ids))
	var connectWG sync.WaitGroup
	connectErr := make(chan error, len(ids))
	for i, id := range ids {
		connectWG.Go(func() {
			d, err := connectDurabilityDevice(srv.mqttURL, id, secrets[i])
			if err != nil {
				connectErr <- fmt.Errorf("connect %s: %w", id, err)
				return
			}
			clients[i] = d
		})
	}
	connectWG.Wait()
	close(connectErr)
	for err := range connectErr {
		t.Fatal(err)
	}
	for i, id := range ids {
		d := clients[i]
		run.wg.Go(func() {
			defer d.c.Disconnect(0)
			for seq := acked[i].seq + 1; ctx.Err() == nil; seq++ {
				tok := strconv.Itoa(seq)
				d.c.Publish("state/"+id+"/update", 1, false, `{"state":{"reported":{"seq":`+tok+`}},"clientToken":"`+tok+`"}`)
				run.sent.Add(1)
				v, ok := d.awaitReply(ctx, tok)
				if !ok {
					return // the server is gone, or a reply took over 10s
				}
				if v == 0 {
					// Rejected, normally 429: the device is over its
					// request rate (20/s by default). Pace it.
					run.rejected.Add(1)
					select {
					case <-time.After(50 * time.Millisecond):
					case <-ctx.Done():
					}
					continue
				}
				acked[i] = ack{seq: seq, version: v}
				run.acked.Add(1)
			}
		})
	}
	select {
	case <-time.After(load):
	case <-t.Context().Done():
	}
	return run
}

// durabilityDevice is a connected device of TestDurabilityKill9.
type durabilityDevice struct {
	c       paho.Client
	replies chan paho.Message // its update/accepted and update/rejected messages
	lost    chan struct{}     // closed when the connection is lost
}

// awaitReply waits for the accepted or rejected answer with clientToken
// tok and returns the accepted version (0 if rejected); ok is false if
// none came within 10s, the connection was lost or ctx ended first. An
// answer paho delivered before the loss is still taken.
func (d *durabilityDevice) awaitReply(ctx context.Context, tok string) (version int, ok bool) {
	timeout := time.After(10 * time.Second)
	lost := d.lost
	for {
		select {
		case m := <-d.replies:
			var r struct {
				ClientToken string `json:"clientToken"`
				Version     int    `json:"version"`
			}
			if json.Unmarshal(m.Payload(), &r) != nil || r.ClientToken != tok {
				continue // an answer to an earlier request
			}
			if strings.HasSuffix(m.Topic(), "/accepted") {
				return r.Version, true
			}
			return 0, true
		case <-lost:
			lost = nil
			timeout = time.After(100 * time.Millisecond) // for answers paho is still handing over
		case <-timeout:
			return 0, false
		case <-ctx.Done():
			return 0, false
		}
	}
}

// connectDurabilityDevice connects device id and subscribes to its update
// answers.
func connectDurabilityDevice(url, id, secret string) (*durabilityDevice, error) {
	d := &durabilityDevice{replies: make(chan paho.Message, 16), lost: make(chan struct{})}
	opts := paho.NewClientOptions().SetStore(pahostore.New()).AddBroker(url).SetClientID(id).SetUsername(id).SetPassword(secret).
		SetOrderMatters(false).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).SetKeepAlive(30 * time.Second).
		SetConnectionLostHandler(func(paho.Client, error) { close(d.lost) })
	d.c = paho.NewClient(opts)
	if tok := d.c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("connect: %v", tok.Error())
	}
	handler := func(_ paho.Client, m paho.Message) {
		select {
		case d.replies <- m:
		case <-time.After(10 * time.Second): // the device stopped reading
		}
	}
	tok := d.c.SubscribeMultiple(map[string]byte{"state/" + id + "/update/accepted": 1, "state/" + id + "/update/rejected": 1}, handler)
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		d.c.Disconnect(0)
		return nil, fmt.Errorf("subscribe: %v", tok.Error())
	}
	return d, nil
}
