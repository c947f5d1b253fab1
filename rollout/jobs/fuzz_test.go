package jobs_test

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/rollout/jobs"
)

// FuzzHandleRequest: whatever a client publishes under a thing's jobs
// topics, the service answers at most once, on the request topic's
// /accepted or /rejected, with a JSON object; a rejection carries one of
// the AWS IoT Jobs codes, a message and a timestamp. Seeded with the
// requests of the transcripts.
func FuzzHandleRequest(f *testing.F) {
	files, _ := filepath.Glob("testdata/transcripts/*.txt")
	for _, file := range files {
		fh, err := os.Open(file)
		if err != nil {
			f.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			if fields := strings.SplitN(sc.Text(), " ", 4); len(fields) >= 3 && fields[0] == "pub" {
				payload := ""
				if len(fields) == 4 {
					payload = fields[3]
				}
				f.Add(strings.TrimPrefix(fields[2], "$aws/things/t1/jobs/"), []byte(payload))
			}
		}
		fh.Close()
	}
	r := newRig(f, func(c *jobs.Config) { c.DeviceRate = -1 })
	codes := map[string]bool{}
	for _, c := range []jobs.Code{jobs.CodeInvalidTopic, jobs.CodeInvalidJSON, jobs.CodeInvalidRequest,
		jobs.CodeInvalidStateTransition, jobs.CodeResourceNotFound, jobs.CodeVersionMismatch,
		jobs.CodeInternalError, jobs.CodeRequestThrottled, jobs.CodeTerminalStateReached} {
		codes[string(c)] = true
	}
	f.Fuzz(func(t *testing.T, suffix string, payload []byte) {
		topic := "$aws/things/t1/jobs/" + suffix
		r.svc.HandleRequest("t1", topic, payload)
		ms := r.rec.takeReplies()
		if len(ms) > 1 {
			t.Fatalf("%d replies to %q", len(ms), topic)
		}
		if len(ms) == 0 {
			return
		}
		m := ms[0]
		var rep map[string]any
		if err := json.Unmarshal(m.payload, &rep); err != nil {
			t.Fatalf("reply %s is not a JSON object: %v", m.payload, err)
		}
		switch m.topic {
		case topic + "/accepted":
		case topic + "/rejected":
			code, _ := rep["code"].(string)
			msg, _ := rep["message"].(string)
			if !codes[code] || msg == "" || rep["timestamp"] == nil {
				t.Fatalf("rejection %s: want an AWS code, a message and a timestamp", m.payload)
			}
		default:
			t.Fatalf("reply on %s to %s", m.topic, topic)
		}
	})
}
