package sim_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/internal/sim"
)

// failoverBound is how long every device of a closed node may take to be
// connected to a live one: ReconnectDelay (±50%), plus one failed connect
// and its backoff when the next address is dead too, plus the connect.
const failoverBound = 20 * time.Second

// clusterNodes opens n anonymous Umbra nodes in cluster mode on one
// nats-server, closed on cleanup unless the test closed them first.
func clusterNodes(t *testing.T, n int) []*server.Server {
	t.Helper()
	ns := natstest.Start(t)
	nodes := make([]*server.Server, n)
	for i := range nodes {
		s, err := server.Open(t.Context(), server.Config{
			DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Anonymous: true,
			NATS: ns.URLs(), NodeID: fmt.Sprintf("n%d", i+1), NATSReplicas: 1,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatalf("server.Open n%d: %v", i+1, err)
		}
		t.Cleanup(func() { closeNode(t, s) })
		nodes[i] = s
	}
	return nodes
}

func closeNode(t *testing.T, s *server.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Errorf("close node: %v", err)
	}
}

// TestFleetFailsOverToTheNextNode spreads a fleet over the nodes of a
// cluster (device i on node i mod n), closes some nodes, and checks that
// every device is connected to a live node within failoverBound, that the
// counters say which moved, and that a firmware command written (through
// a live node) while the moved devices were away reaches every device: a
// device subscribes again and gets its shadow on its new node.
func TestFleetFailsOverToTheNextNode(t *testing.T) {
	tests := []struct {
		name  string
		nodes int
		kill  []int // indices of the nodes closed
	}{
		{"two nodes, one closed", 2, []int{0}},
		// Device 3k moves to node 1, which is closed too: it fails there
		// and moves on to node 2.
		{"three nodes, two closed", 3, []int{0, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const perNode = 8
			n := tt.nodes * perNode
			nodes := clusterNodes(t, tt.nodes)
			live := slices.DeleteFunc(slices.Clone(nodes), func(s *server.Server) bool {
				return slices.Contains(tt.kill, slices.Index(nodes, s))
			})
			survivor := live[0]
			const version = "2.0.0"
			_, err := survivor.Firmware().Upload(t.Context(), firmware.UploadRequest{Version: version},
				strings.NewReader(strings.Repeat("failover image\n", 1024)))
			if err != nil {
				t.Fatal(err)
			}
			var addrs []string
			for _, s := range nodes {
				addrs = append(addrs, "tcp://"+s.Broker().Addr().String())
			}
			f := mustOpen(t, sim.Config{
				Server: strings.Join(addrs, ","), Devices: n, IDPrefix: "fo-",
				PublicKey: base64.StdEncoding.EncodeToString(survivor.Firmware().PublicKey()),
				// Long enough that the commands below are written while the
				// moved devices are away.
				ReconnectDelay: 2 * time.Second,
				Logger:         slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
			})
			st := wait(t, f, "every device to connect", func(st sim.Stats) bool { return st.Connected == n })
			for i, s := range st.Servers {
				if s.URL != addrs[i] || s.Connected != perNode || s.Connects != perNode {
					t.Fatalf("server %d before the failover: %+v, want %s with %d devices connected once", i, s, addrs[i], perNode)
				}
			}

			for _, k := range tt.kill {
				closeNode(t, nodes[k])
			}
			api, err := client.New(client.Config{URL: "http://" + survivor.HTTPAddr().String()})
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range f.IDs() {
				if _, err := api.AssignFirmware(t.Context(), version, id, 0); err != nil {
					t.Fatalf("assign %s to %s: %v", version, id, err)
				}
			}

			ctx, cancel := context.WithTimeout(t.Context(), failoverBound)
			defer cancel()
			st, err = f.Wait(ctx, func(st sim.Stats) bool { return st.Connected == n && st.Servers[0].Connected == 0 })
			if err != nil {
				t.Fatalf("after closing nodes %v: not every device connected to a live node within %v: %+v", tt.kill, failoverBound, st)
			}
			if want := uint64(len(tt.kill) * perNode); st.Reconnects != want {
				t.Errorf("Reconnects = %d, want %d (the devices of the closed nodes)", st.Reconnects, want)
			}
			for i, s := range st.Servers {
				if slices.Contains(tt.kill, i) && s.Connected != 0 {
					t.Errorf("closed node %d still counts %d connected devices", i, s.Connected)
				}
			}
			if got := st.Servers[slices.Index(nodes, survivor)].Connected; got != n-(len(live)-1)*perNode {
				t.Errorf("survivor has %d devices, want %d: %+v", got, n-(len(live)-1)*perNode, st.Servers)
			}
			// Every command reaches its device, also those written while it
			// was away (each update reboots the device once more).
			st = wait(t, f, "every device to run "+version, func(st sim.Stats) bool { return st.Versions[version] == n })
			if st.Failed != 0 {
				t.Errorf("%d devices failed the update: %+v", st.Failed, st)
			}
		})
	}
}
