package jobs_test

import (
	"testing"

	"github.com/umbra-iot/umbra/rollout/jobs"
)

// BenchmarkJobsUpdate: one UpdateJobExecution (IN_PROGRESS with details)
// through the service and the planner on a real bbolt file: parsed,
// applied, committed (fsync) and answered.
func BenchmarkJobsUpdate(b *testing.B) {
	r := newRig(b, func(c *jobs.Config) { c.DeviceRate = -1 })
	r.queued(b, "t1")
	payload := []byte(`{"status":"IN_PROGRESS","statusDetails":{"pct":"42"},"clientToken":"bench"}`)
	for b.Loop() {
		r.svc.HandleRequest("t1", "$aws/things/t1/jobs/r1/update", payload)
		if ms := r.rec.takeReplies(); len(ms) != 1 || ms[0].topic != "$aws/things/t1/jobs/r1/update/accepted" {
			b.Fatalf("replies %v", ms)
		}
	}
}

// BenchmarkJobsDescribeNext: one $next/get with the job document, minted
// for the request (a signed download URL), read from the planner.
func BenchmarkJobsDescribeNext(b *testing.B) {
	r := newRig(b, func(c *jobs.Config) { c.DeviceRate = -1 })
	r.queued(b, "t1")
	payload := []byte(`{"clientToken":"bench"}`)
	for b.Loop() {
		r.svc.HandleRequest("t1", "$aws/things/t1/jobs/$next/get", payload)
		if ms := r.rec.takeReplies(); len(ms) != 1 || ms[0].topic != "$aws/things/t1/jobs/$next/get/accepted" {
			b.Fatalf("replies %v", ms)
		}
	}
}
