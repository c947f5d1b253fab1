package jobs_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	fwstore "github.com/umbra-iot/umbra/firmware/boltstore"
	"github.com/umbra-iot/umbra/internal/goldentest"
	"github.com/umbra-iot/umbra/rollout"
	rolloutstore "github.com/umbra-iot/umbra/rollout/boltstore"
	"github.com/umbra-iot/umbra/rollout/jobs"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/boltstore"
)

// message is one message the service sent: a reply to one client or a
// notification to every subscriber.
type message struct {
	to      string // the client of a reply; "" for a notification
	topic   string
	payload []byte
}

func (m message) String() string {
	if m.to != "" {
		return fmt.Sprintf("(to %s) %s %s", m.to, m.topic, m.payload)
	}
	return m.topic + " " + string(m.payload)
}

// recorder is the service's Publisher: replies are kept in order (they are
// sent on the requesting goroutine), notifications go to a channel (the
// service's own goroutine sends them).
type recorder struct {
	mu      sync.Mutex // guards replies
	replies []message
	notes   chan message
}

func (r *recorder) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if retain || qos != 1 {
		panic(fmt.Sprintf("notification %s published with retain %t qos %d", topic, retain, qos))
	}
	r.notes <- message{topic: topic, payload: bytes.Clone(payload)}
	return nil
}

func (r *recorder) SendTo(clientID, topic string, payload []byte, qos byte) error {
	r.mu.Lock()
	r.replies = append(r.replies, message{to: clientID, topic: topic, payload: bytes.Clone(payload)})
	r.mu.Unlock()
	return nil
}

func (r *recorder) takeReplies() []message {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.replies
	r.replies = nil
	return out
}

// clock is the test's manual clock.
type clock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

var t0 = time.Unix(1700000000, 0).UTC()

// rig is a whole Jobs stack on real parts: a shadow engine, a firmware
// store with one image, the rollout planner and the service, in one
// temporary directory.
type rig struct {
	clk *clock
	eng *shadow.Engine
	fw  *firmware.Store
	pl  *rollout.Planner
	svc *jobs.Service
	rec *recorder
}

func newRig(t testing.TB, mod func(*jobs.Config)) *rig {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	r := &rig{clk: &clock{now: t0}, rec: &recorder{notes: make(chan message, 64)}}
	ctx := context.Background()
	var err error
	st, err := boltstore.Open(ctx, boltstore.Config{Path: filepath.Join(dir, "shadow.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(ctx) })
	if r.eng, err = shadow.Open(ctx, shadow.Config{Store: st, Now: r.clk.Now, Logger: log}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.eng.Close(ctx) })
	if err := os.Mkdir(filepath.Join(dir, "fw"), 0o750); err != nil {
		t.Fatal(err)
	}
	images, err := fwstore.Open(ctx, fwstore.Config{Path: filepath.Join(dir, "fw", fwstore.File)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { images.Close(ctx) })
	if r.fw, err = firmware.Open(ctx, firmware.Config{Dir: filepath.Join(dir, "fw"), Catalog: images, BaseURL: "http://umbra.test",
		URLSecret: []byte("0123456789abcdef"), Now: r.clk.Now, Logger: log}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.fw.Close(ctx) })
	if _, err := r.fw.Upload(ctx, firmware.UploadRequest{Version: "2.0.0", HW: "m1"}, strings.NewReader("firmware 2.0.0 image")); err != nil {
		t.Fatal(err)
	}
	var svc *jobs.Service
	rst, err := rolloutstore.Open(ctx, rolloutstore.Config{Path: filepath.Join(dir, "rollout.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rst.Close(ctx) })
	if r.pl, err = rollout.Open(ctx, rollout.Config{Store: rst, Shadows: rollout.EngineShadows(r.eng),
		Firmware: r.fw, Now: r.clk.Now, Tick: 5 * time.Millisecond, Logger: log,
		OnExecution: func(id device.ID) { svc.ExecutionChanged(id) }}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.pl.Close(ctx) })
	cfg := jobs.Config{Planner: r.pl, Firmware: r.fw, Publisher: r.rec, Now: r.clk.Now, Logger: log}
	if mod != nil {
		mod(&cfg)
	}
	if svc, err = jobs.Open(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	r.svc = svc
	t.Cleanup(func() { svc.Close(ctx) })
	return r
}

// notification waits for the next notification.
func (r *rig) notification(t testing.TB) message {
	t.Helper()
	select {
	case m := <-r.rec.notes:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no notification within 10s")
		return message{}
	}
}

var (
	reSignature = regexp.MustCompile(`"signature":"[^"]*"`)
	reMAC       = regexp.MustCompile(`&s=[A-Za-z0-9_-]+`)
)

// stable hides what differs between runs: the image signature (the
// signing key is made by each run).
func stable(s string) string {
	return reSignature.ReplaceAllString(s, `"signature":"<sig>"`)
}

// TestTranscripts runs testdata/transcripts/*.txt, the Jobs protocol as
// executable transcripts, and compares the output with the .golden files
// (go test ./rollout/jobs -run TestTranscripts -update rewrites them).
// Each command but "notified" first advances the clock by one second.
//
//	# text                          a comment, copied
//	pub <client> <topic> [payload]  a request; the replies follow, indented
//	sub <client> <filter>…          a subscription (HandleSubscribe)
//	rollout <dev,…> [policy JSON]   creates a rollout of 2.0.0
//	notified <n>                    waits for n notifications and shows them
//	advance <duration>              advances the clock further
//	abort <id>                      aborts a rollout
//	devices <id>                    the rollout's devices: state, attempt, last word
//	shadow <device>                 the device's desired firmware ("none")
func TestTranscripts(t *testing.T) {
	files, err := filepath.Glob("testdata/transcripts/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".txt")
		t.Run(name, func(t *testing.T) {
			in, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			r := newRig(t, nil)
			var out bytes.Buffer
			defer func() {
				if t.Failed() {
					t.Logf("transcript so far:\n%s", out.Bytes())
				}
			}()
			sc := bufio.NewScanner(bytes.NewReader(in))
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				line := sc.Text()
				out.WriteString(line + "\n")
				if line == "" || strings.HasPrefix(line, "#") {
					continue
				}
				cmd, rest, _ := strings.Cut(line, " ")
				if cmd != "notified" {
					r.clk.Add(time.Second)
				}
				for _, l := range r.run(t, cmd, rest) {
					out.WriteString("  " + stable(l) + "\n")
				}
			}
			select {
			case m := <-r.rec.notes:
				t.Errorf("notification not shown by the transcript: %s", m)
			default:
			}
			goldentest.Check(t, "testdata/transcripts/"+name+".golden", out.Bytes())
		})
	}
}

func (r *rig) run(t *testing.T, cmd, rest string) []string {
	t.Helper()
	ctx := t.Context()
	var lines []string
	switch cmd {
	case "pub":
		fields := strings.SplitN(rest, " ", 3)
		payload := ""
		if len(fields) == 3 {
			payload = fields[2]
		}
		r.svc.HandleRequest(fields[0], fields[1], []byte(payload))
		for _, m := range r.rec.takeReplies() {
			lines = append(lines, m.String())
		}
	case "sub":
		fields := strings.Fields(rest)
		r.svc.HandleSubscribe(fields[0], fields[1:])
	case "rollout":
		list, pol, _ := strings.Cut(rest, " ")
		spec := rollout.Spec{Firmware: "2.0.0"}
		for _, d := range strings.Split(list, ",") {
			spec.Devices = append(spec.Devices, device.ID(d))
		}
		if pol != "" {
			if err := json.Unmarshal([]byte(pol), &spec.Policy); err != nil {
				t.Fatalf("rollout policy %s: %v", pol, err)
			}
		}
		ro, err := r.pl.Create(ctx, spec)
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		lines = append(lines, "created "+ro.ID)
	case "notified":
		var n int
		fmt.Sscan(rest, &n)
		var ms []string
		for range n {
			ms = append(ms, r.notification(t).String())
		}
		slices.Sort(ms) // notify and notify-next of one change come in either order
		lines = append(lines, ms...)
	case "advance":
		d, err := time.ParseDuration(rest)
		if err != nil {
			t.Fatal(err)
		}
		r.clk.Add(d)
	case "abort":
		if _, err := r.pl.Abort(ctx, rest, false); err != nil {
			t.Fatal(err)
		}
	case "devices":
		ds, err := r.pl.Devices(ctx, rest)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			lines = append(lines, fmt.Sprintf("%s %s attempt %d %q", d.Device, d.State, d.Attempt, d.Error))
		}
	case "shadow":
		doc, err := r.eng.Read(ctx, device.ID(rest))
		fw := "none"
		if err == nil && doc.State.Desired["firmware"] != nil {
			b, _ := json.Marshal(doc.State.Desired["firmware"])
			fw = string(b)
		}
		lines = append(lines, "desired.firmware: "+fw)
	default:
		t.Fatalf("unknown transcript command %q", cmd)
	}
	return lines
}
