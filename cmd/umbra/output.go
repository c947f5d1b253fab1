package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/umbra-iot/umbra/internal/device"
	"github.com/umbra-iot/umbra/internal/shadowclient"
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

// printAnswer writes the accepted message of a get, update or delete: as
// is (one line of JSON) or, for text, as a short summary.
func printAnswer(w io.Writer, format, verb string, id device.ID, b []byte) error {
	if format == "json" {
		_, err := fmt.Fprintf(w, "%s\n", bytes.TrimSpace(b))
		return err
	}
	var a answerSummary
	if err := json.Unmarshal(b, &a); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	var sb strings.Builder
	switch verb {
	case "get":
		fmt.Fprintf(&sb, "%s version %s\n", id, versionText(a.Version))
		for _, sec := range []struct {
			name string
			raw  json.RawMessage
		}{{"desired", a.State.Desired}, {"reported", a.State.Reported}, {"delta", a.State.Delta}} {
			if len(sec.raw) > 0 {
				fmt.Fprintf(&sb, "  %-9s %s\n", sec.name+":", sec.raw)
			}
		}
	case "update":
		fmt.Fprintf(&sb, "%s updated, version %s\n", id, versionText(a.Version))
	case "delete":
		fmt.Fprintf(&sb, "%s deleted at version %s\n", id, versionText(a.Version))
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
// {"device","kind","topic","payload"}, or for text "<device> <kind> <payload>".
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
	_, err := fmt.Fprintf(w, "%s %s %s\n", e.Device, e.Kind, payload.Bytes())
	return err
}
