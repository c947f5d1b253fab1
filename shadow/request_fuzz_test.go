package shadow_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/device"
	"github.com/umbra-iot/umbra/shadow"
)

// sizedPublisher is a recorder that, like the broker's Publish, refuses a
// payload larger than the broker's packet limit: such a message never
// reaches a client.
type sizedPublisher struct{ recorder }

func (p *sizedPublisher) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if len(payload) > int(broker.DefaultMaxPacketSize) {
		return fmt.Errorf("publish %s: %d bytes: %w", topic, len(payload), broker.ErrTooLarge)
	}
	return p.recorder.Publish(topic, payload, retain, qos)
}

// FuzzHandleRequest sends two MQTT requests (update, get or delete,
// chosen by op1 and op2) with arbitrary payloads through the engine's MQTT
// entry point, on a real bbolt file, for a device named by level (the
// topic level the broker's "state/+/…" subscription matched). A level
// that is a valid device ID is replaced by a device no earlier input
// touched, so every input starts from a fresh shadow. Invariants:
//   - every request gets exactly one reply that reaches clients: on
//     <request topic>/accepted or /rejected, a JSON object, a rejection
//     with its numeric code;
//   - a rejected request (and a get) leaves the stored document as it was;
//   - an accepted update or delete is stored with the version it reports,
//     one more than before, unless it repeats an earlier accepted update
//     with the same clientToken and payload (then it answers the same
//     version and stores nothing).
func FuzzHandleRequest(f *testing.F) {
	seeds := []struct {
		level    string
		op1, op2 uint8
		p1, p2   string
	}{
		{"dev-1", 0, 0, `{"state":{"desired":{"on":true}},"clientToken":"a"}`, `{"state":{"reported":{"on":true}}}`},
		{"dev-1", 0, 0, `{"state":{"desired":{"on":true}},"clientToken":"a"}`, `{"state":{"desired":{"on":true}},"clientToken":"a"}`},
		{"dev-1", 0, 0, `{"state":{"desired":{"a":{"b":[1,2]}}}}`, `{"state":{"desired":{"a":{"b":null}}},"version":1}`},
		{"dev-1", 0, 0, `{"state":{"reported":{"x":1}}}`, `{"state":{"reported":{"x":2}},"version":7}`},
		{"dev-1", 0, 2, `{"state":{"desired":{"x":1}}}`, `{"clientToken":"d"}`},
		{"dev-1", 2, 1, `{}`, `{"clientToken":"g"}`},
		{"dev-1", 0, 1, `{"state":null}`, ``},
		{"dev-1", 0, 0, `{"state":{"desired":{"gone":null,"also":null}}}`, `{"state":{"desired":{"a":1}},"clientToken":"` + strings.Repeat("t", 65) + `"}`},
		{"dev-1", 0, 0, `{"state":{"desired":` + strings.Repeat(`{"a":`, 10) + `1` + strings.Repeat(`}`, 10) + `}}`, `[]`},
		{"dev-1", 0, 0, `{"state":{"delta":{"x":1}}}`, `{"state":{"desired":{"x":1e400}}}`},
		{"bad id!", 0, 1, `{"state":{"desired":{"x":1}}}`, ``},
		// Issue 10 case 9: deleting 3,000 absent keys made a reply too
		// large to publish; the retry got nothing either.
		{"dev-1", 0, 0, deleteAbsent(3000, "c9"), deleteAbsent(3000, "c9")},
		{"", 2, 2, ``, ``},
	}
	for _, s := range seeds {
		f.Add(s.level, s.op1, []byte(s.p1), s.op2, []byte(s.p2))
	}
	pub := &sizedPublisher{}
	eng, err := shadow.Open(f.Context(), shadow.Config{
		Path:        filepath.Join(f.TempDir(), "shadow.db"),
		Publisher:   pub,
		DeviceRate:  -1,
		MaxInFlight: -1,
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		if err := eng.Close(context.Background()); err != nil {
			f.Errorf("Close: %v", err)
		}
	})
	ops := []shadow.Op{shadow.OpUpdate, shadow.OpGet, shadow.OpDelete}
	var fresh atomic.Int64
	f.Fuzz(func(t *testing.T, level string, op1 uint8, p1 []byte, op2 uint8, p2 []byte) {
		level = strings.NewReplacer("/", "", "+", "", "#", "").Replace(level) // one topic level, as "state/+/…" matches
		id, idErr := device.ParseID(level)
		if idErr == nil {
			id = device.ID(fmt.Sprintf("fz-%d", fresh.Add(1)))
			level = string(id)
		}
		pub.take()
		var updates []acceptedUpdate // accepted updates of this input
		var known shadow.Version     // the shadow's version: 0 for a fresh device
		for i, req := range []struct {
			op      shadow.Op
			payload []byte
		}{{ops[int(op1)%len(ops)], p1}, {ops[int(op2)%len(ops)], p2}} {
			topic := "state/" + level + "/" + string(req.op)
			before, beforeErr := read(t, eng, id, idErr)
			eng.HandleRequest("fz", topic, req.payload)
			after, afterErr := read(t, eng, id, idErr)

			var reply *message
			for _, m := range pub.take() {
				if m.Topic == topic+"/accepted" || m.Topic == topic+"/rejected" {
					if reply != nil {
						t.Fatalf("request %d (%s %q): two replies, on %s and %s", i, topic, short(req.payload), reply.Topic, m.Topic)
					}
					reply = &m
				}
			}
			if reply == nil {
				t.Fatalf("request %d (%s %q): no reply reached clients (engine stats %+v)", i, topic, short(req.payload), eng.Stats())
			}
			var body struct {
				Code        *int            `json:"code"`
				Version     *shadow.Version `json:"version"`
				ClientToken string          `json:"clientToken"`
			}
			if err := json.Unmarshal([]byte(reply.Payload), &body); err != nil {
				t.Fatalf("request %d (%s): reply %s is not a JSON object: %v", i, topic, reply.Payload, err)
			}
			unchanged := beforeErr == afterErr && bytes.Equal(before, after)
			if strings.HasSuffix(reply.Topic, "/rejected") || req.op == shadow.OpGet {
				if strings.HasSuffix(reply.Topic, "/rejected") && (body.Code == nil || *body.Code < 400) {
					t.Fatalf("request %d (%s %q): rejection %s without an error code", i, topic, short(req.payload), reply.Payload)
				}
				if !unchanged {
					t.Fatalf("request %d (%s %q) answered on %s changed the stored shadow:\nbefore %s (%v)\nafter  %s (%v)",
						i, topic, short(req.payload), reply.Topic, before, beforeErr, after, afterErr)
				}
				continue
			}
			if beforeErr == "" {
				known = versionOf(t, before)
			}
			if req.op == shadow.OpDelete {
				if afterErr == "" {
					t.Fatalf("request %d (%s): delete accepted but the shadow is still stored: %s", i, topic, after)
				}
				if body.Version == nil || *body.Version != known {
					t.Fatalf("request %d (%s): delete accepted as %s, want the deleted version %d", i, topic, reply.Payload, known)
				}
				continue
			}
			if afterErr != "" {
				t.Fatalf("request %d (%s %q): update accepted (%s) but nothing is stored: %s", i, topic, short(req.payload), reply.Payload, afterErr)
			}
			stored := versionOf(t, after)
			if body.Version == nil || *body.Version != stored {
				t.Fatalf("request %d (%s %q): accepted %s, stored version %d", i, topic, short(req.payload), reply.Payload, stored)
			}
			replay := false
			for _, u := range updates {
				if u.token != "" && u.token == body.ClientToken && bytes.Equal(u.payload, req.payload) && u.version == stored {
					replay = true
				}
			}
			switch {
			case replay && !unchanged:
				t.Fatalf("request %d (%s %q): a repeated update changed the stored shadow", i, topic, short(req.payload))
			case !replay && stored != known+1:
				t.Fatalf("request %d (%s %q): accepted version %d after version %d, want %d", i, topic, short(req.payload), stored, known, known+1)
			}
			known = stored
			updates = append(updates, acceptedUpdate{bytes.Clone(req.payload), body.ClientToken, stored})
		}
	})
}

// read returns id's stored document as JSON, or the code of the error
// reading it ("" if there is none; "invalid id" if id is not valid).
func read(t *testing.T, eng *shadow.Engine, id device.ID, idErr error) ([]byte, string) {
	t.Helper()
	if idErr != nil {
		return nil, "invalid id"
	}
	doc, err := eng.Read(t.Context(), id)
	if errors.Is(err, shadow.ErrNotFound) {
		return nil, "not found"
	}
	if err != nil {
		t.Fatalf("Read(%s): %v", id, err)
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatalf("marshal %s: %v", id, err)
	}
	return b, ""
}

func versionOf(t *testing.T, doc []byte) shadow.Version {
	t.Helper()
	var d struct {
		Version shadow.Version `json:"version"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatalf("stored document %s: %v", doc, err)
	}
	return d.Version
}

// acceptedUpdate is an update FuzzHandleRequest saw accepted.
type acceptedUpdate struct {
	payload []byte
	token   string
	version shadow.Version
}

// short clips a payload for a failure message.
func short(b []byte) string {
	if len(b) > 200 {
		return fmt.Sprintf("%s… (%d bytes)", b[:200], len(b))
	}
	return string(b)
}

// deleteAbsent is an update that deletes n keys that do not exist.
func deleteAbsent(n int, token string) string {
	var b strings.Builder
	b.WriteString(`{"state":{"desired":{`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"k%05d":null`, i)
	}
	fmt.Fprintf(&b, `}},"clientToken":%q}`, token)
	return b.String()
}
