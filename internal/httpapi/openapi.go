package httpapi

import (
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// The OpenAPI 3 document of the HTTP API, served at GET /v1/openapi.json
// (no credential needed: it describes the API, it holds no data). It is
// built from apiRoutes, one entry per route that umbra serve registers
// (the API's own and the mounts internal/server adds: identities, tokens,
// downloads, metrics). TestOpenAPIMatchesRoutes (cmd/umbra) fails when a
// registered route is missing from apiRoutes or apiRoutes names one that
// is not registered. The bodies are described by name (the Go types of
// package wire, whose fields docs/ lists), not by full schemas.

// OpenAPIPath is where the document is served.
const OpenAPIPath = "/v1/openapi.json"

// routeDoc documents one route.
type routeDoc struct {
	pattern string // "METHOD /path/{param}", as registered
	summary string
	tag     string
	auth    string // "operator", "integrator", "device", "none", "url" (signed URL)
	body    string // request body: "" none, else its media type and wire type, e.g. "application/json wire.EnrollRequest"
	answer  string // the answer's wire type, "" for none (204) or not JSON
	query   []string
}

// apiRoutes lists every route of umbra serve.
var apiRoutes = []routeDoc{
	{"GET /healthz", "Liveness: {\"status\":\"ok\"}", "meta", "none", "", "wire.Health", nil},
	{"GET " + OpenAPIPath, "This document", "meta", "none", "", "OpenAPI 3 document", nil},
	{"GET /v1", "Where to start: links to this document and the resources", "meta", "none", "", "{openapi, health, resources, docs}", nil},
	{"GET /metrics", "Prometheus metrics (text exposition format)", "meta", "none", "", "", nil},
	{"GET /v1/cluster", "The cluster's status: its nodes with their connection counts, where rollouts are planned, the store buckets' health (docs/cluster.md); a single-node server lists itself", "meta", "integrator", "", "wire.ClusterStatus", nil},

	{"GET /v1/devices", "List devices in ID order (paged); on umbra serve from the fleet index: the enrolled devices and those with a shadow, filtered, with the match count and the fleet's totals (wire.FleetList)", "devices", "integrator", "", "wire.FleetList", []string{"limit", "cursor", "selector", "online", "firmware", "state", "q", "id"}},
	{"GET /v1/events", "The live feed as Server-Sent Events: shadow accepted, delta and delete, presence, rollout events and statuses (docs/console.md); capped per token and in all (429)", "devices", "integrator", "", "text/event-stream", []string{"kinds", "devices", "rollout"}},
	{"GET /{$}", "The web console's page (docs/console.md)", "console", "none", "", "", nil},
	{"GET /console/app.js", "The web console's script", "console", "none", "", "", nil},
	{"GET /console/style.css", "The web console's style sheet", "console", "none", "", "", nil},
	{"POST /v1/devices", "Enrol a device: its secret (shown once), or bind a certificate", "devices", "operator", "application/json wire.EnrollRequest", "wire.SecretResponse", nil},
	{"DELETE /v1/devices/{id}", "Remove a device: its sessions lose their rights, its download URLs answer 410", "devices", "operator", "", "", nil},
	{"POST /v1/devices/{id}/rotate", "Give a device a new secret (shown once)", "devices", "operator", "", "wire.SecretResponse", nil},
	{"GET /v1/devices/{id}/shadow", "Get a device's shadow document (?name= for a named shadow)", "shadows", "integrator", "", "wire.Shadow", []string{"name"}},
	{"POST /v1/devices/{id}/shadow", "Update a device's shadow (?name= for a named shadow)", "shadows", "operator", "application/json wire.ShadowUpdate", "wire.Shadow", []string{"name"}},
	{"DELETE /v1/devices/{id}/shadow", "Delete a device's shadow (?name= for a named shadow)", "shadows", "operator", "", "wire.Shadow", []string{"name"}},
	{"GET /v1/devices/{id}/shadows", "List a device's shadows: the classic one and its named ones", "shadows", "integrator", "", "wire.ShadowList", nil},
	{"GET /v1/identities/devices", "List enrolled devices with their labels and presence (to move under /v1/devices)", "devices", "operator", "", "wire.IdentityList", nil},
	{"POST /v1/identities/devices", "Enrol many devices at once, all or none (dry_run checks only)", "devices", "operator", "application/json wire.ImportRequest", "wire.ImportResponse", nil},
	{"GET /v1/devices/{id}", "One device: enrolment, presence, classic shadow and firmware versions", "devices", "integrator", "", "wire.Device", nil},

	{"POST /v1/tokens", "Create an operator or integrator token (shown once)", "tokens", "operator", "application/json wire.TokenRequest", "wire.TokenResponse", nil},
	{"GET /v1/tokens", "List tokens (never their secrets)", "tokens", "operator", "", "wire.TokenList", nil},
	{"DELETE /v1/tokens/{name}", "Revoke a token", "tokens", "operator", "", "", nil},

	{"POST /v1/firmware", "Upload a firmware image (raw body with ?version=&sha256=, or multipart)", "firmware", "operator", "application/octet-stream image", "wire.Image", []string{"version", "sha256", "hw", "notes"}},
	{"GET /v1/firmware", "List firmware images, lowest version first", "firmware", "integrator", "", "wire.ImageList", nil},
	{"GET /v1/firmware/{version}", "One image's metadata and signature; /v1/firmware/pubkey is the fleet public key (wire.PublicKey)", "firmware", "integrator", "", "wire.Image", nil},
	{"DELETE /v1/firmware/{version}", "Delete an image; 409 while a rollout uses it or devices desire it (unless ?force=true)", "firmware", "operator", "", "wire.DeletedImage", []string{"force"}},
	{"POST /v1/firmware/{version}/url", "Mint a short-lived download URL for one device", "firmware", "operator", "application/json wire.URLRequest", "wire.URLResponse", nil},
	{"POST /v1/firmware/{version}/assign", "Write the image's firmware command into one device's desired state", "firmware", "operator", "application/json wire.URLRequest", "wire.Shadow", nil},
	{"GET /fw/{sha256}", "Download an image with a signed URL (Range, ETag); 403 forged or expired, 410 deleted or revoked", "firmware", "url", "", "", []string{"d", "g", "e", "s"}},

	{"POST /v1/rollouts", "Create a batched rollout (?dry_run=true: the rollout as it would be created, nothing stored, 200)", "rollouts", "operator", "application/json wire.CreateRollout", "wire.Rollout", []string{"dry_run"}},
	{"GET /v1/rollouts", "List rollouts, newest first", "rollouts", "integrator", "", "wire.RolloutList", nil},
	{"GET /v1/rollouts/{id}", "A rollout's status: counts per state and per batch (batches numbered from 1), failing devices", "rollouts", "integrator", "", "wire.RolloutStatus", nil},
	{"GET /v1/rollouts/{id}/devices", "A rollout's targets with their states (paged, ?state= filters)", "rollouts", "integrator", "", "wire.RolloutDevices", []string{"state", "limit", "cursor"}},
	{"GET /v1/rollouts/{id}/events", "A rollout's event log (?after= a sequence number)", "rollouts", "integrator", "", "wire.RolloutEvents", []string{"after"}},
	{"POST /v1/rollouts/{id}/pause", "Pause a rollout", "rollouts", "operator", "", "wire.Rollout", nil},
	{"POST /v1/rollouts/{id}/resume", "Resume a paused rollout", "rollouts", "operator", "", "wire.Rollout", nil},
	{"POST /v1/rollouts/{id}/abort", "Abort a rollout ({\"rollback\":true} or ?rollback=true also rolls back)", "rollouts", "operator", "application/json wire.AbortRequest", "wire.Rollout", []string{"rollback"}},
	{"POST /v1/rollouts/{id}/rollback", "Roll back the devices that moved (409 when nothing can be rolled back)", "rollouts", "operator", "", "wire.Rollout", nil},
	{"POST /v1/rollouts/{id}/retry", "Start a new rollout over a finished one's failed devices", "rollouts", "operator", "", "wire.Rollout", nil},
}

// pathParam matches a {param} of a route's path.
var pathParam = regexp.MustCompile(`\{([a-z0-9_]+)\}`)

// openAPIDoc builds the document from apiRoutes.
func openAPIDoc() map[string]any {
	paths := map[string]map[string]any{}
	for _, rd := range apiRoutes {
		method, path, _ := strings.Cut(rd.pattern, " ")
		var params []any
		for _, m := range pathParam.FindAllStringSubmatch(path, -1) {
			params = append(params, map[string]any{"name": m[1], "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
		}
		for _, q := range rd.query {
			params = append(params, map[string]any{"name": q, "in": "query", "required": false, "schema": map[string]any{"type": "string"}})
		}
		op := map[string]any{
			"operationId": operationID(method, path),
			"summary":     rd.summary,
			"tags":        []string{rd.tag},
			"responses": map[string]any{
				successStatus(method, rd): map[string]any{"description": answerText(rd)},
				"default": map[string]any{"description": "Error (wire.ErrorBody)",
					"content": map[string]any{mediaJSON: map[string]any{"schema": map[string]any{"$ref": "#/components/schemas/ErrorBody"}}}},
			},
			"x-umbra-role": rd.auth,
		}
		if rd.auth == "none" || rd.auth == "url" {
			op["security"] = []any{}
		}
		if params != nil {
			op["parameters"] = params
		}
		if rd.body != "" {
			media, typ, _ := strings.Cut(rd.body, " ")
			op["requestBody"] = map[string]any{"required": true, "description": typ,
				"content": map[string]any{media: map[string]any{"schema": map[string]any{"type": bodyType(media)}}}}
		}
		if paths[path] == nil {
			paths[path] = map[string]any{}
		}
		paths[path][strings.ToLower(method)] = op
	}
	return map[string]any{
		"openapi": "3.0.3",
		"info": map[string]any{
			"title":       "Umbra HTTP API",
			"version":     "v1",
			"description": "Device shadows, identities, firmware and rollouts. JSON field names are snake_case (the shadow documents keep AWS IoT's names). Every error is JSON: wire.ErrorBody. Bodies are the Go types of package github.com/umbra-iot/umbra/wire; docs/protocol.md, docs/firmware.md and docs/rollouts.md describe them.",
		},
		"paths":    paths,
		"security": []any{map[string]any{"bearer": []any{}}},
		"components": map[string]any{
			"securitySchemes": map[string]any{"bearer": map[string]any{"type": "http", "scheme": "bearer",
				"description": "A token <name>:<secret> from umbra token create (or <data-dir>/admin.token), or a device's <id>:<secret> for its own shadows"}},
			"schemas": map[string]any{"ErrorBody": map[string]any{"type": "object", "required": []string{"code", "message"},
				"properties": map[string]any{
					"code":    map[string]any{"type": "integer"},
					"message": map[string]any{"type": "string"},
				}}},
		},
	}
}

func successStatus(method string, rd routeDoc) string {
	switch {
	case rd.answer == "" && method == http.MethodDelete:
		return "204"
	case method == http.MethodPost && (strings.HasSuffix(rd.pattern, "/v1/devices") || strings.HasSuffix(rd.pattern, "/retry") ||
		rd.pattern == "POST /v1/tokens" || rd.pattern == "POST /v1/rollouts" || rd.pattern == "POST /v1/firmware" ||
		rd.pattern == "POST /v1/identities/devices"):
		return "201"
	}
	return "200"
}

func answerText(rd routeDoc) string {
	if rd.answer == "" {
		return "Done"
	}
	return rd.answer
}

func bodyType(media string) string {
	if media == mediaJSON {
		return "object"
	}
	return "string"
}

// operationID is e.g. "getV1RolloutsIdDevices".
func operationID(method, path string) string {
	var b strings.Builder
	b.WriteString(strings.ToLower(method))
	for _, seg := range strings.FieldsFunc(path, func(r rune) bool { return r == '/' || r == '{' || r == '}' || r == '.' || r == '_' }) {
		b.WriteString(strings.ToUpper(seg[:1]) + seg[1:])
	}
	return b.String()
}

// DocumentedRoutes returns the patterns the OpenAPI document describes,
// sorted.
func DocumentedRoutes() []string {
	out := make([]string, 0, len(apiRoutes))
	for _, rd := range apiRoutes {
		out = append(out, rd.pattern)
	}
	slices.Sort(out)
	return out
}

var (
	openAPIOnce sync.Once
	openAPIJSON []byte
)

// openAPI serves the document.
func (a *api) openAPI(w http.ResponseWriter, r *http.Request) {
	openAPIOnce.Do(func() {
		b, err := marshalJSON(openAPIDoc())
		if err != nil {
			panic(err) // a map of strings: cannot fail
		}
		openAPIJSON = b
	})
	w.Header().Set("Cache-Control", "no-cache")
	writeJSON(w, http.StatusOK, openAPIJSON)
}

// apiIndex is the answer of GET /v1.
var apiIndex = []byte(`{"openapi":"` + OpenAPIPath + `","health":"/healthz","resources":["/v1/devices","/v1/firmware","/v1/rollouts","/v1/tokens"],"docs":"https://github.com/umbra-iot/umbra/tree/main/docs"}`)

// index serves GET /v1.
func (a *api) index(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, apiIndex)
}
