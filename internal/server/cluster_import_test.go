package server_test

import (
	"fmt"
	"strings"
	"testing"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/brokertest"
	"github.com/umbra-iot/umbra/internal/natstest"
	"github.com/umbra-iot/umbra/internal/server"
	"github.com/umbra-iot/umbra/wire"
)

// TestClusterModeBulkImport imports 5,000 devices (10,000 writes, ten
// times one JetStream atomic batch) through node A's HTTP API, half of
// them with a certificate binding (three writes each): every device is
// enrolled, node B lists all of them, a device logs in on node B with the
// secret A returned, and importing the same list again is refused whole
// (every name taken) with nothing changed. Before the import was chunked
// it failed with "10000 writes in one atomic batch, at most 1000".
func TestClusterModeBulkImport(t *testing.T) {
	const n = 5000
	ns := natstest.Start(t)
	nodes := make([]*rig, 2)
	for i := range nodes {
		nodes[i] = mustOpenRig(t, true, func(cfg *server.Config) {
			cfg.NATS, cfg.NodeID, cfg.NATSReplicas = ns.URLs(), fmt.Sprintf("n%d", i+1), 1
		})
	}
	api := func(r *rig, name string) *client.Client {
		tok, err := r.Identity().CreateToken(t.Context(), identity.RoleOperator, name)
		if err != nil {
			t.Fatal(err)
		}
		c, err := client.New(client.Config{URL: "http://" + r.HTTPAddr().String(), Token: name + ":" + tok})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := api(nodes[0], "import-a"), api(nodes[1], "import-b")

	req := wire.ImportRequest{Devices: make([]wire.EnrollRequest, n)}
	for i := range req.Devices {
		req.Devices[i] = wire.EnrollRequest{ID: fmt.Sprintf("bulk-%05d", i), Labels: map[string]string{"batch": "bulk"}}
		if i%2 == 1 {
			req.Devices[i].CertSHA256 = fmt.Sprintf("%064x", i)
		}
	}
	resp, err := a.ImportDevices(t.Context(), req)
	if err != nil {
		t.Fatalf("import of %d devices on node A: %v", n, err)
	}
	if len(resp.Devices) != n || resp.Devices[0].Secret == "" {
		t.Fatalf("import answered %d devices (first %+v), want %d with secrets", len(resp.Devices), resp.Devices[0], n)
	}
	listed, err := b.ListEnrolled(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got := countPrefix(listed, "bulk-"); got != n {
		t.Fatalf("node B lists %d imported devices, want %d", got, n)
	}
	login(t, nodes[1], resp.Devices[0])

	_, err = a.ImportDevices(t.Context(), req)
	if err == nil || !strings.Contains(err.Error(), "5000 of 5000 devices are bad; nothing imported") {
		t.Fatalf("second import: %v, want a refusal of every device (all taken)", err)
	}
	after, err := b.ListEnrolled(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if countPrefix(after, "bulk-") != n {
		t.Fatalf("after the refused import node B lists %d devices, want %d", countPrefix(after, "bulk-"), n)
	}
	// The refused import rotated nothing: the first secret still works.
	login(t, nodes[0], resp.Devices[0])
}

func countPrefix(list []wire.EnrolledDevice, prefix string) int {
	n := 0
	for _, d := range list {
		if strings.HasPrefix(string(d.ID), prefix) {
			n++
		}
	}
	return n
}

// login connects as d with its secret (brokertest.Connect fails the test
// if the node refuses) and disconnects.
func login(t *testing.T, r *rig, d wire.SecretResponse) {
	t.Helper()
	c := brokertest.Connect(t, r.mqttURL(), d.ID, func(o *mqtt.ClientOptions) { o.SetUsername(d.ID).SetPassword(d.Secret) })
	c.Disconnect(0)
}
