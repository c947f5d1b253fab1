// Package identity knows who may connect to Umbra and what each party may
// do: it enrolls devices, issues operator and integrator tokens, keeps a
// fleet certificate authority for mTLS, records device presence,
// authenticates MQTT clients (Authenticate, at CONNECT) and applies the
// topic ACL (Allow, for every PUBLISH, SUBSCRIBE and delivery).
//
// It knows nothing of the broker: Authenticate takes the Credentials a
// client presented and returns a Session, which Allow, Valid and
// Revocation.Match take back. The adapter that makes a Store the
// broker's Authenticator, translating sessions to broker identities and
// back, is internal/server/brokerauth, at the wiring site.
//
// # Storage
//
// A Store keeps its state in a Storage (Config.Storage): the server key,
// devices and tokens with their secret MACs and credential generations,
// the certificates bound to devices, removal times and presence. The
// interface carries the atomicity the rules need: a bulk import is one
// atomic create of every record or none (Storage.Create), a new secret is
// a compare-and-set on the record's credential generation
// (Storage.Replace), a removal deletes the device with its binding and
// presence in one change, and listings are ordered scans from a cursor.
// identity/boltstore keeps it in identity.db (one bbolt file) with the
// key beside it; identity/storetest is the contract every Storage
// passes. The caller opens the Storage, and closes it after the Store.
//
// The Store keeps every current credential in memory, for Allow and
// Authenticate. A Storage that other servers change too (cluster mode:
// identity/natsstore) implements NameWatcher: the Store follows its change
// feed, re-reads each changed name, and tells Config.OnRevoke of the
// credentials another server ended, so a removal, a rotation or a token
// revocation made on one node disconnects the sessions that used it on
// every node. A name the feed has not delivered yet but Authenticate reads
// from the storage (a device enrolled on another node a moment ago) is
// learned from that read, so its session is valid at once; a name the
// Store holds already changes only through the feed.
//
// # Model
//
// A Principal has a Role. A device (RoleDevice) is one device.ID; it logs
// in with its ID as user name and client ID and its secret as password, or
// with a client certificate: one bound to it by fingerprint
// (Enrollment.CertSHA256, any subject and issuer, e.g. AWS-issued), or one
// whose common name is its ID from a CA not in Config.BoundOnlyCAs. On a
// certificate login the client ID is the device ID, and the user name may
// be empty, the device ID, the common name, or start with "?" (AWS IoT's
// query form for SDK metrics, ignored). EnrollDevices enrolls many devices
// in one transaction, or none and every problem listed. Every enrolment
// (AddDevice, EnrollDevice, EnrollDevices) is reported to
// Config.OnEnrolled after its commit: umbra serve's rollout planner adds
// the devices to its dynamic rollouts there. A token
// (RoleOperator or RoleIntegrator) has a name and a secret and logs in
// with them as user name and password, or over HTTP with the bearer token
// "name:secret" (VerifyBearer). Device IDs and token names share one
// namespace. A device's MQTT client ID is its device ID; a token's may be
// any client ID but an enrolled device's, and in anonymous mode any.
//
// # Topic policy
//
// Allow applies a topic policy (policy, docs/acl.md) to the
// session's subject: its role, its name (device ID or token name, "" in
// anonymous mode, where every client is an operator) and its client ID.
// The policy is the built-in default unless Config.Policy or SetPolicy
// gives another; SetPolicy swaps it atomically, and the next check of
// every session, a delivery on an existing subscription included, uses
// the new one.
//
// # Secret storage
//
// Secrets are 256-bit random values generated here and shown once. The
// storage keeps only HMAC-SHA256(server key, role, name, secret); the
// 32-byte server key is kept apart (identity/boltstore: KeyFileName
// beside the database, mode 0600) and a check value derived from it with
// the records, so Open refuses a wrong or missing key. A leaked database without the key
// reveals nothing usable: the MACs cannot be inverted or brute-forced
// without the key, and even with the key a 256-bit secret cannot be
// guessed. A slow password hash (argon2id, bcrypt) protects low-entropy
// human passwords; for random 256-bit secrets it adds nothing but CPU on
// every CONNECT: at about 50 ms each, a reconnect storm of 10,000 devices
// would keep both cores of a small server busy for minutes, while an HMAC
// takes about a microsecond. Comparisons use hmac.Equal (constant time),
// and an unknown name costs the same HMAC as a known one.
//
// # Presence
//
// Connected and Disconnected take the broker's per-connection sequence
// number, so the late disconnect of a replaced session never marks a
// reconnected device offline. Presence is kept in memory and written to
// the storage in one change (Storage.SavePresence) every
// Config.PresenceFlushInterval and at Close, so a reconnect storm costs no
// fsync per connection. The trade-off: a crash (or a Close whose ctx ends
// first) loses at most one interval of presence changes, and on the next
// Open every device the storage shows as connected is marked
// disconnected with ReasonServerRestart (its connection died with the
// server anyway).
//
// In cluster mode presence is the cluster's, kept outside this package
// (internal/cluster.Presence): the server does not call Connected and
// Disconnected but hands every change of the shared presence to
// ApplyPresence, which sets what Presence, GetDevice and ListDevices
// report without writing it to the storage.
//
// # Credentials, generations and revocation
//
// Every device and token record carries a random secret generation,
// renewed with every new secret (AddDevice, RotateDevice, CreateToken),
// and every device record a random enrolment generation, renewed only
// when the device is enrolled again after a removal. Authenticate puts
// the generation the connection logged in with into
// Session.Credential: the secret generation for a password login,
// the enrolment for a certificate login. Allow refuses everything to a
// session whose generation is no longer current, so authorisation is
// bound to the credential that authenticated the connection, not to the
// name: a device removed and enrolled again, a token revoked and created
// again (with any role), or a rotated secret never gives an earlier
// session its rights back. A certificate login survives a rotation (the
// certificate is not the secret) but not a removal.
//
// RemoveDevice, RotateDevice, RevokeToken, and EnsureAdminToken replacing
// the admin token, then call Config.OnRevoke with a Revocation whose Match
// reports the sessions to disconnect: every session of the name, except,
// after a rotation, those already using the new secret. umbra serve
// evicts them from the broker at once (see broker.Server.Evict and
// brokerauth.Match).
//
// A bound certificate works while its device is enrolled: RemoveDevice
// deletes the binding, so it is refused at once (and the sessions are
// evicted like any others); binding it again is the operator's explicit
// act. Any other client certificate stays valid until it expires, but
// only for an enrolled device, and not if it was issued before the device
// was last removed: RemoveDevice records the time in the storage, and
// CA.IssueDeviceCert records the issue time in the certificate
// (IssuedURIPrefix; for a certificate of another CA, NotBefore counts).
// After removing and enrolling a device again, issue it a new certificate.
//
// Firmware download URLs carry the device's enrolment generation
// (Enrolment), so that removing a device revokes the URLs minted for it.
//
// HTTP requests authenticate with VerifyBearer on every request, so the
// first request after a revocation or rotation is refused; a request
// already running when the credential ended completes.
//
// # Concurrency, contexts and errors
//
// A Store is safe for concurrent use; Authenticate and Allow are called on
// the broker's connection goroutines. Allow takes no lock (a sync.Map
// load of the current credential and an atomic load of the policy).
// AllowEpoch moves after every change of a credential or of the policy, so
// that a caller (the broker) may remember an answer of Allow while it
// stays.
// Methods that read or change the storage take a ctx and fail with its
// error when it ends before they start (listings check it between pages);
// Close(ctx) returns when ctx ends even if the last presence flush has
// not. Methods that only look at memory (Allow, Valid, Enrolment,
// Presence, Connected, Disconnected) take none. Methods return errors
// wrapping the package's sentinels (ErrNotFound, ErrExists,
// ErrInvalidName, ErrInvalidRole, ErrInvalidLabel, ErrUnauthenticated,
// ErrKeyMismatch, ErrLocked, ErrInvalidCert, ErrConflict, ErrClosed), to
// be matched with errors.Is.
package identity
