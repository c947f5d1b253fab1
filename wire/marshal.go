package wire

import (
	"bytes"
	"encoding/json"
)

// Marshal encodes v as JSON the way Umbra writes it everywhere (HTTP
// answers, MQTT feeds, the CLI's -o json): like json.Marshal, but "<", ">"
// and "&" stay as they are instead of \u003c escapes, so URLs and
// messages read as sent.
func Marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
