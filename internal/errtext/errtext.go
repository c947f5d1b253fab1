package errtext

import "strings"

// packages are the names of Umbra's packages that prefix their errors.
var packages = map[string]bool{
	"boltstore": true, "rollout": true, "firmware": true, "identity": true, "shadow": true,
	"device": true, "policy": true, "client": true, "rolloutclient": true, "shadowclient": true,
	"jobs": true, "httpapi": true, "broker": true, "brokerauth": true, "server": true,
}

// steps are the internal operations that prefix an error with their
// argument ("get 1.2.0: …", "load r1: …").
var steps = map[string]bool{
	"get": true, "load": true, "put": true, "save": true, "create": true, "delete": true,
	"rollback": true, "pause": true, "resume": true, "abort": true, "retry": true,
	"enroll": true, "rotate": true, "remove": true, "revoke": true, "list": true, "update": true,
}

// Strip drops the ": "-separated segments of msg that are only a package
// name ("boltstore") or an internal step with at most one argument ("get
// 1.2.0"), and repeated segments. The last segment always stays.
func Strip(msg string) string {
	segs := strings.Split(msg, ": ")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		if !last && internal(s) {
			continue
		}
		if n := len(out); n > 0 && out[n-1] == s {
			continue
		}
		out = append(out, s)
	}
	return strings.Join(out, ": ")
}

// internal reports whether a segment only names a package or a step.
func internal(seg string) bool {
	if packages[seg] {
		return true
	}
	verb, arg, hasArg := strings.Cut(seg, " ")
	return steps[verb] && (!hasArg || !strings.ContainsAny(arg, " "))
}
