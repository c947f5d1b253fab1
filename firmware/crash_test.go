package firmware_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/firmware/boltstore"
)

const crashDirEnv = "UMBRA_FIRMWARE_CRASH_DIR"

// TestMain lets the test binary act as the crashing uploader for
// TestCrashDuringUpload.
func TestMain(m *testing.M) {
	if dir := os.Getenv(crashDirEnv); dir != "" {
		uploadUntilKilled(dir)
		return
	}
	os.Exit(m.Run())
}

// uploadUntilKilled uploads stdin into a store in dir, announcing on stdout
// once bytes are being written. The parent kills it mid-stream.
func uploadUntilKilled(dir string) {
	c, err := boltstore.Open(context.Background(), boltstore.Config{Path: filepath.Join(dir, boltstore.File)})
	if err != nil {
		fmt.Println("open catalog:", err)
		os.Exit(2)
	}
	st, err := firmware.Open(context.Background(), firmware.Config{Dir: dir, Catalog: c}) // killed: nothing is closed
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	_, err = st.Upload(context.Background(), firmware.UploadRequest{Version: "1.0.0"}, &announceReader{r: os.Stdin})
	fmt.Println("upload returned:", err) // not reached when killed
	os.Exit(3)
}

type announceReader struct {
	r    io.Reader
	n    int
	said bool
}

func (a *announceReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	a.n += n
	if !a.said && a.n >= 64<<10 {
		a.said = true
		fmt.Println("receiving")
	}
	return n, err
}

// TestCrashDuringUpload kills (SIGKILL) a process in the middle of an upload
// and checks that the next Open lists nothing and leaves no temp file.
func TestCrashDuringUpload(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }() // on early failure too; no-op after the kill below
	go func() { stdin.Write(image(256<<10, 1)) }()    // then blocks: stdin stays open
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		if s != "receiving\n" {
			t.Fatalf("child said %q, want %q", s, "receiving\n")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("child never started receiving")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Fatal("child exited cleanly, want killed")
	}
	stdin.Close()

	if n := len(dirNames(t, filepath.Join(dir, "tmp"))); n != 1 {
		t.Fatalf("tmp/ after the crash has %d entries, want the 1 partial upload", n)
	}
	st, err := openStore(t, firmware.Config{Dir: dir})
	if err != nil {
		t.Fatalf("Open after crash: %v", err)
	}
	defer closeStore(t, st)
	imgs, err := st.List(context.Background())
	if err != nil || len(imgs) != 0 {
		t.Errorf("List after crash = %v, %v; want none", imgs, err)
	}
	checkNoTemp(t, dir)
	if got := dirNames(t, filepath.Join(dir, "blobs")); len(got) != 0 {
		t.Errorf("blobs/ after crash = %v, want empty", got)
	}
}
