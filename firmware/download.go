package firmware

import (
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/umbra-iot/umbra/internal/device"
)

// DownloadHandler serves GET and HEAD /fw/<sha256>?d=&g=&e=&s= (as minted by
// URL) from blobs/, with http.ServeContent: Range and If-Range for resumed
// downloads, strong ETag "<sha256>", Content-Length, Content-Type
// application/octet-stream. Files are streamed (sendfile where the
// connection allows it), never read into memory.
//
// A malformed path or query, an altered or expired URL, a URL for another
// device, a refusal by Config.DeviceAuth and an unknown blob all get 403 with
// the generic body "forbidden"; the reason is logged at debug level only.
// A valid URL minted for an enrolment of the device that is no longer
// current (Config.Enrolment) gets 410 with a JSON error.
// Other methods get 405, and requests after Close get 503.
//
// The handler matches the request path itself: mount it at "/fw/" (or
// "GET /fw/{sha256}"), under http.StripPrefix if BaseURL has a path.
func (s *Store) DownloadHandler() http.Handler { return http.HandlerFunc(s.serveDownload) }

// BytesServed returns the number of image bytes written to download clients
// since Open.
func (s *Store) BytesServed() int64 { return s.bytesServed.Load() }

// Downloads returns the number of download requests accepted since Open
// (including HEAD and Range requests).
func (s *Store) Downloads() int64 { return s.downloads.Load() }

// DeniedDownloads returns the number of download requests refused with 403
// or 410 since Open.
func (s *Store) DeniedDownloads() int64 { return s.denied.Load() }

func (s *Store) serveDownload(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if s.isClosed() {
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	}
	sum, id, gen, reason := s.verify(r.URL.Path, r.URL.RawQuery)
	if reason == "" && s.revoked(id, gen) {
		s.refuseRevoked(w, r, id)
		return
	}
	if reason == "" && s.cfg.DeviceAuth != nil && !s.cfg.DeviceAuth(r, id) {
		reason = denyAuth
	}
	if reason != "" {
		s.deny(w, r, reason, id)
		return
	}
	f, err := os.Open(filepath.Join(s.blobDir, sum))
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.log.Error("open blob", logKeySHA256, sum, logKeyErr, err)
		}
		s.deny(w, r, denyBlob, id)
		return
	}
	defer f.Close()
	s.downloads.Add(1)
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("ETag", `"`+sum+`"`)
	h.Set("Cache-Control", "private, no-transform")
	h.Set("X-Content-Type-Options", "nosniff")
	http.ServeContent(&countingWriter{ResponseWriter: w, n: &s.bytesServed}, r, "", time.Time{}, f)
}

func (s *Store) deny(w http.ResponseWriter, r *http.Request, reason string, id device.ID) {
	s.denied.Add(1)
	s.log.Debug("download refused", logKeyReason, reason, logKeyDevice, id, "remote", r.RemoteAddr)
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, "forbidden", http.StatusForbidden)
}

// countingWriter counts body bytes. It keeps the underlying writer's
// io.ReaderFrom so ServeContent still uses sendfile.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.ResponseWriter.(io.ReaderFrom); ok {
		n, err := rf.ReadFrom(r)
		c.n.Add(n)
		return n, err
	}
	return io.Copy(struct{ io.Writer }{c}, r)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
