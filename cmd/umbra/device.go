package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/wire"
)

// noCredentialHint ends the error of a client command that found no
// credential.
const noCredentialHint = " (no credential: pass --token, set UMBRA_TOKEN, or --data-dir of the server for its admin.token)"

// timeLayout is how the identity commands print times.
const timeLayout = time.RFC3339

func newDeviceCmd() *cobra.Command {
	o := &apiOptions{}
	cmd := &cobra.Command{
		Use:   "device",
		Short: "Enroll, list, remove and rotate devices; issue device certificates",
		Long: `Manage device identities through the HTTP API of a running server (operator
only). A device logs in over MQTT with its ID as client ID and user name and its
secret as password, or with a client certificate from "umbra device cert".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	o.addFlags(cmd.PersistentFlags())

	var labels []string
	var certFile string
	add := &cobra.Command{
		Use:   "add <id> [--label k=v …] [--cert device.pem]",
		Short: "Enroll a device and print its secret (shown once), or bind its existing certificate",
		Long: `Enroll a device and print its secret (shown once).

With --cert, bind an existing client certificate to the device instead (any
subject and issuer, e.g. one AWS IoT issued, whose common name is "AWS IoT
Certificate"): the device then logs in with that certificate, by its SHA-256
fingerprint, and gets no secret. The certificate must chain to a CA of umbra
serve --client-ca or --bound-client-ca, and the device connects with its device
ID as MQTT client ID. The command prints the fingerprint. See
docs/migrate-from-aws.md.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			lbl, err := identity.ParseLabels(labels)
			if err != nil {
				return fmt.Errorf("--label: %w", err)
			}
			req := wire.EnrollRequest{ID: string(id), Labels: lbl}
			if cmd.Flags().Changed("cert") {
				if req.Certificate, req.CertSHA256, err = readCertFile(certFile); err != nil {
					return fmt.Errorf("--cert: %w", err)
				}
			}
			var resp wire.SecretResponse
			err = o.withClient(cmd, func(ctx context.Context, c *client.Client) (err error) {
				resp, err = c.EnrollDevice(ctx, req)
				return err
			})
			if err != nil {
				return err
			}
			if o.output != "text" {
				return printData(cmd.OutOrStdout(), o.output, resp, nil)
			}
			if resp.CertSHA256 != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "device %s enrolled; it logs in with the certificate of SHA-256:\n", resp.ID)
				fmt.Fprintln(cmd.OutOrStdout(), resp.CertSHA256)
				return nil
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "device %s enrolled; its secret (MQTT password) is shown once:\n", resp.ID)
			fmt.Fprintln(cmd.OutOrStdout(), resp.Secret)
			return nil
		},
	}
	add.Flags().StringArrayVar(&labels, "label", nil, "label k=v (repeatable)")
	add.Flags().StringVar(&certFile, "cert", "", "bind this existing client certificate (PEM `file`, the certificate alone) to the device instead of giving it a secret")

	var asJSON bool
	var filter deviceFilter
	list := &cobra.Command{
		Use:   "list [--select k=v,…] [--online|--online=false] [--firmware VERSION]",
		Short: "List enrolled devices with their firmware, presence and labels",
		Long: `List the enrolled devices: whether each is online, the firmware version it
reports running ("1.0.0 -> 1.1.0" while it is asked to move), when it last
connected or disconnected, and its labels. --select keeps the devices whose
labels match every k=v; --online keeps the connected ones (--online=false
the others); --firmware keeps those that report running that version. The
filters run in the CLI for now; the firmware is read device by device
(GET /v1/devices/{id}, 8 at a time), so narrow a large fleet with --select.`,
		Example: `  umbra device list
  umbra device list --select hw=m2 --online
  umbra device list -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if asJSON {
				o.output = "json" // the deprecated --json
			}
			if err := filter.parse(cmd); err != nil {
				return err
			}
			var resp wire.IdentityList
			err := o.withClient(cmd, func(ctx context.Context, c *client.Client) (err error) {
				resp.Devices, err = c.ListEnrolled(ctx)
				return err
			})
			if err != nil {
				return err
			}
			resp.Devices = nonNil(filter.apply(resp.Devices))
			if err := o.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				return addFirmware(ctx, c, resp.Devices)
			}); err != nil {
				return err
			}
			resp.Devices = nonNil(filter.applyFirmware(resp.Devices))
			return printData(cmd.OutOrStdout(), o.output, resp, func(w io.Writer, l wire.IdentityList) error {
				return printDevices(w, l.Devices)
			})
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON (old name of -o json)")
	_ = list.Flags().MarkHidden("json") // the old name of -o json
	filter.addFlags(list.Flags())

	remove := &cobra.Command{
		Use:   "remove <id>",
		Short: "Remove a device: its new connections are refused and its live session loses all rights",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			if err := o.withClient(cmd, func(ctx context.Context, c *client.Client) error { return c.RemoveDevice(ctx, id) }); err != nil {
				return err
			}
			return printData(cmd.OutOrStdout(), o.output, removed{ID: string(id), Removed: true}, func(w io.Writer, r removed) error {
				_, err := fmt.Fprintf(w, "removed %s\n", r.ID)
				return err
			})
		},
	}
	rotate := &cobra.Command{
		Use:   "rotate <id>",
		Short: "Give a device a new secret and print it (the old one stops working for new connections)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			var resp wire.SecretResponse
			err = o.withClient(cmd, func(ctx context.Context, c *client.Client) (err error) {
				resp, err = c.RotateDevice(ctx, id)
				return err
			})
			if err != nil {
				return err
			}
			return printData(cmd.OutOrStdout(), o.output, resp, func(w io.Writer, r wire.SecretResponse) error {
				_, err := fmt.Fprintln(w, r.Secret)
				return err
			})
		},
	}
	show := &cobra.Command{
		Use:   "show <id>",
		Short: "Show one device: enrolment, labels, presence, shadow version and firmware versions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			var d wire.Device
			err = o.withClient(cmd, func(ctx context.Context, c *client.Client) (err error) {
				d, err = c.GetDevice(ctx, id)
				return err
			})
			if err != nil {
				return err
			}
			return printData(cmd.OutOrStdout(), o.output, d, printDevice)
		},
	}
	cmd.AddCommand(add, list, show, remove, rotate, newDeviceCertCmd(), newDeviceImportCmd(o))
	return cmd
}

// removed is what device remove and token revoke print.
type removed struct {
	ID      string `json:"id"`
	Removed bool   `json:"removed"`
}

// deviceFilter is the client-side filter of device list.
type deviceFilter struct {
	sel      string
	online   bool
	firmware string
	labels   map[string]string
	byOnline bool
}

// listWorkers bounds the concurrent GET /v1/devices/{id} of device list.
const listWorkers = 8

// addFirmware sets each device's firmware versions from GET
// /v1/devices/{id}, listWorkers at a time.
func addFirmware(ctx context.Context, c *client.Client, devs []wire.EnrolledDevice) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan int)
	errs := make(chan error, listWorkers)
	var wg sync.WaitGroup
	for range min(listWorkers, len(devs)) {
		wg.Go(func() {
			for i := range next {
				d, err := c.GetDevice(ctx, devs[i].ID)
				if err != nil {
					errs <- err
					cancel()
					return
				}
				devs[i].Firmware = &d.Firmware
			}
		})
	}
feed:
	for i := range devs {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return ctx.Err()
	}
}

// applyFirmware keeps the devices reporting --firmware, when given.
func (f *deviceFilter) applyFirmware(devs []wire.EnrolledDevice) []wire.EnrolledDevice {
	if f.firmware == "" {
		return devs
	}
	return slices.DeleteFunc(devs, func(d wire.EnrolledDevice) bool {
		return d.Firmware == nil || d.Firmware.Reported != f.firmware
	})
}

func (f *deviceFilter) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&f.sel, "select", "", "keep the devices whose labels match, e.g. hw=m2,region=eu")
	fs.BoolVar(&f.online, "online", false, "keep the connected devices (--online=false: the disconnected ones)")
	fs.StringVar(&f.firmware, "firmware", "", "keep the devices that report running this firmware version")
}

func (f *deviceFilter) parse(cmd *cobra.Command) error {
	f.byOnline = cmd.Flags().Changed("online")
	if f.sel == "" {
		return nil
	}
	l, err := identity.ParseLabels(strings.Split(f.sel, ","))
	if err != nil {
		return fmt.Errorf("--select %q: want k=v,… (%s)", f.sel, shortMessage(err))
	}
	f.labels = l
	return nil
}

func (f *deviceFilter) apply(devs []wire.EnrolledDevice) []wire.EnrolledDevice {
	return slices.DeleteFunc(devs, func(d wire.EnrolledDevice) bool {
		if f.byOnline && d.Presence.Connected != f.online {
			return true
		}
		for k, v := range f.labels {
			if d.Labels[k] != v {
				return true
			}
		}
		return false
	})
}

// shortMessage is err's text without the package prefixes of its chain
// ("identity: invalid label: …" → "invalid label: …").
func shortMessage(err error) string {
	return stripInternal(err.Error())
}

// printDevice prints one device as "key: value" lines.
func printDevice(w io.Writer, d wire.Device) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	online := "no"
	if d.Presence.Connected {
		online = "yes"
	}
	enrolled := "no"
	if d.Enrolled {
		enrolled = "yes, " + fmtTime(d.CreatedAt)
	}
	shadowV := "-"
	if d.Shadow != nil {
		shadowV = fmt.Sprintf("version %d, updated %s", d.Shadow.Version, fmtTime(d.Shadow.Updated))
	}
	fmt.Fprintf(tw, "id:\t%s\nenrolled:\t%s\nlabels:\t%s\nonline:\t%s\nconnected at:\t%s\ndisconnected at:\t%s\nshadow:\t%s\nfirmware:\t%s\ndesired firmware:\t%s\n",
		d.ID, enrolled, dash(formatLabels(d.Labels)), online, fmtTime(d.Presence.ConnectedAt), fmtTime(d.Presence.DisconnectedAt),
		shadowV, dash(d.Firmware.Reported), dash(d.Firmware.Desired))
	return tw.Flush()
}

// printDevices prints the device table with an ONLINE column.
func printDevices(w io.Writer, devs []wire.EnrolledDevice) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tONLINE\tFIRMWARE\tCONNECTED_AT\tDISCONNECTED_AT\tREASON\tLABELS")
	for _, d := range devs {
		p := d.Presence
		online := "no"
		if p.Connected {
			online = "yes"
		}
		fw := "-"
		if d.Firmware != nil {
			fw = dash(d.Firmware.Reported)
			if d.Firmware.Desired != "" && d.Firmware.Desired != d.Firmware.Reported {
				fw += " -> " + d.Firmware.Desired // asked to move
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, online, fw, fmtTime(p.ConnectedAt), fmtTime(p.DisconnectedAt),
			dash(p.DisconnectReason), dash(formatLabels(d.Labels)))
	}
	return tw.Flush()
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(timeLayout)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func formatLabels(l map[string]string) string {
	kv := make([]string, 0, len(l))
	for k, v := range l {
		kv = append(kv, k+"="+v)
	}
	slices.Sort(kv)
	return strings.Join(kv, ",")
}

// newDeviceCertCmd is `umbra device cert`: it works on the data dir's CA
// files directly, so it needs no running server.
func newDeviceCertCmd() *cobra.Command {
	var dataDir, out string
	var validity time.Duration
	cmd := &cobra.Command{
		Use:   "cert <id> [--out DIR]",
		Short: "Issue a client certificate for a device from the fleet CA (umbra ca init)",
		Long: `Issue a client certificate whose common name is the device ID, signed by the
fleet CA in <data-dir>/ca. Writes <id>.crt, <id>.key (mode 0600) and ca.pem to
--out. The device must also be enrolled (umbra device add) to connect.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := device.ParseID(args[0])
			if err != nil {
				return fmt.Errorf("device ID %q: %w", args[0], err)
			}
			if validity <= 0 || validity > identity.MaxCertValidity {
				return fmt.Errorf("--validity %v: must be positive and at most %v", validity, identity.MaxCertValidity)
			}
			ca, err := identity.LoadCA(filepath.Join(dataDir, caDir))
			if err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("%w (run umbra ca init --data-dir %s first)", err, dataDir)
				}
				return err
			}
			certPEM, keyPEM, err := ca.IssueDeviceCert(id, validity)
			if err != nil {
				return err
			}
			return writeOutFiles(cmd.OutOrStdout(), out, []outFile{
				{string(id) + ".crt", certPEM, 0o644},
				{string(id) + ".key", keyPEM, 0o600},
				{identity.CACertFile, ca.CertPEM(), 0o644},
			})
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "./umbra-data", "server data dir holding the fleet CA")
	cmd.Flags().StringVar(&out, "out", ".", "directory to write the certificate and key to")
	cmd.Flags().DurationVar(&validity, "validity", 365*24*time.Hour, "certificate lifetime")
	return cmd
}
