package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-iot/umbra/identity"
)

// caDir is the fleet CA's directory inside the data dir.
const caDir = "ca"

func newCACmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Manage the fleet certificate authority for device mTLS",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	var dataDir, hosts string
	var withServer bool
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create the fleet CA in <data-dir>/ca (and a server certificate for the TLS listener)",
		Long: `Create a fleet CA (ECDSA P-256, 10 years) in <data-dir>/ca: ca.pem (the
--client-ca of umbra serve and the CA devices trust) and ca.key (mode 0600).
With --server-cert (default), also issue server.crt/server.key for --hosts, for
--tls-cert/--tls-key. Refuses to replace an existing CA.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := filepath.Join(dataDir, caDir)
			ca, err := identity.InitCA(dir)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintln(out, filepath.Join(dir, identity.CACertFile))
			if !withServer {
				return nil
			}
			certPEM, keyPEM, err := ca.IssueServerCert(splitList(hosts), 2*365*24*time.Hour)
			if err != nil {
				return err
			}
			return writeOutFiles(out, dir, []outFile{
				{"server.crt", certPEM, 0o644},
				{"server.key", keyPEM, 0o600},
			})
		},
	}
	initCmd.Flags().StringVar(&dataDir, "data-dir", "./umbra-data", "server data dir")
	initCmd.Flags().BoolVar(&withServer, "server-cert", true, "also issue a server certificate for the TLS listener")
	initCmd.Flags().StringVar(&hosts, "hosts", "localhost,127.0.0.1", "comma-separated DNS names and IPs of the server certificate")
	cmd.AddCommand(initCmd)
	return cmd
}

// outFile is a file a command writes.
type outFile struct {
	name string
	data []byte
	perm os.FileMode
}

// writeOutFiles writes files into dir (created 0700 if needed) and prints
// each path.
func writeOutFiles(w io.Writer, dir string, files []outFile) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, f.data, f.perm); err != nil {
			return err
		}
		fmt.Fprintln(w, p)
	}
	return nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
