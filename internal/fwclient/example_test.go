package fwclient_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/internal/fwclient"
	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/shadow"
)

// Upload an image to a server, list the store, and mint a device's URL.
func ExampleClient_Upload() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "fwclient-example")
	defer os.RemoveAll(dir)
	// A server: shadow engine, firmware store and the HTTP API.
	srv := httptest.NewUnstartedServer(nil)
	fw, _ := firmware.Open(ctx, firmware.Config{Dir: filepath.Join(dir, "firmware"), BaseURL: "http://" + srv.Listener.Addr().String()})
	defer fw.Close(ctx)
	eng, _ := shadow.Open(ctx, shadow.Config{Path: filepath.Join(dir, "shadow.db")})
	defer eng.Close(ctx)
	srv.Config.Handler, _ = httpapi.NewHandler(httpapi.Config{Shadow: eng, Firmware: fw,
		Mounts: map[string]http.Handler{"GET /fw/{sha256}": fw.DownloadHandler()}})
	srv.Start()
	defer srv.Close()

	c, err := fwclient.New(fwclient.Config{API: srv.URL})
	if err != nil {
		fmt.Println(err)
		return
	}
	image := "new firmware"
	img, err := c.Upload(ctx, firmware.UploadRequest{Version: "1.2.0", HW: "m1"}, strings.NewReader(image), int64(len(image)))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("uploaded %s, %d bytes\n", img.Version, img.Size)
	_, err = c.Upload(ctx, firmware.UploadRequest{Version: "1.2.0"}, strings.NewReader(image), int64(len(image)))
	fmt.Println("again:", err)
	imgs, _ := c.List(ctx)
	fmt.Println("stored:", len(imgs))
	u, _ := c.URL(ctx, "1.2.0", "lamp-1", 0)
	fmt.Println(strings.HasPrefix(u.URL, srv.URL+"/fw/"+img.SHA256+"?d=lamp-1&"))
	// Output:
	// uploaded 1.2.0, 12 bytes
	// again: fwclient: upload 1.2.0: 409 Conflict: upload 1.2.0: firmware: version already exists
	// stored: 1
	// true
}
