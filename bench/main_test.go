package bench_test

import (
	"os"
	"testing"

	"github.com/umbra-iot/umbra/internal/loadgen/loadgentest"
)

// TestMain fails the run if any benchmark leaves goroutines behind (broker,
// engine, paho clients, CPU sampler, mosquitto waiter).
func TestMain(m *testing.M) { os.Exit(loadgentest.RunChecked(m)) }
