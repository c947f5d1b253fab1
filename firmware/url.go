package firmware

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/umbra-iot/umbra/internal/device"
)

// urlPrefix is the path under which DownloadHandler serves blobs.
const urlPrefix = "/fw/"

// macLabel versions the MAC input so a future URL format cannot be confused
// with this one.
const macLabel = "umbra-fw-url-v1"

// URL mints a download URL for img that only device id can use, valid until
// the returned expiry (whole seconds). ttl <= 0 means Config.URLTTL; ttl is
// clamped to MaxURLTTL. The URL is
//
//	BaseURL + "/fw/<sha256>?d=<device>&e=<unix seconds>&s=<mac>"
//
// where mac is the unpadded base64url HMAC-SHA256, under the store's URL
// secret, of "umbra-fw-url-v1\n<sha256>\n<device>\n<e>". URLs are cheap and
// stateless: mint a fresh one whenever a device reports an expired one.
func (s *Store) URL(img Image, id device.ID, ttl time.Duration) (string, time.Time) {
	if ttl <= 0 {
		ttl = s.cfg.URLTTL
	}
	ttl = min(ttl, MaxURLTTL)
	exp := s.cfg.Now().Add(ttl).Unix()
	e := strconv.FormatInt(exp, 10)
	sig := base64.RawURLEncoding.EncodeToString(s.mac(img.SHA256, id, e))
	u := s.cfg.BaseURL + urlPrefix + img.SHA256 + "?d=" + url.QueryEscape(string(id)) + "&e=" + e + "&s=" + sig
	return u, time.Unix(exp, 0)
}

func (s *Store) mac(sum string, id device.ID, e string) []byte {
	m := hmac.New(sha256.New, s.urlKey)
	m.Write([]byte(macLabel + "\n" + sum + "\n" + string(id) + "\n" + e))
	return m.Sum(nil)
}

// Reasons a download is refused; logged, never sent to the client.
const (
	denyPath    = "malformed path"
	denyQuery   = "malformed query"
	denyDevice  = "malformed device"
	denyExpiry  = "malformed expiry"
	denyMAC     = "bad signature"
	denyExpired = "expired"
	denyAuth    = "device auth refused"
	denyBlob    = "unknown blob"
)

// verify checks a download request's path and query. It returns the blob and
// device on success, or the reason for refusal. Only the exact query keys
// d, e and s, each once, are accepted; e must be in canonical decimal form
// and s canonical unpadded base64url, so each (blob, device, expiry) has one
// signature encoding.
func (s *Store) verify(path, rawQuery string) (sum string, id device.ID, reason string) {
	sum, ok := strings.CutPrefix(path, urlPrefix)
	if !ok || !isSHA256(sum) {
		return "", "", denyPath
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil || len(q) != 3 || len(q["d"]) != 1 || len(q["e"]) != 1 || len(q["s"]) != 1 {
		return "", "", denyQuery
	}
	id, err = device.ParseID(q["d"][0])
	if err != nil {
		return "", "", denyDevice
	}
	e := q["e"][0]
	exp, err := strconv.ParseInt(e, 10, 64)
	if err != nil || strconv.FormatInt(exp, 10) != e {
		return "", "", denyExpiry
	}
	got, err := base64.RawURLEncoding.Strict().DecodeString(q["s"][0])
	if err != nil || !hmac.Equal(got, s.mac(sum, id, e)) {
		return "", "", denyMAC
	}
	if s.cfg.Now().Unix() > exp {
		return "", "", denyExpired
	}
	return sum, id, ""
}
