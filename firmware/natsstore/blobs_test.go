package natsstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/firmware/natsstore"
	"github.com/umbra-iot/umbra/internal/natstest"
)

// node is one Umbra node's firmware store on the shared JetStream catalog
// and object store, served by its own HTTP server.
type node struct {
	st  *firmware.Store
	srv *httptest.Server
	dir string
}

func openNode(t *testing.T, js jetstream.JetStream, replicas int, secret []byte, signingKey string) *node {
	t.Helper()
	n := &node{dir: t.TempDir()}
	cat, err := natsstore.OpenCatalog(t.Context(), natsstore.CatalogConfig{JetStream: js, Replicas: replicas})
	if err != nil {
		t.Fatal(err)
	}
	blobs, err := natsstore.OpenBlobs(t.Context(), natsstore.BlobsConfig{JetStream: js, Replicas: replicas, CacheDir: filepath.Join(n.dir, "cache")})
	if err != nil {
		t.Fatal(err)
	}
	n.srv = httptest.NewUnstartedServer(nil)
	n.st, err = firmware.Open(t.Context(), firmware.Config{Dir: n.dir, Catalog: cat, Blobs: blobs, URLSecret: secret,
		SigningKeyPath: signingKey, BaseURL: "http://" + n.srv.Listener.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	n.srv.Config.Handler = n.st.DownloadHandler()
	n.srv.Start()
	t.Cleanup(func() { n.srv.Close(); n.st.Close(context.Background()); cat.Close(context.Background()) })
	return n
}

// get fetches the path and query of u from n's server.
func (n *node) get(t *testing.T, u string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, n.srv.URL+p.RequestURI(), nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// TestImageUploadedOnOneNodeServedByAnother: an image uploaded on node A
// is in the shared object store; a download URL minted on A is served by
// node B (whole and by range); once B deletes the version, A no longer
// serves it from its cached copy.
func TestImageUploadedOnOneNodeServedByAnother(t *testing.T) {
	c := natstest.StartCluster(t)
	js := natstest.JetStream(t, c.URLs())
	secret := bytes.Repeat([]byte{7}, 32)
	a := openNode(t, js, 3, secret, "")
	b := openNode(t, js, 3, secret, filepath.Join(a.dir, "signing.key"))

	image := make([]byte, 300<<10)
	rand.Read(image)
	img, err := a.st.Upload(t.Context(), firmware.UploadRequest{Version: "2.0.0"}, bytes.NewReader(image))
	if err != nil {
		t.Fatal(err)
	}
	u, _ := a.st.URL(img, "dev-1", time.Hour)

	resp, body := b.get(t, u, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, image) {
		t.Fatalf("GET on node B = %d, %d bytes; want 200 and the %d uploaded bytes", resp.StatusCode, len(body), len(image))
	}
	resp, body = b.get(t, u, http.Header{"Range": {"bytes=100-199"}})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, image[100:200]) {
		t.Fatalf("range GET on node B = %d, %d bytes; want 206 and bytes 100-199", resp.StatusCode, len(body))
	}

	if err := b.st.Delete(t.Context(), img.Version); err != nil {
		t.Fatal(err)
	}
	if resp, _ = a.get(t, u, nil); resp.StatusCode == http.StatusOK {
		t.Fatalf("GET on node A after node B deleted the version = 200, want a refusal")
	}
	if _, err := a.st.Get(t.Context(), img.Version); err == nil {
		t.Fatal("node A still lists the version node B deleted")
	}
}
