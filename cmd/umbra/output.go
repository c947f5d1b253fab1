package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

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
	if format == "json" {
		_, err := fmt.Fprintf(w, "%s\n", bytes.TrimSpace(b))
		return err
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
	if format == "json" {
		b, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("encode event: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
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
	if format == "json" {
		return writeJSONLine(w, list)
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
