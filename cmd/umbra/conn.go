package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/internal/shadowclient"
)

// Every command that talks to a server finds it the same way (connOptions):
// each setting comes from its flag, else its UMBRA_<FLAG> variable, else
// the client profile (umbra config), else its default. The HTTP and MQTT
// addresses follow each other: set one, and the other defaults to the same
// host with the default port (8080 for HTTP, 1883 for MQTT).

// Defaults of the connection settings.
const (
	defaultAPI     = client.DefaultURL
	defaultMQTT    = shadowclient.DefaultServer
	defaultTimeout = 30 * time.Second
	defaultAPIPort = "8080"
	defaultMQTTPrt = "1883"
	defaultDataDir = "./umbra-data"
)

// connOptions are the flags shared by every command that talks to a
// running server, over HTTP (--api) or MQTT (--mqtt).
type connOptions struct {
	api, mqtt, ca, profile string
	timeout                time.Duration
	output                 string
	cred                   credOptions

	// Set by resolve.
	resolved bool
	settings []setting // where each value came from, for umbra config show
}

// Historical names of the option structs: every client command now
// shares connOptions.
type (
	apiOptions    = connOptions
	fwOptions     = connOptions
	clientOptions = connOptions
)

// setting is one resolved connection setting and its source.
type setting struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Source string `json:"source"`
}

func (o *connOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.api, "api", defaultAPI, "HTTP API base URL of the server (default: the host of --mqtt, port 8080)")
	fs.StringVar(&o.mqtt, "mqtt", defaultMQTT, "MQTT URL of the server: tcp://host:port, ssl://host:port or ws://host:port/mqtt (default: the host of --api, port 1883)")
	// The old name of --mqtt (shadow, watch, sim), kept working but hidden;
	// pflag's deprecation notice would go to stdout, into the data.
	fs.StringVar(&o.mqtt, "server", defaultMQTT, "old name of --mqtt")
	_ = fs.MarkHidden("server")
	fs.StringVar(&o.ca, "ca", "", "CA certificate (PEM `file`) that signed the server's HTTPS and MQTT TLS certificates (default: the system's roots)")
	fs.StringVar(&o.profile, "profile", "", "client profile to use (default: the current one of umbra config)")
	fs.DurationVar(&o.timeout, "timeout", defaultTimeout, "how long to wait to connect and for each answer (firmware uploads are not bounded)")
	fs.StringVarP(&o.output, "output", "o", "text", "output format: text (for people), json (stable, one value per line) or yaml")
	o.cred.addFlags(fs)
	_ = registerEnumCompletion(fs, "output", outputFormats...)
}

// outputFormats are the values of -o.
var outputFormats = []string{"text", "json", "yaml"}

// checkOutput validates -o.
func checkOutput(format string) error {
	for _, f := range outputFormats {
		if format == f {
			return nil
		}
	}
	return fmt.Errorf("--output %q: want text, json or yaml", format)
}

// changedBy reports whether flag name was set, and by what: "flag --name"
// or "env UMBRA_NAME".
func changedBy(fs *pflag.FlagSet, name string) (string, bool) {
	f := fs.Lookup(name)
	if f == nil || !f.Changed {
		return "", false
	}
	if env := f.Annotations[envAnnotation]; len(env) > 0 {
		return "env " + env[0], true
	}
	return "flag --" + name, true
}

// resolve fills the settings not given by flag or environment from the
// profile, derives the address not given from the other, and checks the
// shared flags. It runs once per command.
func (o *connOptions) resolve(fs *pflag.FlagSet) error {
	if o.resolved {
		return nil
	}
	if err := checkOutput(o.output); err != nil {
		return err
	}
	if o.timeout <= 0 {
		return fmt.Errorf("--timeout %s: must be positive", o.timeout)
	}
	pf, path, err := loadProfiles()
	if err != nil {
		return err
	}
	name, nameSrc := pf.Current, "profile file"
	if src, ok := changedBy(fs, "profile"); ok {
		name, nameSrc = o.profile, src
		if _, found := pf.Profiles[name]; !found {
			return fmt.Errorf("--profile %q: no such profile in %s (umbra config show lists them; umbra config set --profile %s api URL creates it)", name, path, name)
		}
	}
	if name == "" {
		name, nameSrc = defaultProfile, "default"
	}
	p := pf.Profiles[name]
	o.profile = name
	o.settings = []setting{{Key: "profile", Value: name, Source: nameSrc}, {Key: "profile_file", Value: path, Source: "$XDG_CONFIG_HOME/umbra or ~/.config/umbra"}}
	fromProfile := "profile " + name
	pick := func(key string, dst *string, flags []string, pv string) string {
		for _, f := range flags {
			if src, ok := changedBy(fs, f); ok {
				return src
			}
		}
		if pv != "" {
			*dst = pv
			return fromProfile
		}
		return "default"
	}
	apiSrc := pick("api", &o.api, []string{"api"}, p.API)
	mqttSrc := pick("mqtt", &o.mqtt, []string{"mqtt", "server"}, p.MQTT)
	switch {
	case apiSrc == "default" && mqttSrc != "default":
		if h := urlHost(o.mqtt); h != "" {
			o.api, apiSrc = "http://"+net.JoinHostPort(h, defaultAPIPort), "the host of mqtt"
		}
	case mqttSrc == "default" && apiSrc != "default":
		if h := urlHost(o.api); h != "" {
			o.mqtt, mqttSrc = "tcp://"+net.JoinHostPort(h, defaultMQTTPrt), "the host of api"
		}
	}
	caSrc := pick("ca", &o.ca, []string{"ca"}, p.CA)
	// The credential: an explicit --token, else an explicit --data-dir's
	// admin.token, else the profile's token, else the profile's or the
	// default data dir's admin.token.
	tokSrc, tokSet := changedBy(fs, "token")
	ddSrc, ddSet := changedBy(fs, "data-dir")
	switch {
	case tokSet:
	case ddSet:
		tokSrc = "admin.token of data_dir"
	case p.Token != "":
		o.cred.token, tokSrc = p.Token, fromProfile
	default:
		if p.DataDir != "" {
			o.cred.dataDir, ddSrc = p.DataDir, fromProfile
		} else {
			ddSrc = "default"
		}
		tokSrc = "admin.token of data_dir"
	}
	tok, err := o.cred.resolve()
	if err != nil {
		return err
	}
	if tok == "" {
		tokSrc = "none found"
	}
	o.cred.token = tok
	o.settings = append(o.settings,
		setting{Key: "api", Value: o.api, Source: apiSrc},
		setting{Key: "mqtt", Value: o.mqtt, Source: mqttSrc},
		setting{Key: "token", Value: maskToken(tok), Source: tokSrc},
		setting{Key: "ca", Value: o.ca, Source: caSrc},
		setting{Key: "data_dir", Value: o.cred.dataDir, Source: dash(ddSrc)},
	)
	o.resolved = true
	return nil
}

// maskToken hides a token's secret.
func maskToken(tok string) string {
	if tok == "" {
		return ""
	}
	name, _ := splitToken(tok)
	return name + ":********"
}

// urlHost is the host name of a URL, "" when it has none.
func urlHost(s string) string {
	s, _, _ = strings.Cut(s, ",") // the first of several (umbra sim)
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// tlsConfig is the client TLS configuration for --ca: nil without one
// (the system's roots).
func (o *connOptions) tlsConfig() (*tls.Config, error) {
	if o.ca == "" {
		return nil, nil
	}
	b, err := os.ReadFile(o.ca)
	if err != nil {
		return nil, fmt.Errorf("--ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("--ca %s: no PEM certificate in the file", o.ca)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// httpClient resolves the options and returns the HTTP API client.
func (o *connOptions) httpClient(cmd *cobra.Command) (*client.Client, error) {
	if err := o.resolve(cmd.Flags()); err != nil {
		return nil, err
	}
	cfg := client.Config{URL: o.api, Token: o.cred.token, Timeout: o.timeout}
	tc, err := o.tlsConfig()
	if err != nil {
		return nil, err
	}
	if tc != nil {
		cfg.HTTPClient = &http.Client{Transport: &http.Transport{TLSClientConfig: tc, Proxy: http.ProxyFromEnvironment}}
	}
	c, err := client.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("api %q: want http(s)://host:port (set with --api, UMBRA_API or umbra config set api URL)", o.api)
	}
	return c, nil
}

// withClient makes one call with the HTTP API client; its error is put in
// the user's terms (explain).
func (o *connOptions) withClient(cmd *cobra.Command, call func(ctx context.Context, c *client.Client) error) error {
	c, err := o.httpClient(cmd)
	if err != nil {
		return err
	}
	return o.explain(cmd, call(cmd.Context(), c), "api")
}

// dial resolves the options and connects over MQTT; the client's warnings
// go to stderr.
func (o *connOptions) dial(cmd *cobra.Command) (*shadowclient.Client, error) {
	if err := o.resolve(cmd.Flags()); err != nil {
		return nil, err
	}
	tc, err := o.tlsConfig()
	if err != nil {
		return nil, err
	}
	user, pass := splitToken(o.cred.token)
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := shadowclient.Dial(cmd.Context(), shadowclient.Config{Server: o.mqtt, Timeout: o.timeout, Logger: log,
		Username: user, Password: pass, TLSConfig: tc})
	return c, o.explain(cmd, err, "mqtt")
}

// explain puts an error of a call to the server over via ("api" or
// "mqtt") in the user's terms: no internal prefixes, and the next command
// to try where there is one.
func (o *connOptions) explain(cmd *cobra.Command, err error, via string) error {
	if err == nil {
		return nil
	}
	if ce, ok := errors.AsType[*client.Error](err); ok {
		msg := fmt.Sprintf("%s (%d %s)", ce.Message, ce.Status, http.StatusText(ce.Status))
		if op := clientOp(err); op != "" {
			msg = op + ": " + msg
		}
		if ce.Rollout != "" && !strings.Contains(msg, ce.Rollout) {
			msg += " (conflicting rollout " + ce.Rollout + ")"
		}
		return &userError{msg: msg + serverHint(cmd, ce, o.cred.token), err: err}
	}
	if errors.Is(err, shadowclient.ErrRefused) && o.cred.token == "" {
		return &userError{msg: strings.TrimPrefix(err.Error(), "shadowclient: ") + noCredentialHint, err: err}
	}
	if refused(err) {
		addr, flag := o.api, via
		if via == "mqtt" {
			addr = o.mqtt
		}
		return &userError{msg: fmt.Sprintf("cannot reach the Umbra server at %s (connection refused): "+
			"check that `umbra serve` is running there, or point the CLI at it with --%s URL, UMBRA_%s or `umbra config set %s URL` "+
			"(`umbra config show` prints the address in use and where it comes from)",
			addr, flag, strings.ToUpper(flag), flag), err: err}
	}
	if strings.HasPrefix(err.Error(), "client: ") {
		return &userError{msg: strings.TrimPrefix(err.Error(), "client: "), err: err}
	}
	return err
}

// userError is an error whose message is already in the user's terms; it
// unwraps to the original for errors.Is.
type userError struct {
	msg string
	err error
}

func (e *userError) Error() string { return e.msg }
func (e *userError) Unwrap() error { return e.err }

// clientOp is the operation an error of the client package names ("client:
// <op>: …"), or the MQTT client's "connect to <url>".
func clientOp(err error) string {
	s := err.Error()
	if rest, ok := strings.CutPrefix(s, "client: "); ok {
		op, _, _ := strings.Cut(rest, ": ")
		return op
	}
	if strings.HasPrefix(s, "connect to ") {
		op, _, _ := strings.Cut(s, ": ")
		return op
	}
	return ""
}

// refused reports whether err is a refused or unreachable connection.
func refused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(err.Error(), "connection refused")
}

// serverHint is the next command to try after an error answer.
func serverHint(cmd *cobra.Command, ce *client.Error, tok string) string {
	group := ""
	if p := cmd.Parent(); p != nil && p.Parent() != nil {
		group = p.Name()
	}
	switch {
	case ce.Status == http.StatusUnauthorized && tok == "":
		return noCredentialHint
	case ce.Status == http.StatusUnauthorized:
		return " (the token was refused: check it with umbra config show)"
	case ce.Status == http.StatusNotFound && group != "" && group != "shadow":
		return fmt.Sprintf("; list what exists with: umbra %s list", group)
	}
	return ""
}
