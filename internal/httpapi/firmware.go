package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"time"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/wire"
)

// Firmware upload limits and timeouts.
const (
	// UploadIdleTimeout is how long an upload may go without the server
	// receiving a byte; the server's whole-request ReadTimeout does not
	// apply to uploads, which may take long.
	UploadIdleTimeout = 30 * time.Second
	// multipartSlack is what a multipart body may carry beyond the image
	// (boundaries, part headers, form fields) before its Content-Length is
	// refused up front.
	multipartSlack = 64 << 10
	// maxFormField caps one multipart form field's value.
	maxFormField = 8 << 10
	// pubkeyName is the reserved name under /v1/firmware/ that serves the
	// public key; it is not a valid version.
	pubkeyName = "pubkey"
)

// uploadFields maps form/query names to the headers carrying the same field.
var uploadFields = []struct{ name, header string }{
	{"version", wire.HeaderVersion},
	{"hw", wire.HeaderHW},
	{"notes", wire.HeaderNotes},
	{"sha256", wire.HeaderSHA256},
}

func (a *api) firmwareRoutes() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"POST /v1/firmware":                  a.uploadFirmware,
		"GET /v1/firmware":                   a.listFirmware,
		"GET /v1/firmware/{version}":         a.getFirmware, // and GET /v1/firmware/pubkey
		"DELETE /v1/firmware/{version}":      a.deleteFirmware,
		"POST /v1/firmware/{version}/url":    a.firmwareURL,
		"POST /v1/firmware/{version}/assign": a.assignFirmware,
	}
}

// store returns the firmware store, or writes 503 and returns nil.
func (a *api) store(w http.ResponseWriter, r *http.Request) *firmware.Store {
	fw := a.fw
	if fw == nil {
		a.writeError(w, r, clientErr(errNoStore, "Firmware store not available"), "")
	}
	return fw
}

func (a *api) uploadFirmware(w http.ResponseWriter, r *http.Request) {
	fw := a.store(w, r)
	if fw == nil {
		return
	}
	maxSize := fw.MaxImageSize()
	mt := mediaType(r)
	if mt != mediaRaw && mt != mediaMultipart {
		a.writeError(w, r, clientErr(errMediaType, "Unsupported Content-Type %.60q: send the image as %s, or as the \"file\" part of %s",
			r.Header.Get("Content-Type"), mediaRaw, mediaMultipart), "")
		closeAfter(w)
		return
	}
	_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	isMultipart := mt == mediaMultipart
	limit := maxSize
	if isMultipart {
		limit += multipartSlack
	}
	if r.ContentLength > limit {
		a.writeError(w, r, clientErr(errTooLarge, "Image of %d bytes is larger than the limit of %d bytes", r.ContentLength, maxSize), "")
		closeAfter(w)
		return
	}
	// The server's ReadTimeout bounds the whole request; an upload instead
	// gets UploadIdleTimeout between reads.
	rc := http.NewResponseController(w)
	body := &idleReader{r: http.MaxBytesReader(w, r.Body, limit), rc: rc}
	if err := body.extend(); err != nil {
		a.log.Warn("upload: cannot extend read deadline", "err", err)
	}
	var (
		img firmware.Image
		err error
	)
	if isMultipart {
		img, err = a.uploadMultipart(r, fw, body, params["boundary"])
	} else {
		var req firmware.UploadRequest
		if req, err = uploadRequest(r, nil); err == nil {
			img, err = fw.Upload(r.Context(), req, body)
		}
	}
	// Leave the response time to be written however long the upload took.
	_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err != nil {
		if r.Context().Err() != nil {
			a.log.Debug("upload abandoned by client", "err", err)
			return
		}
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			err = clientErr(errTooLarge, "Image larger than the limit of %d bytes", maxSize)
		}
		a.writeError(w, r, err, "")
		if !body.eof {
			closeAfter(w)
		}
		return
	}
	w.Header().Set("Location", "/v1/firmware/"+url.PathEscape(string(img.Version)))
	a.writeValue(w, r, http.StatusCreated, wireImage(img))
}

// closeAfter asks the server to close the connection after the response, so
// an unread request body is not drained.
func closeAfter(w http.ResponseWriter) { w.Header().Set("Connection", "close") }

// uploadMultipart reads form fields up to the "file" part and streams that
// part into the store. Fields must precede the file; they override nothing:
// a field also given as a header or query parameter must have the same value.
func (a *api) uploadMultipart(r *http.Request, fw *firmware.Store, body io.Reader, boundary string) (firmware.Image, error) {
	if boundary == "" {
		return firmware.Image{}, clientErr(errInvalid, "Multipart body without a boundary")
	}
	mr := multipart.NewReader(body, boundary)
	form := url.Values{}
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return firmware.Image{}, clientErr(errInvalid, "Multipart body has no \"file\" part")
		}
		if err != nil {
			return firmware.Image{}, readError(err)
		}
		name := p.FormName()
		if name == "file" {
			req, err := uploadRequest(r, form)
			if err != nil {
				return firmware.Image{}, err
			}
			return fw.Upload(r.Context(), req, classifyReader{p})
		}
		if !isUploadField(name) {
			return firmware.Image{}, clientErr(errInvalid, "Unknown form field %q: want version, hw, notes, sha256 and then file", name)
		}
		if form.Has(name) {
			return firmware.Image{}, clientErr(errInvalid, "Form field %q given twice", name)
		}
		b, err := io.ReadAll(io.LimitReader(p, maxFormField+1))
		if err != nil {
			return firmware.Image{}, readError(err)
		}
		if len(b) > maxFormField {
			return firmware.Image{}, clientErr(errInvalid, "Form field %q longer than %d bytes", name, maxFormField)
		}
		form.Set(name, string(b))
	}
}

func isUploadField(name string) bool {
	for _, f := range uploadFields {
		if f.name == name {
			return true
		}
	}
	return false
}

// readError classifies an error reading the request body: too large (left
// as is, for the caller), already classified, or the client's fault.
func readError(err error) error {
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return err
	}
	if _, ok := errors.AsType[*clientError](err); ok {
		return err
	}
	return clientErr(errInvalid, "Reading request body: %v", err)
}

// classifyReader passes reads through, classifying errors with readError.
type classifyReader struct{ r io.Reader }

func (c classifyReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		err = readError(err)
	}
	return n, err
}

// uploadRequest collects the upload's fields from headers, query parameters
// and form (may be nil). A field given in several places must have one value.
func uploadRequest(r *http.Request, form url.Values) (firmware.UploadRequest, error) {
	q := r.URL.Query()
	vals := make(map[string]string, len(uploadFields))
	for _, f := range uploadFields {
		var have []string
		if hv := r.Header.Values(f.header); len(hv) > 0 {
			if len(hv) > 1 {
				return firmware.UploadRequest{}, clientErr(errInvalid, "Header %s given %d times", f.header, len(hv))
			}
			have = append(have, hv[0])
		}
		if qv, ok := q[f.name]; ok {
			if len(qv) > 1 {
				return firmware.UploadRequest{}, clientErr(errInvalid, "Query parameter %q given %d times", f.name, len(qv))
			}
			have = append(have, qv[0])
		}
		if form.Has(f.name) {
			have = append(have, form.Get(f.name))
		}
		for _, v := range have[min(1, len(have)):] {
			if v != have[0] {
				return firmware.UploadRequest{}, clientErr(errInvalid, "Field %s given twice with different values", f.name)
			}
		}
		if len(have) > 0 {
			vals[f.name] = have[0]
		}
	}
	if vals["version"] == "" {
		return firmware.UploadRequest{}, clientErr(errInvalid, "Missing version: set header %s, query parameter version or form field version", wire.HeaderVersion)
	}
	return firmware.UploadRequest{
		Version: vals["version"],
		HW:      vals["hw"],
		Notes:   vals["notes"],
		SHA256:  vals["sha256"],
	}, nil
}

// idleReader extends the connection's read deadline before every read, so
// an upload is bounded by its idle time, not its total time.
type idleReader struct {
	r   io.Reader
	rc  *http.ResponseController
	eof bool // the body was read to its end
}

func (ir *idleReader) extend() error {
	return ir.rc.SetReadDeadline(time.Now().Add(UploadIdleTimeout))
}

func (ir *idleReader) Read(p []byte) (int, error) {
	_ = ir.extend() // an error was reported once, at the start
	n, err := ir.r.Read(p)
	switch {
	case errors.Is(err, io.EOF):
		ir.eof = true
	case err != nil:
		err = readError(err)
	}
	return n, err
}

func (a *api) listFirmware(w http.ResponseWriter, r *http.Request) {
	fw := a.store(w, r)
	if fw == nil {
		return
	}
	imgs, err := fw.List(r.Context())
	if err != nil {
		a.writeError(w, r, err, "")
		return
	}
	a.writeValue(w, r, http.StatusOK, wire.ImageList{Images: wireList(imgs, wireImage)})
}

func (a *api) getFirmware(w http.ResponseWriter, r *http.Request) {
	if r.PathValue("version") == pubkeyName {
		a.firmwarePubkey(w, r)
		return
	}
	a.withImage(w, r, func(fw *firmware.Store, img firmware.Image) {
		a.writeValue(w, r, http.StatusOK, wireImage(img))
	})
}

func (a *api) firmwarePubkey(w http.ResponseWriter, r *http.Request) {
	fw := a.store(w, r)
	if fw == nil {
		return
	}
	pub := fw.PublicKey()
	a.writeValue(w, r, http.StatusOK, wire.PublicKey{
		Algorithm: "ed25519",
		PEM:       string(firmware.MarshalPublicKey(pub)),
		Key:       pub,
	})
}

func (a *api) deleteFirmware(w http.ResponseWriter, r *http.Request) {
	a.withVersion(w, r, func(fw *firmware.Store, v firmware.Version) {
		// A rollout using v refuses the delete whatever ?force says: report
		// that first, rather than a desired-state 409 that suggests --force
		// (a rollout's first pass writes the desired state of its devices).
		if err := fw.CheckDeletable(r.Context(), v); err != nil {
			a.writeError(w, r, err, "")
			return
		}
		if !a.checkDesired(w, r, v) {
			return
		}
		if err := fw.Delete(r.Context(), v); err != nil {
			a.writeError(w, r, err, "")
			return
		}
		a.writeValue(w, r, http.StatusOK, wire.DeletedImage{Version: string(v), Deleted: true})
	})
}

func (a *api) firmwareURL(w http.ResponseWriter, r *http.Request) {
	a.withURLRequest(w, r, func(fw *firmware.Store, img firmware.Image, id device.ID, ttl time.Duration) {
		u, exp := fw.URL(img, id, ttl)
		a.writeValue(w, r, http.StatusOK, wire.URLResponse{URL: u, Expires: exp.UTC()})
	})
}

// assignFirmware writes the firmware command for one device into its
// desired state and answers with the engine's accepted document.
func (a *api) assignFirmware(w http.ResponseWriter, r *http.Request) {
	a.withURLRequest(w, r, func(fw *firmware.Store, img firmware.Image, id device.ID, ttl time.Duration) {
		desired := fw.Command(img, id, ttl, "").Desired()
		// Merging into desired.firmware keeps keys the new command lacks:
		// clear a job left by an earlier rollout.
		if cmd, ok := desired["firmware"].(map[string]any); ok {
			if _, has := cmd["job"]; !has {
				cmd["job"] = nil
			}
		}
		payload, err := json.Marshal(map[string]any{"state": map[string]any{"desired": desired}})
		if err != nil {
			a.writeError(w, r, fmt.Errorf("encode firmware command: %w", err), "")
			return
		}
		b, err := a.eng.Update(r.Context(), id, payload)
		if err != nil {
			a.writeError(w, r, err, "")
			return
		}
		writeJSON(w, http.StatusOK, b)
	})
}

// withVersion parses {version} and calls fn with the store, or writes the
// error.
func (a *api) withVersion(w http.ResponseWriter, r *http.Request, fn func(*firmware.Store, firmware.Version)) {
	fw := a.store(w, r)
	if fw == nil {
		return
	}
	v, err := firmware.ParseVersion(r.PathValue("version"))
	if err != nil {
		a.writeError(w, r, err, "")
		return
	}
	fn(fw, v)
}

// withImage parses {version}, loads the image and calls fn, or writes the
// error.
func (a *api) withImage(w http.ResponseWriter, r *http.Request, fn func(*firmware.Store, firmware.Image)) {
	a.withVersion(w, r, func(fw *firmware.Store, v firmware.Version) {
		img, err := fw.Get(r.Context(), v)
		if err != nil {
			a.writeError(w, r, err, "")
			return
		}
		fn(fw, img)
	})
}

// withURLRequest decodes and validates a wire.URLRequest body, loads the
// image, and calls fn.
func (a *api) withURLRequest(w http.ResponseWriter, r *http.Request, fn func(*firmware.Store, firmware.Image, device.ID, time.Duration)) {
	var req wire.URLRequest
	if err := a.decodeJSON(w, r, &req); err != nil {
		a.writeError(w, r, err, "")
		return
	}
	id, ttl, err := validateURLRequest(req)
	if err != nil {
		a.writeError(w, r, err, "")
		return
	}
	a.withImage(w, r, func(fw *firmware.Store, img firmware.Image) { fn(fw, img, id, ttl) })
}

// validateURLRequest returns the request's device ID and TTL (0 for the
// default).
func validateURLRequest(req wire.URLRequest) (device.ID, time.Duration, error) {
	if req.Device == "" {
		return "", 0, clientErr(errInvalid, "Missing device")
	}
	id, err := device.ParseID(req.Device)
	if err != nil {
		return "", 0, clientErr(errInvalid, "Invalid device ID: %v", err)
	}
	var ttl time.Duration
	if req.TTL != "" {
		ttl, err = time.ParseDuration(req.TTL)
		if err != nil || ttl < time.Second || ttl > firmware.MaxURLTTL {
			return "", 0, clientErr(errInvalid, "Invalid ttl %q: want a duration from 1s to %s", req.TTL, firmware.MaxURLTTL)
		}
	}
	return id, ttl, nil
}

// decodeJSON reads a bounded JSON object body into v, refusing unknown
// fields and trailing data, and a body not declared application/json
// (requireJSON: curl -d needs -H 'Content-Type: application/json').
func (a *api) decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	return a.decodeJSONWith(w, r, v, nil)
}

// decodeJSONWith is decodeJSON with explain, when not nil, telling what a
// decoding error means.
func (a *api) decodeJSONWith(w http.ResponseWriter, r *http.Request, v any, explain func(error) string) error {
	if err := requireJSON(r); err != nil {
		return err
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, a.maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok {
			closeAfter(w) // do not drain the rest
			return clientErr(errTooLarge, "Request body larger than %d bytes", mbe.Limit)
		}
		msg := err.Error()
		if explain != nil {
			msg = explain(err)
		}
		return clientErr(errInvalid, "Invalid JSON body: %s", msg)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return clientErr(errInvalid, "Invalid JSON body: data after the object")
	}
	return nil
}

// writeValue writes v as JSON with status. URLs keep their "&" unescaped,
// so the JSON stays readable from curl.
func (a *api) writeValue(w http.ResponseWriter, r *http.Request, status int, v any) {
	b, err := wire.Marshal(v)
	if err != nil {
		a.writeError(w, r, fmt.Errorf("encode response: %w", err), "")
		return
	}
	writeJSON(w, status, b)
}
