package bench_test

import (
	"testing"

	"github.com/umbra-iot/umbra/broker"
	"github.com/umbra-iot/umbra/internal/loadgen"
	"github.com/umbra-iot/umbra/internal/mosquittotest"
)

// mosquittoConf is the reference broker's configuration beyond
// mosquittotest's: no limit on queued messages so that the echo client's
// queue never drops a request (mosquitto's default of 1000 would, at 1000
// clients), and TCP_NODELAY like Go's sockets (mosquitto's default leaves
// Nagle on, which with delayed ACKs adds ~40 ms to every round trip and
// would make the reference look 20× slower than it is).
const mosquittoConf = `set_tcp_nodelay true
max_queued_messages 0
`

// startMosquitto runs mosquitto on a free loopback port until cleanup and
// returns its URL. It fails the benchmark if mosquitto is not installed.
func startMosquitto(tb testing.TB) string {
	tb.Helper()
	return "tcp://" + mosquittotest.Start(tb, mosquittoConf)
}

// runExternalEcho runs the closed loop against url with requests answered
// by an ordinary MQTT client (loadgen.OpenEcho) subscribed through the
// broker: request → broker → echo client → broker → requester.
func runExternalEcho(b *testing.B, url string, clients int) (loadgen.Result, cpuUse) {
	b.Helper()
	echo, err := loadgen.OpenEcho(b.Context(), loadgen.EchoConfig{Server: url, QoS: 1})
	if err != nil {
		b.Fatalf("open echo client on %s: %v", url, err)
	}
	defer closeWithin(b, "echo client", echo)
	return runLoad(b, loadConfig(b, url, clients))
}

// BenchmarkMosquittoReference runs the round trip of BenchmarkShadowUpdate
// (K clients, QoS 1, window 1) against Debian's mosquitto broker, started as
// a subprocess on 127.0.0.1, with an external echo client answering every
// request. In the same iteration it runs the identical setup against
// Umbra's embedded broker (external echo client, no shadow engine), so
// umbra-broker/mosquitto compares the two brokers like for like. Note that
// the single echo client carries every response, so this measures a
// different (and narrower) path than the in-process echo baseline.
func BenchmarkMosquittoReference(b *testing.B) {
	k := numClients(b)
	url := startMosquitto(b)
	// The echo client receives every request: up to K QoS 1 messages in
	// flight to one session. Umbra's defaults (64 queued writes, 256
	// inflight per client) are sized for devices and would drop them, as
	// mosquitto's would without max_queued_messages 0; lift both above K.
	// It also publishes every reply, far beyond a device's message rate,
	// which mosquitto does not limit: no limit here either.
	brk := openBroker(b, broker.Config{ClientWritesPending: int32(4 * k), MaxInflight: uint16(min(4*k, 65535)), MaxMessageRate: -1})
	var m means
	for b.Loop() {
		r, cpu := runExternalEcho(b, url, k)
		ru, cpuu := runExternalEcho(b, brokerURL(brk), k)
		if st := brk.Stats(); st.PacketsDropped != 0 {
			b.Errorf("umbra broker dropped %d messages (queue %d, inflight %d), want 0",
				st.PacketsDropped, st.MessagesDropped, st.InflightDropped)
		}
		m.add("mosquitto-updates/s", r.PerSecond)
		m.add("mosquitto-p50-ms", ms(r.P50))
		m.add("mosquitto-p99-ms", ms(r.P99))
		m.add("mosquitto-gen-cpu-cores", cpu.Self)      // generator + echo client
		m.add("mosquitto-others-cpu-cores", cpu.Others) // mosquitto and anything else running
		m.add("umbra-broker-updates/s", ru.PerSecond)
		m.add("umbra-broker-p50-ms", ms(ru.P50))
		m.add("umbra-broker-p99-ms", ms(ru.P99))
		m.add("umbra-broker-cpu-cores", cpuu.Self)
	}
	m.add("umbra-broker/mosquitto", m.mean("umbra-broker-updates/s")/m.mean("mosquitto-updates/s"))
	m.report(b)
}
