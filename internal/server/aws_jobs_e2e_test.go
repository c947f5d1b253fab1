package server_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/rollout"
)

// End-to-end tests of the AWS IoT Jobs device API (issue 12 item 4): a
// whole Umbra with authentication on, rollouts created over the HTTP API,
// devices that are real paho clients speaking the Jobs topics.

// jobsDevice is a hand-written AWS IoT Jobs device. Like the v1 SDK, it
// subscribes to notify-next only and reads its replies from messages it
// never subscribed to (Umbra delivers them to the requester, as AWS does).
type jobsDevice struct {
	r       *awsRig
	id      device.ID
	c       paho.Client
	lost    lostChan
	next    <-chan brokertest.Message // notify-next
	replies chan brokertest.Message   // everything it did not subscribe to
	n       int                       // client tokens
}

func (r *awsRig) jobsDevice(t *testing.T, id device.ID) *jobsDevice {
	t.Helper()
	if _, ok := r.secrets[id]; !ok {
		secret, err := r.Identity().AddDevice(t.Context(), id, nil)
		if err != nil {
			t.Fatal(err)
		}
		r.secrets[id] = secret
	}
	d := &jobsDevice{r: r, id: id, lost: make(lostChan, 1), replies: make(chan brokertest.Message, 64)}
	d.c = brokertest.Connect(t, r.url, string(id), func(o *paho.ClientOptions) {
		o.SetUsername(string(id)).SetPassword(r.secrets[id]).SetProtocolVersion(4)
		o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			d.replies <- brokertest.Message{Topic: m.Topic(), Payload: m.Payload(), QoS: m.Qos(), Retained: m.Retained()}
		})
		o.SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case d.lost <- err:
			default:
			}
		})
	})
	d.next = brokertest.Subscribe(t, d.c, d.topic("notify-next"), 1)
	return d
}

func (d *jobsDevice) topic(suffix string) string {
	return "$aws/things/" + string(d.id) + "/jobs/" + suffix
}

// call sends a request on jobs/<suffix> with a fresh client token and
// returns whether it was accepted and the decoded reply.
func (d *jobsDevice) call(t *testing.T, suffix string, body map[string]any) (bool, map[string]any) {
	t.Helper()
	d.n++
	tok := fmt.Sprintf("%s-%d", d.id, d.n)
	if body == nil {
		body = map[string]any{}
	}
	body["clientToken"] = tok
	publishJSON(t, d.c, d.topic(suffix), body)
	deadline := time.Now().Add(waitTimeout)
	for {
		m := brokertest.Next(t, d.replies, time.Until(deadline))
		var p map[string]any
		if err := json.Unmarshal(m.Payload, &p); err != nil {
			t.Fatalf("%s: %q is not JSON: %v", m.Topic, m.Payload, err)
		}
		if p["clientToken"] != tok {
			continue
		}
		switch m.Topic {
		case d.topic(suffix + "/accepted"):
			return true, p
		case d.topic(suffix + "/rejected"):
			return false, p
		}
		t.Fatalf("reply to %s on %s", suffix, m.Topic)
	}
}

// mustCall is call for a request that must be accepted.
func (d *jobsDevice) mustCall(t *testing.T, suffix string, body map[string]any) map[string]any {
	t.Helper()
	ok, p := d.call(t, suffix, body)
	if !ok {
		t.Fatalf("%s %s rejected: %v", d.id, suffix, p)
	}
	return p
}

// rejected checks that a request is rejected with code, and returns the
// error payload.
func (d *jobsDevice) rejected(t *testing.T, suffix string, body map[string]any, code string) map[string]any {
	t.Helper()
	ok, p := d.call(t, suffix, body)
	if ok || p["code"] != code {
		t.Fatalf("%s %s: accepted %t %v, want rejected %s", d.id, suffix, ok, p, code)
	}
	return p
}

// nextExecution waits for a notify-next and returns its execution (nil
// for one without).
func (d *jobsDevice) nextExecution(t *testing.T) map[string]any {
	t.Helper()
	m := brokertest.Next(t, d.next, waitTimeout)
	if m.Retained {
		t.Errorf("notify-next retained")
	}
	var p struct {
		Timestamp float64        `json:"timestamp"`
		Execution map[string]any `json:"execution"`
	}
	if err := json.Unmarshal(m.Payload, &p); err != nil || p.Timestamp < 1e9 || p.Timestamp > 1e10 {
		t.Fatalf("notify-next %q: want a timestamp in seconds (%v)", m.Payload, err)
	}
	return p.Execution
}

// awaitNext reads notify-next messages until one's execution (nil for
// none) satisfies want, and returns it. Changes close together may be
// notified once, as their sum: only the last state is certain to come.
func (d *jobsDevice) awaitNext(t *testing.T, what string, want func(x map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		if x := d.nextExecution(t); want(x) {
			return x
		}
	}
	t.Fatalf("%s: no notify-next with %s", d.id, what)
	return nil
}

func noExecution(x map[string]any) bool { return x == nil }

// install downloads the job document's image and checks its checksum, as
// a device does before it flashes.
func (d *jobsDevice) install(t *testing.T, doc map[string]any) {
	t.Helper()
	if doc["operation"] != "firmware-update" {
		t.Fatalf("job document %v: operation %v, want firmware-update", doc, doc["operation"])
	}
	url, _ := doc["url"].(string)
	res, err := http.Get(url)
	if err != nil {
		t.Fatalf("download %s: %v", url, err)
	}
	defer res.Body.Close()
	t.Cleanup(http.DefaultClient.CloseIdleConnections)
	b, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("download %s: %d %v", url, res.StatusCode, err)
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != doc["sha256"] {
		t.Fatalf("downloaded image's sha256 %x, want %v", sum, doc["sha256"])
	}
}

// createRollout creates a rollout over the HTTP API as the operator.
func (r *awsRig) createRollout(t *testing.T, body string) string {
	t.Helper()
	code, b := r.httpDo(t, r.opToken, "POST", "/v1/rollouts", body)
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/rollouts %s: %d %s", body, code, b)
	}
	var ro rollout.Rollout
	if err := json.Unmarshal(b, &ro); err != nil {
		t.Fatal(err)
	}
	return ro.ID
}

// rolloutStatus reads GET /v1/rollouts/{id} until cond holds.
func (r *awsRig) rolloutStatus(t *testing.T, id, what string, cond func(rollout.Status) bool) rollout.Status {
	t.Helper()
	var st rollout.Status
	eventually(t, "rollout "+id+" "+what, func() string {
		code, b := r.httpDo(t, r.intToken, "GET", "/v1/rollouts/"+id, "")
		if code != http.StatusOK {
			t.Fatalf("GET /v1/rollouts/%s: %d %s", id, code, b)
		}
		st = rollout.Status{}
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatal(err)
		}
		if cond(st) {
			return ""
		}
		return fmt.Sprintf("state %s (%s), counts %v", st.State, st.Reason, st.Counts)
	})
	return st
}

func (r *awsRig) upload(t *testing.T, v string) firmware.Image {
	t.Helper()
	img, err := r.Firmware().Upload(t.Context(), firmware.UploadRequest{Version: v},
		strings.NewReader(strings.Repeat("umbra firmware "+v+"\n", 1024)))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestAWSJobsMixedRollout: one rollout created over the HTTP API holds a
// delta device and three Jobs devices. The Jobs devices never get a
// firmware delta; one succeeds (start-next, download, IN_PROGRESS,
// SUCCEEDED), one fails its first execution and succeeds on the retry,
// one rejects the job (never retried). The rollout's status, devices and
// events show the Jobs devices like any other.
func TestAWSJobsMixedRollout(t *testing.T) {
	t.Parallel()
	r := mustOpenAWSRig(t, nil)
	img := r.upload(t, "1.1.0")

	// The delta device installs what its delta says.
	del, _ := r.device(t, "d1")
	brokertest.Subscribe(t, del, "state/d1/update/accepted", 1) // settles its session before the rollout
	deltas := brokertest.Subscribe(t, del, "state/d1/update/delta", 1)
	// The Jobs devices also echo every shadow delta into reported, as many
	// AWS apps do: they must receive no firmware delta to echo.
	devs := map[device.ID]*jobsDevice{}
	echoes := map[device.ID]<-chan brokertest.Message{}
	for _, id := range []device.ID{"j1", "f1", "x1"} {
		devs[id] = r.jobsDevice(t, id)
		echoes[id] = brokertest.Subscribe(t, devs[id].c, "$aws/things/"+string(id)+"/shadow/update/delta", 1)
	}
	id := r.createRollout(t, `{"firmware":"1.1.0","devices":["d1","j1","f1","x1"],"retries":1,"retry_backoff":"100ms"}`)

	m := brokertest.Next(t, deltas, waitTimeout)
	var delta struct {
		State struct {
			Firmware map[string]any `json:"firmware"`
		} `json:"state"`
	}
	if err := json.Unmarshal(m.Payload, &delta); err != nil || delta.State.Firmware["version"] != "1.1.0" {
		t.Fatalf("d1's delta %s, want the firmware command", m.Payload)
	}
	publishJSON(t, del, "state/d1/update", map[string]any{"state": map[string]any{"reported": map[string]any{
		"firmware": map[string]any{"version": "1.1.0", "state": "updated", "job": delta.State.Firmware["job"]}}}})

	// j1: the whole execution.
	j1 := devs["j1"]
	x := j1.nextExecution(t)
	if x["jobId"] != id || x["status"] != "QUEUED" || x["executionNumber"] != 1.0 || x["versionNumber"] != 1.0 {
		t.Fatalf("j1's notify-next execution %v, want job %s QUEUED, execution 1, version 1", x, id)
	}
	p := j1.mustCall(t, "start-next", map[string]any{"statusDetails": map[string]any{"step": "download"}})
	ex, _ := p["execution"].(map[string]any)
	doc, _ := ex["jobDocument"].(map[string]any)
	if ex["status"] != "IN_PROGRESS" || ex["versionNumber"] != 2.0 || doc["sha256"] != img.SHA256 || doc["job"] != id+"/1" {
		t.Fatalf("start-next: %v, want IN_PROGRESS at version 2 with the document of %s", p, img.SHA256)
	}
	j1.install(t, doc)
	j1.mustCall(t, id+"/update", map[string]any{"status": "IN_PROGRESS", "statusDetails": map[string]any{"step": "installing"}, "expectedVersion": 2})
	if st := r.rolloutStatus(t, id, "to show j1 installing", func(st rollout.Status) bool {
		return st.Counts[rollout.DeviceInstalling] == 1
	}); st.State != rollout.StateRunning {
		t.Fatalf("rollout %s, want running", st.State)
	}
	p = j1.mustCall(t, id+"/update", map[string]any{"status": "SUCCEEDED", "expectedVersion": 3, "includeJobExecutionState": true})
	if es, _ := p["executionState"].(map[string]any); es["status"] != "SUCCEEDED" || es["versionNumber"] != 4.0 {
		t.Errorf("update SUCCEEDED: %v, want executionState SUCCEEDED at version 4", p)
	}
	if x := j1.nextExecution(t); x != nil {
		t.Errorf("notify-next after SUCCEEDED carries %v, want no execution", x)
	}

	// f1: FAILED, then a new execution after the backoff, then SUCCEEDED.
	f1 := devs["f1"]
	if x := f1.nextExecution(t); x["executionNumber"] != 1.0 {
		t.Fatalf("f1: %v, want execution 1", x)
	}
	f1.mustCall(t, id+"/update", map[string]any{"status": "FAILED", "statusDetails": map[string]any{"reason": "download dropped"}})
	x = f1.awaitNext(t, "the retry", func(x map[string]any) bool { return x != nil })
	doc, _ = x["jobDocument"].(map[string]any)
	if x["executionNumber"] != 2.0 || x["versionNumber"] != 1.0 || doc["job"] != id+"/2" {
		t.Fatalf("f1's retry %v, want execution 2 at version 1, job %s/2", x, id)
	}
	f1.install(t, doc)
	f1.mustCall(t, id+"/update", map[string]any{"status": "SUCCEEDED", "executionNumber": 2})
	p = f1.rejected(t, id+"/get", map[string]any{"executionNumber": 1}, "TerminalStateReached")
	if es, _ := p["executionState"].(map[string]any); es["status"] != "FAILED" {
		t.Errorf("f1's execution 1: %v, want FAILED", p)
	}

	// x1: REJECTED, final despite the retries.
	x1 := devs["x1"]
	x1.nextExecution(t)
	x1.mustCall(t, id+"/update", map[string]any{"status": "REJECTED", "statusDetails": map[string]any{"reason": "wrong board"}})
	x1.nextExecution(t)
	p = x1.rejected(t, id+"/update", map[string]any{"status": "IN_PROGRESS"}, "InvalidStateTransition")
	if es, _ := p["executionState"].(map[string]any); es["status"] != "REJECTED" {
		t.Errorf("update after REJECTED: %v, want the REJECTED state", p)
	}

	st := r.rolloutStatus(t, id, "to finish", func(st rollout.Status) bool { return !st.State.Active() })
	if st.State != rollout.StateFailed || st.Counts[rollout.DeviceSucceeded] != 3 || st.Counts[rollout.DeviceFailed] != 1 {
		t.Errorf("rollout %s %v, want failed with 3 succeeded and 1 failed", st.State, st.Counts)
	}
	if len(st.Failing) != 1 || st.Failing[0].Device != "x1" || st.Failing[0].Error != "rejected: reason=wrong board" {
		t.Errorf("failing %+v, want x1 with its status details", st.Failing)
	}
	for jid, d := range devs {
		stillConnected(t, string(jid), d.c, d.lost)
		doc, err := r.Engine().Read(t.Context(), jid)
		if err == nil && doc.State.Desired["firmware"] != nil {
			t.Errorf("%s's shadow has desired.firmware %v, want none for a Jobs device", jid, doc.State.Desired["firmware"])
		}
		select {
		case m := <-echoes[jid]:
			t.Errorf("%s got a shadow delta %s, want none", jid, m.Payload)
		default:
		}
	}
}

// TestAWSJobsTimeoutAndAbort: a silent Jobs device times out (TIMED_OUT,
// notify-next without an execution); an abort over the HTTP API cancels a
// queued execution (CANCELED).
func TestAWSJobsTimeoutAndAbort(t *testing.T) {
	t.Parallel()
	r := mustOpenAWSRig(t, nil)
	r.upload(t, "1.1.0")
	s1, c1 := r.jobsDevice(t, "s1"), r.jobsDevice(t, "c1")
	slow := r.createRollout(t, `{"firmware":"1.1.0","devices":["s1"],"device_timeout":"1s"}`)
	other := r.createRollout(t, `{"firmware":"1.1.0","devices":["c1"]}`)
	c1.nextExecution(t)
	s1.awaitNext(t, "nothing pending after the timeout", noExecution)
	p := s1.rejected(t, slow+"/get", nil, "TerminalStateReached")
	if es, _ := p["executionState"].(map[string]any); es["status"] != "TIMED_OUT" {
		t.Errorf("s1's execution: %v, want TIMED_OUT", p)
	}
	r.rolloutStatus(t, slow, "to fail", func(st rollout.Status) bool { return st.State == rollout.StateFailed })

	if code, b := r.httpDo(t, r.opToken, "POST", "/v1/rollouts/"+other+"/abort", ""); code != http.StatusOK {
		t.Fatalf("abort: %d %s", code, b)
	}
	if x := c1.nextExecution(t); x != nil {
		t.Fatalf("c1's notify-next after the abort: %v, want none pending", x)
	}
	p = c1.rejected(t, other+"/update", map[string]any{"status": "SUCCEEDED"}, "InvalidStateTransition")
	if es, _ := p["executionState"].(map[string]any); es["status"] != "CANCELED" {
		t.Errorf("c1's execution: %v, want CANCELED", p)
	}
	if ok, p := c1.call(t, "get", nil); !ok || len(p["queuedJobs"].([]any))+len(p["inProgressJobs"].([]any)) != 0 {
		t.Errorf("c1's pending jobs: %v, want none", p)
	}
}

// TestAWSJobsRules: a device is answered, never disconnected, on its own
// jobs topics (InvalidTopic for an operation Umbra does not serve); it
// may neither publish Umbra's replies and notifications nor touch another
// thing's jobs; replies reach it without a subscription, and at its
// subscription's QoS with one (the v2 SDK's …/get/+).
func TestAWSJobsRules(t *testing.T) {
	t.Parallel()
	r := mustOpenAWSRig(t, nil)
	a := r.jobsDevice(t, "a")
	r.jobsDevice(t, "b")

	p := a.rejected(t, "list", nil, "InvalidTopic")
	if msg, _ := p["message"].(string); msg == "" {
		t.Errorf("InvalidTopic without a message: %v", p)
	}
	a.rejected(t, "r1/cancel", nil, "InvalidTopic")
	a.rejected(t, "r7/get", nil, "ResourceNotFound")
	if ok, p := a.call(t, "$next/get", nil); !ok || p["execution"] != nil {
		t.Errorf("$next/get with nothing pending: %t %v, want accepted without an execution", ok, p)
	}
	stillConnected(t, "a", a.c, a.lost)

	for _, filter := range []string{"$aws/things/b/jobs/notify-next", "$aws/things/+/jobs/notify-next", "$aws/things/b/jobs/#"} {
		if subscribeGranted(t, a.c, filter) {
			t.Errorf("a may subscribe to %s", filter)
		}
	}
	if !subscribeGranted(t, a.c, "$aws/things/a/jobs/get/+") {
		t.Fatal("a may not subscribe to its own jobs/get/+")
	}
	// With a subscription, the reply arrives on it (not the default handler).
	sub := brokertest.Subscribe(t, a.c, "$aws/things/a/jobs/start-next/+", 0)
	publishJSON(t, a.c, a.topic("start-next"), map[string]any{"clientToken": "sub-1"})
	if m := brokertest.Next(t, sub, waitTimeout); m.Topic != a.topic("start-next/accepted") || m.QoS != 0 {
		t.Errorf("start-next reply %v, want start-next/accepted at the subscription's QoS 0", m)
	}

	// Publishing Umbra's topics or b's is refused; at QoS 0 it is dropped
	// (QoS 1 would disconnect an MQTT 3.1.1 client, as for any refused
	// publish), and b sees nothing.
	bNotes := brokertest.Subscribe(t, r.operator(t, "ops-watch"), "$aws/things/b/jobs/#", 1)
	for _, topic := range []string{"$aws/things/a/jobs/notify-next", "$aws/things/a/jobs/get/accepted", "$aws/things/b/jobs/start-next", "$aws/things/b/jobs/r1/update"} {
		tok := a.c.Publish(topic, 0, false, `{"clientToken":"forged"}`)
		tok.WaitTimeout(brokertest.Timeout)
	}
	// A barrier: the operator sees its own request after anything a got through.
	op := r.operator(t, "ops-1")
	brokertest.Publish(t, op, "$aws/things/b/jobs/get", 1, []byte(`{"clientToken":"op-1"}`))
	if m := brokertest.Next(t, bNotes, waitTimeout); m.Topic != "$aws/things/b/jobs/get" || !strings.Contains(string(m.Payload), "op-1") {
		t.Errorf("on b's jobs topics the operator saw %v first, want its own request (a's forged publishes refused)", m)
	}
	stillConnected(t, "a", a.c, a.lost)
}
