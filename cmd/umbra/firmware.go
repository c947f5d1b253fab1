package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/firmware"
	"github.com/umbra-iot/umbra/wire"
)

// query makes one call with the API client and prints its answer in the
// format of -o (printData).
func query[T any](cmd *cobra.Command, o *connOptions, call func(context.Context, *client.Client) (T, error), text func(io.Writer, T) error) error {
	c, err := o.httpClient(cmd)
	if err != nil {
		return err
	}
	v, err := call(cmd.Context(), c)
	if err != nil {
		return o.explain(cmd, err, "api")
	}
	return printData(cmd.OutOrStdout(), o.output, v, text)
}

func newFirmwareCmd() *cobra.Command {
	o := &fwOptions{}
	cmd := &cobra.Command{
		Use:   "firmware",
		Short: "Upload, list and assign firmware images over the HTTP API",
		Long: `Manage firmware images through a running Umbra server's HTTP API: upload
signed images, list and delete them, print the fleet public key devices pin,
mint a device's short-lived download URL, or assign an image to one device
(its desired state gets the firmware command). Arguments are checked before
anything is sent; a refusal from the server exits non-zero with its status
and message. See docs/firmware.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	o.addFlags(cmd.PersistentFlags())
	cmd.AddCommand(newFirmwareUploadCmd(o), newFirmwareListCmd(o), newFirmwareShowCmd(o), newFirmwareDeleteCmd(o),
		newFirmwarePubkeyCmd(o), newFirmwareURLCmd(o), newFirmwareAssignCmd(o))
	return cmd
}

// uploadOptions are the flags of `umbra firmware upload`.
type uploadOptions struct {
	version, hw, notes, sha256 string
}

func newFirmwareUploadCmd(o *fwOptions) *cobra.Command {
	u := &uploadOptions{}
	cmd := &cobra.Command{
		Use:   "upload <file> --version <semver> [--hw MODEL] [--notes TEXT] [--sha256 HEX]",
		Short: "Upload a firmware image",
		Long: `Upload a firmware image as --version (a semantic version such as 1.2.0).
The file is streamed, never read whole into memory. Its sha256 is computed
first (or taken from --sha256) and checked by the server, so an image that
changed or was damaged on the way is refused with 422.`,
		Example: `  umbra firmware upload build/fw-1.2.0.bin --version 1.2.0 --hw m1 --notes "fixes the LED"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := firmware.ParseVersion(u.version); err != nil {
				return fmt.Errorf("--version %q: %w", u.version, err)
			}
			if u.sha256 != "" && !isHexSHA256(u.sha256) {
				return fmt.Errorf("--sha256 %q: want 64 hex digits", u.sha256)
			}
			f, size, err := openImage(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			return query(cmd, o, func(ctx context.Context, c *client.Client) (wire.Image, error) {
				req := wire.ImageUpload{Version: u.version, HW: u.hw, Notes: u.notes, SHA256: strings.ToLower(u.sha256)}
				if req.SHA256 == "" {
					if req.SHA256, err = hashFile(ctx, f); err != nil {
						return wire.Image{}, err
					}
				}
				return c.UploadFirmware(ctx, req, f, size)
			}, func(w io.Writer, img wire.Image) error {
				_, err := fmt.Fprintf(w, "uploaded %s: %d bytes, sha256 %s\n", img.Version, img.Size, img.SHA256)
				return err
			})
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&u.version, "version", "", "the image's semantic version, e.g. 1.2.0 (required)")
	fs.StringVar(&u.hw, "hw", "", "hardware model the image is for (empty: any)")
	fs.StringVar(&u.notes, "notes", "", "release notes")
	fs.StringVar(&u.sha256, "sha256", "", "expected sha256 of the file (default: computed from the file)")
	return cmd
}

// openImage opens a regular, non-empty file and returns its size.
func openImage(name string) (*os.File, int64, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, 0, fmt.Errorf("image file: %w", err)
	}
	st, err := f.Stat()
	switch {
	case err != nil:
		err = fmt.Errorf("image file: %w", err)
	case !st.Mode().IsRegular():
		err = fmt.Errorf("image file %s: not a regular file", name)
	case st.Size() == 0:
		err = fmt.Errorf("image file %s: empty", name)
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, st.Size(), nil
}

// hashFile returns the sha256 of f's content and rewinds it.
func hashFile(ctx context.Context, f *os.File) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", f.Name(), err)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", fmt.Errorf("rewind %s: %w", f.Name(), err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func isHexSHA256(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == sha256.Size
}

func newFirmwareListCmd(o *fwOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List stored firmware images, lowest version first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return query(cmd, o, func(ctx context.Context, c *client.Client) (wire.ImageList, error) {
				imgs, err := c.ListFirmware(ctx)
				return wire.ImageList{Images: nonNil(imgs)}, err
			}, func(w io.Writer, l wire.ImageList) error {
				tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
				fmt.Fprintln(tw, "VERSION\tHW\tSIZE\tSHA256\tCREATED")
				for _, img := range l.Images {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", img.Version, orDash(img.HW), img.Size, img.SHA256, img.Created.Format(time.RFC3339))
				}
				return tw.Flush()
			})
		},
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// versionArg validates a <version> argument.
func versionArg(s string) (firmware.Version, error) {
	v, err := firmware.ParseVersion(s)
	if err != nil {
		return "", fmt.Errorf("version %q: %w", s, err)
	}
	return v, nil
}

func newFirmwareShowCmd(o *fwOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "show <version>",
		Short: "Show one firmware image's metadata and signature",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := versionArg(args[0])
			if err != nil {
				return err
			}
			return query(cmd, o, func(ctx context.Context, c *client.Client) (wire.Image, error) {
				return c.GetFirmware(ctx, string(v))
			}, func(w io.Writer, img wire.Image) error {
				tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
				fmt.Fprintf(tw, "version:\t%s\nhw:\t%s\nsize:\t%d\nsha256:\t%s\ncreated:\t%s\nsignature:\t%x\n",
					img.Version, orDash(img.HW), img.Size, img.SHA256, img.Created.Format(time.RFC3339), img.Signature)
				if img.Notes != "" {
					fmt.Fprintf(tw, "notes:\t%s\n", img.Notes)
				}
				return tw.Flush()
			})
		},
	}
}

func newFirmwareDeleteCmd(o *fwOptions) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "delete <version> [--force]",
		Short: "Delete a firmware image (refused while a rollout uses it or devices have it as desired)",
		Long: `Delete a firmware image. The server refuses (409) while a rollout uses the
version, and while devices have it as their desired firmware: the error
counts and names them. --force deletes it anyway in the second case; those
devices' download URLs then answer 410 Gone.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := versionArg(args[0])
			if err != nil {
				return err
			}
			return query(cmd, o, func(ctx context.Context, c *client.Client) (wire.DeletedImage, error) {
				del := c.DeleteFirmware
				if force {
					del = c.DeleteFirmwareForce
				}
				return wire.DeletedImage{Version: string(v), Deleted: true}, del(ctx, string(v))
			}, func(w io.Writer, d wire.DeletedImage) error {
				_, err := fmt.Fprintf(w, "deleted %s\n", d.Version)
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete even while devices have the version as their desired firmware")
	return cmd
}

func newFirmwarePubkeyCmd(o *fwOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "pubkey",
		Short: "Print the fleet public key (PEM) that devices pin to verify manifests",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return query(cmd, o, func(ctx context.Context, c *client.Client) (wire.PublicKey, error) {
				return c.FirmwarePublicKey(ctx)
			}, func(w io.Writer, pk wire.PublicKey) error {
				_, err := io.WriteString(w, pk.PEM)
				return err
			})
		},
	}
}

// deviceOptions are the flags of url and assign.
type deviceOptions struct {
	device string
	ttl    time.Duration
}

func (d *deviceOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&d.device, "device", "", "device ID the URL is for (required)")
	fs.DurationVar(&d.ttl, "ttl", 0, "URL lifetime, e.g. 10m (default: the server's --url-ttl)")
}

// validate checks the version argument and the flags.
func (d *deviceOptions) validate(arg string) (firmware.Version, device.ID, error) {
	v, err := versionArg(arg)
	if err != nil {
		return "", "", err
	}
	if d.device == "" {
		return "", "", errors.New("--device is required")
	}
	id, err := parseID(d.device)
	if err != nil {
		return "", "", fmt.Errorf("--device: %w", err)
	}
	if d.ttl != 0 && (d.ttl < time.Second || d.ttl > firmware.MaxURLTTL) {
		return "", "", fmt.Errorf("--ttl %s: must be between 1s and %s", d.ttl, firmware.MaxURLTTL)
	}
	return v, id, nil
}

func newFirmwareURLCmd(o *fwOptions) *cobra.Command {
	d := &deviceOptions{}
	cmd := &cobra.Command{
		Use:   "url <version> --device <id> [--ttl 10m]",
		Short: "Print a signed download URL of an image that only one device can use",
		Example: `  umbra firmware url 1.2.0 --device lamp-1 --ttl 10m
  curl -fo fw.bin "$(umbra firmware url 1.2.0 --device lamp-1)"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, id, err := d.validate(args[0])
			if err != nil {
				return err
			}
			return query(cmd, o, func(ctx context.Context, c *client.Client) (wire.URLResponse, error) {
				return c.FirmwareURL(ctx, string(v), id, d.ttl)
			}, func(w io.Writer, u wire.URLResponse) error {
				_, err := fmt.Fprintln(w, u.URL)
				return err
			})
		},
	}
	d.addFlags(cmd.Flags())
	return cmd
}

func newFirmwareAssignCmd(o *fwOptions) *cobra.Command {
	d := &deviceOptions{}
	cmd := &cobra.Command{
		Use:   "assign <version> --device <id> [--ttl 1h]",
		Short: "Write an image's firmware command into one device's desired state",
		Long: `Write the firmware update command for an image (version, signed URL for the
device, sha256, size, signature) into desired.firmware of one device's
shadow: a single-device update without a rollout. The device receives it in
its delta. Run it again to re-issue an expired URL.`,
		Example: `  umbra firmware assign 1.2.0 --device lamp-1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, id, err := d.validate(args[0])
			if err != nil {
				return err
			}
			return query(cmd, o, func(ctx context.Context, c *client.Client) (wire.Shadow, error) {
				return c.AssignFirmware(ctx, string(v), id, d.ttl)
			}, func(w io.Writer, doc wire.Shadow) error {
				_, err := fmt.Fprintf(w, "assigned %s to %s (shadow version %d)\n", v, id, doc.Version)
				return err
			})
		},
	}
	d.addFlags(cmd.Flags())
	return cmd
}
