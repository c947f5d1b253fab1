package identity_test

import (
	"testing"

	"github.com/umbra-iot/umbra/internal/waitfor"
)

// TestMain fails the test binary if goroutines of this package, mochi or
// paho outlive the tests.
func TestMain(m *testing.M) {
	waitfor.Main(m,
		"github.com/umbra-iot/umbra/identity.",
		"github.com/umbra-iot/umbra/broker.",
		"github.com/mochi-mqtt/server",
		"github.com/eclipse/paho.mqtt.golang",
	)
}
