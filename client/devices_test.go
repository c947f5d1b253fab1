package client_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/identity/identitytest"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/wire"
)

// identityEnv is the real API with the identity store behind
// Authenticate, as umbra serve runs it.
type identityEnv struct {
	url string
	ops *client.Client // an operator's
	ids *identity.Store
}

func newIdentityEnv(t *testing.T) *identityEnv {
	t.Helper()
	dir := t.TempDir()
	log := testLogger(t)
	eng, err := shadow.Open(t.Context(), shadow.Config{Store: shadowStore(t, filepath.Join(dir, "shadow.db")), Publisher: discard{}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close(context.Background()) })
	ids := identitytest.Open(t, dir, identity.Config{Logger: log})
	secret, err := ids.CreateToken(t.Context(), identity.RoleOperator, "ops")
	if err != nil {
		t.Fatal(err)
	}
	auth := httpapi.Authenticate(ids, false)
	h, err := httpapi.NewHandler(httpapi.Config{Shadow: eng, Logger: log, Middleware: auth, Presence: ids.Presence,
		Mounts: httpapi.IdentityRoutes(ids, auth, log)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	e := &identityEnv{url: srv.URL, ids: ids}
	e.ops = e.client(t, "ops:"+secret)
	return e
}

// client returns a client presenting token.
func (e *identityEnv) client(t *testing.T, token string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{URL: e.url, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// selfSigned returns a new self-signed client certificate in PEM and the
// SHA-256 of its DER form.
func selfSigned(t *testing.T) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "AWS IoT Certificate"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), hex.EncodeToString(sum[:])
}

func TestIdentities(t *testing.T) {
	e := newIdentityEnv(t)
	ctx := t.Context()
	c := e.ops
	if err := c.Health(ctx); err != nil {
		t.Errorf("Health: %v", err)
	}
	sec, err := c.EnrollDevice(ctx, wire.EnrollRequest{ID: "d1", Labels: map[string]string{"hw": "m2"}})
	if err != nil || sec.ID != "d1" || sec.Secret == "" {
		t.Fatalf("EnrollDevice = %+v, %v; want d1 with a secret", sec, err)
	}
	certPEM, fp := selfSigned(t)
	bound, err := c.EnrollDevice(ctx, wire.EnrollRequest{ID: "aws-1", Certificate: certPEM})
	if err != nil || bound.Secret != "" || bound.CertSHA256 != fp {
		t.Errorf("EnrollDevice with a certificate = %+v, %v; want its fingerprint %s and no secret", bound, err, fp)
	}
	if _, err := c.EnrollDevice(ctx, wire.EnrollRequest{ID: "d1"}); !errors.Is(err, client.ErrConflict) {
		t.Errorf("EnrollDevice twice = %v, want ErrConflict", err)
	}
	dry, err := c.ImportDevices(ctx, wire.ImportRequest{Devices: []wire.EnrollRequest{{ID: "d2"}, {ID: "d3"}}, DryRun: true})
	if err != nil || !dry.DryRun || len(dry.Devices) != 2 || dry.Devices[0].Secret != "" {
		t.Errorf("ImportDevices dry run = %+v, %v; want 2 devices, no secrets", dry, err)
	}
	_, err = c.ImportDevices(ctx, wire.ImportRequest{Devices: []wire.EnrollRequest{{ID: "d2"}, {ID: "d1"}, {ID: "bad/id"}}})
	if ae, ok := errors.AsType[*client.Error](err); !ok || !errors.Is(err, client.ErrInvalid) || len(ae.Problems) != 2 ||
		ae.Problems[0].ID != "d1" || ae.Problems[1].Index != 2 {
		t.Errorf("ImportDevices with two bad devices = %#v, want ErrInvalid listing d1 and bad/id", err)
	}
	imp, err := c.ImportDevices(ctx, wire.ImportRequest{Devices: []wire.EnrollRequest{{ID: "d2"}, {ID: "d3", Labels: map[string]string{"hw": "m3"}}}})
	if err != nil || len(imp.Devices) != 2 || imp.Devices[1].Secret == "" {
		t.Errorf("ImportDevices = %+v, %v; want d2 and d3 with secrets", imp, err)
	}
	devs, err := c.ListEnrolled(ctx)
	var got []string
	for _, d := range devs {
		got = append(got, string(d.ID))
	}
	if err != nil || strings.Join(got, ",") != "aws-1,d1,d2,d3" || devs[1].Labels["hw"] != "m2" || devs[0].CertSHA256 != fp {
		t.Errorf("ListEnrolled = %+v, %v; want aws-1, d1, d2, d3 with their labels and certificate", devs, err)
	}
	rot, err := c.RotateDevice(ctx, "d1")
	if err != nil || rot.Secret == "" || rot.Secret == sec.Secret {
		t.Errorf("RotateDevice = %+v, %v; want a new secret", rot, err)
	}
	if err := c.RemoveDevice(ctx, "d3"); err != nil {
		t.Errorf("RemoveDevice: %v", err)
	}
	if err := c.RemoveDevice(ctx, "d3"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("RemoveDevice twice = %v, want ErrNotFound", err)
	}

	tok, err := c.CreateToken(ctx, "dash", wire.RoleIntegrator)
	if err != nil || tok.Role != wire.RoleIntegrator || !strings.HasPrefix(tok.Token, "dash:") {
		t.Fatalf("CreateToken = %+v, %v; want an integrator's dash:<secret>", tok, err)
	}
	if _, err := c.CreateToken(ctx, "dev", wire.RoleDevice); !errors.Is(err, client.ErrInvalid) {
		t.Errorf("CreateToken of a device role = %v, want ErrInvalid", err)
	}
	toks, err := c.ListTokens(ctx)
	if err != nil || len(toks) != 2 {
		t.Errorf("ListTokens = %+v, %v; want ops and dash", toks, err)
	}
	dash := e.client(t, tok.Token)
	if _, err := dash.ListEnrolled(ctx); err != nil {
		t.Errorf("integrator ListEnrolled: %v", err)
	}
	if _, err := dash.EnrollDevice(ctx, wire.EnrollRequest{ID: "d9"}); !errors.Is(err, client.ErrForbidden) {
		t.Errorf("integrator EnrollDevice = %v, want ErrForbidden", err)
	}
	if err := c.RevokeToken(ctx, "dash"); err != nil {
		t.Errorf("RevokeToken: %v", err)
	}
	if _, err := dash.ListEnrolled(ctx); !errors.Is(err, client.ErrUnauthorized) {
		t.Errorf("revoked token ListEnrolled = %v, want ErrUnauthorized", err)
	}
	if err := c.RevokeToken(ctx, ""); !errors.Is(err, client.ErrInvalid) {
		t.Errorf("RevokeToken(\"\") = %v, want ErrInvalid", err)
	}
}

func TestShadows(t *testing.T) {
	e := newIdentityEnv(t)
	ctx := t.Context()
	c := e.ops
	v0 := uint64(0)
	doc, err := c.UpdateShadow(ctx, "lamp-1", "", wire.ShadowUpdate{
		State:   wire.ShadowState{Desired: json.RawMessage(`{"color":"red"}`), Reported: json.RawMessage(`{"color":"blue"}`)},
		Version: &v0, ClientToken: "c1"})
	if err != nil || doc.Version != 1 || doc.ClientToken != "c1" || doc.State == nil || string(doc.State.Desired) != `{"color":"red"}` {
		t.Fatalf("UpdateShadow = %+v, %v; want version 1 echoing the request and its token", doc, err)
	}
	again, err := c.UpdateShadow(ctx, "lamp-1", "", wire.ShadowUpdate{
		State:   wire.ShadowState{Desired: json.RawMessage(`{"color":"red"}`), Reported: json.RawMessage(`{"color":"blue"}`)},
		Version: &v0, ClientToken: "c1"})
	if err != nil || again.Version != 1 {
		t.Errorf("UpdateShadow retried = %+v, %v; want the first accepted again", again, err)
	}
	got, err := c.GetShadow(ctx, "lamp-1", "")
	if err != nil || got.Version != 1 || got.State == nil || string(got.State.Delta) != `{"color":"red"}` {
		t.Errorf("GetShadow = %+v, %v; want version 1 with delta color red", got, err)
	}
	_, err = c.UpdateShadow(ctx, "lamp-1", "", wire.ShadowUpdate{State: wire.ShadowState{Reported: json.RawMessage(`{"color":"red"}`)},
		Version: &v0, ClientToken: "c2"})
	if ae, ok := errors.AsType[*client.Error](err); !ok || !errors.Is(err, client.ErrConflict) || ae.ClientToken != "c2" {
		t.Errorf("UpdateShadow at a stale version = %#v, want ErrConflict echoing c2", err)
	}
	if _, err := c.UpdateShadow(ctx, "lamp-1", "cfg", wire.ShadowUpdate{State: wire.ShadowState{Reported: json.RawMessage(`{"mode":"eco"}`)}}); err != nil {
		t.Fatalf("UpdateShadow named: %v", err)
	}
	named, err := c.GetShadow(ctx, "lamp-1", "cfg")
	if err != nil || named.State == nil || string(named.State.Reported) != `{"mode":"eco"}` {
		t.Errorf("GetShadow named = %+v, %v", named, err)
	}
	list, err := c.ListShadows(ctx, "lamp-1")
	if err != nil || list.Device != "lamp-1" || len(list.Shadows) != 2 || list.Shadows[0].Name != "" || list.Shadows[1].Name != "cfg" {
		t.Errorf("ListShadows = %+v, %v; want the classic shadow and cfg", list, err)
	}
	if _, err := c.UpdateShadow(ctx, "lamp-2", "", wire.ShadowUpdate{State: wire.ShadowState{Reported: json.RawMessage(`{}`)}}); err != nil {
		t.Fatal(err)
	}
	page, err := c.ListDevices(ctx, "", 1)
	if err != nil || len(page.Devices) != 1 || page.Devices[0].ID != "lamp-1" || page.Next == "" || page.Devices[0].Presence == nil {
		t.Fatalf("ListDevices(limit 1) = %+v, %v; want lamp-1 with presence and a cursor", page, err)
	}
	page, err = c.ListDevices(ctx, page.Next, 0)
	if err != nil || len(page.Devices) != 1 || page.Devices[0].ID != "lamp-2" || page.Next != "" {
		t.Errorf("ListDevices(next) = %+v, %v; want lamp-2 and the end", page, err)
	}
	del, err := c.DeleteShadow(ctx, "lamp-1", "cfg")
	if err != nil || del.Version != 1 {
		t.Errorf("DeleteShadow named = %+v, %v; want version 1", del, err)
	}
	if _, err := c.GetShadow(ctx, "lamp-1", "cfg"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("GetShadow deleted = %v, want ErrNotFound", err)
	}
	for name, call := range map[string]func() error{
		"bad device ID":  func() error { _, err := c.GetShadow(ctx, "a/b", ""); return err },
		"bad list limit": func() error { _, err := c.ListDevices(ctx, "", wire.MaxListLimit+1); return err },
		"bad ID to list": func() error { _, err := c.ListShadows(ctx, ""); return err },
	} {
		if err := call(); !errors.Is(err, client.ErrInvalid) || errors.As(err, new(*client.Error)) {
			t.Errorf("%s: %v, want ErrInvalid refused locally", name, err)
		}
	}
	if _, err := c.GetShadow(ctx, "lamp-1", "bad name!"); !errors.Is(err, client.ErrInvalid) || !errors.As(err, new(*client.Error)) {
		t.Errorf("GetShadow with a bad name = %v, want the server's 400", err)
	}

	// A device may use its own shadows only.
	secret, err := e.ids.AddDevice(ctx, "lamp-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	own := e.client(t, "lamp-1:"+secret)
	if _, err := own.GetShadow(ctx, "lamp-1", ""); err != nil {
		t.Errorf("device GetShadow of its own: %v", err)
	}
	if _, err := own.GetShadow(ctx, device.ID("lamp-2"), ""); !errors.Is(err, client.ErrForbidden) {
		t.Errorf("device GetShadow of another = %v, want ErrForbidden", err)
	}
}
