package broker

import (
	"reflect"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// clientStateField returns the offset within mochi's Client of the
// unexported field name of Client.State, and whether it exists with type
// typ. The broker reaches a few of mochi v2.7.9's unexported fields (see
// queue.go and restore.go); each checks the layout once, so a mochi
// upgrade that changes it disables the workaround instead of corrupting
// memory.
func clientStateField(name string, typ reflect.Type) (uintptr, bool) {
	st, ok := reflect.TypeFor[mqtt.Client]().FieldByName("State")
	if !ok || st.Type.Kind() != reflect.Struct {
		return 0, false
	}
	f, ok := st.Type.FieldByName(name)
	if !ok || f.Type != typ {
		return 0, false
	}
	return st.Offset + f.Offset, true
}
