// Package jobs serves the AWS IoT Jobs device API over MQTT on top of the
// rollout planner, so that devices running the AWS IoT Device SDKs' jobs
// clients (v1 aws-iot-device-sdk jobs, v2 iotjobs) take part in Umbra
// rollouts unchanged.
//
// # Model
//
// A job is a rollout (job ID = rollout ID) and an execution is one attempt
// of it on one thing (execution number = attempt); see rollout.Execution.
// The planner's device record stays the source of truth: this package
// only speaks the wire protocol and calls the narrow Planner interface.
// The job document is the firmware command (firmware.Command's JSON form:
// version, hw, url, sha256, size, signature, job) plus
// "operation":"firmware-update"; it is minted at each delivery
// (notify-next, $next/get and <jobId>/get, start-next, update with
// includeJobDocument), so its download URL is always fresh however long
// the job waited in the queue.
//
// # Topics
//
// Under J = $aws/things/<thing>/jobs:
//
//	J/get                     GetPendingJobExecutions
//	J/start-next              StartNextPendingJobExecution
//	J/$next/get, J/<job>/get  DescribeJobExecution
//	J/<job>/update            UpdateJobExecution
//	J/notify-next, J/notify   notifications, published when a thing's next
//	                          pending execution or pending list changes
//	                          (ExecutionChanged), never retained
//
// Each request is answered on its topic plus /accepted or /rejected, to
// the requesting client only (Publisher.SendTo), whether or not it
// subscribed: AWS does the same. A rejection is
// {"code","message","clientToken","timestamp","executionState"?} with a
// string code (Code): InvalidTopic for an operation Umbra does not serve,
// InvalidJson, InvalidRequest, InvalidStateTransition (an update of a
// final execution), ResourceNotFound, VersionMismatch, InternalError,
// RequestThrottled (the per-thing rate, Config.DeviceRate) and
// TerminalStateReached (a describe of a final execution). A planner that
// cannot be reached (rollout.ErrUnavailable: in cluster mode, no node holds
// the planner lease during a failover) is an InternalError whose message,
// MsgPlannerUnavailable, says to retry. Timestamps are epoch seconds. A
// request the planner refuses changes nothing.
//
// A thing becomes a Jobs device (rollout.Planner.MarkJobs) with its first
// Jobs request or its first subscription under its own jobs topics
// (HandleSubscribe); from then on the planner drives it through
// executions only, never through the desired.firmware delta.
//
// # Concurrency
//
// A Service is safe for concurrent use. HandleRequest runs on the
// requesting client's goroutine and waits for the planner (at most one of
// its passes) and, for an update, for the commit. Notifications are sent
// by the service's own goroutine, started by Open and stopped by Close; at
// most Config.MaxNotifications things wait for one, and a newer change of
// a waiting thing is merged into its pending notification.
package jobs
