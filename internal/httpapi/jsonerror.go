package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/umbra-iot/umbra/wire"
)

// Two layers make every error answer of the API's listener JSON:
//
//   - jsonErrors wraps the handler: a 4xx or 5xx answer a handler writes
//     without a JSON Content-Type (a mount such as /metrics, or
//     http.ServeContent's 412) is replaced by {"code","message"} with the
//     handler's text as the message.
//   - errorConn wraps each connection of Open's listener: net/http answers
//     a request it cannot parse itself, before any handler runs, with a
//     plain-text "400 Bad Request" (also 431, 501, 505 and 417) written
//     straight to the connection. A NUL, CR or other control byte in a
//     header value is such a request: net/textproto refuses it while
//     reading the header, so no handler ever sees it. errorConn rewrites
//     those answers, and only those: a write is the server's own when no
//     handler's answer is in progress on the connection. A handler marks
//     its start (it finds the connection through ConnContext), and
//     http.Server.ConnState reports StateIdle once its answer is written
//     out; the server writes its own answers in between neither.

// jsonErrors replaces a non-JSON error answer of next with the API's JSON
// error; see jsonErrorWriter.
func jsonErrors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		jw := &jsonErrorWriter{ResponseWriter: w}
		defer jw.finish()
		next.ServeHTTP(jw, r)
	})
}

// maxCapturedMessage caps the handler text kept as the JSON message.
const maxCapturedMessage = 512

// jsonErrorWriter passes an answer through unless its status is 400 or
// more and its Content-Type is not JSON; then it holds the body back (up
// to maxCapturedMessage bytes, for the message) and finish writes the JSON
// error instead. It keeps io.ReaderFrom (sendfile) and http.Flusher, and
// Unwrap for http.ResponseController.
type jsonErrorWriter struct {
	http.ResponseWriter
	wroteHeader bool
	status      int          // set when converting
	msg         bytes.Buffer // the handler's text, when converting
}

func (w *jsonErrorWriter) WriteHeader(code int) {
	if w.wroteHeader {
		if w.status == 0 {
			w.ResponseWriter.WriteHeader(code) // superfluous: net/http logs it
		}
		return
	}
	if code < 200 { // informational: more may follow
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.wroteHeader = true
	if code >= 400 && !isJSON(w.Header().Get("Content-Type")) {
		w.status = code
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *jsonErrorWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.status != 0 {
		w.msg.Write(p[:min(len(p), max(0, maxCapturedMessage-w.msg.Len()))])
		return len(p), nil
	}
	return w.ResponseWriter.Write(p)
}

// ReadFrom keeps sendfile for file downloads.
func (w *jsonErrorWriter) ReadFrom(r io.Reader) (int64, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok && w.status == 0 {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{w}, r)
}

// Flush flushes an answer that is passed through.
func (w *jsonErrorWriter) Flush() {
	if w.status != 0 {
		return
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *jsonErrorWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// finish writes the JSON error of a converted answer.
func (w *jsonErrorWriter) finish() {
	if w.status == 0 {
		return
	}
	msg := strings.TrimSpace(strings.ToValidUTF8(w.msg.String(), string(utf8.RuneError)))
	var eb wire.ErrorBody
	if json.Unmarshal([]byte(msg), &eb) == nil && eb.Message != "" {
		msg = eb.Message // a JSON error sent with the wrong Content-Type
	}
	if msg == "" {
		msg = http.StatusText(w.status)
	}
	h := w.Header()
	h.Del("Content-Length")
	h.Del("Content-Encoding")
	writeErrorBody(w.ResponseWriter, w.status, msg)
}

// isJSON reports whether a Content-Type value is application/json.
func isJSON(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.EqualFold(strings.TrimSpace(mt), mediaJSON)
}

// errorListener wraps each accepted connection in an errorConn.
type errorListener struct{ net.Listener }

func (l errorListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &errorConn{Conn: c}, nil
}

// errorConn rewrites the plain-text error answers net/http writes itself
// for requests no handler saw (see the top of this file).
type errorConn struct {
	net.Conn
	// answering is true from a handler's start until its answer has been
	// written out (StateIdle), or the connection closes.
	answering atomic.Bool
}

type errorConnKey struct{}

// serverHooks sets srv's ConnState and ConnContext and wraps its handler so
// that errorConn knows which requests reached the handler.
func serverHooks(srv *http.Server) {
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		if ec, ok := c.(*errorConn); ok && st == http.StateIdle {
			ec.answering.Store(false)
		}
	}
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, errorConnKey{}, c)
	}
	next := srv.Handler
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ec, ok := r.Context().Value(errorConnKey{}).(*errorConn); ok {
			ec.answering.Store(true)
			if tc, ok := ec.Conn.(*tls.Conn); ok && r.TLS == nil {
				// net/http sets r.TLS only for a *tls.Conn of its own.
				st := tc.ConnectionState()
				r.TLS = &st
			}
		}
		next.ServeHTTP(w, r)
	})
}

// Read passes reads through. On an HTTPS listener, a client that speaks
// plain HTTP fails the handshake; then, as net/http does for its own TLS
// connections, it answers in plain text, in JSON, that https is needed.
func (c *errorConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		var re tls.RecordHeaderError
		if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
			_ = re.Conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = re.Conn.Write(plainHTTPAnswer)
			_ = re.Conn.Close()
		}
	}
	return n, err
}

// looksLikeHTTP reports whether a TLS record header is the start of a
// plain HTTP request, as net/http's tlsRecordHeaderLooksLikeHTTP does.
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO", "DELET", "PATCH", "CONNE":
		return true
	}
	return false
}

// plainHTTPAnswer is the answer to plain HTTP on an HTTPS listener.
var plainHTTPAnswer = func() []byte {
	body, _ := marshalJSON(wire.ErrorBody{Code: http.StatusBadRequest,
		Message: "Plain HTTP request to an HTTPS listener: use https:// in the URL"})
	body = append(body, '\n')
	return fmt.Appendf(nil, "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: application/json\r\n"+
		"Content-Length: %d\r\nX-Content-Type-Options: nosniff\r\n\r\n%s", len(body), body)
}()

// Write passes p through, unless it is an error answer of net/http's own
// for a request that never reached the handler: then it writes the JSON
// equivalent, and reports p as written.
func (c *errorConn) Write(p []byte) (int, error) {
	if c.answering.Load() {
		return c.Conn.Write(p)
	}
	resp, ok := serverError(p)
	if !ok {
		return c.Conn.Write(p)
	}
	if _, err := c.Conn.Write(resp); err != nil {
		return 0, err
	}
	return len(p), nil
}

// ReadFrom keeps sendfile: only handlers' bodies are written this way.
func (c *errorConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// CloseWrite lets net/http half-close the connection, as it does a TCP
// connection's, before it closes it.
func (c *errorConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// serverError returns the JSON answer replacing p, if p is a whole HTTP/1.x
// answer with a status of 400 or more: the one write net/http makes for a
// request it refuses.
func serverError(p []byte) ([]byte, bool) {
	res, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(p)), nil)
	if err != nil || res.StatusCode < 400 || res.StatusCode > 599 {
		return nil, false
	}
	text, _ := io.ReadAll(io.LimitReader(res.Body, maxCapturedMessage))
	_ = res.Body.Close()
	msg := serverErrorMessage(res.StatusCode, strings.TrimSpace(string(text)))
	body, _ := marshalJSON(wire.ErrorBody{Code: res.StatusCode, Message: msg})
	body = append(body, '\n')
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %03d %s\r\n", res.StatusCode, http.StatusText(res.StatusCode))
	b.WriteString("Cache-Control: no-store\r\nConnection: close\r\n")
	fmt.Fprintf(&b, "Content-Length: %d\r\nContent-Type: application/json\r\n", len(body))
	if res.StatusCode == http.StatusBadRequest {
		// The bad header may have been the credentials (RFC 6750 §3.1).
		b.WriteString(`WWW-Authenticate: Bearer realm="umbra", error="invalid_request"` + "\r\n")
	}
	b.WriteString("X-Content-Type-Options: nosniff\r\n\r\n")
	b.Write(body)
	return b.Bytes(), true
}

// serverErrorMessage explains net/http's own refusals: its text is the
// status ("400 Bad Request"), sometimes with a reason.
func serverErrorMessage(status int, text string) string {
	prefix := strconv.Itoa(status) + " " + http.StatusText(status)
	reason := strings.TrimPrefix(strings.TrimPrefix(text, prefix), ": ")
	switch {
	case status == http.StatusBadRequest && reason == "":
		return "Malformed request: the request line or a header field is invalid (for example a control character such as NUL in a header value, or two Content-Length fields)"
	case status == http.StatusRequestHeaderFieldsTooLarge:
		return fmt.Sprintf("Request header fields too large: the limit is %d bytes", maxHeaderBytes)
	case status == http.StatusExpectationFailed:
		return "Expectation failed: only Expect: 100-continue is supported"
	case reason == "":
		return http.StatusText(status)
	}
	return http.StatusText(status) + ": " + reason
}
