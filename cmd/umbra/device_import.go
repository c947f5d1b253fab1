package main

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/wire"
)

// maxCertFile caps a certificate file read for binding: a certificate is
// a few KiB.
const maxCertFile = 64 << 10

// readCertFile reads a device certificate (PEM, the certificate alone)
// for binding and returns its PEM text and fingerprint.
func readCertFile(path string) (pemText, fp string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCertFile+1))
	if err != nil {
		return "", "", err
	}
	if len(data) > maxCertFile {
		return "", "", fmt.Errorf("%s: larger than %d bytes, not a certificate", path, maxCertFile)
	}
	cert, err := identity.ParseCertPEM(data)
	if err != nil {
		return "", "", fmt.Errorf("%s: %w", path, err)
	}
	return string(data), identity.CertFingerprint(cert), nil
}

// importRow is one device of an import file.
type importRow struct {
	line int // in the file, from 1
	req  wire.EnrollRequest
}

// rowProblem is a bad row of an import file.
type rowProblem struct {
	line int
	msg  string
}

// Columns of an import file.
const (
	colID     = "id"
	colLabels = "labels"
	colCert   = "cert"
)

// readImportFile parses an import CSV: a header naming the columns id
// (required), labels ("k=v;k=v") and cert (a PEM file, relative to the
// CSV's directory), then one device per row. It returns the good rows and
// a problem for every bad one; err is for a file that cannot be read as
// such at all.
func readImportFile(path string) ([]importRow, []rowProblem, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.Comment = '#'
	r.TrimLeadingSpace = true
	header, err := r.Read()
	if errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("%s: empty; want a header line %q and a line per device", path, "id,labels,cert")
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	col := map[string]int{}
	for i, name := range header {
		name = strings.ToLower(strings.TrimSpace(name))
		if name != colID && name != colLabels && name != colCert {
			return nil, nil, fmt.Errorf("%s: line 1: unknown column %q; the header names the columns id, labels and cert", path, clipText(name))
		}
		if _, dup := col[name]; dup {
			return nil, nil, fmt.Errorf("%s: line 1: column %q twice", path, name)
		}
		col[name] = i
	}
	if _, ok := col[colID]; !ok {
		return nil, nil, fmt.Errorf("%s: line 1: no id column; the header names the columns id, labels and cert", path)
	}
	field := func(rec []string, name string) string {
		if i, ok := col[name]; ok {
			return strings.TrimSpace(rec[i])
		}
		return ""
	}
	dir := filepath.Dir(path)
	var rows []importRow
	var problems []rowProblem
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if pe, ok := errors.AsType[*csv.ParseError](err); ok && errors.Is(pe.Err, csv.ErrFieldCount) {
			problems = append(problems, rowProblem{pe.StartLine, fmt.Sprintf("%d fields, the header has %d", len(rec), len(header))})
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		line, _ := r.FieldPos(0) // only after a record was read: it panics otherwise
		if len(rows)+len(problems) >= identity.MaxEnrollments {
			return nil, nil, fmt.Errorf("%s: more than %d devices; import them in several files", path, identity.MaxEnrollments)
		}
		row := importRow{line: line, req: wire.EnrollRequest{ID: field(rec, colID)}}
		msg, ok := row.parse(field(rec, colLabels), field(rec, colCert), dir)
		if !ok {
			problems = append(problems, rowProblem{line, msg})
			continue
		}
		rows = append(rows, row)
	}
	if len(rows)+len(problems) == 0 {
		return nil, nil, fmt.Errorf("%s: no devices after the header", path)
	}
	return rows, problems, nil
}

// parse fills the labels and the certificate of a row; on failure it
// returns why.
func (row *importRow) parse(labels, cert, dir string) (string, bool) {
	if _, err := parseID(row.req.ID); err != nil {
		return err.Error(), false
	}
	if labels != "" {
		var kvs []string
		for kv := range strings.SplitSeq(labels, ";") {
			if kv = strings.TrimSpace(kv); kv != "" {
				kvs = append(kvs, kv)
			}
		}
		l, err := identity.ParseLabels(kvs)
		if err != nil {
			return "labels: " + err.Error(), false
		}
		row.req.Labels = l
	}
	if cert != "" {
		if !filepath.IsAbs(cert) {
			cert = filepath.Join(dir, cert)
		}
		pemText, _, err := readCertFile(cert)
		if err != nil {
			return "cert: " + err.Error(), false
		}
		row.req.Certificate = pemText
	}
	return "", true
}

// importOptions are the flags of umbra device import.
type importOptions struct {
	secrets string
	dryRun  bool
}

func newDeviceImportCmd(o *apiOptions) *cobra.Command {
	imp := &importOptions{}
	cmd := &cobra.Command{
		Use:   "import <devices.csv> [--secrets FILE] [--dry-run]",
		Short: "Enroll many devices from a CSV file: all of them, or none if any row is bad",
		Long: `Enroll the devices of a CSV file in one step. The first line names the columns:
id (required), labels ("key=value" pairs separated by ";") and cert (the path of
a device certificate to bind, PEM, relative to the CSV file; empty: none):

  id,labels,cert
  thing-1,hw=m2;site=lab,certs/thing-1-certificate.pem.crt
  thing-2,hw=m2,

Lines starting with # are comments. A device with a certificate logs in with it
(as with umbra device add --cert); the secrets of the others are written to
--secrets (created with mode 0600, never overwritten), one "id,secret" line each.

Every row is checked first, here and by the server (taken IDs, certificates
bound already, duplicates): if any row is bad, every bad row is listed with its
line number and nothing is imported. --dry-run only checks.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return imp.run(cmd, o, args[0]) },
	}
	cmd.Flags().StringVar(&imp.secrets, "secrets", "", "file to write the new devices' secrets to (mode 0600; must not exist); needed when a device has no cert")
	cmd.Flags().BoolVar(&imp.dryRun, "dry-run", false, "check every row, here and on the server, and import nothing")
	return cmd
}

func (imp *importOptions) run(cmd *cobra.Command, o *apiOptions, path string) error {
	rows, problems, err := readImportFile(path)
	if err != nil {
		return err
	}
	needSecrets := slices.ContainsFunc(rows, func(r importRow) bool { return r.req.Certificate == "" })
	if needSecrets && imp.secrets == "" && !imp.dryRun && len(problems) == 0 {
		return errors.New("--secrets FILE is needed: some devices have no cert and get a secret, shown once")
	}
	dryRun := imp.dryRun || len(problems) > 0
	var secretsFile *os.File
	if needSecrets && !dryRun {
		// Created before the import, so that secrets are never issued
		// with nowhere to put them.
		if secretsFile, err = os.OpenFile(imp.secrets, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
			return fmt.Errorf("--secrets: %w", err)
		}
		defer secretsFile.Close()
	}
	req := wire.ImportRequest{DryRun: dryRun, Devices: make([]wire.EnrollRequest, len(rows))}
	for i, r := range rows {
		req.Devices[i] = r.req
	}
	var resp wire.ImportResponse
	if len(rows) > 0 {
		err = o.withClient(cmd, func(ctx context.Context, c *client.Client) (err error) {
			resp, err = c.ImportDevices(ctx, req)
			return err
		})
	}
	if ae, ok := errors.AsType[*client.Error](err); ok && ae.Status == http.StatusBadRequest && len(ae.Problems) > 0 {
		for _, p := range ae.Problems {
			if p.Index >= 0 && p.Index < len(rows) {
				problems = append(problems, rowProblem{rows[p.Index].line, p.Message})
			}
		}
		err = nil
	}
	if err != nil || len(problems) > 0 {
		if secretsFile != nil {
			secretsFile.Close()
			os.Remove(imp.secrets)
		}
	}
	if err != nil {
		return err
	}
	if len(problems) > 0 {
		slices.SortStableFunc(problems, func(a, b rowProblem) int { return a.line - b.line })
		w := cmd.ErrOrStderr()
		for _, p := range problems {
			fmt.Fprintf(w, "%s:%d: %s\n", path, p.line, p.msg)
		}
		return fmt.Errorf("%s: %d bad rows; nothing imported", path, countLines(problems))
	}
	if dryRun {
		return printData(cmd.OutOrStdout(), o.output, importResult{File: path, Checked: len(rows), DryRun: true}, func(w io.Writer, r importResult) error {
			_, err := fmt.Fprintf(w, "%s: %d devices OK; nothing imported (dry run)\n", r.File, r.Checked)
			return err
		})
	}
	bound := 0
	if secretsFile != nil {
		var b strings.Builder
		b.WriteString("id,secret\n")
		for _, d := range resp.Devices {
			if d.Secret != "" {
				fmt.Fprintf(&b, "%s,%s\n", d.ID, d.Secret)
			}
		}
		if _, err := secretsFile.WriteString(b.String()); err != nil {
			return fmt.Errorf("devices imported, but writing their secrets failed (give them new ones with umbra device rotate): %w", err)
		}
		if err := secretsFile.Sync(); err != nil {
			return fmt.Errorf("devices imported, but writing their secrets failed (give them new ones with umbra device rotate): %w", err)
		}
	}
	for _, d := range resp.Devices {
		if d.CertSHA256 != "" {
			bound++
		}
	}
	res := importResult{File: path, Checked: len(rows), Imported: len(resp.Devices), Bound: bound}
	if secretsFile != nil {
		res.SecretsFile = imp.secrets
	}
	return printData(cmd.OutOrStdout(), o.output, res, func(w io.Writer, r importResult) error {
		fmt.Fprintf(w, "%s: %d devices imported, %d bound to their certificate", r.File, r.Imported, r.Bound)
		if r.SecretsFile != "" {
			fmt.Fprintf(w, ", %d secrets in %s", r.Imported-r.Bound, r.SecretsFile)
		}
		_, err := fmt.Fprintln(w)
		return err
	})
}

// importResult is what device import prints (-o json: these fields; the
// secrets never, they are in the secrets file).
type importResult struct {
	File        string `json:"file"`
	Checked     int    `json:"checked"`
	Imported    int    `json:"imported"`
	Bound       int    `json:"bound"`
	SecretsFile string `json:"secrets_file,omitempty"`
	DryRun      bool   `json:"dry_run,omitempty"`
}

// countLines counts the distinct lines of sorted problems.
func countLines(p []rowProblem) int {
	n := 0
	for i := range p {
		if i == 0 || p[i].line != p[i-1].line {
			n++
		}
	}
	return n
}

// clipText shortens s, quoted in an error, to 64 bytes.
func clipText(s string) string {
	if len(s) <= 64 {
		return s
	}
	return s[:64] + "…"
}
