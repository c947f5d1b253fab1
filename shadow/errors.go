package shadow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Every error the Engine returns for a request wraps exactly
// one of them inside a *RequestError, so callers can branch with errors.Is and
// read the wire code and message with errors.As; or, when the caller's
// context ends first, the context's error (context.Canceled or
// context.DeadlineExceeded, code 503).
var (
	ErrInvalid = errors.New("shadow: invalid request") // 400
	// ErrShadowLimit: creating one more named shadow would exceed
	// Config.MaxNamedShadows for the device.
	ErrShadowLimit     = errors.New("shadow: too many named shadows") // 400
	ErrNotFound        = errors.New("shadow: not found")              // 404
	ErrVersionConflict = errors.New("shadow: version conflict")       // 409
	ErrTooLarge        = errors.New("shadow: payload too large")      // 413
	ErrRateLimited     = errors.New("shadow: too many requests")      // 429
	ErrInternal        = errors.New("shadow: internal service error") // 500
	ErrClosed          = errors.New("shadow: engine closed")          // 503
	// ErrUnavailable: the Store cannot be reached for now (cluster mode:
	// the NATS servers are lost). The request is refused with 503; a
	// write whose request went unanswered may still have been applied
	// (its outcome is unknown to the Store), so a client that retries an
	// update applies the same state again, or gets 409 if it named the
	// version that update produced.
	ErrUnavailable = errors.New("shadow: store unavailable") // 503
)

// codes is the one table that maps sentinels to wire codes (HTTP-style, as
// AWS IoT Device Shadow uses them on its rejected topics).
var codes = []struct {
	err  error
	code int
}{
	{ErrInvalid, 400},
	{ErrShadowLimit, 400},
	{ErrNotFound, 404},
	{ErrVersionConflict, 409},
	{ErrTooLarge, 413},
	{ErrRateLimited, 429},
	{ErrInternal, 500},
	{ErrClosed, 503},
	{ErrUnavailable, 503},
	{context.Canceled, 503},
	{context.DeadlineExceeded, 503},
}

// RequestError is a rejected request: the wire Code, a human Message, the
// request's clientToken (echoed on the rejected message) and the sentinel it
// wraps.
type RequestError struct {
	Code        int
	Message     string
	ClientToken string
	Err         error
}

func (e *RequestError) Error() string { return fmt.Sprintf("%d %s", e.Code, e.Message) }

// Unwrap returns the sentinel.
func (e *RequestError) Unwrap() error { return e.Err }

// reject builds a *RequestError for sentinel err with a formatted message.
func reject(err error, token string, format string, args ...any) *RequestError {
	return &RequestError{Code: CodeOf(err), Message: fmt.Sprintf(format, args...), ClientToken: token, Err: err}
}

// CodeOf returns the wire code for err: the code of the sentinel it wraps, or
// 500 for anything else.
func CodeOf(err error) int {
	var re *RequestError
	if errors.As(err, &re) {
		return re.Code
	}
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return 500
}

// AsRequestError turns any error into a *RequestError: itself if it is one,
// otherwise a 500 with a generic message (the detail is for the log, not the
// wire).
func AsRequestError(err error, token string) *RequestError {
	var re *RequestError
	if errors.As(err, &re) {
		return re
	}
	for _, c := range codes {
		if errors.Is(err, c.err) && c.err != ErrInternal {
			return &RequestError{Code: c.code, Message: messageFor(c.err), ClientToken: token, Err: c.err}
		}
	}
	return &RequestError{Code: 500, Message: "Internal service failure", ClientToken: token, Err: ErrInternal}
}

func messageFor(err error) string {
	switch err {
	case ErrClosed:
		return "Service unavailable"
	case ErrUnavailable:
		return "Service unavailable: the shadow store cannot be reached; retry later"
	case context.Canceled, context.DeadlineExceeded:
		return "Service unavailable: " + err.Error()
	case ErrNotFound:
		return "No shadow exists"
	}
	return err.Error()
}

// rejectedMessage is the payload published on …/rejected topics and returned
// as an HTTP error body.
type rejectedMessage struct {
	Code        int    `json:"code"`
	Message     string `json:"message"`
	ClientToken string `json:"clientToken,omitempty"`
	Timestamp   int64  `json:"timestamp"`
}

// Payload returns the JSON of the error as published on a rejected topic.
func (e *RequestError) Payload(now time.Time) []byte {
	b, _ := json.Marshal(rejectedMessage{Code: e.Code, Message: e.Message, ClientToken: e.ClientToken, Timestamp: now.Unix()})
	return b
}
