package rollout

import (
	"context"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// Store is where a Planner keeps its rollouts: each rollout's record, its
// frozen target list, one record per device that left pending, its event
// log, the last error texts of its devices, the intents of notifications
// not yet delivered, and the AWS IoT Jobs executions of its Jobs devices;
// plus the set of Jobs devices. The planner declares it; rollout/boltstore
// implements it on a bbolt file (rollout.db), and package
// rollout/storetest holds the contract every implementation passes.
//
// A Store is owned by whoever opened it: the planner never closes it. The
// planner is its only writer and calls Create and Commit one at a time
// (under its lock, with the reads whose answers a write depends on), so a
// store needs no compare-and-set between the planner's reads and its
// writes. Other reads (the API's: rollouts, targets, error texts, events;
// the pass's Jobs marks) run without the lock, concurrently with each
// other and with a write: each sees a write whole or not at all per key,
// and needs no snapshot across keys.
//
// Every write is atomic and durable: when Create or Commit returns nil,
// all it was given survives a crash, and when it returns an error (ctx
// done, a full disk, a closed store) none of it does. That is the crash
// safety of the planner: an intent is committed before its shadow write,
// and a rollout's device records, events and record move together.
//
// Methods that name a rollout return an error wrapping ErrNotFound when
// the store has no such rollout.
type Store interface {
	// Create stores a new rollout atomically: it takes the next number n
	// of a sequence that only grows (across restarts too), sets r.ID to
	// "r<n>", and stores r with its targets (every device pending: no
	// device record) and first as its first event. It returns r and first
	// as stored (with their ID and Seq).
	Create(ctx context.Context, r Rollout, targets []device.ID, first Event) (Rollout, Event, error)
	// Commit applies every write of c atomically, in the order of
	// Changes' fields, and returns c.Events as stored: each with the next
	// sequence number of its rollout's log (1, 2, …, never reused).
	Commit(ctx context.Context, c *Changes) ([]Event, error)

	// Rollouts returns the record of every rollout, in no particular
	// order.
	Rollouts(ctx context.Context) ([]Rollout, error)
	// Rollout returns the record of rollout id.
	Rollout(ctx context.Context, id string) (Rollout, error)
	// Load returns rollout id whole, as the planner holds an unsettled
	// rollout in memory.
	Load(ctx context.Context, id string) (Stored, error)
	// Targets calls f with each target of rollout id from position start
	// on, in rollout order, with its device record (the zero Device,
	// pending, where none is stored), until f returns false or the list
	// ends. Its work is proportional to the positions visited, not to the
	// number of targets (a page of a finished million-device rollout).
	Targets(ctx context.Context, id string, start int, f func(i int, target device.ID, d Device) bool) error
	// Errors returns the last error texts of rollout id's targets by
	// position: of the positions in which, or of every target when which
	// is nil. Positions without one are left out.
	Errors(ctx context.Context, id string, which []int) (map[int]string, error)
	// Events returns the events of rollout id whose Seq is above after,
	// oldest first; its work is proportional to the events returned.
	Events(ctx context.Context, id string, after uint64) ([]Event, error)
	// Execution returns the Jobs execution record of device dev in
	// rollout id; false when it has none.
	Execution(ctx context.Context, id string, dev device.ID) (ExecRecord, bool, error)
	// JobsDevice reports whether dev is a Jobs device (Changes.JobsDevices).
	JobsDevice(ctx context.Context, dev device.ID) (bool, error)
}

// Stored is a rollout as Store.Load returns it.
type Stored struct {
	Rollout Rollout
	// Targets are the target IDs in rollout order; Devices their records,
	// one per target (the zero Device, pending, where none is stored).
	Targets []device.ID
	Devices []Device
	// Intents are the undelivered notifications by target position: the
	// JSON of the firmware command recorded before its shadow write.
	Intents map[int][]byte
	// Executions are the Jobs execution records of its Jobs devices.
	Executions map[device.ID]ExecRecord
}

// Changes are a group of writes that Store.Commit applies atomically,
// field by field in this order. Every rollout they name exists.
type Changes struct {
	// Rollouts are records to store, each replacing the record of its ID.
	Rollouts []Rollout
	// Targets replace target lists (a dynamic rollout's grows).
	Targets []TargetList
	// Devices are device records to store.
	Devices []DeviceWrite
	// Errors are last error texts to store.
	Errors []ErrorWrite
	// Events are appended to their rollout's log.
	Events []EventWrite
	// Intents are undelivered notifications to store; then the intents
	// at Delivered are deleted (delivered, or moot).
	Intents   []IntentWrite
	Delivered []Position
	// Executions are Jobs execution records to store: each the result of
	// its Patch applied to the record stored before (found false when
	// there is none), in order.
	Executions []ExecWrite
	// JobsDevices are marked as Jobs devices; a device marked already
	// keeps its first mark.
	JobsDevices []JobsMark
}

// Empty reports whether c has no write.
func (c *Changes) Empty() bool {
	return len(c.Rollouts)+len(c.Targets)+len(c.Devices)+len(c.Errors)+len(c.Events)+len(c.Intents)+
		len(c.Delivered)+len(c.Executions)+len(c.JobsDevices) == 0
}

// Position is a target position of a rollout.
type Position struct {
	Rollout string
	Index   int
}

// TargetList is the whole target list of a rollout, in rollout order.
type TargetList struct {
	Rollout string
	Targets []device.ID
}

// DeviceWrite is the record of the target at a position.
type DeviceWrite struct {
	Position
	Device Device
}

// ErrorWrite is the last error text of the target at a position.
type ErrorWrite struct {
	Position
	Text string
}

// EventWrite is an event to append to a rollout's log.
type EventWrite struct {
	Rollout string
	Event   Event
}

// IntentWrite is the firmware command (its JSON) recorded for the target
// at a position before it is written into the shadow.
type IntentWrite struct {
	Position
	Command []byte
}

// ExecWrite stores Patch's result as device Device's execution record in
// rollout Rollout.
type ExecWrite struct {
	Rollout string
	Device  device.ID
	Patch   func(old ExecRecord, found bool) ExecRecord
}

// JobsMark marks Device as a Jobs device since Since.
type JobsMark struct {
	Device device.ID
	Since  time.Time
}
