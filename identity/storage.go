package identity

import (
	"context"
	"errors"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// ErrConflict is wrapped by Storage.Replace when the record changed since
// it was read (another node, in a shared storage, changed it first).
// Store methods read again and retry; they return it only when the record
// kept changing.
var ErrConflict = errors.New("identity: record changed concurrently")

// Storage is the persistent state of a Store: the server key, the devices
// and tokens with their secret MACs and credential generations, the
// certificates bound to devices, when each device was last removed, and
// device presence. The package identity/boltstore keeps it in one bbolt
// file (the single-node default); a storage shared by several servers
// (cluster mode) implements the same contract. The package
// identity/storetest checks an implementation against it.
//
// Devices and tokens share one namespace of names: no name is both.
// Records returned are the caller's (no memory is shared with the
// storage). Every method that changes something is atomic (all of its
// change or none is stored) and durable when it returns nil: a process
// that opens the storage again, after a crash too, sees the change.
//
// Errors wrap the package's sentinels where the contract names them
// (ErrNotFound, ErrExists, ErrConflict, ErrClosed after the storage was
// closed), and ctx's error when ctx ended before the method could start
// its work. A Store calls a Storage from many goroutines at once.
type Storage interface {
	// ServerKey returns the server key secrets are hashed with. It fails
	// with ErrNotFound when there is none. The storage keeps the key
	// apart from the records (the bbolt storage: in a file of its own),
	// so a copy of the records alone reveals nothing usable.
	ServerKey(ctx context.Context) ([]byte, error)
	// CreateServerKey stores key as the server key. It fails with
	// ErrExists when there is one already.
	CreateServerKey(ctx context.Context, key []byte) error
	// KeyCheck returns the value the records were stored with, from which
	// a Store tells whether a server key is the one the secrets were
	// hashed with; nil when none was stored.
	KeyCheck(ctx context.Context) ([]byte, error)
	// SetKeyCheck stores check as the key check. It fails with ErrExists
	// when one is stored already.
	SetKeyCheck(ctx context.Context, check []byte) error

	// Get returns the device or token called name. It fails with
	// ErrNotFound when there is neither. name may be any string.
	Get(ctx context.Context, name string) (Record, error)
	// Devices returns, in ID order, at most limit devices whose IDs sort
	// after after ("" for the first page). An empty result ends the scan.
	Devices(ctx context.Context, after device.ID, limit int) ([]Record, error)
	// Tokens returns tokens in name order, as Devices does devices.
	Tokens(ctx context.Context, after string, limit int) ([]Record, error)
	// CertOwner returns the device the client certificate with
	// fingerprint fp (Record.CertSHA256) is bound to. It fails with
	// ErrNotFound when it is bound to none.
	CertOwner(ctx context.Context, fp string) (device.ID, error)
	// RemovedAt returns when device id was last removed (RemoveDevice);
	// the zero time if never.
	RemovedAt(ctx context.Context, id device.ID) (time.Time, error)

	// Create stores every record of recs (devices and tokens), binding
	// each device's certificate (a non-empty CertSHA256) to it, in one
	// atomic change, when none of their names is taken and none of their
	// certificates is bound; otherwise, and always with dryRun, it stores
	// nothing. It returns one Conflict for each record whose name is
	// taken or whose certificate is bound, in any order; their records
	// were not stored. Names and fingerprints in recs must be distinct
	// (the caller checks): otherwise it fails and stores nothing.
	Create(ctx context.Context, recs []Record, dryRun bool) ([]Conflict, error)
	// Replace stores next in place of the device or token prev.Name when
	// the stored record is of the same kind (device or token) and still
	// has prev's generations (SecretGen and Enrolment): a compare-and-set
	// on the credential generation. It fails with ErrNotFound when there
	// is no such record, and ErrConflict when its generations differ. A
	// device's certificate binding does not change: next.CertSHA256 must
	// be the stored one.
	Replace(ctx context.Context, prev, next Record) error
	// RemoveDevice deletes device id with its certificate binding and its
	// presence and records at as the time it was last removed, in one
	// atomic change, and returns the deleted record. It fails with
	// ErrNotFound when id is not a device.
	RemoveDevice(ctx context.Context, id device.ID, at time.Time) (Record, error)
	// DeleteToken deletes token name and returns it. It fails with
	// ErrNotFound when name is not a token.
	DeleteToken(ctx context.Context, name string) (Record, error)

	// Presence returns the stored presence of every device that has some.
	Presence(ctx context.Context) (map[device.ID]Presence, error)
	// SavePresence stores every presence of batch in one atomic change.
	// With enrolledOnly, presence of an ID that is not a device when the
	// change is made is left out, so a batch never brings back the
	// presence of a device removed since.
	SavePresence(ctx context.Context, batch map[device.ID]Presence, enrolledOnly bool) error
}

// Record is a device or a token as a Storage keeps it. It never holds a
// secret, only its MAC.
type Record struct {
	// Name is the device ID or the token name.
	Name string
	// Role is RoleDevice for a device, the token's role for a token.
	Role Role
	// MAC is HMAC-SHA256(server key, role, name, secret).
	MAC []byte
	// CreatedAt is when the device was enrolled or the token created.
	CreatedAt time.Time
	// SecretGen identifies the current secret: new with every secret.
	// Password sessions are bound to it. Records stored by versions
	// before generations have none until Open gives them one.
	SecretGen string

	// Labels are a device's labels; nil for tokens.
	Labels map[string]string
	// RotatedAt is when a device's secret was last rotated; zero if
	// never.
	RotatedAt time.Time
	// Enrolment identifies this enrolment of a device: new when it is
	// enrolled, kept when its secret is rotated. Certificate sessions and
	// firmware URLs are bound to it.
	Enrolment string
	// CertSHA256 is the fingerprint of the client certificate bound to a
	// device (Enrollment.CertSHA256); "" if none.
	CertSHA256 string
}

// IsDevice reports whether r is a device (not a token).
func (r Record) IsDevice() bool { return r.Role == RoleDevice }

// Conflict is why Storage.Create could not store recs[Index].
type Conflict struct {
	// Index is the record's position in recs.
	Index int
	// Taken is the role of the device or token that has the record's
	// name already (RoleDevice for a device); "" if the name is free.
	Taken Role
	// BoundTo is the device the record's certificate is bound to
	// already; "" if it is free.
	BoundTo device.ID
}
