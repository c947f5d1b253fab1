package natskv_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/internal/natskv"
	"github.com/umbra-iot/umbra/internal/natstest"
)

func TestToken(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"dev-1", "dev-1"},
		{"a_b", "a_b"},
		{"d.3", "d=2E3"},
		{"urn:dev:1", "urn=3Adev=3A1"},
		{"..", "=2E=2E"},
		{"a=b", "a=3Db"},
		{"x/y*>", "x=2Fy=2A=3E"},
	} {
		got := natskv.Token(tc.in)
		if got != tc.want {
			t.Errorf("Token(%q) = %q, want %q", tc.in, got, tc.want)
		}
		back, err := natskv.Untoken(got)
		if err != nil || back != tc.in {
			t.Errorf("Untoken(%q) = %q, %v; want %q", got, back, err, tc.in)
		}
	}
	for _, bad := range []string{"a=", "a=2", "a=zz", "=2e"} {
		if got, err := natskv.Untoken(bad); err == nil {
			t.Errorf("Untoken(%q) = %q, want an error", bad, got)
		}
	}
}

// TestSchemaMismatchRefused: a node speaking another schema version (or
// kind) than the bucket holds refuses to open it, with an error naming
// both; the bucket's schema record is unchanged.
func TestSchemaMismatchRefused(t *testing.T) {
	s := natstest.Start(t)
	js := natstest.JetStream(t, s.URLs())
	ctx := t.Context()
	v1 := natskv.BucketConfig{Name: "b", Schema: natskv.Schema{Kind: "shadow", Version: 1}}
	if _, err := natskv.OpenBucket(ctx, js, v1); err != nil {
		t.Fatal(err)
	}
	if _, err := natskv.OpenBucket(ctx, js, v1); err != nil {
		t.Fatalf("reopen with the same schema: %v", err)
	}
	for _, tc := range []struct {
		name   string
		schema natskv.Schema
		want   string
	}{
		{"newer version", natskv.Schema{Kind: "shadow", Version: 2}, "the bucket holds shadow schema version 1, this node uses shadow schema version 2"},
		{"other kind", natskv.Schema{Kind: "identity", Version: 1}, "the bucket holds shadow schema version 1, this node uses identity schema version 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := v1
			cfg.Schema = tc.schema
			_, err := natskv.OpenBucket(ctx, js, cfg)
			if !errors.Is(err, natskv.ErrSchemaMismatch) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("OpenBucket = %v, want ErrSchemaMismatch saying %q", err, tc.want)
			}
		})
	}
	kv, err := js.KeyValue(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := natskv.ReadSchema(ctx, kv); err != nil || got != v1.Schema {
		t.Errorf("schema record after refused opens = %+v, %v; want %+v", got, err, v1.Schema)
	}

	// A bucket whose meta key is not Umbra's is refused too.
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "foreign"}); err != nil {
		t.Fatal(err)
	}
	fkv, _ := js.KeyValue(ctx, "foreign")
	if _, err := fkv.Put(ctx, natskv.MetaKey, []byte("not json")); err != nil {
		t.Fatal(err)
	}
	cfg := v1
	cfg.Name = "foreign"
	if _, err := natskv.OpenBucket(ctx, js, cfg); !errors.Is(err, natskv.ErrSchemaMismatch) {
		t.Errorf("OpenBucket of a foreign bucket = %v, want ErrSchemaMismatch", err)
	}
}

func TestOpenBucketInvalidConfig(t *testing.T) {
	for _, cfg := range []natskv.BucketConfig{
		{Schema: natskv.Schema{Kind: "k", Version: 1}},
		{Name: "b", Schema: natskv.Schema{Version: 1}},
		{Name: "b", Schema: natskv.Schema{Kind: "k"}},
	} {
		if _, err := natskv.OpenBucket(t.Context(), nil, cfg); err == nil || !strings.Contains(err.Error(), "required") {
			t.Errorf("OpenBucket(%+v) = %v, want a 'required' error", cfg, err)
		}
	}
}
