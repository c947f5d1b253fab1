package shadow

import (
	"bytes"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// Limits on a request, applied before any state changes.
const (
	MaxClientTokenLen = 64 // bytes, as AWS IoT
	maxKeyLen         = 128
)

// updateRequest is a parsed, validated update request.
type updateRequest struct {
	clientToken string
	hasVersion  bool
	version     Version
	// clearState is true for {"state": null}: both sections are removed.
	clearState bool
	// Sections as sent. has* tells whether the request named the section
	// (a named nil section removes it).
	desired, reported       map[string]any
	hasDesired, hasReported bool
}

// tokenOnly extracts the clientToken of a request for get and delete, whose
// body is optional. An empty body is valid.
func parseTokenOnly(payload []byte) (string, *RequestError) {
	if len(bytes.TrimSpace(payload)) == 0 {
		return "", nil
	}
	var top map[string]json.RawMessage
	if !utf8.Valid(payload) || decodeJSON(payload, &top) != nil || top == nil {
		return "", reject(ErrInvalid, "", "Invalid JSON")
	}
	return parseToken(top)
}

func parseToken(top map[string]json.RawMessage) (string, *RequestError) {
	raw, ok := top["clientToken"]
	if !ok {
		return "", nil
	}
	var tok string
	if err := json.Unmarshal(raw, &tok); err != nil {
		return "", reject(ErrInvalid, "", "Invalid clientToken")
	}
	if len(tok) > MaxClientTokenLen {
		return "", reject(ErrInvalid, "", "Invalid clientToken: longer than %d bytes", MaxClientTokenLen)
	}
	return tok, nil
}

// parseUpdate parses and validates an update request body. maxDepth bounds
// the nesting inside desired and reported.
func parseUpdate(payload []byte, maxDepth int) (updateRequest, *RequestError) {
	var req updateRequest
	var top map[string]json.RawMessage
	if !utf8.Valid(payload) {
		return req, reject(ErrInvalid, "", "Invalid JSON: payload is not UTF-8")
	}
	if err := decodeJSON(payload, &top); err != nil || top == nil {
		return req, reject(ErrInvalid, "", "Invalid JSON")
	}
	tok, rerr := parseToken(top)
	if rerr != nil {
		return req, rerr
	}
	req.clientToken = tok
	if raw, ok := top["version"]; ok {
		v, err := strconv.ParseUint(string(raw), 10, 63)
		if err != nil {
			return req, reject(ErrInvalid, tok, "Invalid version: must be a non-negative integer")
		}
		req.hasVersion, req.version = true, Version(v)
	}
	rawState, ok := top["state"]
	if !ok {
		return req, reject(ErrInvalid, tok, "Missing required node: state")
	}
	var state map[string]json.RawMessage
	if err := decodeJSON(rawState, &state); err != nil {
		return req, reject(ErrInvalid, tok, "State node must be an object")
	}
	if state == nil { // "state": null clears both sections
		req.clearState = true
		return req, nil
	}
	for k := range state {
		switch k {
		case "desired", "reported":
		default:
			return req, reject(ErrInvalid, tok, "State contains an invalid node: '%s'", k)
		}
	}
	var err *RequestError
	if req.desired, req.hasDesired, err = parseSection(state, "desired", tok, maxDepth); err != nil {
		return req, err
	}
	if req.reported, req.hasReported, err = parseSection(state, "reported", tok, maxDepth); err != nil {
		return req, err
	}
	return req, nil
}

func parseSection(state map[string]json.RawMessage, name, tok string, maxDepth int) (map[string]any, bool, *RequestError) {
	raw, ok := state[name]
	if !ok {
		return nil, false, nil
	}
	var v any
	if err := decodeJSON(raw, &v); err != nil {
		return nil, false, reject(ErrInvalid, tok, "Invalid JSON")
	}
	if v == nil {
		return nil, true, nil
	}
	o, ok := v.(map[string]any)
	if !ok {
		return nil, false, reject(ErrInvalid, tok, "%s node must be an object", capitalize(name))
	}
	if msg := validateValue(o, 1, maxDepth); msg != "" {
		return nil, false, reject(ErrInvalid, tok, "%s", msg)
	}
	return o, true, nil
}

// validateValue checks nesting depth, array elements and keys; it returns a
// message for the first problem found, or "".
func validateValue(v any, depth, maxDepth int) string {
	switch x := v.(type) {
	case map[string]any:
		if depth > maxDepth {
			return "JSON contains too many levels of nesting; maximum is " + strconv.Itoa(maxDepth)
		}
		for k, c := range x {
			if k == "" || len(k) > maxKeyLen {
				return "Invalid key: keys must be 1 to " + strconv.Itoa(maxKeyLen) + " bytes"
			}
			if msg := validateValue(c, depth+1, maxDepth); msg != "" {
				return msg
			}
		}
	case []any:
		if depth > maxDepth {
			return "JSON contains too many levels of nesting; maximum is " + strconv.Itoa(maxDepth)
		}
		for _, c := range x {
			if c == nil {
				return "Invalid JSON: arrays may not contain null elements"
			}
			if msg := validateValue(c, depth+1, maxDepth); msg != "" {
				return msg
			}
		}
	}
	return ""
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}
