package wire

import "time"

// Upload metadata of POST /v1/firmware: request headers, or query
// parameters (and multipart form fields before the "file" part) named
// version, hw, notes and sha256.
const (
	HeaderVersion = "X-Umbra-Version"
	HeaderHW      = "X-Umbra-HW"
	HeaderNotes   = "X-Umbra-Notes"
	HeaderSHA256  = "X-Umbra-SHA256"
)

// ImageUpload is the metadata of an image uploaded with POST /v1/firmware;
// the image itself is the body. Only Version is required.
type ImageUpload struct {
	Version string // semantic version, e.g. "1.2.0" ("v1.2.0" is the same)
	HW      string // hardware model the image is for; empty means any
	Notes   string // release notes
	SHA256  string // when set, the server refuses (422) an image that hashes otherwise
}

// Image is a stored firmware image: the answer of POST /v1/firmware and
// GET /v1/firmware/{version}.
type Image struct {
	Version   string    `json:"version"`
	HW        string    `json:"hw"`
	Size      int64     `json:"size"`
	SHA256    string    `json:"sha256"` // 64 lowercase hex
	Notes     string    `json:"notes,omitempty"`
	Created   time.Time `json:"created"`
	Signature []byte    `json:"signature"` // ed25519 over the manifest; base64 in JSON
}

// ImageList is the body of GET /v1/firmware, lowest version first.
type ImageList struct {
	Images []Image `json:"images"`
}

// PublicKey is the body of GET /v1/firmware/pubkey: the fleet key devices
// pin, as PEM (SubjectPublicKeyInfo) and as the raw 32 bytes in base64.
type PublicKey struct {
	Algorithm string `json:"algorithm"` // always "ed25519"
	PEM       string `json:"pem"`
	Key       []byte `json:"key"`
}

// URLRequest is the body of POST /v1/firmware/{version}/url and
// POST /v1/firmware/{version}/assign.
type URLRequest struct {
	Device string `json:"device"`
	// TTL is the URL's lifetime as a Go duration ("10m", "1h"); empty
	// means the server's default.
	TTL string `json:"ttl,omitempty"`
}

// URLResponse is the body answering POST /v1/firmware/{version}/url.
type URLResponse struct {
	URL     string    `json:"url"`
	Expires time.Time `json:"expires"`
}

// DeletedImage is the body answering DELETE /v1/firmware/{version}.
type DeletedImage struct {
	Version string `json:"version"`
	Deleted bool   `json:"deleted"`
}
