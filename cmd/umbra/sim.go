package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/umbra-iot/umbra/internal/sim"
)

// simOptions are the flags of `umbra sim`.
type simOptions struct {
	server, idPrefix, fwVersion, hw, failMode, publicKey, logLevel string
	username, password                                             string
	devices, connectRate, qos                                      int
	installTime, offlineAfter, offlineFor                          time.Duration
	failRate, offlineRate                                          float64
	seed                                                           int64
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
periodic fleet stats) until interrupted.`,
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
			cfg := sim.Config{
				Server: o.server, Devices: o.devices, IDPrefix: o.idPrefix,
				Username: o.username, Password: o.password,
				FirmwareVersion: o.fwVersion, HW: o.hw, InstallTime: o.installTime,
				FailRate: o.failRate, FailMode: mode, OfflineRate: o.offlineRate,
				OfflineAfter: o.offlineAfter, OfflineFor: o.offlineFor,
				ConnectRate: o.connectRate, QoS: byte(o.qos), PublicKey: o.publicKey,
				Seed: o.seed, Logger: log,
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			return sim.Run(cmd.Context(), cfg, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.server, "server", "tcp://127.0.0.1:1883", "MQTT server URL")
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
	f.StringVar(&o.publicKey, "public-key", "", "fleet firmware signing public key: a file, or its base64/PEM value")
	f.Int64Var(&o.seed, "seed", 1, "random seed (failures, jitter)")
	f.StringVar(&o.logLevel, "log-level", "warn", "log level: debug, info, warn or error")
	return cmd
}
