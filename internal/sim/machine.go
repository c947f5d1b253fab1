package sim

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// env is what the firmware state machine needs from the world. The fleet
// implements it with paho, a download pool and time.AfterFunc; tests
// implement it with fakes. The machine calls env only from its own methods,
// which the caller serialises (the device mutex), and env calls back into
// the machine (download results, timers) under the same serialisation.
type env interface {
	// report publishes reported.firmware. Calls arrive in order.
	report(r report)
	// download fetches url (at most limit bytes) and calls done with the
	// byte count and SHA-256 of the body, or an error.
	download(url string, limit int64, done func(n int64, sum [32]byte, err error))
	// after calls f once d has passed, unless the device is stopped first.
	// A later call replaces an earlier pending one.
	after(d time.Duration, f func())
	// get asks the shadow service for the full document; the answer comes
	// back through machine.document or machine.documentMissing.
	get()
	// reboot disconnects and reconnects; machine.connected follows.
	reboot()
}

// errURLRejected marks a download refused with HTTP 403.
var errURLRejected = errors.New("sim: download url rejected")

type phase uint8

const (
	phaseIdle        phase = iota // running its firmware, no update in progress
	phaseDownloading              // waiting for the download
	phaseInstalling               // waiting for the install timer
	phaseChecking                 // asked the shadow whether the command still stands
	phaseRebooting                // disconnected to boot the new image
	phaseSilent                   // a faulty device that swallowed a command
)

// checkTimeout bounds the wait for the shadow document before activation;
// without an answer the device activates anyway.
const checkTimeout = 10 * time.Second

// machine is the firmware update logic of one device: a near-pure state
// machine driven by deltas, download results, timers and connections, whose
// only outputs are calls to env.
//
// Update sequence: delta with a command → downloading → (download) →
// verifying → installing → (install time) → get the shadow: is the command
// still desired? → rebooting → (reconnect) → updated with the new version.
// Failures report state failed with a reason; an operator abort (the
// firmware command vanishes from desired) reports the running version.
type machine struct {
	env     env
	key     ed25519.PublicKey
	hw      string
	maxSize int64
	faulty  FailMode // "" for a healthy device
	// installTime returns the (jittered) duration of one install.
	installTime func() time.Duration

	running  string  // running firmware version
	phase    phase   //
	cur      command // command being worked on, or the last one handled
	hasCur   bool    // cur is meaningful
	attempt  uint32  // incremented to invalidate pending callbacks
	last     report  // last report published
	doneJob  string  // job of the last completed update
	deltaVer int64   // highest delta version applied
	installs int     // updates completed
}

func newMachine(e env, running string) *machine {
	return &machine{env: e, running: running, last: report{Version: running, State: StateUpdated}}
}

// busy reports whether an update is in progress.
func (m *machine) busy() bool {
	switch m.phase {
	case phaseDownloading, phaseInstalling, phaseChecking, phaseRebooting:
		return true
	}
	return false
}

func (m *machine) publish(r report, force bool) {
	if r == m.last && !force {
		return
	}
	m.last = r
	m.env.report(r)
}

// connected runs on every (re)connection: it finishes a reboot, or
// re-announces the last report so the shadow exists and is current.
func (m *machine) connected() {
	if m.phase == phaseRebooting {
		m.running = m.cur.Version
		m.phase = phaseIdle
		m.doneJob = m.cur.Job
		m.installs++
		m.publish(report{Version: m.running, State: StateUpdated, Job: m.cur.Job}, true)
		return
	}
	m.publish(m.last, true)
}

// powerOff loses any update in progress (except one already rebooting into
// the new image, which completes on the next connection).
func (m *machine) powerOff() {
	m.attempt++
	if m.phase == phaseRebooting {
		return
	}
	if m.busy() {
		m.hasCur = false
		m.last = report{Version: m.running, State: StateUpdated, Job: m.doneJob}
	}
	if m.phase != phaseSilent {
		m.phase = phaseIdle
	}
}

// deltaMessage is the part of a delta document the device reads.
type deltaMessage struct {
	State struct {
		Firmware *commandDelta `json:"firmware"`
	} `json:"state"`
	Version int64 `json:"version"`
}

// delta handles a message on the device's delta topic.
func (m *machine) delta(payload []byte) error {
	var d deltaMessage
	if err := json.Unmarshal(payload, &d); err != nil {
		return err
	}
	if d.Version < m.deltaVer {
		return nil // cumulative deltas: an older one is superseded
	}
	m.deltaVer = d.Version
	if d.State.Firmware == nil {
		if m.busy() && m.phase != phaseRebooting {
			m.abort()
		}
		return nil
	}
	m.command(d.State.Firmware.resolve(m.last))
	return nil
}

// command acts on the effective desired firmware.
func (m *machine) command(c command) {
	switch {
	case m.phase == phaseSilent, m.phase == phaseRebooting:
		return
	case c.Version == m.running:
		// Desired is what runs (already installed, or rolled back before
		// the new image was activated): stop any update and say so.
		m.attempt++
		m.phase = phaseIdle
		m.cur, m.hasCur = c, true
		m.publish(report{Version: m.running, State: StateUpdated, Job: c.Job}, false)
		return
	case m.busy() && c.sameTarget(m.cur):
		return // a repeat of the command in progress (e.g. a refreshed URL)
	case !m.busy() && m.hasCur && c == m.cur:
		return // already handled: it failed, and only a new command retries
	}
	m.attempt++
	m.cur, m.hasCur = c, true
	if m.faulty == FailSilent {
		m.phase = phaseSilent
		return
	}
	if err := c.validate(m.maxSize); err != nil {
		m.fail(ReasonBadCommand)
		return
	}
	if c.HW != "" && m.hw != "" && c.HW != m.hw {
		m.fail(ReasonHWMismatch)
		return
	}
	m.phase = phaseDownloading
	m.publish(report{Version: m.running, State: StateDownloading, Job: c.Job}, false)
	if m.faulty == FailDownload {
		m.fail(ReasonDownloadFailed)
		return
	}
	attempt := m.attempt
	m.env.download(c.URL, c.Size, func(n int64, sum [32]byte, err error) {
		if attempt == m.attempt && m.phase == phaseDownloading {
			m.downloaded(n, sum, err)
		}
	})
}

func (m *machine) downloaded(n int64, sum [32]byte, err error) {
	switch {
	case errors.Is(err, errURLRejected):
		m.fail(ReasonURLRejected)
		return
	case err != nil:
		m.fail(ReasonDownloadFailed)
		return
	}
	m.publish(report{Version: m.running, State: StateVerifying, Job: m.cur.Job}, false)
	if m.faulty == FailVerify {
		sum[0] ^= 0xff // a corrupted transfer
	}
	if reason := verify(m.key, m.cur, n, sum); reason != "" {
		m.fail(reason)
		return
	}
	m.phase = phaseInstalling
	m.publish(report{Version: m.running, State: StateInstalling, Job: m.cur.Job}, false)
	var d time.Duration
	if m.installTime != nil {
		d = m.installTime()
	}
	attempt := m.attempt
	m.env.after(d, func() {
		if attempt == m.attempt && m.phase == phaseInstalling {
			m.installed()
		}
	})
}

func (m *machine) installed() {
	if m.faulty == FailInstall {
		m.fail(ReasonInstallFailed)
		return
	}
	// Before activating, confirm the command still stands: an operator
	// abort that leaves the delta empty publishes no delta at all.
	m.phase = phaseChecking
	m.env.get()
	attempt := m.attempt
	m.env.after(checkTimeout, func() {
		if attempt == m.attempt && m.phase == phaseChecking {
			m.reboot()
		}
	})
}

// documentMessage is the part of a get/accepted document the device reads.
type documentMessage struct {
	State struct {
		Desired struct {
			Firmware *struct {
				Version string `json:"version"`
				SHA256  string `json:"sha256"`
			} `json:"firmware"`
		} `json:"desired"`
	} `json:"state"`
}

// document handles the answer to get: activate if the command stands.
func (m *machine) document(payload []byte) error {
	if m.phase != phaseChecking {
		return nil
	}
	var d documentMessage
	if err := json.Unmarshal(payload, &d); err != nil {
		return err
	}
	fw := d.State.Desired.Firmware
	if fw == nil || fw.Version != m.cur.Version || (fw.SHA256 != "" && !strings.EqualFold(fw.SHA256, m.cur.SHA256)) {
		m.abort()
		return nil
	}
	m.reboot()
	return nil
}

// syncMessage is the part of a get/accepted document a device uses to
// catch up: the current delta and the document version.
type syncMessage struct {
	State struct {
		Delta json.RawMessage `json:"delta"`
	} `json:"state"`
	Version int64 `json:"version"`
}

// synced applies the delta inside a full document (the answer to the get
// a device sends on every connection), exactly as if it had arrived on the
// delta topic. An absent or empty delta means nothing is pending.
func (m *machine) synced(payload []byte) error {
	var d syncMessage
	if err := json.Unmarshal(payload, &d); err != nil {
		return err
	}
	delta := d.State.Delta
	if len(delta) == 0 || string(delta) == "null" {
		delta = []byte("{}")
	}
	msg, err := json.Marshal(struct {
		State   json.RawMessage `json:"state"`
		Version int64           `json:"version"`
	}{delta, d.Version})
	if err != nil {
		return err
	}
	return m.delta(msg)
}

// reportedMessage is the part of a get/accepted document that holds what
// the shadow has for the device's reported firmware.
type reportedMessage struct {
	State struct {
		Reported struct {
			Firmware *report `json:"firmware"`
		} `json:"reported"`
	} `json:"state"`
	Version int64 `json:"version"`
}

// shows reports whether a get/accepted document holds the device's last
// report as its reported firmware, and returns the document's version.
func (m *machine) shows(payload []byte) (bool, int64, error) {
	var d reportedMessage
	if err := json.Unmarshal(payload, &d); err != nil {
		return false, 0, err
	}
	return d.State.Reported.Firmware != nil && *d.State.Reported.Firmware == m.last, d.Version, nil
}

// behind reports whether a delta proves that the shadow does not hold the
// device's last report. A delta carries only the desired leaves that
// differ from reported, so a "version" (or "job") in it equal to the one
// the device last reported means the shadow's reported value is another:
// the report has not been applied yet, or an older report overtook it
// (one sent on the connection before a reboot can reach the shadow after
// the report sent on the new connection). The device then checks with a
// get and re-reports; without this, the identical-report suppression
// would leave the shadow stale forever. Deltas older than the last one
// applied prove nothing. It returns the delta's (document) version.
func (m *machine) behind(payload []byte) (int64, bool) {
	var d deltaMessage
	if json.Unmarshal(payload, &d) != nil || d.Version < m.deltaVer || d.State.Firmware == nil {
		return 0, false
	}
	fw := d.State.Firmware
	return d.Version, (fw.Version != nil && *fw.Version == m.last.Version) || (fw.Job != nil && *fw.Job == m.last.Job)
}

// documentMissing handles get/rejected: no shadow means no command.
func (m *machine) documentMissing() {
	if m.phase == phaseChecking {
		m.abort()
	}
}

func (m *machine) reboot() {
	m.attempt++
	m.phase = phaseRebooting
	m.publish(report{Version: m.running, State: StateRebooting, Job: m.cur.Job}, false)
	m.env.reboot()
}

// abort stops the update in progress and reports the running version.
func (m *machine) abort() {
	m.attempt++
	m.phase = phaseIdle
	m.hasCur = false
	m.publish(report{Version: m.running, State: StateUpdated, Job: m.doneJob}, false)
}

func (m *machine) fail(reason string) {
	m.attempt++
	m.phase = phaseIdle
	m.publish(report{Version: m.running, State: StateFailed, Error: reason, Retryable: retryable(reason), Job: m.cur.Job}, false)
}
