package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/awssdktest"
	"github.com/umbra-iot/umbra/internal/waitfor"
	"github.com/umbra-iot/umbra/rollout"
)

// TestSDKJobsRollout (issue 12, tests and proof): a full AWS IoT Jobs
// execution driven by `umbra rollout create`, with the real SDKs and their
// default options over mTLS: the v1 SDK's jobs client (subscribeToJobs,
// startJobNotifications, job.inProgress, job.succeeded) and the v2 SDK's
// IotJobsClientv2 over MQTT 3.1.1 and MQTT 5 (next-execution and
// executions-changed streams, getPendingJobExecutions,
// startNextPendingJobExecution, updateJobExecution, describeJobExecution).
// Every device downloads the image through the job document's URL and
// checks its sha256; the rollout succeeds, and `umbra rollout status`
// shows it like any other.
func TestSDKJobsRollout(t *testing.T) {
	t.Parallel()
	srv := awssdktest.NewServer(t, awssdktest.Options{})
	secret, err := srv.Identity().CreateToken(t.Context(), identity.RoleOperator, "ops")
	if err != nil {
		t.Fatal(err)
	}
	api, token := "http://"+srv.HTTPAddr().String(), "ops:"+secret
	cli := func(args ...string) string {
		t.Helper()
		res := runCLI(t.Context(), "", append(args, "--api", api, "--token", token)...)
		if res.err != nil {
			t.Fatalf("umbra %s: %v\n%s", strings.Join(args, " "), res.err, res.stderr)
		}
		return strings.TrimSpace(res.stdout)
	}
	image := filepath.Join(t.TempDir(), "fw-1.1.0.bin")
	if err := os.WriteFile(image, []byte(strings.Repeat("firmware 1.1.0 for AWS SDK devices\n", 2048)), 0o600); err != nil {
		t.Fatal(err)
	}
	cli("firmware", "upload", image, "--version", "1.1.0")
	img, err := srv.Firmware().Get(t.Context(), "1.1.0")
	if err != nil {
		t.Fatal(err)
	}

	// The devices start as their applications do, before any rollout.
	v1 := awssdktest.Start(t, "v1-jobs.js", srv.Device(t, "v1-thing").Env())
	v1.AwaitEvent("connect")
	if l := v1.AwaitEvent("notifications"); l["err"] != nil {
		t.Fatalf("v1 startJobNotifications: %v", l)
	}
	v2 := map[string]*awssdktest.Script{}
	for _, protocol := range []string{"mqtt311", "mqtt5"} {
		id := device.ID("v2-" + protocol)
		s := awssdktest.Start(t, "v2-jobs.js", append(srv.Device(t, id).Env(), "UMBRA_PROTOCOL="+protocol))
		s.AwaitEvent("connect")
		s.Send(map[string]any{"op": "streams"})
		for _, stream := range []string{"next", "changed"} {
			s.Await(stream+" stream established", func(l awssdktest.Line) bool {
				return l.Event() == "subscription" && l.Str("stream") == stream && l.Str("type") == "SubscriptionEstablished"
			})
		}
		var pending jobsPending
		v2Ok(t, s, map[string]any{"op": "pending"}).Decode(t, "resp", &pending)
		if len(pending.QueuedJobs)+len(pending.InProgressJobs) != 0 {
			t.Fatalf("%s: pending jobs before the rollout: %+v", id, pending)
		}
		v2[protocol] = s
	}

	id := cli("rollout", "create", "--firmware", "1.1.0", "--devices", "v1-thing,v2-mqtt311,v2-mqtt5")

	// v1: the SDK hands its firmware-update handler the job.
	job := v1.AwaitEvent("job")
	var doc jobDocument
	job.Decode(t, "document", &doc)
	if job.Str("id") != id || job.Str("operation") != "firmware-update" || doc.Version != "1.1.0" || doc.SHA256 != img.SHA256 || doc.Job != id+"/1" {
		t.Fatalf("v1 job %v: want job %s, operation firmware-update, the command of 1.1.0 (%s)", job, id, img.SHA256)
	}
	v1.Send(map[string]any{"op": "download", "job": id})
	checkDownload(t, "v1", v1.AwaitEvent("downloaded"), img.SHA256)
	v1.Send(map[string]any{"op": "inProgress", "job": id, "details": map[string]string{"step": "installing"}})
	if l := v1.AwaitEvent("updated"); l["err"] != nil {
		t.Fatalf("v1 inProgress: %v", l)
	}
	waitDeviceState(t, srv, id, "v1-thing", rollout.DeviceInstalling)
	v1.Send(map[string]any{"op": "succeeded", "job": id, "details": map[string]string{"version": "1.1.0"}})
	if l := v1.AwaitEvent("updated"); l["err"] != nil {
		t.Fatalf("v1 succeeded: %v", l)
	}

	// v2: the whole request-response API.
	for protocol, s := range v2 {
		thing := "v2-" + protocol
		next := s.Await("next execution", func(l awssdktest.Line) bool { return l.Event() == "next" })
		var ev struct {
			Execution *jobExecution `json:"execution"`
			Timestamp float64       `json:"timestamp"`
		}
		next.Decode(t, "message", &ev)
		if ev.Execution == nil || ev.Execution.JobID != id || ev.Execution.Status != "QUEUED" || ev.Execution.ExecutionNumber != 1 || ev.Timestamp < 1e9 {
			t.Fatalf("%s next-execution event %v: want job %s QUEUED, execution 1, a timestamp in seconds", thing, next, id)
		}
		changed := s.Await("executions changed", func(l awssdktest.Line) bool { return l.Event() == "changed" })
		if !strings.Contains(changed.String(), `"QUEUED":[{`) {
			t.Errorf("%s executions-changed event %v: want the job queued", thing, changed)
		}
		var started struct {
			Execution jobExecution `json:"execution"`
		}
		v2Ok(t, s, map[string]any{"op": "startNext", "details": map[string]string{"step": "download"}}).Decode(t, "resp", &started)
		x := started.Execution
		if x.Status != "IN_PROGRESS" || x.VersionNumber != 2 || x.JobDocument.SHA256 != img.SHA256 || x.JobDocument.Operation != "firmware-update" || x.StatusDetails["step"] != "download" {
			t.Fatalf("%s startNext: %+v; want IN_PROGRESS at version 2 with the job document", thing, x)
		}
		s.Send(map[string]any{"op": "download", "url": x.JobDocument.URL})
		checkDownload(t, thing, s.AwaitEvent("downloaded"), img.SHA256)
		var upd struct {
			ExecutionState struct {
				Status        string `json:"status"`
				VersionNumber int    `json:"versionNumber"`
			} `json:"executionState"`
		}
		v2Ok(t, s, map[string]any{"op": "update", "jobId": id, "status": "IN_PROGRESS", "expectedVersion": 2,
			"includeState": true, "details": map[string]string{"step": "installing"}}).Decode(t, "resp", &upd)
		if upd.ExecutionState.Status != "IN_PROGRESS" || upd.ExecutionState.VersionNumber != 3 {
			t.Fatalf("%s update IN_PROGRESS: %+v; want version 3", thing, upd)
		}
		// A stale expected version is a modeled VersionMismatch.
		if e := v2Rejected(t, s, map[string]any{"op": "update", "jobId": id, "status": "SUCCEEDED", "expectedVersion": 2}); e.Code != "VersionMismatch" || e.ExecutionState.VersionNumber != 3 {
			t.Errorf("%s update with a stale version: %+v; want VersionMismatch with version 3", thing, e)
		}
		// The reply and the notification that nothing is pending any more
		// come on different topics, in either order.
		s.Send(map[string]any{"op": "update", "jobId": id, "status": "SUCCEEDED", "expectedVersion": 3})
		replied, notified := false, false
		for !replied || !notified {
			l := s.Await("the SUCCEEDED reply and an empty next-execution event", func(l awssdktest.Line) bool {
				return l.Event() == "response" || l.Event() == "exception" || l.Event() == "next"
			})
			if l.Event() == "next" {
				var ev struct {
					Execution *jobExecution `json:"execution"`
				}
				l.Decode(t, "message", &ev)
				notified = ev.Execution == nil
				continue
			}
			if l["ok"] != true {
				t.Fatalf("%s update SUCCEEDED: %v", thing, l)
			}
			replied = true
		}
		if e := v2Rejected(t, s, map[string]any{"op": "describe", "jobId": id}); e.Code != "TerminalStateReached" {
			t.Errorf("%s describe of the finished execution: %+v; want TerminalStateReached", thing, e)
		}
	}

	out := cli("rollout", "status", id, "-o", "json")
	var st rollout.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("rollout status -o json: %v\n%s", err, out)
	}
	if st.State == rollout.StateRunning {
		st = waitRolloutState(t, srv, id)
	}
	if st.State != rollout.StateSucceeded || st.Counts[rollout.DeviceSucceeded] != 3 {
		t.Errorf("rollout %s: %s %v; want succeeded with 3 devices", id, st.State, st.Counts)
	}
	for _, s := range append([]*awssdktest.Script{v1}, v2["mqtt311"], v2["mqtt5"]) {
		if err := s.Wait(); err != nil {
			t.Errorf("script: %v", err)
		}
	}
	// None of them got a firmware command in its shadow.
	for _, thing := range []device.ID{"v1-thing", "v2-mqtt311", "v2-mqtt5"} {
		if d, err := srv.Engine().Read(t.Context(), thing); err == nil && d.State.Desired["firmware"] != nil {
			t.Errorf("%s's shadow has desired.firmware, want none for a Jobs device", thing)
		}
	}
}

// jobDocument is the job document Umbra delivers.
type jobDocument struct {
	Operation string `json:"operation"`
	Version   string `json:"version"`
	URL       string `json:"url"`
	SHA256    string `json:"sha256"`
	Job       string `json:"job"`
}

type jobExecution struct {
	JobID           string            `json:"jobId"`
	Status          string            `json:"status"`
	StatusDetails   map[string]string `json:"statusDetails"`
	VersionNumber   int               `json:"versionNumber"`
	ExecutionNumber int               `json:"executionNumber"`
	JobDocument     jobDocument       `json:"jobDocument"`
}

type jobsPending struct {
	InProgressJobs []jobExecution `json:"inProgressJobs"`
	QueuedJobs     []jobExecution `json:"queuedJobs"`
}

// jobsError is a rejection as the v2 SDK hands it over (modeledError).
type jobsError struct {
	Code           string `json:"code"`
	Message        string `json:"message"`
	ExecutionState struct {
		Status        string `json:"status"`
		VersionNumber int    `json:"versionNumber"`
	} `json:"executionState"`
}

// v2Ok sends a v2-jobs.js command and returns its successful response.
func v2Ok(t *testing.T, s *awssdktest.Script, cmd map[string]any) awssdktest.Line {
	t.Helper()
	s.Send(cmd)
	l := s.Await(fmt.Sprintf("response to %v", cmd), func(l awssdktest.Line) bool {
		return l.Event() == "response" || l.Event() == "exception"
	})
	if l["ok"] != true {
		t.Fatalf("v2 %v: %v; want success", cmd, l)
	}
	return l
}

// v2Rejected sends a command and returns the modeled error of its rejection.
func v2Rejected(t *testing.T, s *awssdktest.Script, cmd map[string]any) jobsError {
	t.Helper()
	s.Send(cmd)
	l := s.Await(fmt.Sprintf("response to %v", cmd), func(l awssdktest.Line) bool {
		return l.Event() == "response" || l.Event() == "exception"
	})
	var e struct {
		Modeled *jobsError `json:"modeled"`
	}
	l.Decode(t, "error", &e)
	if l["ok"] != false || e.Modeled == nil {
		t.Fatalf("v2 %v: %v; want a modeled rejection", cmd, l)
	}
	return *e.Modeled
}

func checkDownload(t *testing.T, who string, l awssdktest.Line, sha string) {
	t.Helper()
	if l["status"] != float64(200) || l.Str("sha256") != sha {
		t.Fatalf("%s download: %v; want 200 with sha256 %s", who, l, sha)
	}
}

// pollUntil polls cond (another process's requests are no event this
// test can wait on) until it holds, for at most awssdktest.Timeout.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitfor.Poll(t, awssdktest.Timeout, what, cond)
}

// waitDeviceState waits until thing is in state s in rollout id.
func waitDeviceState(t *testing.T, srv *awssdktest.Server, id string, thing device.ID, s rollout.DeviceState) {
	t.Helper()
	pollUntil(t, fmt.Sprintf("%s %s in %s", thing, s, id), func() bool {
		ds, err := srv.Planner().Devices(t.Context(), id, s)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if d.Device == thing {
				return true
			}
		}
		return false
	})
}

// waitRolloutState waits until rollout id is no longer active.
func waitRolloutState(t *testing.T, srv *awssdktest.Server, id string) rollout.Status {
	t.Helper()
	var st rollout.Status
	pollUntil(t, "end of rollout "+id, func() bool {
		var err error
		if st, err = srv.Planner().Get(t.Context(), id); err != nil {
			t.Fatal(err)
		}
		return !st.State.Active()
	})
	return st
}
