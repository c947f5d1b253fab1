package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/identity"
	"github.com/umbra-iot/umbra/internal/sim"
	"github.com/umbra-iot/umbra/wire"
)

// simOptions are the flags of `umbra sim`.
type simOptions struct {
	idPrefix, fwVersion, hw, failMode, publicKey, logLevel string
	username, password                                     string
	devices, connectRate, qos                              int
	installTime, offlineAfter, offlineFor, statsInterval   time.Duration
	failRate, offlineRate                                  float64
	seed                                                   int64
	enroll                                                 bool
	labels                                                 []string
	enrollAPI                                              apiOptions
}

func newSimCmd() *cobra.Command {
	o := &simOptions{}
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Run a simulated fleet of devices that follow firmware commands",
		Long: `Connect --devices simulated devices over MQTT. Each reports its running firmware,
subscribes to its delta, and on a firmware command downloads the image through the
signed URL, verifies its SHA-256 and manifest signature, reports progress, "reboots"
(reconnects) and reports the new version. Prints JSON lines (device events and
periodic fleet stats) until interrupted.

--mqtt may list several addresses, comma-separated (the nodes of a cluster):
device i connects to address i mod n, and a device whose connection is lost
reconnects to the next address after a jittered backoff, subscribes again and
gets its shadow. The stats lines count reconnects and the devices per address.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := newLogger(cmd.ErrOrStderr(), "text", o.logLevel)
			if err != nil {
				return err
			}
			mode, err := sim.ParseFailMode(o.failMode)
			if err != nil {
				return fmt.Errorf("--fail-mode: %w", err)
			}
			if o.qos != 0 && o.qos != 1 {
				return fmt.Errorf("--qos %d: must be 0 or 1", o.qos)
			}
			if err := o.enrollAPI.resolve(cmd.Flags()); err != nil {
				return err
			}
			cfg := sim.Config{
				Server: o.enrollAPI.mqtt, Devices: o.devices, IDPrefix: o.idPrefix,
				Username: o.username, Password: o.password,
				FirmwareVersion: o.fwVersion, HW: o.hw, InstallTime: o.installTime,
				FailRate: o.failRate, FailMode: mode, OfflineRate: o.offlineRate,
				OfflineAfter: o.offlineAfter, OfflineFor: o.offlineFor,
				ConnectRate: o.connectRate, QoS: byte(o.qos), PublicKey: o.publicKey,
				Seed: o.seed, StatsInterval: o.statsInterval, Logger: log,
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			if cfg.PublicKey == "" {
				cfg.PublicKey = o.fetchPublicKey(cmd)
			}
			creds, err := o.enrollment(cmd)
			if err != nil {
				return err
			}
			cfg.Credentials = creds
			return sim.Run(cmd.Context(), cfg, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.devices, "devices", 10, "number of simulated devices")
	f.StringVar(&o.idPrefix, "id-prefix", "sim-", "device ID prefix (IDs are <prefix><zero-padded n>)")
	f.StringVar(&o.username, "username", "", "MQTT user name for every device (default: none)")
	f.StringVar(&o.password, "password", "", "MQTT password for every device")
	f.StringVar(&o.fwVersion, "firmware-version", "1.0.0", "firmware version the devices run at start")
	f.StringVar(&o.hw, "hw", "", "hardware model the devices report")
	f.DurationVar(&o.installTime, "install-time", 2*time.Second, "time to install an image (±20% jitter)")
	f.Float64Var(&o.failRate, "fail-rate", 0, "fraction of devices whose update fails (0..1)")
	f.StringVar(&o.failMode, "fail-mode", "install", "how failing devices fail: download, verify, install or silent")
	f.Float64Var(&o.offlineRate, "offline-rate", 0, "fraction of devices that go offline for a while (0..1)")
	f.DurationVar(&o.offlineAfter, "offline-after", 0, "when offline devices disconnect (default: the simulator's)")
	f.DurationVar(&o.offlineFor, "offline-for", 0, "how long offline devices stay away (default: the simulator's)")
	f.IntVar(&o.connectRate, "connect-rate", 200, "connections per second (0 = unlimited)")
	f.IntVar(&o.qos, "qos", 1, "MQTT QoS for reports and subscriptions (0 or 1)")
	f.StringVar(&o.publicKey, "public-key", "", "fleet firmware signing public key: a file, or its base64/PEM value (default: fetched from --api)")
	f.Int64Var(&o.seed, "seed", 1, "random seed (failures, jitter)")
	f.DurationVar(&o.statsInterval, "stats-interval", sim.DefaultStatsInterval, "how often to print a stats line")
	f.StringVar(&o.logLevel, "log-level", "warn", "log level: debug, info, warn or error")
	f.BoolVar(&o.enroll, "enroll", true, "enroll each device through the HTTP API (--api) and log in with its secret; on by default when an operator token is available (--token, UMBRA_TOKEN or <data-dir>/admin.token)")
	f.StringSliceVar(&o.labels, "label", nil, "label key=value given to every enrolled device (repeatable), for rollout selectors")
	o.enrollAPI.addFlags(f)
	_ = f.MarkHidden("output") // sim always prints JSON lines
	return cmd
}

// enrollment returns the sim.Config.Credentials hook that enrolls each
// device on first use (POST /v1/devices, or a rotation if it is already
// enrolled) and logs it in with its secret; nil when enrollment is off:
// --enroll=false, --username given, or no operator token found and
// --enroll not given explicitly.
func (o *simOptions) enrollment(cmd *cobra.Command) (func(device.ID) (string, string), error) {
	explicit := cmd.Flags().Changed("enroll")
	if !o.enroll || (o.username != "" && !explicit) {
		if len(o.labels) > 0 {
			return nil, errors.New("--label needs enrollment (an operator token, without --username)")
		}
		return nil, nil
	}
	if o.username != "" {
		return nil, errors.New("--enroll and --username exclude each other")
	}
	labels, err := identity.ParseLabels(o.labels)
	if err != nil {
		return nil, fmt.Errorf("--label: %w", err)
	}
	if err := o.enrollAPI.resolve(cmd.Flags()); err != nil {
		return nil, err
	}
	if o.enrollAPI.cred.token == "" {
		if explicit {
			return nil, errors.New("--enroll needs an operator token: --token, UMBRA_TOKEN or --data-dir with admin.token")
		}
		return nil, nil
	}
	c, err := o.enrollAPI.httpClient(cmd)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	secrets := map[device.ID]string{} // guarded by mu
	return func(id device.ID) (string, string) {
		mu.Lock()
		defer mu.Unlock()
		if s, ok := secrets[id]; ok {
			return string(id), s
		}
		ctx := cmd.Context()
		resp, err := c.EnrollDevice(ctx, wire.EnrollRequest{ID: string(id), Labels: labels})
		if errors.Is(err, client.ErrConflict) {
			resp, err = c.RotateDevice(ctx, id)
		}
		if err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "enroll %s: %v\n", id, err)
			return string(id), ""
		}
		secrets[id] = resp.Secret
		return string(id), resp.Secret
	}, nil
}

// fetchPublicKey asks the server at --api for the fleet public key, for
// when --public-key is not given (trusting the operator's own server, as a
// device's factory provisioning would). Without it every firmware command
// fails verification, so a failure is reported on stderr.
func (o *simOptions) fetchPublicKey(cmd *cobra.Command) string {
	var pk wire.PublicKey
	err := o.enrollAPI.withClient(cmd, func(ctx context.Context, c *client.Client) (err error) {
		pk, err = c.FirmwarePublicKey(ctx)
		return err
	})
	if err != nil || pk.PEM == "" {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: no --public-key and none fetched from %s (%v): firmware commands will fail verification\n", o.enrollAPI.api, err)
		return ""
	}
	return pk.PEM
}
