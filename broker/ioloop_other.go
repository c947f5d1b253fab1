//go:build !linux

package broker

import (
	"log/slog"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// loopsSupported reports whether read loops (see ioloop_linux.go) are
// available on this platform: every connection keeps its goroutine.
const loopsSupported = false

type ioLoops struct{}

type loopState struct{}

func newIOLoops(*slog.Logger, int) (*ioLoops, error) { return nil, nil }

func (*ioLoops) stop() {}

func (*ioLoops) servedNow() int64     { return 0 }
func (*ioLoops) handoffsSoFar() int64 { return 0 }

// maxReadLoops bounds Config.ReadLoops.
const maxReadLoops = 1024

func defaultLoops() int { return 0 }

func (*outConn) readPackets(*ioLoops, *mqtt.Client, []byte, mqtt.ReadFn) (bool, error) {
	return false, nil
}

func (*outConn) writeLoopFD([]byte) (int, error) { panic("broker: no read loops") }
func (*outConn) flushLoopFD([]byte) error        { panic("broker: no read loops") }
func (*outConn) closeLoopFDLocked()              {}

func releaseLoopOf(*mqtt.Client)                                 {}
func (*Server) deferDelivery(*mqtt.Client, *packets.Packet) bool { return false }
func (*outConn) shutReadLoopFDLocked()                           {}

var _ = time.Second
