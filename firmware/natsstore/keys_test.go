package natsstore_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/firmware/natsstore"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// TestShareKeys: nodes proposing different keys at once all get the same
// keys, one node's proposal; a later node gets them too; a proposal
// without a URL secret is refused.
func TestShareKeys(t *testing.T) {
	s := natstest.Start(t)
	js := natstest.JetStream(t, s.URLs())
	cfg := natsstore.KeysConfig{JetStream: js}
	propose := func(i int) natsstore.Keys {
		return natsstore.Keys{SigningKey: []byte{'k', byte('0' + i)}, URLSecret: bytes.Repeat([]byte{byte(i)}, 32)}
	}
	const nodes = 4
	got := make([]natsstore.Keys, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			k, err := natsstore.ShareKeys(t.Context(), cfg, propose(i))
			if err != nil {
				t.Errorf("node %d: %v", i, err)
			}
			got[i] = k
		})
	}
	wg.Wait()
	winner := -1
	for i := range nodes {
		if bytes.Equal(got[0].SigningKey, propose(i).SigningKey) && bytes.Equal(got[0].URLSecret, propose(i).URLSecret) {
			winner = i
		}
	}
	if winner < 0 {
		t.Fatalf("node 0 got keys nobody proposed: %q", got[0].SigningKey)
	}
	for i := range nodes {
		if !bytes.Equal(got[i].SigningKey, got[0].SigningKey) || !bytes.Equal(got[i].URLSecret, got[0].URLSecret) {
			t.Errorf("node %d got %q, node 0 %q: want one set of keys", i, got[i].SigningKey, got[0].SigningKey)
		}
	}
	later, err := natsstore.ShareKeys(t.Context(), cfg, propose(9))
	if err != nil || !bytes.Equal(later.SigningKey, propose(winner).SigningKey) {
		t.Errorf("a later node got %q, %v; want node %d's keys", later.SigningKey, err, winner)
	}
	if _, err := natsstore.ShareKeys(t.Context(), cfg, natsstore.Keys{SigningKey: []byte("k")}); !errors.Is(err, firmware.ErrInvalid) {
		t.Errorf("proposal without a URL secret = %v, want ErrInvalid", err)
	}
}
