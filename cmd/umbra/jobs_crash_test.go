package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/pahostore"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/wire"
)

// TestJobsCrashResume is the crash test of the AWS IoT Jobs path: a rollout
// of Jobs devices (AWS IoT Jobs agents written with paho, reconnecting and
// asking $next/get as an agent does) is killed with SIGKILL mid-batch and
// restarted on the same ports and data dir. The rollout completes, the
// counts add up, and no execution was delivered twice: every (job,
// execution number) a device saw always had the same queuedAt (it is the
// one execution recorded before anything was published about it), its
// version never went back, and execution numbers moved only forward.
func TestJobsCrashResume(t *testing.T) {
	const (
		n       = 30
		batch   = 10
		version = "1.1.0"
	)
	bin := buildUmbra(t)
	dataDir := t.TempDir()
	proc, mqttAddr, httpAddr := startServe(t, bin, dataDir, "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--http-addr", "127.0.0.1:0")
	api := rolloutAPI{url: "http://" + httpAddr, token: adminToken(t, dataDir)}
	api.mustDo(t, "POST", "/v1/firmware?version="+version, strings.Repeat("jobs crash test image\n", 4096), http.StatusCreated, nil)

	agents := make([]*jobsAgent, n)
	ids := make([]device.ID, n)
	for i := range agents {
		ids[i] = device.ID(fmt.Sprintf("jobs-%03d", i+1))
		var sec wire.SecretResponse
		api.mustDo(t, "POST", "/v1/devices", fmt.Sprintf(`{"id":%q}`, ids[i]), http.StatusCreated, &sec)
		agents[i] = startJobsAgent(t, "tcp://"+mqttAddr, ids[i], sec.Secret)
	}
	for _, a := range agents {
		a.waitReady(t)
	}

	var ro rollout.Rollout
	api.mustDo(t, "POST", "/v1/rollouts", mustJSON(t, map[string]any{
		"firmware": version, "devices": ids, "batch_size": batch, "retries": 2, "retry_backoff": "500ms", "device_timeout": "10s",
	}), http.StatusCreated, &ro)

	// Kill once devices of the second batch are under way.
	waitUntil(t, "devices of batch 2 under way", func() bool {
		started := 0
		for _, a := range agents[batch : 2*batch] {
			if a.started() {
				started++
			}
		}
		return started >= 3
	})
	if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	proc.Wait()
	under := 0
	for _, a := range agents {
		if a.started() {
			under++
		}
	}
	t.Logf("killed with %d of %d devices started", under, n)
	startServe(t, bin, dataDir, "--mqtt-addr", mqttAddr, "--ws-addr", "", "--http-addr", httpAddr)

	var st rollout.Status
	restarted := time.Now()
	waitUntil(t, "the rollout to finish after the restart", func() bool {
		st = rollout.Status{}
		api.mustDo(t, "GET", "/v1/rollouts/"+ro.ID, "", http.StatusOK, &st)
		return !st.State.Active()
	})
	t.Logf("rollout finished %v after the restart", time.Since(restarted).Round(time.Millisecond))
	checkSucceededOnce(t, st, n, n/batch)
	for _, a := range agents {
		a.mu.Lock()
		for _, c := range a.conflicts {
			t.Errorf("%s: %s", a.id, c)
		}
		if !a.done {
			t.Errorf("%s never had its SUCCEEDED accepted", a.id)
		}
		a.mu.Unlock()
	}
}

// waitUntil polls cond (the state is another process's) for at most
// rolloutCrashWait.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitfor.Poll(t, rolloutCrashWait, what, cond)
}

// jobsAgent is an AWS IoT Jobs device agent: on every execution it hears of
// (notify-next, or $next/get, which it asks at every connect) it starts it,
// "installs" and reports SUCCEEDED. It checks what it sees for
// contradictions.
type jobsAgent struct {
	id      device.ID
	c       paho.Client
	work    chan execSeen
	stop    chan struct{}
	replies sync.Map // client token → chan map[string]any
	ready   chan struct{}

	mu        sync.Mutex          // guards everything below
	seen      map[string]execSeen // "job/number" → the execution as last seen
	conflicts []string
	last      map[string]int  // job → highest execution number seen
	busy      map[string]bool // executions being worked on
	finished  map[string]bool // executions whose SUCCEEDED was accepted
	begun     bool
	done      bool
	n         int
}

type execSeen struct {
	Job      string `json:"jobId"`
	Number   int    `json:"executionNumber"`
	Version  int    `json:"versionNumber"`
	QueuedAt int64  `json:"queuedAt"`
	Status   string `json:"status"`
}

func startJobsAgent(t *testing.T, url string, id device.ID, secret string) *jobsAgent {
	t.Helper()
	a := &jobsAgent{id: id, work: make(chan execSeen, 16), stop: make(chan struct{}), ready: make(chan struct{}),
		seen: map[string]execSeen{}, last: map[string]int{}, busy: map[string]bool{}, finished: map[string]bool{}}
	topic := func(s string) string { return "$aws/things/" + string(id) + "/jobs/" + s }
	var once sync.Once
	o := paho.NewClientOptions().SetStore(pahostore.New()).AddBroker(url).SetClientID(string(id)).SetUsername(string(id)).SetPassword(secret).
		SetProtocolVersion(4).SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).
		SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond).SetOrderMatters(false)
	o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { a.reply(m.Payload()) })
	o.SetOnConnectHandler(func(c paho.Client) {
		go func() { // not on paho's connect goroutine: it waits for SUBACKs
			tok := c.Subscribe(topic("notify-next"), 1, func(_ paho.Client, m paho.Message) {
				var p struct {
					Execution *execSeen `json:"execution"`
				}
				if json.Unmarshal(m.Payload(), &p) == nil && p.Execution != nil {
					a.hear(*p.Execution)
				}
			})
			tok.WaitTimeout(10 * time.Second)
			if x, ok := a.call(topic("$next/get"), map[string]any{}); ok && x != nil {
				a.hear(*x)
			}
			once.Do(func() { close(a.ready) })
		}()
	})
	a.c = paho.NewClient(o)
	a.c.Connect()
	t.Cleanup(func() { close(a.stop); a.c.Disconnect(100) })
	go func() {
		for {
			var x execSeen
			select {
			case <-a.stop:
				return
			case x = <-a.work:
			}
			key := fmt.Sprintf("%s/%d", x.Job, x.Number)
			if x.Status == "QUEUED" {
				started, ok := a.call(topic("start-next"), map[string]any{"statusDetails": map[string]string{"step": "download"}})
				if ok && started != nil {
					a.hear(*started)
					x = *started
				}
				if !ok || started == nil || fmt.Sprintf("%s/%d", x.Job, x.Number) != key {
					a.idle(key) // the server went away: $next/get at the reconnect brings it back
					continue
				}
			}
			a.mu.Lock()
			a.begun = true
			a.mu.Unlock()
			time.Sleep(100 * time.Millisecond) // the install
			upd := func(status string) bool {
				_, ok := a.call(topic(x.Job+"/update"), map[string]any{"status": status, "executionNumber": x.Number})
				return ok
			}
			if upd("IN_PROGRESS") && upd("SUCCEEDED") {
				a.mu.Lock()
				a.done, a.finished[key] = true, true
				a.mu.Unlock()
			}
			a.idle(key)
		}
	}()
	return a
}

func (a *jobsAgent) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-a.ready:
	case <-time.After(rolloutCrashWait):
		t.Fatalf("%s did not connect", a.id)
	}
}

func (a *jobsAgent) started() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.begun
}

// hear records an execution and checks it against what was seen before,
// then queues it for work if it is pending and nobody works on it.
func (a *jobsAgent) hear(x execSeen) {
	key := fmt.Sprintf("%s/%d", x.Job, x.Number)
	a.mu.Lock()
	prev, known := a.seen[key]
	switch {
	case known && prev.QueuedAt != x.QueuedAt:
		a.conflicts = append(a.conflicts, fmt.Sprintf("execution %s delivered twice: queued at %d, then at %d", key, prev.QueuedAt, x.QueuedAt))
	case known && x.Version < prev.Version:
		a.conflicts = append(a.conflicts, fmt.Sprintf("execution %s went back from version %d to %d", key, prev.Version, x.Version))
	case x.Number < a.last[x.Job]:
		a.conflicts = append(a.conflicts, fmt.Sprintf("execution %s after execution %d", key, a.last[x.Job]))
	}
	a.seen[key] = x
	a.last[x.Job] = max(a.last[x.Job], x.Number)
	queue := (x.Status == "QUEUED" || x.Status == "IN_PROGRESS") && !a.busy[key] && !a.finished[key]
	if queue {
		a.busy[key] = true
	}
	a.mu.Unlock()
	if queue {
		select {
		case a.work <- x:
		case <-a.stop:
		}
	}
}

// idle marks execution key as no longer worked on.
func (a *jobsAgent) idle(key string) {
	a.mu.Lock()
	delete(a.busy, key)
	a.mu.Unlock()
}

// call publishes a request and waits for its reply; ok is false for a
// rejection or no reply (the server is down).
func (a *jobsAgent) call(topic string, body map[string]any) (*execSeen, bool) {
	a.mu.Lock()
	a.n++
	tok := fmt.Sprintf("%s-%d", a.id, a.n)
	a.mu.Unlock()
	body["clientToken"] = tok
	ch := make(chan map[string]any, 1)
	a.replies.Store(tok, ch)
	defer a.replies.Delete(tok)
	b, _ := json.Marshal(body)
	a.c.Publish(topic, 1, false, b)
	select {
	case p := <-ch:
		if p["code"] != nil {
			return nil, false
		}
		raw, _ := json.Marshal(p["execution"])
		var x *execSeen
		if p["execution"] != nil {
			x = new(execSeen)
			json.Unmarshal(raw, x)
		}
		return x, true
	case <-time.After(3 * time.Second):
		return nil, false
	}
}

func (a *jobsAgent) reply(payload []byte) {
	var p map[string]any
	if json.Unmarshal(payload, &p) != nil {
		return
	}
	tok, _ := p["clientToken"].(string)
	if ch, ok := a.replies.Load(tok); ok {
		select {
		case ch.(chan map[string]any) <- p:
		default:
		}
	}
}
