package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/internal/shadowclient"
)

// The client profiles live in one YAML file, <user config dir>/umbra/
// profiles.yaml ($XDG_CONFIG_HOME/umbra/profiles.yaml, by default
// ~/.config/umbra/profiles.yaml), mode 0600 since it may hold a token:
//
//	current: default
//	profiles:
//	  default:
//	    api: http://127.0.0.1:8080
//	    mqtt: tcp://127.0.0.1:1883
//	    token: ops:…
//	    ca: /etc/umbra/ca.pem
//	    data_dir: /var/lib/umbra

// defaultProfile is the profile used when the file names none.
const defaultProfile = "default"

// profileKeys are the keys of a profile, in the order umbra config show
// prints them.
var profileKeys = []string{"api", "mqtt", "token", "ca", "data_dir"}

// profile is one named set of connection settings.
type profile struct {
	API     string `yaml:"api,omitempty"`
	MQTT    string `yaml:"mqtt,omitempty"`
	Token   string `yaml:"token,omitempty"`
	CA      string `yaml:"ca,omitempty"`
	DataDir string `yaml:"data_dir,omitempty"`
}

// field returns a pointer to the profile's value of key.
func (p *profile) field(key string) *string {
	switch key {
	case "api":
		return &p.API
	case "mqtt":
		return &p.MQTT
	case "token":
		return &p.Token
	case "ca":
		return &p.CA
	case "data_dir":
		return &p.DataDir
	}
	return nil
}

// profileFile is the content of profiles.yaml.
type profileFile struct {
	Current  string             `yaml:"current,omitempty"`
	Profiles map[string]profile `yaml:"profiles,omitempty"`
}

// maxProfileFile caps the size of profiles.yaml.
const maxProfileFile = 1 << 20

// profilePath is where the profiles are kept.
func profilePath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no per-user config directory (set XDG_CONFIG_HOME or HOME): %w", err)
	}
	return filepath.Join(dir, "umbra", "profiles.yaml"), nil
}

// loadProfiles reads the profile file; a missing file is an empty one.
func loadProfiles() (profileFile, string, error) {
	var pf profileFile
	path, err := profilePath()
	if err != nil {
		// No config directory: flags, environment and defaults still work.
		return pf, "(none)", nil
	}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return pf, path, nil
	case err != nil:
		return pf, path, fmt.Errorf("client profiles: %w", err)
	case len(b) > maxProfileFile:
		return pf, path, fmt.Errorf("client profiles %s: larger than %d bytes", path, maxProfileFile)
	}
	if err := yaml.Unmarshal(b, &pf); err != nil {
		return pf, path, fmt.Errorf("client profiles %s: %w (fix or remove the file)", path, err)
	}
	return pf, path, nil
}

// saveProfiles writes the profile file atomically with mode 0600.
func saveProfiles(pf profileFile, path string) error {
	b, err := yaml.Marshal(pf)
	if err != nil {
		return fmt.Errorf("encode profiles: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("client profiles: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".profiles-*.yaml")
	if err != nil {
		return fmt.Errorf("client profiles: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("client profiles: %w", err)
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("client profiles: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("client profiles: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("client profiles: %w", err)
	}
	return nil
}

// checkProfileValue validates a value for key and returns it as stored
// (paths made absolute, so the profile works from any directory).
func checkProfileValue(key, value string) (string, error) {
	switch key {
	case "api":
		if _, err := client.New(client.Config{URL: value}); err != nil {
			return "", fmt.Errorf("api %q: want http(s)://host[:port]", value)
		}
	case "mqtt":
		if _, err := shadowclient.ParseServer(value); err != nil {
			return "", fmt.Errorf("mqtt %q: %w", value, err)
		}
	case "token":
		if !strings.Contains(value, ":") || strings.ContainsAny(value, "\r\n") {
			return "", errors.New("token: want <name>:<secret>, as umbra token create prints it")
		}
	case "ca", "data_dir":
		abs, err := filepath.Abs(value)
		if err != nil {
			return "", fmt.Errorf("%s %q: %w", key, value, err)
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("%s: %w", key, err)
		}
		return abs, nil
	default:
		return "", fmt.Errorf("unknown key %q: want one of %s", key, strings.Join(profileKeys, ", "))
	}
	return value, nil
}

func newConfigCmd() *cobra.Command {
	o := &connOptions{}
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Show and set how the CLI finds the server (client profiles)",
		Long: `Every command that talks to a server (device, token, firmware, rollout, shadow,
watch, sim) finds it the same way. Each setting comes from, in order:
its flag (--api, --mqtt, --token, --ca, --data-dir), its environment variable
(UMBRA_API, UMBRA_MQTT, UMBRA_TOKEN, UMBRA_CA, UMBRA_DATA_DIR), the client
profile, or its default. Setting only one of api and mqtt is enough: the other
defaults to the same host with the default port (8080 for HTTP, 1883 for MQTT).
Without a token, the CLI uses the admin.token in data_dir (./umbra-data).

Profiles are kept in $XDG_CONFIG_HOME/umbra/profiles.yaml (by default
~/.config/umbra/profiles.yaml), mode 0600. Keys: api, mqtt, token, ca, data_dir.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	o.addFlags(cmd.PersistentFlags())

	show := &cobra.Command{
		Use:   "show",
		Short: "Print the settings in use and where each comes from",
		Example: `  umbra config show
  UMBRA_API=http://10.0.0.5:8080 umbra config show -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.resolve(cmd.Flags()); err != nil {
				return err
			}
			pf, _, _ := loadProfiles()
			names := slices.Sorted(maps.Keys(pf.Profiles))
			return printData(cmd.OutOrStdout(), o.output, configShow{Settings: o.settings, Profiles: nonNil(names)}, func(w io.Writer, v configShow) error {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "KEY\tVALUE\tSOURCE")
				for _, s := range v.Settings {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Key, dash(s.Value), s.Source)
				}
				if len(v.Profiles) > 0 {
					fmt.Fprintf(tw, "profiles\t%s\t\n", strings.Join(v.Profiles, ","))
				}
				return tw.Flush()
			})
		},
	}
	set := &cobra.Command{
		Use:     "set <key> <value>",
		Short:   "Set a key of the profile (--profile, default the current one)",
		Example: "  umbra config set api http://umbra.example.com:8080\n  umbra config set token \"$(cat umbra-data/admin.token)\"\n  umbra config set --profile lab mqtt tcp://lab:1883",
		Args:    cobra.ExactArgs(2),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			if len(args) == 0 {
				return profileKeys, cobra.ShellCompDirectiveNoFileComp
			}
			return nil, cobra.ShellCompDirectiveDefault
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return editProfile(cmd, o, func(p *profile) error {
				v, err := checkProfileValue(args[0], args[1])
				if err != nil {
					return err
				}
				*p.field(args[0]) = v
				return nil
			})
		},
	}
	unset := &cobra.Command{
		Use:       "unset <key>",
		Short:     "Remove a key from the profile (--profile, default the current one)",
		Args:      cobra.ExactArgs(1),
		ValidArgs: profileKeys,
		RunE: func(cmd *cobra.Command, args []string) error {
			return editProfile(cmd, o, func(p *profile) error {
				f := p.field(args[0])
				if f == nil {
					return fmt.Errorf("unknown key %q: want one of %s", args[0], strings.Join(profileKeys, ", "))
				}
				*f = ""
				return nil
			})
		},
	}
	use := &cobra.Command{
		Use:   "use <profile>",
		Short: "Make a profile the current one",
		Args:  cobra.ExactArgs(1),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			pf, _, _ := loadProfiles()
			return slices.Sorted(maps.Keys(pf.Profiles)), cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			pf, path, err := loadProfiles()
			if err != nil {
				return err
			}
			if _, ok := pf.Profiles[args[0]]; !ok {
				return fmt.Errorf("no profile %q in %s: create it with umbra config set --profile %s api URL", args[0], path, args[0])
			}
			pf.Current = args[0]
			if err := saveProfiles(pf, path); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "now using profile %s\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(show, set, unset, use)
	return cmd
}

// configShow is what umbra config show prints.
type configShow struct {
	Settings []setting `json:"settings"`
	Profiles []string  `json:"profiles"`
}

// editProfile applies edit to the profile --profile names (default the
// current one) and saves the file.
func editProfile(cmd *cobra.Command, o *connOptions, edit func(*profile) error) error {
	pf, path, err := loadProfiles()
	if err != nil {
		return err
	}
	if path == "(none)" {
		return errors.New("no per-user config directory: set XDG_CONFIG_HOME or HOME")
	}
	name := pf.Current
	if cmd.Flags().Changed("profile") {
		name = o.profile
	}
	if name == "" {
		name = defaultProfile
	}
	if pf.Profiles == nil {
		pf.Profiles = map[string]profile{}
	}
	p := pf.Profiles[name]
	if err := edit(&p); err != nil {
		return err
	}
	pf.Profiles[name] = p
	if pf.Current == "" {
		pf.Current = name
	}
	if err := saveProfiles(pf, path); err != nil {
		return err
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "profile %s saved in %s\n", name, path)
	return nil
}
