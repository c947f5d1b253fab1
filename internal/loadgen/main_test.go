package loadgen_test

import (
	"os"
	"testing"

	"github.com/umbra-iot/umbra/internal/loadgen/loadgentest"
)

func TestMain(m *testing.M) { os.Exit(loadgentest.RunChecked(m)) }
