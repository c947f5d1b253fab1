package firmware

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/umbra-iot/umbra/device"
)

// urlPrefix is the path under which DownloadHandler serves blobs.
const urlPrefix = "/fw/"

// macLabel versions the MAC input so a future URL format cannot be confused
// with this one. v1 URLs (without g) are no longer accepted.
const macLabel = "umbra-fw-url-v2"

// maxGenLen bounds the enrolment generation a URL carries.
const maxGenLen = 64

// URL mints a download URL for img that only device id can use, valid until
// the returned expiry (whole seconds) and while id's enrolment is the one
// it was minted for. ttl <= 0 means Config.URLTTL; ttl is clamped to
// MaxURLTTL. The URL is
//
//	BaseURL + "/fw/<sha256>?d=<device>&g=<enrolment>&e=<unix seconds>&s=<mac>"
//
// where g is Config.Enrolment(id) ("" without Config.Enrolment, or for a
// device that is not enrolled: such a URL is bound to no enrolment) and
// mac is the unpadded base64url
// HMAC-SHA256, under the store's URL secret, of
// "umbra-fw-url-v2\n<sha256>\n<device>\n<g>\n<e>". URLs are cheap and
// stateless: mint a fresh one whenever a device reports an expired or
// revoked one.
func (s *Store) URL(img Image, id device.ID, ttl time.Duration) (string, time.Time) {
	if ttl <= 0 {
		ttl = s.cfg.URLTTL
	}
	ttl = min(ttl, MaxURLTTL)
	exp := s.cfg.Now().Add(ttl).Unix()
	e := strconv.FormatInt(exp, 10)
	var gen string
	if s.cfg.Enrolment != nil {
		gen = s.cfg.Enrolment(id)
	}
	sig := base64.RawURLEncoding.EncodeToString(s.mac(img.SHA256, id, gen, e))
	u := s.cfg.BaseURL + urlPrefix + img.SHA256 + "?d=" + url.QueryEscape(string(id)) +
		"&g=" + url.QueryEscape(gen) + "&e=" + e + "&s=" + sig
	return u, time.Unix(exp, 0)
}

func (s *Store) mac(sum string, id device.ID, gen, e string) []byte {
	m := hmac.New(sha256.New, s.urlKey)
	m.Write([]byte(macLabel + "\n" + sum + "\n" + string(id) + "\n" + gen + "\n" + e))
	return m.Sum(nil)
}

// Reasons a download is refused; logged, never sent to the client.
const (
	denyPath    = "malformed path"
	denyQuery   = "malformed query"
	denyDevice  = "malformed device"
	denyGen     = "malformed enrolment"
	denyExpiry  = "malformed expiry"
	denyMAC     = "bad signature"
	denyExpired = "expired"
	denyAuth    = "device auth refused"
	denyBlob    = "unknown blob"
)

// verify checks a download request's path and query. It returns the blob,
// device and enrolment generation on success, or the reason for refusal.
// Only the exact query keys d, g, e and s, each once, are accepted; e must
// be in canonical decimal form and s canonical unpadded base64url, so each
// (blob, device, enrolment, expiry) has one signature encoding.
func (s *Store) verify(path, rawQuery string) (sum string, id device.ID, gen, reason string) {
	sum, ok := strings.CutPrefix(path, urlPrefix)
	if !ok || !isSHA256(sum) {
		return "", "", "", denyPath
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil || len(q) != 4 || len(q["d"]) != 1 || len(q["g"]) != 1 || len(q["e"]) != 1 || len(q["s"]) != 1 {
		return "", "", "", denyQuery
	}
	id, err = device.ParseID(q["d"][0])
	if err != nil {
		return "", "", "", denyDevice
	}
	gen = q["g"][0]
	if !validGen(gen) {
		return "", "", "", denyGen
	}
	e := q["e"][0]
	exp, err := strconv.ParseInt(e, 10, 64)
	if err != nil || strconv.FormatInt(exp, 10) != e {
		return "", "", "", denyExpiry
	}
	got, err := base64.RawURLEncoding.Strict().DecodeString(q["s"][0])
	if err != nil || !hmac.Equal(got, s.mac(sum, id, gen, e)) {
		return "", "", "", denyMAC
	}
	if s.cfg.Now().Unix() > exp {
		return "", "", "", denyExpired
	}
	return sum, id, gen, ""
}

// validGen reports whether g may be an enrolment generation: at most
// maxGenLen bytes of base64url.
func validGen(g string) bool {
	if len(g) > maxGenLen {
		return false
	}
	for i := range len(g) {
		switch c := g[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// revoked reports whether a URL minted for device id under enrolment gen
// was revoked: Config.Enrolment now returns another generation (the
// device was removed, and perhaps enrolled again). A URL minted while id
// was not enrolled (gen "": a rollout to devices enrolled later, or
// anonymous mode) is bound to no enrolment.
func (s *Store) revoked(id device.ID, gen string) bool {
	return gen != "" && s.cfg.Enrolment != nil && s.cfg.Enrolment(id) != gen
}

// refuseRevoked answers a download whose URL was revoked: 410 Gone with a
// JSON error. Unlike the bare 403 of a bad URL, the signature was valid,
// so the holder learns nothing it did not know; it should ask for a new
// URL.
func (s *Store) refuseRevoked(w http.ResponseWriter, r *http.Request, id device.ID) {
	s.denied.Add(1)
	s.log.Debug("download refused", logKeyReason, "revoked", logKeyDevice, id, "remote", r.RemoteAddr)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusGone)
	fmt.Fprintf(w, `{"code":%d,"message":"download URL revoked: device %s was removed since it was minted; ask for a new URL"}`+"\n",
		http.StatusGone, id)
}
