package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/waitfor"
)

// apiURL is the server's HTTP API base URL.
func (s *server) apiURL() string { return "http://" + s.api.Addr().String() }

// fwImageFile writes n deterministic bytes to a temp file.
func fwImageFile(t *testing.T, n int) (string, []byte) {
	t.Helper()
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + i>>9)
	}
	p := filepath.Join(t.TempDir(), "fw.bin")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, b
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// fetch GETs url like a device, optionally with a Range, and returns the
// status and body.
func fetch(t *testing.T, url, rng string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, b
}

// operatorToken creates an operator token on srv and returns the bearer
// credential "name:secret".
func operatorToken(t *testing.T, srv *server) string {
	t.Helper()
	secret, err := srv.ids.CreateToken(t.Context(), identity.RoleOperator, "fw-operator")
	if err != nil {
		t.Fatal(err)
	}
	return "fw-operator:" + secret
}

// fwAPI is how the firmware commands reach a server: its API URL and an
// operator token.
type fwAPI struct{ url, token string }

func newFWAPI(t *testing.T, srv *server) fwAPI {
	return fwAPI{url: srv.apiURL(), token: operatorToken(t, srv)}
}

// args appends --api and --token to args, unless they are given.
func (a fwAPI) args(args ...string) []string {
	all := append([]string{"firmware"}, args...)
	joined := strings.Join(args, " ")
	if !strings.Contains(joined, "--api") {
		all = append(all, "--api", a.url)
	}
	if !strings.Contains(joined, "--token") {
		all = append(all, "--token", a.token)
	}
	return all
}

// fwCLI runs `umbra firmware <args>` against api and fails the test on
// error.
func fwCLI(t *testing.T, api fwAPI, args ...string) string {
	t.Helper()
	r := runCLI(t.Context(), "", api.args(args...)...)
	if r.err != nil {
		t.Fatalf("umbra firmware %s: %v", strings.Join(args, " "), r.err)
	}
	return r.stdout
}

// TestFirmwareCommands drives a real server through the CLI: upload, list,
// show, pubkey, url (download whole and resumed), assign (the device's
// delta carries a verifiable command), delete.
func TestFirmwareCommands(t *testing.T) {
	srv := startServer(t)
	api := newFWAPI(t, srv)
	file, data := fwImageFile(t, 1<<20+123)
	sum := sha256Hex(data)

	if out := fwCLI(t, api, "upload", file, "--version", "1.2.0", "--hw", "m1", "--notes", "fixes the LED"); out != "uploaded 1.2.0: 1048699 bytes, sha256 "+sum+"\n" {
		t.Errorf("upload output %q", out)
	}
	var img firmware.Image
	if err := json.Unmarshal([]byte(fwCLI(t, api, "upload", file, "--version", "1.3.0-rc.1", "--sha256", strings.ToUpper(sum), "-o", "json")), &img); err != nil {
		t.Fatal(err)
	}
	if img.Version != "1.3.0-rc.1" || img.SHA256 != sum || img.Size != int64(len(data)) {
		t.Errorf("upload -o json = %+v, want 1.3.0-rc.1 of %d bytes %s", img, len(data), sum)
	}

	list := fwCLI(t, api, "list")
	if lines := strings.Split(strings.TrimSpace(list), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[1], "1.2.0 ") ||
		!strings.Contains(lines[1], " m1 ") || !strings.HasPrefix(lines[2], "1.3.0-rc.1 ") || !strings.Contains(lines[2], " - ") {
		t.Errorf("list output:\n%s\nwant a header, 1.2.0 (hw m1) then 1.3.0-rc.1 (hw -)", list)
	}
	var l struct{ Images []firmware.Image }
	if err := json.Unmarshal([]byte(fwCLI(t, api, "list", "-o", "json")), &l); err != nil || len(l.Images) != 2 {
		t.Errorf("list -o json: %d images (err %v), want 2", len(l.Images), err)
	}
	if show := fwCLI(t, api, "show", "1.2.0"); !strings.Contains(show, "notes:     fixes the LED\n") || !strings.Contains(show, "sha256:    "+sum+"\n") {
		t.Errorf("show output:\n%s", show)
	}
	var shown firmware.Image
	if err := json.Unmarshal([]byte(fwCLI(t, api, "show", "1.2.0", "-o", "json")), &shown); err != nil {
		t.Fatal(err)
	}

	// The printed key is the one that verifies the manifest.
	pub, err := firmware.ParsePublicKey([]byte(fwCLI(t, api, "pubkey")))
	if err != nil {
		t.Fatalf("pubkey output is not a PEM public key: %v", err)
	}
	if err := firmware.Verify(pub, shown.Manifest(), shown.Signature); err != nil {
		t.Errorf("shown image does not verify with the printed key: %v", err)
	}
	var pk struct{ Algorithm, PEM string }
	if err := json.Unmarshal([]byte(fwCLI(t, api, "pubkey", "-o", "json")), &pk); err != nil || pk.Algorithm != "ed25519" {
		t.Errorf("pubkey -o json: %+v (err %v), want algorithm ed25519", pk, err)
	}

	// url prints one pasteable line; the device downloads the exact image,
	// and resumes with Range.
	url := strings.TrimSpace(fwCLI(t, api, "url", "1.2.0", "--device", "lamp-1", "--ttl", "10m"))
	if !strings.HasPrefix(url, api.url+"/fw/"+sum+"?d=lamp-1&g=&e=") {
		t.Fatalf("url = %q, want %s/fw/%s?d=lamp-1&g=&e=…", url, api.url, sum)
	}
	if status, got := fetch(t, url, ""); status != 200 || sha256Hex(got) != sum {
		t.Errorf("download: status %d, %d bytes sha256 %s; want 200, %d bytes %s", status, len(got), sha256Hex(got), len(data), sum)
	}
	// A download cut after 1000 bytes resumes with Range and reassembles
	// the exact image.
	status, head := fetch(t, url, "bytes=0-999")
	if status != 206 || !bytes.Equal(head, data[:1000]) {
		t.Errorf("Range bytes=0-999: status %d, %d bytes; want 206 with data[:1000]", status, len(head))
	}
	status, rest := fetch(t, url, "bytes=1000-")
	if whole := append(head, rest...); status != 206 || sha256Hex(whole) != sum {
		t.Errorf("resumed download: status %d, %d bytes sha256 %s; want 206 reassembling %s", status, len(whole), sha256Hex(whole), sum)
	}
	var u struct {
		URL     string
		Expires time.Time
	}
	if err := json.Unmarshal([]byte(fwCLI(t, api, "url", "1.2.0", "--device", "lamp-1", "-o", "json")), &u); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(u.Expires); d < 50*time.Minute || d > 61*time.Minute || !strings.HasPrefix(u.URL, url[:strings.Index(url, "&e=")]) {
		t.Errorf("url -o json: %+v expires in %v, want the same URL expiring in about the server's 1h", u, d)
	}
	if status, _ := fetch(t, strings.Replace(url, "d=lamp-1", "d=lamp-2", 1), ""); status != 403 {
		t.Errorf("URL used by another device: status %d, want 403", status)
	}

	// assign: the device, subscribed to its delta, receives a firmware
	// command it can verify and download.
	secret, err := srv.ids.AddDevice(t.Context(), "lamp-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := brokertest.Connect(t, srv.mqttURL(), "lamp-1", func(o *mqtt.ClientOptions) { o.SetUsername("lamp-1").SetPassword(secret) })
	deltas := brokertest.Subscribe(t, c, "state/lamp-1/update/delta", 1)
	if out := fwCLI(t, api, "assign", "1.2.0", "--device", "lamp-1", "--ttl", "30m"); out != "assigned 1.2.0 to lamp-1 (shadow version 1)\n" {
		t.Errorf("assign output %q", out)
	}
	var delta struct {
		State struct{ Firmware firmware.Command }
	}
	msg := brokertest.Next(t, deltas, 5*time.Second)
	if err := json.Unmarshal(msg.Payload, &delta); err != nil {
		t.Fatalf("delta %s: %v", msg.Payload, err)
	}
	cmd := delta.State.Firmware
	if cmd.Version != "1.2.0" || cmd.HW != "m1" || cmd.SHA256 != sum || cmd.Size != int64(len(data)) {
		t.Errorf("delta firmware command = %+v, want 1.2.0 for m1, %d bytes %s", cmd, len(data), sum)
	}
	if err := cmd.Verify(pub); err != nil {
		t.Errorf("delta command does not verify with the pinned key: %v", err)
	}
	if status, got := fetch(t, cmd.URL, ""); status != 200 || !bytes.Equal(got, data) {
		t.Errorf("download from the delta's URL: status %d, %d bytes; want 200 with the image", status, len(got))
	}
	// Assigning again re-issues the command with a fresh URL.
	var doc struct {
		Version int
		State   struct {
			Desired struct{ Firmware firmware.Command }
		}
	}
	if err := json.Unmarshal([]byte(fwCLI(t, api, "assign", "1.3.0-rc.1", "--device", "lamp-1", "-o", "json")), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Version != 2 || doc.State.Desired.Firmware.Version != "1.3.0-rc.1" {
		t.Errorf("second assign: version %d, desired firmware %+v; want version 2 with 1.3.0-rc.1", doc.Version, doc.State.Desired.Firmware)
	}
	brokertest.Next(t, deltas, 5*time.Second)

	// lamp-1 has it as its desired firmware: refused, counted and named,
	// unless --force.
	r := runCLI(t.Context(), "", api.args("delete", "1.3.0-rc.1")...)
	oneLine(t, "delete while desired", r.err, "1 device(s) (lamp-1)", "--force", "409")
	if out := fwCLI(t, api, "delete", "1.3.0-rc.1", "--force"); out != "deleted 1.3.0-rc.1\n" {
		t.Errorf("delete output %q", out)
	}
	if err := json.Unmarshal([]byte(fwCLI(t, api, "list", "-o", "json")), &l); err != nil || len(l.Images) != 1 || l.Images[0].Version != "1.2.0" {
		t.Errorf("list after delete: %+v (err %v), want only 1.2.0", l.Images, err)
	}
}

// TestFirmwareCommandErrors: every failure is one line with a non-zero exit
// code; bad arguments are refused before anything is sent, so the store
// is unchanged.
func TestFirmwareCommandErrors(t *testing.T) {
	srv := startServer(t)
	api := newFWAPI(t, srv)
	file, data := fwImageFile(t, 4096)
	fwCLI(t, api, "upload", file, "--version", "1.0.0")
	empty := writeFile(t, "empty.bin", "")
	other := sha256Hex(append([]byte("x"), data...))

	tests := []struct {
		name    string
		args    []string
		wantErr []string
	}{
		{"upload without version", []string{"upload", file}, []string{"--version", "invalid version"}},
		{"upload shorthand version", []string{"upload", file, "--version", "1.2"}, []string{"--version \"1.2\"", "1.2.0"}},
		{"upload bad semver", []string{"upload", file, "--version", "one"}, []string{"--version \"one\""}},
		{"upload missing file", []string{"upload", filepath.Join(t.TempDir(), "nope.bin"), "--version", "2.0.0"}, []string{"image file", "no such file"}},
		{"upload directory", []string{"upload", t.TempDir(), "--version", "2.0.0"}, []string{"not a regular file"}},
		{"upload empty file", []string{"upload", empty, "--version", "2.0.0"}, []string{"empty"}},
		{"upload bad sha256 flag", []string{"upload", file, "--version", "2.0.0", "--sha256", "abc"}, []string{"--sha256", "64 hex"}},
		{"upload no file", []string{"upload", "--version", "2.0.0"}, []string{"missing <file>"}},
		{"upload duplicate", []string{"upload", file, "--version", "1.0.0"}, []string{"409", "already exists"}},
		{"upload checksum mismatch", []string{"upload", file, "--version", "2.0.0", "--sha256", other}, []string{"422", "sha256 mismatch"}},
		{"upload bad hw", []string{"upload", file, "--version", "2.0.0", "--hw", "m 1"}, []string{"400", "hw"}},
		{"show unknown", []string{"show", "9.9.9"}, []string{"404", "not found"}},
		{"show bad version", []string{"show", "latest"}, []string{"version \"latest\""}},
		{"delete unknown", []string{"delete", "9.9.9"}, []string{"404"}},
		{"url without device", []string{"url", "1.0.0"}, []string{"--device is required"}},
		{"url bad device", []string{"url", "1.0.0", "--device", "a/b"}, []string{"--device", "invalid id"}},
		{"url ttl too long", []string{"url", "1.0.0", "--device", "d1", "--ttl", "1000h"}, []string{"--ttl"}},
		{"url unknown version", []string{"url", "9.9.9", "--device", "d1"}, []string{"404"}},
		{"assign bad device", []string{"assign", "1.0.0", "--device", "x y"}, []string{"--device"}},
		{"assign unknown version", []string{"assign", "9.9.9", "--device", "d1"}, []string{"404"}},
		{"bad output", []string{"list", "-o", "xml"}, []string{"--output \"xml\""}},
		{"bad api URL", []string{"list", "--api", "ftp://x"}, []string{"--api", "http(s)://"}},
		{"server down", []string{"list", "--api", "http://" + closedAddr(t)}, []string{"connection refused", "umbra serve"}},
		{"unknown subcommand", []string{"frobnicate"}, []string{"frobnicate"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t.Context(), "", api.args(tc.args...)...)
			oneLine(t, tc.name, r.err, tc.wantErr...)
			if r.stdout != "" {
				t.Errorf("%s: stdout %q, want nothing", tc.name, r.stdout)
			}
		})
	}
	imgs, err := srv.fw.List(t.Context())
	if err != nil || len(imgs) != 1 || imgs[0].Version != "1.0.0" {
		t.Errorf("store after the failures: %+v (err %v), want only 1.0.0", imgs, err)
	}
	if sums, _, err := srv.eng.List(t.Context(), "", 10); err != nil || len(sums) != 0 {
		t.Errorf("shadows after the failures: %v (err %v), want none", sums, err)
	}

	// The API URL and the token may come from the environment.
	t.Setenv("UMBRA_API", api.url)
	t.Setenv("UMBRA_TOKEN", api.token)
	if r := runCLI(t.Context(), "", "firmware", "list", "-o", "json"); r.err != nil || !strings.Contains(r.stdout, `"1.0.0"`) {
		t.Errorf("list with UMBRA_API and UMBRA_TOKEN: %q, %v", r.stdout, r.err)
	}
}

// adminToken returns the operator token `umbra serve` keeps in dataDir, or
// "" if there is none.
func adminToken(t *testing.T, dataDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, adminTokenFile))
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestFirmwareUploadCrash is the "crash during upload": the server
// is SIGKILLed while an upload streams in; after a restart on the same data
// dir no partial image is listed and no temp file is left.
func TestFirmwareUploadCrash(t *testing.T) {
	bin := buildUmbra(t)
	dataDir := t.TempDir()
	proc, _, api := startServeProcess(t, bin, dataDir, "127.0.0.1:0")
	tmpDir := filepath.Join(dataDir, "firmware", "tmp")
	token := adminToken(t, dataDir)

	// Stream a 64 MiB upload in 64 KiB chunks: 2 MiB at once, the rest
	// only after the kill, so the upload cannot complete first.
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(t.Context(), "POST", api+"/v1/firmware?version=9.0.0", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = 64 << 20
	req.Header.Set("Content-Type", "application/octet-stream")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resErr := make(chan error, 1)
	go func() {
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
			err = errors.New(res.Status)
		}
		resErr <- err
	}()
	killed := make(chan struct{})
	writeErr := make(chan error, 1)
	go func() {
		chunk := bytes.Repeat([]byte{0xA5}, 64<<10)
		for i := range 1024 {
			if i == 32 {
				<-killed
			}
			if _, err := pw.Write(chunk); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()

	// Wait (polling: the server's progress is not an event here) until
	// the server has written part of the upload into its temp dir.
	const partial = 1 << 20
	var tmpFile string
	waitfor.Poll(t, 20*time.Second, fmt.Sprintf("a temp file of %d bytes in %s", partial, tmpDir), func() bool {
		ents, _ := os.ReadDir(tmpDir)
		for _, e := range ents {
			if fi, err := e.Info(); err == nil && fi.Size() >= partial {
				tmpFile = e.Name()
			}
		}
		return tmpFile != ""
	})
	if err := proc.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	proc.Wait()
	close(killed)
	pw.CloseWithError(errors.New("server killed"))
	if err := <-resErr; err == nil {
		t.Error("upload succeeded although the server was killed mid-stream")
	}
	if err := <-writeErr; err == nil {
		t.Error("the whole upload was written although the server was killed mid-stream")
	}
	if _, err := os.Stat(filepath.Join(tmpDir, tmpFile)); err != nil {
		t.Fatalf("the killed server's temp file %s: %v, want it still there before the restart", tmpFile, err)
	}

	_, _, api2URL := startServeProcess(t, bin, dataDir, "127.0.0.1:0")
	// Without --token the CLI uses the operator token in --data-dir.
	r := runCLI(t.Context(), "", "firmware", "list", "-o", "json", "--api", api2URL, "--data-dir", dataDir)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got := strings.TrimSpace(r.stdout); got != `{"images":[]}` {
		t.Errorf("list after crash and restart = %s, want {\"images\":[]}", got)
	}
	if ents, err := os.ReadDir(tmpDir); err != nil || len(ents) != 0 {
		t.Errorf("temp dir after restart: %v (err %v), want empty", ents, err)
	}
	if ents, err := os.ReadDir(filepath.Join(dataDir, "firmware", "blobs")); err != nil || len(ents) != 0 {
		t.Errorf("blobs after restart: %v (err %v), want none", ents, err)
	}
	// The restarted server takes a whole upload.
	file, _ := fwImageFile(t, 100<<10)
	if r := runCLI(t.Context(), "", "firmware", "upload", file, "--version", "9.0.0", "--api", api2URL, "--data-dir", dataDir); r.err != nil {
		t.Errorf("upload after restart: %v", r.err)
	}
}
