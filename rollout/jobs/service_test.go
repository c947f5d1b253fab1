package jobs_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/rollout"
	"github.com/umbra-iot/umbra/rollout/jobs"
)

func TestMain(m *testing.M) {
	// No goroutine of the service or of a planner outlives the tests.
	waitfor.Main(m, "umbra/rollout/jobs.(*Service)", "umbra/rollout.(*Planner)")
}

// reply is a decoded /rejected or /accepted payload.
type reply struct {
	Code           string          `json:"code"`
	Message        string          `json:"message"`
	ClientToken    string          `json:"clientToken"`
	Timestamp      int64           `json:"timestamp"`
	ExecutionState json.RawMessage `json:"executionState"`
}

// request sends one request as client and returns its only reply.
func (r *rig) request(t *testing.T, client, topic, payload string) (string, reply) {
	t.Helper()
	r.svc.HandleRequest(client, topic, []byte(payload))
	ms := r.rec.takeReplies()
	if len(ms) != 1 || ms[0].to != client {
		t.Fatalf("%s %s: replies %v, want one to %s", topic, payload, ms, client)
	}
	var rep reply
	if err := json.Unmarshal(ms[0].payload, &rep); err != nil {
		t.Fatalf("reply %s is not JSON: %v", ms[0].payload, err)
	}
	return ms[0].topic, rep
}

// queued starts a rollout of the Jobs device id and waits for its
// notifications.
func (r *rig) queued(t testing.TB, id device.ID) {
	t.Helper()
	if err := r.pl.MarkJobs(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if _, err := r.pl.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{id}}); err != nil {
		t.Fatal(err)
	}
	r.notification(t)
	r.notification(t)
}

// TestBadInputChangesNothing: every kind of bad request gets the AWS
// error shape on its /rejected topic, and the execution, the rollout's
// device records and its event log stay as they were.
func TestBadInputChangesNothing(t *testing.T) {
	r := newRig(t, nil)
	r.queued(t, "t1")
	if _, rep := r.request(t, "t1", "$aws/things/t1/jobs/r1/update", `{"status":"IN_PROGRESS","statusDetails":{"pct":"5"}}`); rep.Code != "" {
		t.Fatalf("IN_PROGRESS rejected: %+v", rep)
	}
	snapshot := func() (rollout.Execution, []rollout.DeviceStatus, []rollout.Event) {
		x, err := r.pl.DescribeExecution(t.Context(), "t1", "r1", 0)
		if err != nil {
			t.Fatal(err)
		}
		ds, err := r.pl.Devices(t.Context(), "r1")
		if err != nil {
			t.Fatal(err)
		}
		evs, err := r.pl.Events(t.Context(), "r1")
		if err != nil {
			t.Fatal(err)
		}
		return x, ds, evs
	}
	x0, d0, e0 := snapshot()
	const upd = "$aws/things/t1/jobs/r1/update"
	tests := []struct {
		name, topic, payload string
		code                 jobs.Code
		token                string // expected echo
	}{
		{"invalid UTF-8", upd, "{\"status\":\"SUCCEEDED\",\"clientToken\":\"a\xff\"}", jobs.CodeInvalidJSON, ""},
		{"truncated JSON", upd, `{"status":"SUCCEEDED"`, jobs.CodeInvalidJSON, ""},
		{"JSON string", upd, `"SUCCEEDED"`, jobs.CodeInvalidRequest, ""},
		{"JSON null", upd, `null`, jobs.CodeInvalidRequest, ""},
		{"status wrong type", upd, `{"status":true,"clientToken":"b"}`, jobs.CodeInvalidRequest, "b"},
		{"status TIMED_OUT", upd, `{"status":"TIMED_OUT","clientToken":"c"}`, jobs.CodeInvalidRequest, "c"},
		{"eleven details", upd, `{"status":"SUCCEEDED","statusDetails":{"a":"1","b":"1","c":"1","d":"1","e":"1","f":"1","g":"1","h":"1","i":"1","j":"1","k":"1"}}`, jobs.CodeInvalidRequest, ""},
		{"detail value too long", upd, `{"status":"SUCCEEDED","statusDetails":{"a":"` + strings.Repeat("x", 1025) + `"}}`, jobs.CodeInvalidRequest, ""},
		{"detail value with control character", upd, `{"status":"SUCCEEDED","statusDetails":{"a":"x\u0007"}}`, jobs.CodeInvalidRequest, ""},
		{"expected version negative", upd, `{"status":"SUCCEEDED","expectedVersion":-1}`, jobs.CodeInvalidRequest, ""},
		{"expected version huge", upd, `{"status":"SUCCEEDED","expectedVersion":1e30}`, jobs.CodeInvalidRequest, ""},
		{"version mismatch", upd, `{"status":"SUCCEEDED","expectedVersion":1,"clientToken":"d"}`, jobs.CodeVersionMismatch, "d"},
		{"unknown execution number", upd, `{"status":"SUCCEEDED","executionNumber":2}`, jobs.CodeResourceNotFound, ""},
		{"unknown job", "$aws/things/t1/jobs/r2/update", `{"status":"SUCCEEDED"}`, jobs.CodeResourceNotFound, ""},
		{"unserved operation", "$aws/things/t1/jobs/r1/delete", `{"clientToken":"e"}`, jobs.CodeInvalidTopic, "e"},
		{"job ID too long", "$aws/things/t1/jobs/" + strings.Repeat("r", 65) + "/update", `{"status":"SUCCEEDED"}`, jobs.CodeInvalidTopic, ""},
		{"start-next with bad details", "$aws/things/t1/jobs/start-next", `{"statusDetails":{"a":7}}`, jobs.CodeInvalidRequest, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			topic, rep := r.request(t, "t1", tc.topic, tc.payload)
			if topic != tc.topic+"/rejected" || rep.Code != string(tc.code) || rep.Message == "" || rep.Timestamp == 0 || rep.ClientToken != tc.token {
				t.Errorf("reply on %s: %+v; want %s/rejected with code %s, a message, a timestamp and token %q", topic, rep, tc.topic, tc.code, tc.token)
			}
			if withState := tc.code == jobs.CodeVersionMismatch; withState != (rep.ExecutionState != nil) {
				t.Errorf("executionState %s, want one only for VersionMismatch here", rep.ExecutionState)
			}
			x, ds, evs := snapshot()
			if !reflect.DeepEqual(x, x0) || !reflect.DeepEqual(ds, d0) || !reflect.DeepEqual(evs, e0) {
				t.Errorf("state changed:\n%+v\n%+v\n%d events\nwant\n%+v\n%+v\n%d events", x, ds, len(evs), x0, d0, len(e0))
			}
		})
	}
}

// TestThrottled: beyond its rate a thing's request is rejected
// RequestThrottled (and counted); another thing is not affected, and the
// bucket refills with time.
func TestThrottled(t *testing.T) {
	r := newRig(t, func(c *jobs.Config) { c.DeviceRate, c.DeviceBurst = 1, 2 })
	get := func(thing string) string {
		_, rep := r.request(t, thing, "$aws/things/"+thing+"/jobs/get", `{"clientToken":"x"}`)
		return rep.Code
	}
	for i, want := range []string{"", "", "RequestThrottled", "RequestThrottled"} {
		if got := get("t1"); got != want {
			t.Errorf("request %d: code %q, want %q", i+1, got, want)
		}
	}
	if got := get("t2"); got != "" {
		t.Errorf("another thing: code %q, want accepted", got)
	}
	r.clk.Add(time.Second)
	if got := get("t1"); got != "" {
		t.Errorf("a second later: code %q, want accepted", got)
	}
	if st := r.svc.Stats(); st.Throttled != 2 {
		t.Errorf("Stats.Throttled = %d, want 2", st.Throttled)
	}
}

// TestNotRequests: messages from the broker itself (the service's own
// notifications and replies, which its filters match) and reply or
// notification topics get no answer.
func TestNotRequests(t *testing.T) {
	r := newRig(t, nil)
	for _, tc := range []struct{ client, topic string }{
		{"", "$aws/things/t1/jobs/get"},
		{"", "$aws/things/t1/jobs/notify-next"},
		{"t1", "$aws/things/t1/jobs/notify"},
		{"t1", "$aws/things/t1/jobs/notify-next"},
		{"t1", "$aws/things/t1/jobs/get/accepted"},
		{"t1", "$aws/things/t1/jobs/start-next/rejected"},
		{"t1", "$aws/things/t1/jobs/r1/get/accepted"},
		{"t1", "$aws/things/t1/shadow/update"},
	} {
		r.svc.HandleRequest(tc.client, tc.topic, []byte(`{}`))
		if ms := r.rec.takeReplies(); len(ms) != 0 {
			t.Errorf("%q on %s: replies %v, want none", tc.client, tc.topic, ms)
		}
	}
	// An invalid thing name under a matching filter is answered (the ACL
	// lets only operators get that far).
	if topic, rep := r.request(t, "ops", "$aws/things/a b/jobs/get", `{}`); rep.Code != "InvalidTopic" || topic != "$aws/things/a b/jobs/get/rejected" {
		t.Errorf("invalid thing: %s %+v, want InvalidTopic", topic, rep)
	}
}

// TestSubscribeMarksOnlyTheThingItself: an operator subscribing to a
// thing's jobs topics does not make it a Jobs device (it is notified
// through its shadow); the thing's own subscription does.
func TestSubscribeMarksOnlyTheThingItself(t *testing.T) {
	r := newRig(t, nil)
	r.svc.HandleSubscribe("ops", []string{"$aws/things/d1/jobs/notify-next", "$aws/things/+/jobs/#"})
	r.svc.HandleSubscribe("d2", []string{"$aws/things/d2/shadow/#", "$aws/things/d2/jobs/notify-next"})
	if _, err := r.pl.Create(t.Context(), rollout.Spec{Firmware: "2.0.0", Devices: []device.ID{"d1", "d2"}}); err != nil {
		t.Fatal(err)
	}
	m := r.notification(t) // only d2 is notified through Jobs
	if !strings.HasPrefix(m.topic, "$aws/things/d2/jobs/") {
		t.Errorf("notification %s, want d2's", m)
	}
	r.notification(t)
	// No event here for a shadow write: poll.
	waitfor.Poll(t, 10*time.Second, "a firmware command in d1's shadow (it was not made a Jobs device by another client's subscription)", func() bool {
		doc, err := r.eng.Read(t.Context(), "d1")
		return err == nil && doc.State.Desired["firmware"] != nil
	})
	if _, err := r.eng.Read(t.Context(), "d2"); err == nil {
		t.Error("d2 has a shadow, want none: a Jobs device gets no command there")
	}
}

// TestClosedService: requests after Close are answered InternalError.
func TestClosedService(t *testing.T) {
	r := newRig(t, nil)
	if err := r.svc.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, rep := r.request(t, "t1", "$aws/things/t1/jobs/get", `{"clientToken":"z"}`); rep.Code != "InternalError" || rep.ClientToken != "z" {
		t.Errorf("after Close: %+v, want InternalError with the token", rep)
	}
	if err := r.svc.Close(t.Context()); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// TestNotificationsBounded: beyond MaxNotifications waiting things a
// change is dropped and counted; a thing already waiting is merged.
func TestNotificationsBounded(t *testing.T) {
	r := newRig(t, func(c *jobs.Config) { c.MaxNotifications = 1 })
	r.svc.Close(t.Context()) // no sending: the queue only fills
	r.svc.ExecutionChanged("a")
	r.svc.ExecutionChanged("a")
	r.svc.ExecutionChanged("b")
	if st := r.svc.Stats(); st.NotificationsDropped != 1 {
		t.Errorf("Stats.NotificationsDropped = %d, want 1", st.NotificationsDropped)
	}
}
