// Package shadowclient is the operator's MQTT client for Umbra's device
// shadows: it reads, updates and deletes shadows over the same
// state/<id>/… topics devices use, and watches the accepted, delta and
// documents messages of some or all devices. The CLI (umbra shadow, umbra
// watch) is a thin layer over it; rollout and demo tools use it too.
//
// # Requests
//
// Get, Update and Delete publish one request and wait for the engine's
// answer on the matching accepted or rejected topic; GetNamed, UpdateNamed
// and DeleteNamed do the same for a named shadow
// (state/<id>/shadow/<name>/…), and WatchNamed watches one named shadow
// (or every one, AllNamed) of the devices. The client subscribes
// to those response topics before it publishes, and matches answers by
// clientToken, so many requests may run concurrently on one Client, for one
// or many devices. Update adds a random clientToken to a body that has none.
// A response subscription, once made, is kept for the Client's lifetime.
//
// A rejection is returned as a *shadow.RequestError (wrapped with the
// operation and device), whose Code and Message are the engine's and which
// unwraps to the shadow sentinel for the code, so errors.Is(err,
// shadow.ErrVersionConflict) and errors.As(err, &re) both work. A request
// that gets no answer in Config.Timeout (or before ctx ends) fails with an
// error wrapping context.DeadlineExceeded (or ctx's error).
//
// # Errors
//
// Dial fails with an error naming the server ("connect to
// tcp://127.0.0.1:1883: connection refused", which also matches
// errors.Is(err, syscall.ECONNREFUSED)) when it cannot connect, wraps
// ErrRefused when the server refuses the credentials, and wraps
// ErrInvalidConfig for a bad Config. Callers need no MQTT library to tell
// these apart. Requests wrap ErrInvalidRequest for
// input rejected locally (nothing is sent), ErrClosed after Close and
// ErrConnectionLost once the connection has dropped: the Client does not
// reconnect; Dial a new one.
//
// # Concurrency
//
// A Client is safe for concurrent use. Messages are handled on paho's
// routing goroutine without blocking it; Watch calls its callback on the
// goroutine that called Watch, in arrival order.
package shadowclient
