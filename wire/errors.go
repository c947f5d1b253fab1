package wire

// ErrorBody is the JSON of every error answer: {"code":N,"message":"…"},
// with Code equal to the HTTP status, plus the fields some errors carry.
type ErrorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	// Rollout names the rollout that uses a firmware version (409 on
	// DELETE /v1/firmware/{version}), or that holds a device (409 on
	// rollout requests).
	Rollout string `json:"rollout,omitempty"`
	// Incompatible lists (up to 100) the target devices whose hardware
	// model differs from the image's (409 on POST /v1/rollouts); Message
	// gives the total.
	Incompatible []IncompatibleDevice `json:"incompatible,omitempty"`
	// Problems lists every bad device of a bulk import (400 on POST
	// /v1/identities/devices): nothing was imported.
	Problems []ImportProblem `json:"problems,omitempty"`
	// DesiredBy counts the devices whose desired firmware is the version
	// (409 on DELETE /v1/firmware/{version} without ?force=true);
	// Devices names up to 10 of them.
	DesiredBy int      `json:"desired_by,omitempty"`
	Devices   []string `json:"devices,omitempty"`
	// ClientToken and Timestamp (Unix seconds) are set on the rejections
	// of shadow requests, as on the MQTT rejected topics.
	ClientToken string `json:"clientToken,omitempty"`
	Timestamp   int64  `json:"timestamp,omitempty"`
}

// Health is the body of GET /healthz.
type Health struct {
	Status string `json:"status"` // "ok"
}
