package main

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// The configuration of umbra serve comes from four layers, the first that
// sets a key wins: the command line, the environment (UMBRA_<FLAG>, set by
// applyEnv before serve runs), the --config file, the flag's default. The
// file's keys are the flags' names, derived from the flag set, so a flag
// can never lack a key or a key a flag: every flag of serve but those of
// notConfigKeys is a key. Values are checked by the flag's own parser, as
// on the command line, plus a YAML type check (a number where a number is
// wanted). Paths in the file (flags marked with markPath) are relative to
// the file's directory; every path is made absolute before serve starts.

// notConfigKeys are serve's flags that are not configuration: they choose
// the file, or what serve does instead of serving.
var notConfigKeys = map[string]bool{"config": true, "print-config": true, "healthcheck": true, "help": true}

// maxConfigFileSize caps the config file read.
const maxConfigFileSize = 1 << 20

// envAnnotation is the flag annotation applyEnv sets to the name of the
// environment variable a flag's value came from.
const envAnnotation = "umbra_env"

// Kinds of valueSource.
const (
	sourceFlag    = "flag"
	sourceEnv     = "env"
	sourceFile    = "file"
	sourceDefault = "default"
)

// valueSource says where a key's effective value came from.
type valueSource struct {
	kind string // sourceFlag, sourceEnv, sourceFile or sourceDefault
	env  string // the variable, for sourceEnv
	file string // the config file, for sourceFile
	line int    // the key's line in file
}

func (s valueSource) String() string {
	switch s.kind {
	case sourceEnv:
		return "env " + s.env
	case sourceFile:
		return fmt.Sprintf("file %s:%d", s.file, s.line)
	}
	return s.kind
}

// markPath marks flags whose values are paths: a config file's relative
// paths resolve against its directory, and shell completion offers files
// (a directory for names ending in -dir).
func markPath(fs *pflag.FlagSet, names ...string) {
	for _, name := range names {
		var err error
		if strings.HasSuffix(name, "-dir") {
			err = cobra.MarkFlagDirname(fs, name)
		} else {
			err = cobra.MarkFlagFilename(fs, name)
		}
		if err != nil {
			panic(err) // a flag name typed wrong in addFlags
		}
	}
}

// isPath reports whether markPath marked f.
func isPath(f *pflag.Flag) bool {
	_, file := f.Annotations[cobra.BashCompFilenameExt]
	_, dir := f.Annotations[cobra.BashCompSubdirsInDir]
	return file || dir
}

// configKeys returns the config file's keys: fs's flags minus notConfigKeys.
func configKeys(fs *pflag.FlagSet) []string {
	var keys []string
	fs.VisitAll(func(f *pflag.Flag) {
		if !notConfigKeys[f.Name] {
			keys = append(keys, f.Name)
		}
	})
	slices.Sort(keys)
	return keys
}

// fileEntry is one key of a config file.
type fileEntry struct {
	key   string
	line  int
	value *yaml.Node
}

// readConfigFile parses a config file into its entries: a YAML mapping of
// keys to values, with no key twice. An empty file has none.
func readConfigFile(path string) ([]fileEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxConfigFileSize {
		return nil, fmt.Errorf("larger than %d bytes", maxConfigFileSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // empty, or comments only
		}
		return nil, errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("line %d: a second YAML document: want one mapping of keys to values", more.Line)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: want a mapping of keys to values (key: value lines)", root.Line)
	}
	seen := map[string]int{}
	var entries []fileEntry
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Tag != "!!str" {
			return nil, fmt.Errorf("line %d: a key must be a name such as data-dir", k.Line)
		}
		if first, dup := seen[k.Value]; dup {
			return nil, fmt.Errorf("line %d: key %s given twice (first on line %d)", k.Line, k.Value, first)
		}
		seen[k.Value] = k.Line
		entries = append(entries, fileEntry{key: k.Value, line: k.Line, value: v})
	}
	return entries, nil
}

// fileValue converts a YAML value for flag f into what f parses: a scalar
// (list is nil) or, for a list flag, the items. It checks the YAML type
// against the flag's; f's parser checks the value itself.
func fileValue(f *pflag.Flag, n *yaml.Node) (scalar string, list []string, err error) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	_, isList := f.Value.(pflag.SliceValue)
	typ := f.Value.Type()
	want := wantForType(typ, isList)
	switch {
	case n.Kind == yaml.SequenceNode && isList:
		list = make([]string, 0, len(n.Content))
		for _, item := range n.Content {
			if item.Kind != yaml.ScalarNode || item.Tag != "!!str" {
				return "", nil, fmt.Errorf("line %d: want %s", item.Line, want)
			}
			list = append(list, item.Value)
		}
		return "", list, nil
	case n.Kind != yaml.ScalarNode:
		return "", nil, fmt.Errorf("want %s, not a %s", want, kindName(n.Kind))
	case n.Tag == "!!null":
		return "", nil, fmt.Errorf("no value: want %s (\"\" for an empty one)", want)
	}
	ok := true
	switch typ {
	case "bool":
		ok = n.Tag == "!!bool"
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		ok = n.Tag == "!!int"
	case "float32", "float64":
		ok = n.Tag == "!!int" || n.Tag == "!!float"
	case "string", "duration":
		ok = n.Tag == "!!str"
	default:
		ok = n.Tag == "!!str" || !isList // a list flag takes a string of comma-separated items
	}
	if !ok {
		return "", nil, fmt.Errorf("%q: want %s", n.Value, want)
	}
	if isList {
		items, err := csv.NewReader(strings.NewReader(n.Value)).Read()
		if err != nil && n.Value != "" {
			return "", nil, fmt.Errorf("%q: %w", n.Value, err)
		}
		return "", items, nil
	}
	return n.Value, nil, nil
}

// wantForType names what a flag of pflag type typ takes, for errors.
func wantForType(typ string, isList bool) string {
	switch {
	case isList:
		return "a list of strings, such as [a, b]"
	case typ == "bool":
		return "true or false"
	case strings.HasPrefix(typ, "int") || strings.HasPrefix(typ, "uint"):
		return "an integer"
	case strings.HasPrefix(typ, "float"):
		return "a number"
	case typ == "duration":
		return "a duration such as 30s, 5m or 1h"
	case typ == "string":
		return "a string (quote it if YAML reads it as something else)"
	}
	return "a " + typ
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.SequenceNode:
		return "list"
	case yaml.MappingNode:
		return "mapping"
	}
	return "value of another kind"
}

// setValue sets f to a scalar or a list without marking it changed on
// the command line.
func setValue(f *pflag.Flag, scalar string, list []string) error {
	if list != nil {
		return f.Value.(pflag.SliceValue).Replace(list)
	}
	return f.Value.Set(scalar)
}

// resolvePath makes p absolute against dir; "" stays "".
func resolvePath(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// applyConfigFile completes fs, whose command line and environment are
// already applied, with the config file path (none when ""), makes every
// path absolute, and returns each key's source. scratch is a fresh flag
// set of the same flags: each of the file's values is checked on it, so a
// bad value is an error even where a flag or variable overrides it.
func applyConfigFile(fs, scratch *pflag.FlagSet, path string) (map[string]valueSource, error) {
	sources := map[string]valueSource{}
	for _, key := range configKeys(fs) {
		f := fs.Lookup(key)
		switch {
		case len(f.Annotations[envAnnotation]) > 0:
			sources[key] = valueSource{kind: sourceEnv, env: f.Annotations[envAnnotation][0]}
		case f.Changed:
			sources[key] = valueSource{kind: sourceFlag}
		default:
			sources[key] = valueSource{kind: sourceDefault}
		}
	}
	if path != "" {
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, fmt.Errorf("config file %s: %w", path, err)
		}
		entries, err := readConfigFile(abs)
		if err != nil {
			return nil, fmt.Errorf("config file %s: %w", abs, err)
		}
		dir := filepath.Dir(abs)
		for _, e := range entries {
			if err := applyEntry(fs, scratch, dir, e); err != nil {
				return nil, fmt.Errorf("config file %s: line %d: %w", abs, e.line, err)
			}
			if sources[e.key].kind == sourceDefault {
				sources[e.key] = valueSource{kind: sourceFile, file: abs, line: e.line}
			}
		}
	}
	// Paths from flags, variables and defaults are relative to the
	// working directory: serve logs and --print-config shows them absolute.
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || notConfigKeys[f.Name] || !isPath(f) {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			items := sv.GetSlice()
			for i, p := range items {
				items[i] = absPath(p)
			}
			err = sv.Replace(items)
		} else {
			err = f.Value.Set(absPath(f.Value.String()))
		}
	})
	return sources, err
}

// absPath is p made absolute against the working directory; "" stays "".
func absPath(p string) string {
	if p == "" {
		return p
	}
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}

// applyEntry checks one entry of the file on scratch and, unless the
// command line or the environment set its key, sets it on fs.
func applyEntry(fs, scratch *pflag.FlagSet, dir string, e fileEntry) error {
	f := fs.Lookup(e.key)
	if f == nil || notConfigKeys[e.key] {
		msg := fmt.Sprintf("unknown key %q", e.key)
		if s := closestKey(e.key, configKeys(fs)); s != "" {
			msg += fmt.Sprintf(" (did you mean %s?)", s)
		}
		return errors.New(msg + `: the keys are serve's flags without "--", see umbra serve --help`)
	}
	scalar, list, err := fileValue(f, e.value)
	if err != nil {
		return fmt.Errorf("%s: %w", e.key, err)
	}
	if isPath(f) {
		scalar = resolvePath(dir, scalar)
		for i, p := range list {
			list[i] = resolvePath(dir, p)
		}
	}
	if err := setValue(scratch.Lookup(e.key), scalar, list); err != nil {
		return fmt.Errorf("%s: %w", e.key, err)
	}
	if f.Changed {
		return nil // the command line or the environment wins
	}
	return setValue(f, scalar, list)
}

// closestKey is the key within two edits of key, if any.
func closestKey(key string, keys []string) string {
	best, bestD := "", 3
	for _, k := range keys {
		if d := editDistance(key, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// flagInError finds the first --flag an error message of serve names.
var flagInError = regexp.MustCompile(`--([a-z0-9][a-z0-9-]*)`)

// locateError prefixes a validation error of serve ("--max-packet-size
// 10: …") with where the value of the flag it names first came from: the
// config file and line, or the environment variable.
func locateError(err error, sources map[string]valueSource) error {
	m := flagInError.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	switch src := sources[m[1]]; src.kind {
	case sourceFile:
		return fmt.Errorf("config file %s: line %d: %s: %w", src.file, src.line, m[1], err)
	case sourceEnv:
		return fmt.Errorf("environment %s: %w", src.env, err)
	}
	return err
}

// printConfig writes the effective configuration as a config file that
// serve would accept, each value followed by its source.
func printConfig(w io.Writer, fs *pflag.FlagSet, file string, sources map[string]valueSource) error {
	m := &yaml.Node{Kind: yaml.MappingNode}
	for _, key := range configKeys(fs) {
		f := fs.Lookup(key)
		v := configValueNode(f)
		v.LineComment = sources[key].String()
		m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, v)
	}
	loaded := "none"
	if file != "" {
		loaded, _ = filepath.Abs(file)
	}
	doc := &yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{m},
		HeadComment: "The effective configuration of umbra serve: flag > environment (UMBRA_*) > config file > default.\n" +
			"Config file: " + loaded + ". Each value's source follows it; this output is itself a valid --config file."}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return err
	}
	return enc.Close()
}

// configValueNode is f's value as a YAML node of the type the file takes.
func configValueNode(f *pflag.Flag) *yaml.Node {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		n := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		for _, item := range sv.GetSlice() {
			n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: item})
		}
		return n
	}
	n := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: f.Value.String()}
	switch typ := f.Value.Type(); {
	case typ == "bool":
		n.Tag = "!!bool"
	case strings.HasPrefix(typ, "int") || strings.HasPrefix(typ, "uint"):
		n.Tag = "!!int"
	case strings.HasPrefix(typ, "float"):
		if _, err := strconv.ParseInt(n.Value, 10, 64); err == nil {
			n.Tag = "!!int"
		} else {
			n.Tag = "!!float"
		}
	}
	return n
}
