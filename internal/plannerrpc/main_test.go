package plannerrpc_test

import (
	"testing"

	"github.com/umbra-iot/umbra/internal/waitfor"
)

func TestMain(m *testing.M) {
	// No request goroutine of a Server, nor a planner, outlives the tests.
	waitfor.Main(m, "umbra/internal/plannerrpc.(*Server)", "umbra/rollout.(*Planner)")
}
