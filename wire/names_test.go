package wire_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/wire"
)

// TestSnakeCaseNames: the HTTP API's JSON is snake_case; the old camelCase
// names of the request bodies are still accepted.
func TestSnakeCaseNames(t *testing.T) {
	b, _ := json.Marshal(wire.EnrolledDevice{ID: "d", CreatedAt: time.Unix(1, 0), RotatedAt: time.Unix(2, 0), CertSHA256: "ab",
		Presence: wire.Presence{Connected: true, ConnectedAt: time.Unix(3, 0), DisconnectedAt: time.Unix(4, 0), DisconnectReason: "x", RemoteAddr: "y"}})
	for _, name := range []string{"created_at", "rotated_at", "cert_sha256", "connected_at", "disconnected_at", "disconnect_reason", "remote_addr"} {
		if !strings.Contains(string(b), `"`+name+`"`) {
			t.Errorf("%s: no %q", b, name)
		}
	}
	tests := []struct {
		name, in string
		want     wire.ImportRequest
		wantErr  string
	}{
		{"new names", `{"devices":[{"id":"a","cert_sha256":"ff"}],"dry_run":true}`, wire.ImportRequest{Devices: []wire.EnrollRequest{{ID: "a", CertSHA256: "ff"}}, DryRun: true}, ""},
		{"old names", `{"devices":[{"id":"a","certSha256":"ff"}],"dryRun":true}`, wire.ImportRequest{Devices: []wire.EnrollRequest{{ID: "a", CertSHA256: "ff"}}, DryRun: true}, ""},
		{"both names differ", `{"devices":[{"id":"a","certSha256":"ff","cert_sha256":"ee"}]}`, wire.ImportRequest{}, "differ"},
		{"unknown field", `{"devices":[{"id":"a","bogus":1}]}`, wire.ImportRequest{}, "bogus"},
		{"unknown top field", `{"devices":[],"dry-run":true}`, wire.ImportRequest{}, "dry-run"},
	}
	for _, tc := range tests {
		var got wire.ImportRequest
		err := json.Unmarshal([]byte(tc.in), &got)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: err %v, want %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(tc.want)
		if string(g) != string(w) {
			t.Errorf("%s: got %s, want %s", tc.name, g, w)
		}
	}
}

func TestMarshalKeepsHTMLCharacters(t *testing.T) {
	b, err := wire.Marshal(wire.URLResponse{URL: "https://x/fw/1?d=a&e=<1>"})
	if err != nil || string(b) != `{"url":"https://x/fw/1?d=a&e=<1>","expires":"0001-01-01T00:00:00Z"}` {
		t.Errorf("Marshal = %s, %v", b, err)
	}
}
