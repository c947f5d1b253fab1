package boltstore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/broker/boltstore"
	"github.com/umbra-iot/umbra/internal/brokertest"
)

var _ broker.Store = (*boltstore.Store)(nil)

func TestMain(m *testing.M) { brokertest.Main(m) }

// mustOpen opens the store at path and closes it in tb.Cleanup.
func mustOpen(tb testing.TB, path string) *boltstore.Store {
	tb.Helper()
	s, err := boltstore.Open(tb.Context(), boltstore.Config{Path: path, Timeout: 100 * time.Millisecond})
	if err != nil {
		tb.Fatalf("Open(%s): %v", path, err)
	}
	tb.Cleanup(func() { s.Close(context.Background()) })
	return s
}

// editBolt changes the bbolt file at path (created if missing) with f,
// as another program (or damage) might.
func editBolt(t *testing.T, path string, f func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(f); err != nil {
		t.Fatal(err)
	}
}

// withSession returns the path of a closed broker.db holding one session,
// c1, to be edited with editBolt.
func withSession(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "broker.db")
	s := mustOpen(t, path)
	if err := s.Apply(t.Context(), []broker.StoreOp{{Kind: broker.OpPutSession, ClientID: "c1",
		Session: broker.Session{ClientID: "c1", ProtocolVersion: 4}}}); err != nil {
		t.Fatal(err)
	}
	s.Close(context.Background())
	return path
}

func TestContract(t *testing.T) {
	brokertest.StoreContract(t, func(tb testing.TB, dir string) (broker.Store, func()) {
		s := mustOpen(tb, filepath.Join(dir, "broker.db"))
		return s, func() {
			if err := s.Close(context.Background()); err != nil {
				tb.Errorf("Close: %v", err)
			}
		}
	})
}

// TestOpenErrors: a file that is not a broker database, or that another
// process holds, is an error that says so; nothing is created or changed.
func TestOpenErrors(t *testing.T) {
	garbage := []byte(strings.Repeat("not a bbolt file ", 1000))
	tests := []struct {
		name  string
		setup func(t *testing.T, path string)
		want  error
	}{
		{"garbage", func(t *testing.T, path string) {
			if err := os.WriteFile(path, garbage, 0o600); err != nil {
				t.Fatal(err)
			}
		}, boltstore.ErrCorrupt},
		{"another bbolt file", func(t *testing.T, path string) {
			editBolt(t, path, func(tx *bolt.Tx) error {
				_, err := tx.CreateBucket([]byte("retained"))
				return err
			})
		}, boltstore.ErrCorrupt},
		{"newer format", func(t *testing.T, path string) {
			editBolt(t, path, func(tx *bolt.Tx) error {
				b, err := tx.CreateBucket([]byte("meta"))
				if err != nil {
					return err
				}
				return b.Put([]byte("format"), []byte("2"))
			})
		}, boltstore.ErrCorrupt},
		{"locked", func(t *testing.T, path string) {
			mustOpen(t, path)
		}, boltstore.ErrLocked},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "broker.db")
			tc.setup(t, path)
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			s, err := boltstore.Open(t.Context(), boltstore.Config{Path: path, Timeout: 100 * time.Millisecond})
			if err == nil {
				s.Close(context.Background())
				t.Fatalf("Open: got nil error, want %v", tc.want)
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("Open: got %v, want an error wrapping %v that names %s", err, tc.want, path)
			}
			if after, _ := os.ReadFile(path); string(after) != string(before) {
				t.Errorf("Open changed the file it refused")
			}
		})
	}
	t.Run("unreadable", func(t *testing.T) {
		if os.Geteuid() == 0 {
			// root reads any file: use a directory in its place instead.
			path := filepath.Join(t.TempDir(), "broker.db")
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
			if _, err := boltstore.Open(t.Context(), boltstore.Config{Path: path}); err == nil || !strings.Contains(err.Error(), path) {
				t.Errorf("Open(a directory): got %v, want an error naming %s", err, path)
			}
			return
		}
		path := filepath.Join(t.TempDir(), "broker.db")
		if err := os.WriteFile(path, nil, 0o000); err != nil {
			t.Fatal(err)
		}
		if _, err := boltstore.Open(t.Context(), boltstore.Config{Path: path}); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("Open(an unreadable file): got %v, want an error naming %s", err, path)
		}
	})
}

// TestLoadCorruptRecord: a record that cannot be decoded fails Load with
// an error naming it, instead of being skipped.
func TestLoadCorruptRecord(t *testing.T) {
	tests := []struct {
		name   string
		bucket []string // path of nested buckets
		key    string
		val    string
		want   string
	}{
		{"retained not JSON", []string{"retained"}, "a/b", "{", `retained "a/b"`},
		{"retained without topic", []string{"retained"}, "a/b", `{"payload":"eA=="}`, `retained "a/b"`},
		{"session without record", []string{"sessions", "c1"}, "other", "x", `session "c1"`},
		{"session of another client", []string{"sessions", "c1"}, "session", `{"clientId":"c2","protocolVersion":4}`, `session "c1"`},
		{"session bad version", []string{"sessions", "c1"}, "session", `{"clientId":"c1","protocolVersion":9}`, `session "c1"`},
		{"session bad device", []string{"sessions", "c1"}, "session", `{"clientId":"c1","protocolVersion":4,"device":"a b"}`, `session "c1"`},
		{"queued bad key", []string{"sessions", "c1", "queued"}, "short", `{"topic":"a","qos":1}`, `queued key`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := withSession(t)
			editBolt(t, path, func(tx *bolt.Tx) error {
				var err error
				b := tx.Bucket([]byte(tc.bucket[0]))
				for _, name := range tc.bucket[1:] {
					if b, err = b.CreateBucketIfNotExists([]byte(name)); err != nil {
						return err
					}
				}
				if tc.key != "session" && len(tc.bucket) == 2 {
					if err := b.Delete([]byte("session")); err != nil {
						return err
					}
				}
				return b.Put([]byte(tc.key), []byte(tc.val))
			})
			s := mustOpen(t, path)
			_, err := s.Load(t.Context())
			if !errors.Is(err, boltstore.ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load: got %v, want an error wrapping ErrCorrupt naming %s", err, tc.want)
			}
		})
	}
}

func TestClosed(t *testing.T) {
	s := mustOpen(t, filepath.Join(t.TempDir(), "broker.db"))
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Apply(t.Context(), []broker.StoreOp{{Kind: broker.OpReset}}); !errors.Is(err, boltstore.ErrClosed) {
		t.Errorf("Apply after Close: got %v, want ErrClosed", err)
	}
	if _, err := s.Load(t.Context()); !errors.Is(err, boltstore.ErrClosed) {
		t.Errorf("Load after Close: got %v, want ErrClosed", err)
	}
}

// FuzzLoadRecord writes arbitrary bytes as a record of broker.db (a
// retained message, a session, a subscription, a queued message or its
// state) and loads the file: Load never panics, and either fails with
// ErrCorrupt or returns what a broker could restore.
func FuzzLoadRecord(f *testing.F) {
	seeds := []struct {
		kind uint8
		val  string
	}{
		{0, `{"topic":"a/b","payload":"eA==","qos":1,"retain":true,"created":1700000000}`},
		{0, `{"topic":"a/b","payloadFormat":1,"user":[{"k":"a","v":"b"}],"messageExpiry":60}`},
		{1, `{"clientId":"c1","identity":"team","device":"d1","protocolVersion":5,"expirySeconds":60}`},
		{1, `{"clientId":"c1","protocolVersion":4,"disconnected":1700000000}`},
		{2, `{"filter":"a/+","qos":2,"noLocal":true,"retainHandling":1,"identifier":3}`},
		{3, `{"topic":"q/1","payload":"","qos":2}`},
		{4, "\x00\x07\x01"},
		{0, "{"}, {1, `{"clientId":"c2","protocolVersion":4}`}, {2, `{"filter":""}`}, {4, "\x00"},
	}
	for _, s := range seeds {
		f.Add(s.kind, []byte(s.val))
	}
	f.Fuzz(func(t *testing.T, kind uint8, val []byte) {
		path := withSession(t)
		editBolt(t, path, func(tx *bolt.Tx) error {
			sess := tx.Bucket([]byte("sessions")).Bucket([]byte("c1"))
			switch kind % 5 {
			case 0:
				return tx.Bucket([]byte("retained")).Put([]byte("a/b"), val)
			case 1:
				return sess.Put([]byte("session"), val)
			case 2:
				b, err := sess.CreateBucketIfNotExists([]byte("subscriptions"))
				if err != nil {
					return err
				}
				return b.Put([]byte("a/+"), val)
			case 3:
				b, err := sess.CreateBucketIfNotExists([]byte("queued"))
				if err != nil {
					return err
				}
				return b.Put([]byte{0, 0, 0, 0, 0, 0, 0, 7}, val)
			default:
				q, err := sess.CreateBucketIfNotExists([]byte("queued"))
				if err != nil {
					return err
				}
				if err := q.Put([]byte{0, 0, 0, 0, 0, 0, 0, 7}, []byte(`{"topic":"q/1","qos":1}`)); err != nil {
					return err
				}
				b, err := sess.CreateBucketIfNotExists([]byte("state"))
				if err != nil {
					return err
				}
				return b.Put([]byte{0, 0, 0, 0, 0, 0, 0, 7}, val)
			}
		})
		st, err := mustOpen(t, path).Load(t.Context())
		if err != nil {
			if !errors.Is(err, boltstore.ErrCorrupt) {
				t.Fatalf("Load: got %v, want nil or an error wrapping ErrCorrupt", err)
			}
			return
		}
		for _, m := range st.Retained {
			if m.Topic == "" || m.QoS > 2 {
				t.Errorf("Load returned retained message %+v", m)
			}
		}
		for _, ss := range st.Sessions {
			if ss.ClientID == "" || ss.ProtocolVersion < 3 || ss.ProtocolVersion > 5 || ss.Expiry < 0 {
				t.Errorf("Load returned session %+v", ss.Session)
			}
			for _, sub := range ss.Subscriptions {
				if sub.Filter == "" || sub.QoS > 2 || sub.RetainHandling > 2 {
					t.Errorf("Load returned subscription %+v", sub)
				}
			}
			for _, q := range ss.Queued {
				if q.Message.Topic == "" || q.Message.QoS > 2 {
					t.Errorf("Load returned queued message %+v", q)
				}
			}
		}
	})
}
