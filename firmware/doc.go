// Package firmware is Umbra's firmware artifact store: it keeps uploaded
// images content-addressed on disk, signs a manifest for each with the
// fleet's ed25519 key, and serves images to devices through short-lived
// download URLs that only the device they were minted for can use.
//
// # Storage
//
// The records, one per version (version, hw, size, sha256, notes, created,
// signature), are in a Catalog, an interface this package declares:
// firmware/boltstore keeps them in Config.Dir/firmware.db (bbolt), and a
// cluster catalog can implement the same contract (firmware/storetest).
// Creating a version is a compare-and-set on its absence, so two uploads
// of one version never both succeed. The image bytes are Blobs, another
// interface this package declares, content-addressed by their SHA-256 and
// shared by versions with identical bytes: by default files under
// Config.Dir, blobs/<sha256>; in cluster mode firmware/natsstore's
// JetStream object store, so an image uploaded on one node is served by
// every node. Upload streams into Config.Dir/tmp/ (uploads in progress),
// hashing as it writes, fsyncs, stores the blob (the default renames it
// into blobs/ and fsyncs the directory) and only then creates the record,
// so a crash never leaves a partial image visible. Open removes whatever a
// crash left in tmp/ and blobs no version references.
//
// Versions are semantic versions in canonical form without "v" (see
// ParseVersion); List orders by semver precedence.
//
// # Signing
//
// The signing key is PEM PKCS#8 ed25519, created 0600 as <Dir>/signing.key
// on first Open unless Config.SigningKeyPath names one (NewSigningKey and
// SigningPublicKey make and read such keys; cluster mode shares one
// between nodes). Each image's Manifest
// {version, hw, size, sha256} is signed; Manifest.Bytes documents the exact
// signed bytes. Devices pin PublicKey (MarshalPublicKey gives the PEM that
// `umbra firmware pubkey` prints). If the key changes, Open re-signs every
// manifest with the new key.
//
// # Download URLs
//
// URL mints BaseURL/fw/<sha256>?d=<device>&g=<enrolment>&e=<unix
// expiry>&s=<HMAC>, the HMAC binding blob, device, the device's enrolment
// generation (Config.Enrolment) and expiry under a server secret
// (<Dir>/url.key unless Config.URLSecret is set). DownloadHandler checks it
// in constant time and serves the blob with http.ServeContent
// (Range/If-Range resume, strong ETag "<sha256>"); every refusal of a bad
// URL is a bare 403. A valid URL whose enrolment is no longer the device's
// (it was removed, and perhaps enrolled again) is revoked: 410 with a JSON
// error. A valid URL of an image deleted since (its blob is gone) is a
// JSON 410 too: its holder may know, and retrying will not help. Config.DeviceAuth is the hook for additionally requiring device
// credentials. A Range header is checked first (range.go): at most
// MaxRanges ranges, overlapping and adjacent ones coalesced, never more
// bytes in all than the image, else a JSON 416, so no request costs more
// than the image itself.
//
// # The firmware command (device protocol)
//
// To update a device, the rollout planner (or `umbra firmware assign`) writes
// Command.Desired() into the device's desired state, so the device receives
// in its delta:
//
//	"firmware": {"version": "1.2.0", "hw": "m1",
//	             "url": "http://host:8080/fw/<sha256>?d=dev-1&g=…&e=1767225600&s=…",
//	             "sha256": "<64 lowercase hex>", "size": 1048576,
//	             "signature": "<base64 ed25519 signature of the manifest>",
//	             "job": "<rollout id, optional>"}
//
// The device then:
//
//  1. checks hw against its own model and verifies the signature with the
//     pinned public key over the manifest rebuilt from the command,
//     {"version":…,"hw":…,"size":…,"sha256":…} exactly as Manifest.Bytes
//     writes it (Command.Verify does this in Go);
//  2. downloads url, resuming with Range and If-Range: "<sha256>" after an
//     interruption;
//  3. checks that the bytes are size long and hash to sha256;
//  4. installs, reboots and runs the new version.
//
// Throughout it reports reported.firmware (type Report):
//
//	"firmware": {"version": "<running version>",
//	             "state": "downloading|verifying|installing|rebooting|updated|failed",
//	             "error": "<why, when failed>", "retryable": true|false,
//	             "job": "<echo of command.job>"}
//
// "updated" means the new version is running (reported version == command
// version). A download that gets 403 because its URL expired is reported as
// failed with retryable true; the server then issues a fresh Command (new URL,
// same image) without starting a new rollout.
//
// # Concurrency and errors
//
// A Store is safe for concurrent use. Uploads stream concurrently; only the
// final link-and-commit step of Upload and the removal step of Delete are
// serialised. Every method that takes a ctx honours it: Upload stops
// reading, and the Catalog calls return ctx's error. Close aborts uploads
// in progress and waits for the other calls, bounded by its ctx. Errors
// wrap the sentinels listed with ErrInvalid (mapped to HTTP codes there)
// and *InUseError.
package firmware
