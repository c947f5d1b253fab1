package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"go.yaml.in/yaml/v3"

	"github.com/umbra-iot/umbra/device"
	"github.com/umbra-iot/umbra/internal/shadowclient"
	"github.com/umbra-iot/umbra/shadow"
	"github.com/umbra-iot/umbra/wire"
)

// answerSummary is what the text output shows of an accepted message.
type answerSummary struct {
	State struct {
		Desired  json.RawMessage `json:"desired"`
		Reported json.RawMessage `json:"reported"`
		Delta    json.RawMessage `json:"delta"`
	} `json:"state"`
	Version     *uint64 `json:"version"`
	ClientToken string  `json:"clientToken"`
}

// printAnswer writes the accepted message of a get, update or delete of
// id's shadow name ("" the classic one): as is (one line of JSON) or, for
// text, as a short summary.
func printAnswer(w io.Writer, format, verb string, id device.ID, name shadow.Name, b []byte) error {
	switch format {
	case "json":
		_, err := fmt.Fprintf(w, "%s\n", bytes.TrimSpace(b))
		return err
	case "yaml":
		return writeYAMLFromJSON(w, b)
	}
	var a answerSummary
	if err := json.Unmarshal(b, &a); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	var sb strings.Builder
	what := string(id)
	if name != "" {
		what += " (shadow " + string(name) + ")"
	}
	switch verb {
	case "get":
		fmt.Fprintf(&sb, "%s version %s\n", what, versionText(a.Version))
		for _, sec := range []struct {
			name string
			raw  json.RawMessage
		}{{"desired", a.State.Desired}, {"reported", a.State.Reported}, {"delta", a.State.Delta}} {
			if len(sec.raw) > 0 {
				fmt.Fprintf(&sb, "  %-9s %s\n", sec.name+":", sec.raw)
			}
		}
	case "update":
		fmt.Fprintf(&sb, "%s updated, version %s\n", what, versionText(a.Version))
	case "delete":
		fmt.Fprintf(&sb, "%s deleted at version %s\n", what, versionText(a.Version))
	}
	_, err := io.WriteString(w, sb.String())
	return err
}

func versionText(v *uint64) string {
	if v == nil {
		return "?"
	}
	return fmt.Sprint(*v)
}

// printEvent writes one watch event: a JSON line
// {"device","name","kind","topic","payload"} ("name" only for a named
// shadow), or for text "<device>[/<name>] <kind> <payload>".
func printEvent(w io.Writer, format string, e shadowclient.Event) error {
	switch format {
	case "json":
		return writeJSONLine(w, e)
	case "yaml":
		// One YAML document per event.
		if _, err := io.WriteString(w, "---\n"); err != nil {
			return err
		}
		return writeYAML(w, e)
	}
	var payload bytes.Buffer
	if json.Compact(&payload, e.Payload) != nil {
		payload.Reset()
		payload.Write(e.Payload)
	}
	what := string(e.Device)
	if e.Name != "" {
		what += "/" + string(e.Name)
	}
	_, err := fmt.Fprintf(w, "%s %s %s\n", what, e.Kind, payload.Bytes())
	return err
}

// printShadows writes the body of GET /v1/devices/{id}/shadows: as is (one
// line of JSON) or, for text, as a table.
func printShadows(w io.Writer, format string, list wire.ShadowList) error {
	if format != "text" {
		return printData(w, format, list, nil)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tUPDATED")
	for _, s := range list.Shadows {
		name := s.Name
		if name == "" {
			name = "-" // the classic shadow
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\n", name, s.Version, s.Updated.Format(timeLayout))
	}
	return tw.Flush()
}

// printData writes v in format: "json" as one line of JSON without HTML
// escaping (stable: the field names of the wire package), "yaml" as the
// same fields in YAML, "text" with text, for people.
func printData[T any](w io.Writer, format string, v T, text func(io.Writer, T) error) error {
	switch format {
	case "json":
		return writeJSONLine(w, v)
	case "yaml":
		return writeYAML(w, v)
	}
	return text(w, v)
}

// writeJSONLine writes v as one line of JSON; "<", ">" and "&" (in URLs
// and messages) are written as they are, not as \u003c escapes.
func writeJSONLine(w io.Writer, v any) error {
	b, err := wire.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// writeYAML writes v as YAML with the field names of its JSON.
func writeYAML(w io.Writer, v any) error {
	var buf bytes.Buffer
	if err := writeJSONLine(&buf, v); err != nil {
		return err
	}
	return writeYAMLFromJSON(w, buf.Bytes())
}

// writeYAMLFromJSON writes a JSON document as YAML, integers as integers.
func writeYAMLFromJSON(w io.Writer, b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return fmt.Errorf("encode yaml: %w", err)
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(yamlNumbers(doc)); err != nil {
		return fmt.Errorf("encode yaml: %w", err)
	}
	return enc.Close()
}

// yamlNumbers replaces the json.Numbers of a decoded document with int64
// or float64, so YAML writes them as numbers.
func yamlNumbers(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = yamlNumbers(e)
		}
	case []any:
		for i, e := range t {
			t[i] = yamlNumbers(e)
		}
	case json.Number:
		if n, err := t.Int64(); err == nil {
			return n
		}
		if f, err := t.Float64(); err == nil {
			return f
		}
		return string(t)
	}
	return v
}
