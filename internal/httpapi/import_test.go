package httpapi_test

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/wire"
)

// deviceCertPEM issues a device certificate from a fresh fleet CA and
// returns it with its private key, in PEM form.
func deviceCertPEM(t *testing.T, id device.ID) (certPEM, keyPEM string) {
	t.Helper()
	ca, err := identity.InitCA(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	c, k, err := ca.IssueDeviceCert(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return string(c), string(k)
}

// devicesOf lists the store's devices as "id certSha256" strings.
func devicesOf(t *testing.T, ids *identity.Store) []string {
	t.Helper()
	list, err := ids.ListDevices(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range list {
		out = append(out, string(d.ID)+" "+d.CertSHA256)
	}
	return out
}

// TestEnrollCertificate binds a certificate through POST /v1/devices by
// its PEM or its fingerprint; every bad certificate field is a 400 (or a
// 409 for a certificate bound already) that stores nothing.
func TestEnrollCertificate(t *testing.T) {
	srv, ids, tok := newSecureAPI(t, false)
	certPEM, keyPEM := deviceCertPEM(t, "thing-1")
	cert, err := identity.ParseCertPEM([]byte(certPEM))
	if err != nil {
		t.Fatal(err)
	}
	fp := identity.CertFingerprint(cert)

	var resp wire.SecretResponse
	status, _, body := doAuth(t, srv, "POST", "/v1/devices", tok, mustJSON(t, wire.EnrollRequest{ID: "thing-1", Certificate: certPEM}), &resp)
	if status != http.StatusCreated || resp.Secret != "" || resp.CertSHA256 != fp {
		t.Fatalf("enroll with certificate: %d %s; want 201 with certSha256 %s and no secret", status, body, fp)
	}
	otherFP := strings.Repeat("0", 64)
	status, _, body = doAuth(t, srv, "POST", "/v1/devices", tok, mustJSON(t, wire.EnrollRequest{ID: "thing-2", CertSHA256: otherFP}), &resp)
	if status != http.StatusCreated || resp.CertSHA256 != otherFP {
		t.Fatalf("enroll with fingerprint: %d %s", status, body)
	}
	before := devicesOf(t, ids)

	tests := []struct {
		name   string
		req    wire.EnrollRequest
		status int
		want   string
	}{
		{"certificate bound already", wire.EnrollRequest{ID: "thing-3", Certificate: certPEM}, 409, "bound to device thing-1"},
		{"fingerprint bound already", wire.EnrollRequest{ID: "thing-3", CertSHA256: fp}, 409, "bound to device thing-1"},
		{"private key sent", wire.EnrollRequest{ID: "thing-3", Certificate: certPEM + keyPEM}, 400, "private key"},
		{"key only", wire.EnrollRequest{ID: "thing-3", Certificate: keyPEM}, 400, "private key"},
		{"not PEM", wire.EnrollRequest{ID: "thing-3", Certificate: "hello"}, 400, "no PEM certificate"},
		{"two certificates", wire.EnrollRequest{ID: "thing-3", Certificate: certPEM + certPEM}, 400, "more than one"},
		{"fingerprint of another certificate", wire.EnrollRequest{ID: "thing-3", Certificate: certPEM, CertSHA256: otherFP}, 400, "is not the SHA-256"},
		{"short fingerprint", wire.EnrollRequest{ID: "thing-3", CertSHA256: "abcd"}, 400, "64 lowercase hex"},
		{"upper-case fingerprint", wire.EnrollRequest{ID: "thing-3", CertSHA256: strings.ToUpper(otherFP[:63]) + "A"}, 400, "64 lowercase hex"},
		{"non-hex fingerprint", wire.EnrollRequest{ID: "thing-3", CertSHA256: strings.Repeat("g", 64)}, 400, "64 lowercase hex"},
		{"bad ID with certificate", wire.EnrollRequest{ID: "a b", Certificate: certPEM}, 400, "invalid id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, _, body := doAuth(t, srv, "POST", "/v1/devices", tok, mustJSON(t, tc.req), nil)
			if status != tc.status || !strings.Contains(body, tc.want) {
				t.Errorf("got %d %s, want %d with %q", status, body, tc.status, tc.want)
			}
			if after := devicesOf(t, ids); !slices.Equal(before, after) {
				t.Errorf("devices changed: %q → %q", before, after)
			}
		})
	}
	status, _, body = doAuth(t, srv, "POST", "/v1/devices", tok, `{"id":"thing-3","cert":"x"}`, nil)
	if status != http.StatusBadRequest || !strings.Contains(body, "unknown field") {
		t.Errorf("unknown field: got %d %s, want 400", status, body)
	}
}

// TestImportDevices enrolls a list at once through POST
// /v1/identities/devices; a list with bad devices gets a 400 naming every
// one of them and enrolls nothing, and a dry run enrolls nothing either.
func TestImportDevices(t *testing.T) {
	srv, ids, tok := newSecureAPI(t, false)
	certPEM, _ := deviceCertPEM(t, "thing-1")
	if _, err := ids.AddDevice(t.Context(), "taken", nil); err != nil {
		t.Fatal(err)
	}
	before := devicesOf(t, ids)

	bad := wire.ImportRequest{Devices: []wire.EnrollRequest{
		{ID: "ok-1", Labels: map[string]string{"hw": "m2"}},
		{ID: "bad id"},
		{ID: "ok-2", Certificate: certPEM},
		{ID: "taken"},
		{ID: "key", Certificate: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
		{ID: "dup", Certificate: certPEM},
		{ID: "ok-1"},
		{ID: "lbl", Labels: map[string]string{"": "x"}},
	}}
	var e struct {
		Code     int                  `json:"code"`
		Message  string               `json:"message"`
		Problems []wire.ImportProblem `json:"problems"`
	}
	for _, dryRun := range []bool{false, true} {
		bad.DryRun = dryRun
		status, _, body := doAuth(t, srv, "POST", "/v1/identities/devices", tok, mustJSON(t, bad), nil)
		if status != http.StatusBadRequest {
			t.Fatalf("dryRun=%t: got %d %s, want 400", dryRun, status, body)
		}
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			t.Fatal(err)
		}
		var idx []int
		for _, p := range e.Problems {
			idx = append(idx, p.Index)
			if p.Message == "" || p.ID != bad.Devices[p.Index].ID {
				t.Errorf("problem %+v: want the device's ID and a message", p)
			}
		}
		if want := []int{1, 3, 4, 5, 6, 7}; !slices.Equal(idx, want) || !strings.Contains(e.Message, "6 of 8 devices are bad; nothing imported") {
			t.Errorf("dryRun=%t: problems at %v (%s), want %v", dryRun, idx, e.Message, want)
		}
	}
	if after := devicesOf(t, ids); !slices.Equal(before, after) {
		t.Fatalf("devices changed by a bad import: %q → %q", before, after)
	}

	for _, tc := range []struct{ name, body, want string }{
		{"no devices", `{"devices":[]}`, "No devices"},
		{"not JSON", `[`, "Invalid JSON"},
		{"unknown field", `{"devices":[{"id":"x"}],"force":true}`, "unknown field"},
		{"too many", mustJSON(t, wire.ImportRequest{Devices: make([]wire.EnrollRequest, identity.MaxEnrollments+1)}), "at most"},
	} {
		if status, _, body := doAuth(t, srv, "POST", "/v1/identities/devices", tok, tc.body, nil); status != http.StatusBadRequest || !strings.Contains(body, tc.want) {
			t.Errorf("%s: got %d %s, want 400 with %q", tc.name, status, body, tc.want)
		}
	}
	if after := devicesOf(t, ids); !slices.Equal(before, after) {
		t.Fatalf("devices changed by a refused import: %q → %q", before, after)
	}

	good := wire.ImportRequest{Devices: []wire.EnrollRequest{{ID: "ok-1", Labels: map[string]string{"hw": "m2"}}, {ID: "ok-2", Certificate: certPEM}}}
	var resp wire.ImportResponse
	good.DryRun = true
	if status, _, body := doAuth(t, srv, "POST", "/v1/identities/devices", tok, mustJSON(t, good), &resp); status != http.StatusOK || !resp.DryRun {
		t.Fatalf("dry run: %d %s", status, body)
	}
	if after := devicesOf(t, ids); !slices.Equal(before, after) {
		t.Fatalf("devices changed by a dry run: %q → %q", before, after)
	}
	good.DryRun = false
	if status, _, body := doAuth(t, srv, "POST", "/v1/identities/devices", tok, mustJSON(t, good), &resp); status != http.StatusCreated {
		t.Fatalf("import: %d %s", status, body)
	}
	if len(resp.Devices) != 2 || resp.Devices[0].Secret == "" || resp.Devices[1].Secret != "" || resp.Devices[1].CertSHA256 == "" {
		t.Fatalf("import answer %+v: want a secret for ok-1 and a fingerprint for ok-2", resp)
	}
	if p, err := ids.Verify(t.Context(), "ok-1", []byte(resp.Devices[0].Secret)); err != nil || p.Device != "ok-1" {
		t.Errorf("imported secret: %v, %v", p, err)
	}

	// Only operators import.
	sec, err := ids.CreateToken(t.Context(), identity.RoleIntegrator, "dash")
	if err != nil {
		t.Fatal(err)
	}
	if status, _, _ := doAuth(t, srv, "POST", "/v1/identities/devices", "dash:"+sec, mustJSON(t, good), nil); status != http.StatusForbidden {
		t.Errorf("integrator import: got %d, want 403", status)
	}
}
