package sim

import (
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/umbra-iot/umbra/device"
)

// connState is where a simulated device's connection stands.
type connState uint8

const (
	connQueued  connState = iota // a connect is queued or running
	connUp                       // connected (paho may be auto-reconnecting)
	connLeaving                  // a reboot, power-off or reconnect is queued
	connAway                     // disconnected; a timer reconnects it
)

// simDevice is one simulated device: a paho client, the firmware machine
// and its timers. It owns no goroutine: paho callbacks, timers and the
// fleet's worker pools drive it, always through do.
type simDevice struct {
	f      *Fleet
	id     device.ID
	prefix string // "state/<id>/"
	flaky  bool   // goes offline now and then

	mu        sync.Mutex  // guards every field below, and m
	client    paho.Client // the connection to servers[clientAt]
	clientAt  int         // the address of client
	server    int         // the address of the next connect
	stopping  bool        // set by Close: no new timers
	m         machine
	rng       *rand.Rand
	conn      connState
	online    bool        // an MQTT connection is open
	timer     *time.Timer // the machine's timer
	cycle     *time.Timer // reconnect, reboot delay or offline cycle
	retry     *time.Timer // the next check of the shadow (see check)
	sync      *time.Timer // reconnects if the connect-time get goes unanswered
	syncing   bool        // the connect-time get is unanswered
	checking  bool        // a check of the shadow is in flight or scheduled
	behindVer int64       // latest shadow version whose delta showed the last report missing
	retries   int         // consecutive failed checks (rejected, lost or overtaken reports)
	connFails int         // consecutive failed connects
	connErr   error       // the last failed connect's error
	seq       uint32      // last clientToken sequence number used
	reportSeq uint32      // sequence number of the last report
	getSeq    uint32      // sequence number of the pending get
	getReport uint32      // reportSeq when the pending get was sent
	lastPub   paho.Token  // token of the last report publish
	sum       summary     // what Stats last counted for this device
}

// do runs fn with the device locked, unless the fleet is closing, and then
// brings the fleet's counters up to date.
func (d *simDevice) do(fn func()) {
	f := d.f
	f.gate.RLock()
	defer f.gate.RUnlock()
	if f.closed {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	fn()
	f.account(d)
}

// afterFunc replaces *t with a timer that runs fn through do after dur.
func (d *simDevice) afterFunc(t **time.Timer, dur time.Duration, fn func()) {
	if *t != nil {
		(*t).Stop()
	}
	if d.stopping {
		return
	}
	*t = time.AfterFunc(dur, func() { d.do(fn) })
}

// jitter returns dur scaled by a factor uniform in [1-frac, 1+frac].
func (d *simDevice) jitter(dur time.Duration, frac float64) time.Duration {
	return time.Duration(float64(dur) * (1 - frac + 2*frac*d.rng.Float64()))
}

// token returns the next sequence number and its clientToken,
// "<run>-<kind><seq>". The run prefix keeps tokens unique across simulator
// runs, since the shadow service deduplicates retried requests by token.
func (d *simDevice) token(kind string) (uint32, string) {
	d.seq++
	return d.seq, d.tokenFor(kind, d.seq)
}

func (d *simDevice) tokenFor(kind string, seq uint32) string {
	return d.f.run + "-" + kind + strconv.FormatUint(uint64(seq), 10)
}

// reportMessage is the update request a device publishes.
type reportMessage struct {
	State struct {
		Reported struct {
			Firmware report `json:"firmware"`
		} `json:"reported"`
	} `json:"state"`
	ClientToken string `json:"clientToken"`
}

// report implements env.
func (d *simDevice) report(r report) {
	var msg reportMessage
	msg.State.Reported.Firmware = r
	d.reportSeq, msg.ClientToken = d.token("r")
	payload, _ := json.Marshal(msg) // cannot fail: strings and a bool
	d.lastPub = d.client.Publish(d.prefix+"update", d.f.cfg.QoS, false, payload)
	d.f.stats.reports.Add(1)
	if fn := d.f.cfg.OnEvent; fn != nil {
		fn(Event{Time: time.Now(), Device: d.id, State: r.State, Version: r.Version, Error: r.Error, Job: r.Job})
	}
}

// download implements env.
func (d *simDevice) download(url string, limit int64, done func(int64, [32]byte, error)) {
	d.f.download(dlJob{d: d, url: url, limit: limit, done: done})
}

// after implements env.
func (d *simDevice) after(dur time.Duration, fn func()) { d.afterFunc(&d.timer, dur, fn) }

// get implements env.
func (d *simDevice) get() {
	var tok string
	d.getSeq, tok = d.token("g")
	d.getReport = d.reportSeq
	d.client.Publish(d.prefix+"get", d.f.cfg.QoS, false, `{"clientToken":"`+tok+`"}`)
}

// reboot implements env.
func (d *simDevice) reboot() { d.leave(opReboot) }

// leave queues a disconnect for a reboot or a power-off.
func (d *simDevice) leave(kind opKind) {
	if d.cycle != nil {
		d.cycle.Stop()
	}
	d.conn = connLeaving
	d.f.enqueue(op{d: d, kind: kind})
}

// connectLater queues a connect after dur.
func (d *simDevice) connectLater(dur time.Duration) {
	d.conn = connAway
	d.afterFunc(&d.cycle, dur, func() {
		if d.conn == connAway {
			d.conn = connQueued
			d.f.enqueue(op{d: d, kind: opConnect})
		}
	})
}

// scheduleOffline arms the next power-off of a flaky device.
func (d *simDevice) scheduleOffline() {
	if !d.flaky {
		return
	}
	d.afterFunc(&d.cycle, d.jitter(d.f.cfg.OfflineAfter, 0.5), func() {
		if d.conn == connUp {
			d.leave(opPowerOff)
		}
	})
}

// dial returns the client for the address of the next connect, making a
// new one when the device moves to another address (the old one is
// disconnected: its connect failed or its connection was lost). d is
// locked, or not yet shared.
func (d *simDevice) dial() paho.Client {
	if d.client == nil || d.clientAt != d.server {
		d.client = paho.NewClient(d.f.clientOptions(d, d.f.servers[d.server]))
		d.clientAt = d.server
	}
	return d.client
}

// onConnect runs (in a paho goroutine) after every successful connection
// of c. Like real firmware it subscribes again (the session is clean) and
// waits for the SUBACK before reporting, so the delta its report causes
// cannot overtake its subscription; then it gets the shadow (syncGet), so
// that no delta sent while it was away is missed.
func (d *simDevice) onConnect(c paho.Client) {
	tok := c.SubscribeMultiple(d.filters(), nil)
	if !tok.WaitTimeout(d.f.cfg.ConnectTimeout) || tok.Error() != nil {
		d.f.log.Warn("subscribe failed", "device", d.id, "err", tok.Error())
	}
	d.do(func() {
		if c != d.client {
			return // an abandoned client
		}
		d.f.connects[d.clientAt].Add(1)
		d.online = true
		d.retries = 0
		d.checking = false
		if d.retry != nil {
			d.retry.Stop() // the connect-time get checks the shadow
		}
		d.m.connected()
		d.syncing = true
		d.syncGet()
	})
}

// syncGet asks for the whole document after connecting. The answer's delta
// catches the device up without relying on the service's on-subscribe
// delta, and a missing answer reveals a connection that receives nothing:
// mochi's session takeover can unregister a quickly reconnecting client
// (the old connection's cleanup deletes the client ID from the registry
// after the new connection registered it). The device then reconnects.
func (d *simDevice) syncGet() {
	d.get()
	d.afterFunc(&d.sync, d.jitter(d.f.cfg.SyncTimeout, 0.2), func() {
		if d.syncing && d.online && d.conn == connUp {
			d.f.log.Warn("no answer to get after connecting, reconnecting", "device", d.id)
			d.f.stats.resyncs.Add(1)
			d.leave(opReconnect)
		}
	})
}

// filters returns the device's subscriptions.
func (d *simDevice) filters() map[string]byte {
	qos := d.f.cfg.QoS
	return map[string]byte{
		d.prefix + "update/delta":    qos,
		d.prefix + "update/rejected": qos,
		d.prefix + "get/accepted":    qos,
		d.prefix + "get/rejected":    qos,
	}
}

// onLost runs (in a paho goroutine) when c's connection is lost without
// the device closing it. Unless a reboot, power-off or reconnect is
// already queued (it connects again), the device connects to the next
// address after a jittered ReconnectDelay; onConnect then subscribes
// again and resyncs its shadow.
func (d *simDevice) onLost(c paho.Client, err error) {
	d.do(func() {
		if c != d.client {
			return
		}
		d.online = false
		d.syncing = false
		d.f.log.Debug("connection lost", "device", d.id, "server", d.f.servers[d.clientAt], "err", err)
		if d.conn != connUp {
			return // connect (connQueued) or the queued op (connLeaving) reconnects
		}
		d.f.stats.reconnects.Add(1)
		d.server, d.connFails = d.f.next(d.clientAt), 0
		d.connectLater(d.jitter(d.f.cfg.ReconnectDelay, 0.5))
	})
}

// responseMessage is the part of a response the device reads first.
type responseMessage struct {
	ClientToken string `json:"clientToken"`
	Code        int    `json:"code"`
	Message     string `json:"message"`
}

// onMessage receives every message on the device's subscriptions.
func (d *simDevice) onMessage(_ paho.Client, msg paho.Message) {
	suffix, ok := strings.CutPrefix(msg.Topic(), d.prefix)
	if !ok {
		return
	}
	payload := msg.Payload()
	d.do(func() {
		var err error
		switch suffix {
		case "update/delta":
			d.f.stats.deltas.Add(1)
			ver, behind := d.m.behind(payload)
			err = d.m.delta(payload)
			if behind {
				d.behindVer = max(d.behindVer, ver)
				d.check()
			}
		case "update/rejected":
			d.rejected(payload)
		case "get/accepted", "get/rejected":
			var r responseMessage
			if json.Unmarshal(payload, &r) != nil || r.ClientToken != d.tokenFor("g", d.getSeq) {
				return // not the answer to the pending get
			}
			wasSyncing := d.syncing
			if d.syncing && d.sync != nil {
				d.sync.Stop()
			}
			d.syncing = false
			if suffix == "get/rejected" {
				d.checked(nil, r.Code)
				if r.Code == 404 { // no shadow; other codes say nothing about it
					d.m.documentMissing()
				}
				return
			}
			d.checked(payload, 200)
			if err = d.m.document(payload); err == nil && wasSyncing {
				err = d.m.synced(payload)
			}
		}
		if err != nil {
			d.f.log.Warn("bad message", "device", d.id, "topic", msg.Topic(), "err", err)
		}
	})
}

// rejected handles update/rejected: a transient rejection of the latest
// report makes the device check the shadow after a backoff (checkLater),
// and report again if the shadow lacks it, since the report is the
// device's state.
func (d *simDevice) rejected(payload []byte) {
	d.f.stats.rejected.Add(1)
	var r responseMessage
	if err := json.Unmarshal(payload, &r); err != nil {
		d.f.log.Warn("bad rejection", "device", d.id, "err", err)
		return
	}
	if r.ClientToken != d.tokenFor("r", d.reportSeq) {
		return // an older report; a newer one supersedes it
	}
	if !transient(r.Code) {
		d.f.log.Warn("report rejected", "device", d.id, "code", r.Code, "message", r.Message)
		return
	}
	d.checkLater()
}

// transient reports whether a rejection code may go away on a retry.
func transient(code int) bool {
	return code == 429 || code == 500 || code == 503
}

// check asks the shadow (get) whether it holds the device's last report,
// unless a get is already pending or a check is scheduled (checked then
// asks again if the answer predates the delta that prompted the check).
// The answer goes to checked. Without an answer within SyncTimeout the
// device checks again after a backoff.
func (d *simDevice) check() {
	if d.syncing || d.checking || !d.online || d.conn == connLeaving {
		return // a pending get tells, or the next connection re-reports
	}
	d.checking = true
	d.get()
	d.afterFunc(&d.retry, d.jitter(d.f.cfg.SyncTimeout, 0.2), func() {
		d.checking = false
		d.checkLater()
	})
}

// checkLater schedules a check after an exponential backoff.
func (d *simDevice) checkLater() {
	d.retries++
	backoff := min(30*time.Second, 250*time.Millisecond<<min(d.retries, 7))
	d.checking = true
	d.afterFunc(&d.retry, d.jitter(backoff, 0.5), func() {
		d.checking = false
		d.check()
	})
}

// checked handles the answer to the pending get (any get: the one sent on
// connecting, the machine's activation check or check's): code 200 with
// the document, 404 when there is no shadow, or another rejection code.
// Like real firmware, a device reports its state until the shadow shows
// it: if no report was sent since the get, a document without the last
// report (it was rejected, lost with a connection, or overtaken by an
// older one) makes the device report it again and check again after a
// backoff.
func (d *simDevice) checked(doc []byte, code int) {
	d.checking = false
	if d.retry != nil {
		d.retry.Stop()
	}
	var shows bool
	switch code {
	case 200:
		var ver int64
		var err error
		if shows, ver, err = d.m.shows(doc); err != nil {
			d.f.log.Warn("bad document", "device", d.id, "err", err)
		}
		if err == nil && ver < d.behindVer {
			// A newer delta says the shadow lost the report after this
			// document: ask again (the new answer is at least that new).
			d.check()
			return
		}
	case 404:
	default:
		d.checkLater() // the get was refused: ask again
		return
	}
	if d.reportSeq != d.getReport {
		return // a newer report is on its way
	}
	if shows {
		d.retries = 0
		return
	}
	d.f.stats.resent.Add(1)
	d.f.log.Info("shadow lacks the last report, reporting again", "device", d.id,
		"state", d.m.last.State, "version", d.m.last.Version, "attempt", d.retries+1)
	d.m.publish(d.m.last, true)
	d.checkLater()
}

// stop stops the device's timers; Close calls it with the gate held.
func (d *simDevice) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopping = true
	for _, t := range []*time.Timer{d.timer, d.cycle, d.retry, d.sync} {
		if t != nil {
			t.Stop()
		}
	}
}
