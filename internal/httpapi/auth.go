package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/wire"
)

// Verifier checks an HTTP bearer token "name:secret". *identity.Store
// implements it.
type Verifier interface {
	VerifyBearer(ctx context.Context, token string) (identity.Principal, error)
}

// Identities is what the device and token administration routes need.
// *identity.Store implements it.
type Identities interface {
	EnrollDevice(ctx context.Context, e identity.Enrollment) (string, error)
	EnrollDevices(ctx context.Context, list []identity.Enrollment, dryRun bool) ([]string, error)
	RotateDevice(ctx context.Context, id device.ID) (string, error)
	RemoveDevice(ctx context.Context, id device.ID) error
	ListDevices(ctx context.Context) ([]identity.Device, error)
	CreateToken(ctx context.Context, role identity.Role, name string) (string, error)
	ListTokens(ctx context.Context) ([]identity.Token, error)
	RevokeToken(ctx context.Context, name string) error
}

// maxIdentityBody caps the body of the identity routes but the import.
const maxIdentityBody = 16 << 10

// MaxImportBody caps the body of a bulk import (POST
// /v1/identities/devices): room for identity.MaxEnrollments devices with
// a certificate and a few labels each. A larger fleet is imported in
// several files.
const MaxImportBody = 32 << 20

// anonymousPrincipal is who every request is with anonymous access.
var anonymousPrincipal = identity.Principal{Role: identity.RoleOperator, Name: "anonymous"}

type principalKey struct{}

// PrincipalFrom returns the principal Authenticate stored in ctx.
func PrincipalFrom(ctx context.Context) (identity.Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(identity.Principal)
	return p, ok
}

// Authenticate returns a Config.Middleware that requires the header
// "Authorization: Bearer <name>:<secret>" and authorizes the request:
//
//   - a device may GET, POST and DELETE only its own shadows
//     (/v1/devices/{id}/shadow, with or without ?name=) and GET its own
//     /v1/devices/{id}/shadows, and nothing else;
//   - an integrator may GET (and HEAD) every route except /v1/tokens;
//   - an operator may do everything.
//
// A missing or invalid token gets 401 with "WWW-Authenticate: Bearer"; a
// valid token without the right gets 403. Both have a JSON error body.
// With anonymous, every request is an operator's and no header is needed.
func Authenticate(v Verifier, anonymous bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p := anonymousPrincipal
			if !anonymous {
				var status int
				var msg string
				p, status, msg = verify(r, v)
				if status != 0 {
					if status == http.StatusUnauthorized {
						w.Header().Set("WWW-Authenticate", `Bearer realm="umbra"`)
					}
					writeErrorBody(w, status, msg)
					return
				}
			}
			if !allowed(p, r) {
				writeErrorBody(w, http.StatusForbidden, fmt.Sprintf("%s %q may not %s %s", p.Role, p.Name, r.Method, r.URL.Path))
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
		})
	}
}

// verify authenticates r's bearer token; status is 0 on success.
func verify(r *http.Request, v Verifier) (p identity.Principal, status int, msg string) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return p, http.StatusUnauthorized, "Missing Authorization: Bearer <name>:<secret> header"
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return p, http.StatusUnauthorized, "Authorization header is not Bearer <name>:<secret>"
	}
	p, err := v.VerifyBearer(r.Context(), strings.TrimSpace(tok))
	switch {
	case err == nil:
		return p, 0, ""
	case errors.Is(err, identity.ErrUnauthenticated):
		return p, http.StatusUnauthorized, "Invalid or revoked token"
	case errors.Is(err, identity.ErrClosed):
		return p, http.StatusServiceUnavailable, "Shutting down"
	}
	return p, http.StatusInternalServerError, "Internal server error"
}

// shadowPatterns are the routes on one device's shadows.
var shadowPatterns = map[string]bool{
	"GET /v1/devices/{id}/shadow":    false,
	"GET /v1/devices/{id}/shadows":   false,
	"POST /v1/devices/{id}/shadow":   true,
	"DELETE /v1/devices/{id}/shadow": true,
}

// allowed is the HTTP access rule; see Authenticate.
func allowed(p identity.Principal, r *http.Request) bool {
	if write, ok := shadowPatterns[r.Pattern]; ok {
		id := device.ID(r.PathValue("id")) // only compared; the handler validates it
		if write {
			return p.CanWriteDevice(id)
		}
		return p.CanReadDevice(id)
	}
	switch p.Role {
	case identity.RoleOperator:
		return true
	case identity.RoleIntegrator:
		read := r.Method == http.MethodGet || r.Method == http.MethodHead
		return read && !strings.HasPrefix(r.URL.Path, "/v1/tokens")
	}
	return false
}

// writeErrorBody writes the API's JSON error.
func writeErrorBody(w http.ResponseWriter, status int, msg string) {
	b, _ := marshalJSON(wire.ErrorBody{Code: status, Message: msg})
	writeJSON(w, status, b)
}

// IdentityRoutes returns the device enrollment and token routes, each
// wrapped in auth (Authenticate lets only operators write them), to be
// passed as Config.Mounts:
//
//	POST   /v1/devices               wire.EnrollRequest → 201 wire.SecretResponse
//	GET    /v1/identities/devices    → wire.IdentityList (with presence)
//	POST   /v1/identities/devices    wire.ImportRequest → 201 wire.ImportResponse (200 for a dry run);
//	                                 400 with every bad device in "problems", nothing enrolled
//	DELETE /v1/devices/{id}          → 204
//	POST   /v1/devices/{id}/rotate   → wire.SecretResponse
//	POST   /v1/tokens                wire.TokenRequest → 201 wire.TokenResponse
//	GET    /v1/tokens                → wire.TokenList
//	DELETE /v1/tokens/{name}         → 204
//
// Served by this package's handler, an enrolled device also joins the
// matching active dynamic rollouts of Config.Rollouts. log receives
// unexpected errors; nil discards.
func IdentityRoutes(ids Identities, auth func(http.Handler) http.Handler, log *slog.Logger) map[string]http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &idHandler{ids: ids, api: &api{log: log.With(logKeyComponent, "httpapi"), maxBody: maxIdentityBody}}
	routes := map[string]http.HandlerFunc{
		"POST /v1/devices":             h.addDevice,
		"GET /v1/identities/devices":   h.listDevices,
		"POST /v1/identities/devices":  h.importDevices,
		"DELETE /v1/devices/{id}":      h.removeDevice,
		"POST /v1/devices/{id}/rotate": h.rotateDevice,
		"POST /v1/tokens":              h.createToken,
		"GET /v1/tokens":               h.listTokens,
		"DELETE /v1/tokens/{name}":     h.revokeToken,
	}
	out := make(map[string]http.Handler, len(routes))
	for pattern, fn := range routes {
		out[pattern] = auth(fn)
	}
	return out
}

// idHandler serves IdentityRoutes; its api writes errors through the
// package's one status table.
type idHandler struct {
	ids Identities
	api *api
}

func (h *idHandler) fail(w http.ResponseWriter, r *http.Request, err error) {
	h.api.writeError(w, r, err, "")
}

func (h *idHandler) ok(w http.ResponseWriter, r *http.Request, status int, v any) {
	b, err := marshalJSON(v)
	if err != nil {
		h.fail(w, r, fmt.Errorf("encode: %w", err))
		return
	}
	writeJSON(w, status, b)
}

func (h *idHandler) addDevice(w http.ResponseWriter, r *http.Request) {
	var req wire.EnrollRequest
	if err := h.api.decodeJSON(w, r, &req); err != nil {
		h.fail(w, r, err)
		return
	}
	e, err := enrollment(req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	secret, err := h.ids.EnrollDevice(r.Context(), e)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.ok(w, r, http.StatusCreated, wire.SecretResponse{ID: string(e.ID), Secret: secret, CertSHA256: e.CertSHA256})
}

// enrollment validates the ID and the certificate fields of req.
func enrollment(req wire.EnrollRequest) (identity.Enrollment, error) {
	id, err := device.ParseID(req.ID)
	if err != nil {
		return identity.Enrollment{}, fmt.Errorf("id %q: %w", clip(req.ID), err)
	}
	e := identity.Enrollment{ID: id, Labels: req.Labels, CertSHA256: req.CertSHA256}
	if req.Certificate != "" {
		cert, err := identity.ParseCertPEM([]byte(req.Certificate))
		if err != nil {
			return identity.Enrollment{}, fmt.Errorf("certificate: %w", err)
		}
		fp := identity.CertFingerprint(cert)
		if req.CertSHA256 != "" && req.CertSHA256 != fp {
			return identity.Enrollment{}, clientErr(errInvalid, "certSha256 %q is not the SHA-256 of certificate (%s)", clip(req.CertSHA256), fp)
		}
		e.CertSHA256 = fp
	}
	return e, nil
}

// importDevices enrolls a list of devices at once, or none.
func (h *idHandler) importDevices(w http.ResponseWriter, r *http.Request) {
	var req wire.ImportRequest
	imp := &api{log: h.api.log, maxBody: MaxImportBody}
	if err := imp.decodeJSON(w, r, &req); err != nil {
		h.fail(w, r, err)
		return
	}
	if len(req.Devices) == 0 {
		h.fail(w, r, clientErr(errInvalid, "No devices to import"))
		return
	}
	if len(req.Devices) > identity.MaxEnrollments {
		h.fail(w, r, clientErr(errInvalid, "%d devices: at most %d in one import", len(req.Devices), identity.MaxEnrollments))
		return
	}
	list := make([]identity.Enrollment, len(req.Devices))
	var problems []wire.ImportProblem
	for i, d := range req.Devices {
		e, err := enrollment(d)
		if err != nil {
			problems = append(problems, wire.ImportProblem{Index: i, ID: d.ID, Message: err.Error()})
			e = identity.Enrollment{ID: device.ID(d.ID)} // still checked for conflicts below
		}
		list[i] = e
	}
	dryRun := req.DryRun || len(problems) > 0
	secrets, err := h.ids.EnrollDevices(r.Context(), list, dryRun)
	if ee, ok := errors.AsType[*identity.EnrollError](err); ok {
		reported := len(problems)
		for _, p := range ee.Problems {
			// A device already reported is reported once.
			if !slices.ContainsFunc(problems[:reported], func(q wire.ImportProblem) bool { return q.Index == p.Index }) {
				problems = append(problems, wire.ImportProblem{Index: p.Index, ID: string(p.ID), Message: p.Err.Error()})
			}
		}
	} else if err != nil {
		h.fail(w, r, err)
		return
	}
	if len(problems) > 0 {
		slices.SortStableFunc(problems, func(a, b wire.ImportProblem) int { return a.Index - b.Index })
		b, _ := marshalJSON(wire.ErrorBody{
			Code:     http.StatusBadRequest,
			Message:  fmt.Sprintf("%d of %d devices are bad; nothing imported", countIndexes(problems), len(list)),
			Problems: problems,
		})
		writeJSON(w, http.StatusBadRequest, b)
		return
	}
	resp := wire.ImportResponse{Devices: make([]wire.SecretResponse, len(list)), DryRun: req.DryRun}
	for i, e := range list {
		resp.Devices[i] = wire.SecretResponse{ID: string(e.ID), Secret: secrets[i], CertSHA256: e.CertSHA256}
	}
	status := http.StatusCreated
	if req.DryRun {
		status = http.StatusOK
	}
	h.ok(w, r, status, resp)
}

// countIndexes counts the distinct devices of sorted problems.
func countIndexes(p []wire.ImportProblem) int {
	n := 0
	for i := range p {
		if i == 0 || p[i].Index != p[i-1].Index {
			n++
		}
	}
	return n
}

func (h *idHandler) rotateDevice(w http.ResponseWriter, r *http.Request) {
	id, err := device.ParseID(r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	secret, err := h.ids.RotateDevice(r.Context(), id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.ok(w, r, http.StatusOK, wire.SecretResponse{ID: string(id), Secret: secret})
}

func (h *idHandler) removeDevice(w http.ResponseWriter, r *http.Request) {
	id, err := device.ParseID(r.PathValue("id"))
	if err == nil {
		err = h.ids.RemoveDevice(r.Context(), id)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *idHandler) listDevices(w http.ResponseWriter, r *http.Request) {
	devs, err := h.ids.ListDevices(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.ok(w, r, http.StatusOK, wire.IdentityList{Devices: wireList(devs, wireEnrolled)})
}

func (h *idHandler) createToken(w http.ResponseWriter, r *http.Request) {
	var req wire.TokenRequest
	if err := h.api.decodeJSON(w, r, &req); err != nil {
		h.fail(w, r, err)
		return
	}
	role, err := identity.ParseRole(string(req.Role))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	secret, err := h.ids.CreateToken(r.Context(), role, req.Name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.ok(w, r, http.StatusCreated, wire.TokenResponse{Name: req.Name, Role: wire.Role(role), Token: req.Name + ":" + secret})
}

func (h *idHandler) listTokens(w http.ResponseWriter, r *http.Request) {
	toks, err := h.ids.ListTokens(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.ok(w, r, http.StatusOK, wire.TokenList{Tokens: wireList(toks, wireToken)})
}

func (h *idHandler) revokeToken(w http.ResponseWriter, r *http.Request) {
	if err := h.ids.RevokeToken(r.Context(), r.PathValue("name")); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// clip shortens s, a client's value quoted in an error, to 64 bytes.
func clip(s string) string {
	if len(s) <= 64 {
		return s
	}
	return s[:64] + "…"
}
