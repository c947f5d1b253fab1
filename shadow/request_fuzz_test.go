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
	"github.com/umbra-iot/umbra/device"
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

// FuzzHandleRequest sends two MQTT requests (update, get, delete, or an
// operation the engine does not serve, chosen by op1 and op2) with
// arbitrary payloads through the engine's MQTT entry point, on a real bbolt
// file, on one of the four request topic shapes (shape: state/<id>/<op>,
// state/<id>/shadow/<name>/<op>, $aws/things/<id>/shadow/<op>,
// $aws/things/<id>/shadow/name/<name>/<op>) for a device and shadow named
// by level and name (topic levels, as the broker's subscriptions match
// them). A level that is a valid device ID is replaced by a device no
// earlier input touched, so every input starts from fresh shadows.
// Invariants:
//   - every request gets exactly one reply that reaches clients: on
//     <request topic>/accepted or /rejected, a JSON object, a rejection
//     with its numeric code (a topic that is not a request gets none);
//   - a rejected request (and a get) leaves the stored document as it was;
//   - an accepted update is stored with the version it reports, one more
//     than before, unless it repeats an earlier accepted update with the
//     same clientToken and payload (then it answers the same version and
//     stores nothing); an accepted delete reports the deleted version.
func FuzzHandleRequest(f *testing.F) {
	seeds := []struct {
		shape       uint8
		level, name string
		op1, op2    uint8
		p1, p2      string
	}{
		{0, "dev-1", "", 0, 0, `{"state":{"desired":{"on":true}},"clientToken":"a"}`, `{"state":{"reported":{"on":true}}}`},
		{0, "dev-1", "", 0, 0, `{"state":{"desired":{"on":true}},"clientToken":"a"}`, `{"state":{"desired":{"on":true}},"clientToken":"a"}`},
		{0, "dev-1", "", 0, 0, `{"state":{"desired":{"a":{"b":[1,2]}}}}`, `{"state":{"desired":{"a":{"b":null}}},"version":1}`},
		{0, "dev-1", "", 0, 0, `{"state":{"reported":{"x":1}}}`, `{"state":{"reported":{"x":2}},"version":7}`},
		{0, "dev-1", "", 0, 2, `{"state":{"desired":{"x":1}}}`, `{"clientToken":"d"}`},
		{0, "dev-1", "", 2, 1, `{}`, `{"clientToken":"g"}`},
		{0, "dev-1", "", 0, 1, `{"state":null}`, ``},
		{0, "dev-1", "", 0, 0, `{"state":{"desired":{"gone":null,"also":null}}}`, `{"state":{"desired":{"a":1}},"clientToken":"` + strings.Repeat("t", 65) + `"}`},
		{0, "dev-1", "", 0, 0, `{"state":{"desired":` + strings.Repeat(`{"a":`, 10) + `1` + strings.Repeat(`}`, 10) + `}}`, `[]`},
		{0, "dev-1", "", 0, 0, `{"state":{"delta":{"x":1}}}`, `{"state":{"desired":{"x":1e400}}}`},
		{0, "bad id!", "", 0, 1, `{"state":{"desired":{"x":1}}}`, ``},
		// Issue 10 case 9: deleting 3,000 absent keys made a reply too
		// large to publish; the retry got nothing either.
		{0, "dev-1", "", 0, 0, deleteAbsent(3000, "c9"), deleteAbsent(3000, "c9")},
		{0, "", "", 2, 2, ``, ``},
		{1, "dev-1", "cfg", 0, 2, `{"state":{"desired":{"on":true}},"clientToken":"n"}`, `{"clientToken":"n"}`},
		{1, "dev-1", "bad name!", 0, 1, `{"state":{"desired":{"on":true}}}`, ``},
		{2, "dev-1", "", 0, 3, `{"state":{"reported":{"fw":"1.0.0"}}}`, `{"clientToken":"l"}`},
		{3, "dev-1", "cfg", 1, 0, ``, `{"state":{"desired":{"a":1}},"version":0}`},
		{3, "dev-1", "", 0, 0, `{"state":{"desired":{"a":1}}}`, ``},
		{1, "dev-1", "cfg", 3, 3, `{}`, `{}`},
	}
	for _, s := range seeds {
		f.Add(s.shape, s.level, s.name, s.op1, []byte(s.p1), s.op2, []byte(s.p2))
	}
	pub := &sizedPublisher{}
	pub.listenOn("$aws/#") // a client on the $aws tree subscribes to its replies first, as the AWS SDKs do
	eng, err := shadow.Open(f.Context(), shadow.Config{
		Store:       storeAt(f, filepath.Join(f.TempDir(), "shadow.db")),
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
	ops := []shadow.Op{shadow.OpUpdate, shadow.OpGet, shadow.OpDelete, "list"}
	oneLevel := strings.NewReplacer("/", "", "+", "", "#", "")
	var fresh atomic.Int64
	f.Fuzz(func(t *testing.T, shape uint8, level, name string, op1 uint8, p1 []byte, op2 uint8, p2 []byte) {
		level, name = oneLevel.Replace(level), oneLevel.Replace(name)
		id, idErr := device.ParseID(level)
		if idErr == nil {
			id = device.ID(fmt.Sprintf("fz-%d", fresh.Add(1)))
			level = string(id)
		}
		shape %= 4
		named := shape == 1 || shape == 3
		if !named {
			name = ""
		} else if _, err := shadow.ParseName(name); err != nil && idErr == nil {
			idErr = err // nothing can be stored under this address
		}
		topicOf := func(op shadow.Op) string {
			return [...]string{
				"state/" + level + "/" + string(op),
				"state/" + level + "/shadow/" + name + "/" + string(op),
				"$aws/things/" + level + "/shadow/" + string(op),
				"$aws/things/" + level + "/shadow/name/" + name + "/" + string(op),
			}[shape]
		}
		pub.take()
		var updates []acceptedUpdate // accepted updates of this input
		var known shadow.Version     // the shadow's version: 0 for a fresh device
		for i, req := range []struct {
			op      shadow.Op
			payload []byte
		}{{ops[int(op1)%len(ops)], p1}, {ops[int(op2)%len(ops)], p2}} {
			topic := topicOf(req.op)
			before, beforeErr := read(t, eng, id, shadow.Name(name), idErr)
			eng.HandleRequest("fz", topic, req.payload)
			after, afterErr := read(t, eng, id, shadow.Name(name), idErr)
			unchanged := beforeErr == afterErr && bytes.Equal(before, after)

			var reply *message
			for _, m := range pub.take() {
				if m.Topic == topic+"/accepted" || m.Topic == topic+"/rejected" {
					if reply != nil {
						t.Fatalf("request %d (%s %q): two replies, on %s and %s", i, topic, short(req.payload), reply.Topic, m.Topic)
					}
					reply = &m
				}
			}
			if req.op == "list" && shape < 2 {
				// Not a request on the state tree: ignored.
				if reply != nil || !unchanged {
					t.Fatalf("%s is not a request, got reply %v, shadow changed %t", topic, reply, !unchanged)
				}
				continue
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
				t.Fatalf("request %d (%s): reply %s is not a JSON object: %v", i, topic, short([]byte(reply.Payload)), err)
			}
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
			if req.op == "list" {
				t.Fatalf("request %d (%s): an operation the engine does not serve was accepted: %s", i, topic, reply.Payload)
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
				t.Fatalf("request %d (%s %q): update accepted (%s) but nothing is stored: %s", i, topic, short(req.payload), short([]byte(reply.Payload)), afterErr)
			}
			stored := versionOf(t, after)
			if body.Version == nil || *body.Version != stored {
				t.Fatalf("request %d (%s %q): accepted %s, stored version %d", i, topic, short(req.payload), short([]byte(reply.Payload)), stored)
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

// read returns the stored shadow name of id ("" for the classic one) as
// JSON without the time it was read, or why there is none: "not found", or
// "invalid" if idErr says the address cannot hold a shadow.
func read(t *testing.T, eng *shadow.Engine, id device.ID, name shadow.Name, idErr error) ([]byte, string) {
	t.Helper()
	if idErr != nil {
		return nil, "invalid"
	}
	var doc any
	var err error
	if name == "" {
		doc, err = eng.Read(t.Context(), id)
	} else {
		var b []byte
		if b, err = eng.GetNamed(t.Context(), id, name, nil); err == nil {
			var m map[string]any
			if err = json.Unmarshal(b, &m); err == nil {
				delete(m, "timestamp") // when it was read
				doc = m
			}
		}
	}
	if errors.Is(err, shadow.ErrNotFound) {
		return nil, "not found"
	}
	if err != nil {
		t.Fatalf("read %s/%s: %v", id, name, err)
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatalf("marshal %s/%s: %v", id, name, err)
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
