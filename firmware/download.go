package firmware

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// DownloadHandler serves GET and HEAD /fw/<sha256>?d=&g=&e=&s= (as minted by
// URL) from blobs/, with http.ServeContent: Range and If-Range for resumed
// downloads, strong ETag "<sha256>", Content-Length, Content-Type
// application/octet-stream. Files are streamed (sendfile where the
// connection allows it), never read into memory.
//
// A Range header is checked before ServeContent sees it (parseRange):
// at most MaxRanges ranges, overlapping and adjacent ones coalesced, and
// never more bytes in all than the image has; a malformed, unsatisfiable
// or refused one gets a JSON 416 with "Content-Range: bytes */<size>", and
// one of another unit, or that If-Range makes void, is ignored (200).
//
// A malformed path or query, an altered or expired URL, a URL for another
// device, a refusal by Config.DeviceAuth and an unknown blob all get 403 with
// the generic body {"code":403,"message":"forbidden"}; the reason is logged
// at debug level only. A valid URL minted for an enrolment of the device
// that is no longer current (Config.Enrolment) gets 410 with a JSON error.
// A recorded image the Blobs cannot read now (cluster mode without NATS)
// gets 503 with Retry-After: 1, so the device retries the same URL.
// Other methods get 405, and requests after Close get 503. Every error
// body is JSON, {"code":N,"message":"…"}.
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
		writeError(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	if s.isClosed() {
		writeError(w, http.StatusServiceUnavailable, "unavailable")
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
	f, err := s.blobs.Open(r.Context(), sum)
	if errors.Is(err, os.ErrNotExist) {
		// The URL is genuine (its signature checked out), so its holder
		// may learn that the image is gone.
		s.denied.Add(1)
		s.log.Debug("download refused", logKeyReason, denyBlob, logKeyDevice, id, "remote", r.RemoteAddr)
		w.Header().Set("Cache-Control", "no-store")
		writeError(w, http.StatusGone, "Gone: this firmware image was deleted from the server; a new firmware command brings a new URL")
		return
	}
	if err != nil {
		// The URL is genuine and the image is recorded: the store could
		// not be read (in cluster mode, NATS is away or the object store
		// has no leader). A retry, maybe through another node, succeeds;
		// a 403 would make the device give the download up.
		s.log.Error("open blob", logKeySHA256, sum, logKeyDevice, id, logKeyErr, err)
		h := w.Header()
		h.Set("Retry-After", "1")
		h.Set("Cache-Control", "no-store")
		writeError(w, http.StatusServiceUnavailable, "Service Unavailable: the image store cannot be read now; retry the same URL")
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		s.log.Error("stat blob", logKeySHA256, sum, logKeyErr, err)
		writeError(w, http.StatusInternalServerError, "internal server error")
		return
	}
	s.downloads.Add(1)
	etag := `"` + sum + `"`
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Cache-Control", "private, no-transform")
	h.Set("X-Content-Type-Options", "nosniff")
	if r, err = checkRange(r, etag, fi.Size()); err != nil {
		s.log.Debug("download range refused", logKeyReason, err, logKeyDevice, id, "range", r.Header.Get("Range"), "remote", r.RemoteAddr)
		h.Set("Content-Range", fmt.Sprintf("bytes */%d", fi.Size()))
		writeError(w, http.StatusRequestedRangeNotSatisfiable, "Range not satisfiable: "+err.Error())
		return
	}
	h.Set("Content-Type", "application/octet-stream")
	http.ServeContent(&countingWriter{ResponseWriter: w, n: &s.bytesServed}, r, "", time.Time{}, f)
}

// checkRange returns r with its Range header, if ServeContent would act on
// it, validated and rewritten by parseRange (coalesced, at most MaxRanges),
// or removed; or the reason to refuse it with 416. ServeContent thus never
// parses a Range header this package has not checked.
func checkRange(r *http.Request, etag string, size int64) (*http.Request, error) {
	if len(r.Header.Values("Range")) == 0 {
		return r, nil
	}
	var ranges []byteRange
	if rangeApplies(r, etag) {
		var err error
		if ranges, err = parseRange(r.Header.Values("Range"), size); err != nil {
			return r, err
		}
	}
	r = r.Clone(r.Context())
	if ranges == nil {
		r.Header.Del("Range")
	} else {
		r.Header.Set("Range", formatRange(ranges))
	}
	return r, nil
}

// writeError writes the JSON error body every Umbra HTTP error has:
// {"code":status,"message":msg}.
func writeError(w http.ResponseWriter, status int, msg string) {
	b, _ := json.Marshal(struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}{status, msg})
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func (s *Store) deny(w http.ResponseWriter, r *http.Request, reason string, id device.ID) {
	s.denied.Add(1)
	s.log.Debug("download refused", logKeyReason, reason, logKeyDevice, id, "remote", r.RemoteAddr)
	w.Header().Set("Cache-Control", "no-store")
	writeError(w, http.StatusForbidden, "forbidden")
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
