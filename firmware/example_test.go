package firmware_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/firmware/boltstore"
)

// This example plays both sides: the server uploads an image and writes the
// firmware command into a device's desired state; the device pins the fleet
// public key, verifies the command's signature, downloads the image and
// checks its size and sha256 before installing.
func ExampleCommand_Verify() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "fw-example")
	defer os.RemoveAll(dir)
	srv := httptest.NewUnstartedServer(nil)
	records, err := boltstore.Open(ctx, boltstore.Config{Path: filepath.Join(dir, boltstore.File)})
	if err != nil {
		fmt.Println(err)
		return
	}
	// The catalog stays ours to close, after the store.
	defer records.Close(ctx)
	st, err := firmware.Open(ctx, firmware.Config{Dir: dir, Catalog: records, BaseURL: "http://" + srv.Listener.Addr().String()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer st.Close(ctx)
	srv.Config.Handler = st.DownloadHandler()
	srv.Start()
	defer srv.Close()

	// Server side.
	img, _ := st.Upload(ctx, firmware.UploadRequest{Version: "1.2.0", HW: "m1"}, bytes.NewReader([]byte("new firmware")))
	desired, _ := json.Marshal(st.Command(img, "dev-1", 0, "rollout-7").Desired())
	pinned := firmware.MarshalPublicKey(st.PublicKey()) // shipped with the device

	// Device side: desired.firmware arrives in the shadow delta.
	var delta struct{ Firmware firmware.Command }
	json.Unmarshal(desired, &delta)
	cmd := delta.Firmware
	pub, _ := firmware.ParsePublicKey(pinned)
	if err := cmd.Verify(pub); err != nil { // signature over {version,hw,size,sha256}
		fmt.Println("refuse:", err)
		return
	}
	resp, err := http.Get(cmd.URL)
	if err != nil || resp.StatusCode != http.StatusOK {
		fmt.Println("download failed; report state failed, retryable")
		return
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, _ := io.Copy(h, resp.Body)
	if n != cmd.Size || hex.EncodeToString(h.Sum(nil)) != cmd.SHA256 {
		fmt.Println("refuse: checksum mismatch")
		return
	}
	fmt.Printf("verified %s (%d bytes), installing; job %s\n", cmd.Version, n, cmd.Job)
	// Output: verified 1.2.0 (12 bytes), installing; job rollout-7
}
