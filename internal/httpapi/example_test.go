package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"

	"github.com/umbra-iot/umbra/internal/httpapi"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/shadow/boltstore"
)

// Set a device's desired state over HTTP, then read the shadow back.
func ExampleNewHandler() {
	dir, err := os.MkdirTemp("", "umbra-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	st, err := boltstore.Open(context.Background(), boltstore.Config{Path: filepath.Join(dir, "shadow.db")})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close(context.Background()) // ours to close, after the engine
	eng, err := shadow.Open(context.Background(), shadow.Config{Store: st})
	if err != nil {
		log.Fatal(err)
	}
	defer eng.Close(context.Background())
	h, err := httpapi.NewHandler(httpapi.Config{Shadow: eng})
	if err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	res, err := http.Post(srv.URL+"/v1/devices/lamp-1/shadow?clientToken=op-1", "application/json",
		strings.NewReader(`{"state":{"desired":{"color":"red"}}}`))
	if err != nil {
		log.Fatal(err)
	}
	res.Body.Close()
	fmt.Println("update:", res.Status)

	res, err = http.Get(srv.URL + "/v1/devices/lamp-1/shadow")
	if err != nil {
		log.Fatal(err)
	}
	defer res.Body.Close()
	var doc struct {
		State   struct{ Delta map[string]any }
		Version int
	}
	if err := json.NewDecoder(res.Body).Decode(&doc); err != nil {
		log.Fatal(err)
	}
	fmt.Println("get:", res.Status, "version", doc.Version, "delta", doc.State.Delta)
	// Output:
	// update: 200 OK
	// get: 200 OK version 1 delta map[color:red]
}
