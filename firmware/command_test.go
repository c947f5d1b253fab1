package firmware_test

import (
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/firmware"
)

func TestCommand(t *testing.T) {
	e := mustOpen(t, nil)
	data := image(5000, 1)
	img := mustUpload(t, e.st, "1.2.0", data)
	cmd := e.st.Command(img, "dev-1", 10*time.Minute, "r-1")
	if err := cmd.Verify(e.st.PublicKey()); err != nil {
		t.Errorf("Command.Verify = %v, want nil", err)
	}
	if resp, body := get(t, http.MethodGet, cmd.URL, nil); resp.StatusCode != http.StatusOK || sum(body) != cmd.SHA256 || int64(len(body)) != cmd.Size {
		t.Errorf("GET command URL: status %d, %d bytes sha %s; want 200, %d bytes sha %s", resp.StatusCode, len(body), sum(body), cmd.Size, cmd.SHA256)
	}

	// Desired()["firmware"] is exactly the command's JSON object.
	fromDesired, err := json.Marshal(cmd.Desired()["firmware"])
	if err != nil {
		t.Fatal(err)
	}
	var a, b map[string]any
	fromCmd, _ := json.Marshal(cmd)
	json.Unmarshal(fromDesired, &a)
	json.Unmarshal(fromCmd, &b)
	if !maps.EqualFunc(a, b, func(x, y any) bool { return x == y }) {
		t.Errorf("Desired firmware = %v, want %v", a, b)
	}
	noJob := e.st.Command(img, "dev-1", 0, "")
	if _, ok := noJob.Desired()["firmware"].(map[string]any)["job"]; ok {
		t.Error(`Desired() without a job has a "job" key, want none`)
	}

	// Re-minting after expiry gives a working URL for the same image.
	e.clock.Advance(11 * time.Minute)
	if resp, _ := get(t, http.MethodGet, cmd.URL, nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("expired command URL: status %d, want 403", resp.StatusCode)
	}
	fresh := e.st.Command(img, "dev-1", 0, "r-1")
	if fresh.URL == cmd.URL || fresh.Signature != cmd.Signature {
		t.Errorf("re-minted command: URL changed %v, signature kept %v; want true, true", fresh.URL != cmd.URL, fresh.Signature == cmd.Signature)
	}
	if resp, _ := get(t, http.MethodGet, fresh.URL, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("re-minted URL: status %d, want 200", resp.StatusCode)
	}

	tampered := []firmware.Command{cmd, cmd, cmd}
	tampered[0].Version = "1.2.1"
	tampered[1].Size++
	tampered[2].Signature = "not base64!"
	for i, c := range tampered {
		if err := c.Verify(e.st.PublicKey()); !errors.Is(err, firmware.ErrBadSignature) {
			t.Errorf("tampered command %d: Verify = %v, want ErrBadSignature", i, err)
		}
	}
}

func TestURLTTL(t *testing.T) {
	e := mustOpen(t, func(c *firmware.Config) { c.URLTTL = 5 * time.Minute })
	img := mustUpload(t, e.st, "1.0.0", image(10, 1))
	now := e.clock.Now()
	tests := []struct {
		ttl  time.Duration
		want time.Time
	}{
		{0, now.Add(5 * time.Minute)},
		{-time.Second, now.Add(5 * time.Minute)},
		{time.Minute, now.Add(time.Minute)},
		{30 * 24 * time.Hour, now.Add(firmware.MaxURLTTL)},
	}
	for _, tc := range tests {
		if _, got := e.st.URL(img, "dev-1", tc.ttl); !got.Equal(tc.want) {
			t.Errorf("URL(ttl %v) expiry = %v, want %v", tc.ttl, got, tc.want)
		}
	}
}

func TestState(t *testing.T) {
	all := []firmware.State{firmware.StateDownloading, firmware.StateVerifying, firmware.StateInstalling, firmware.StateRebooting, firmware.StateUpdated, firmware.StateFailed}
	var terminal []firmware.State
	for _, s := range all {
		if !s.Valid() {
			t.Errorf("%q.Valid() = false, want true", s)
		}
		if s.Terminal() {
			terminal = append(terminal, s)
		}
	}
	if want := []firmware.State{firmware.StateUpdated, firmware.StateFailed}; !slices.Equal(terminal, want) {
		t.Errorf("terminal states = %v, want %v", terminal, want)
	}
	for _, s := range []firmware.State{"", "done", "UPDATED"} {
		if s.Valid() {
			t.Errorf("%q.Valid() = true, want false", s)
		}
	}
}
