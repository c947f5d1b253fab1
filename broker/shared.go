package broker

import (
	"slices"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Shared subscriptions.
//
// A message matching a shared subscription "$share/<group>/<filter>"
// (MQTT 5, and accepted from MQTT 3.1.1 clients too) goes to one member
// of the group; every group, and every ordinary subscription, gets its
// own copy. mochi would pick the member at random; the broker takes the
// members in turn, in client ID order, so a topic is spread evenly over
// consumers, and prefers members that are connected: a member whose
// persistent session is offline gets (and queues) a message only when no
// member of the group is connected, so a consumer that crashed does not
// hold back its share of the traffic. No retained messages are sent on a
// shared SUBSCRIBE [MQTT 5, 4.8.2]. The filter is authorized as <filter>
// (see deny.go); a group whose filter starts with a wildcard matches no
// "$" topic (mochi patch 4).

// maxSharedGroups bounds the groups whose turns are remembered; when more
// are in use the record starts afresh (each group's next turn then starts
// at its first member once).
const maxSharedGroups = 10000

// sharedTurns counts the messages given to each shared subscription
// group, by the group's filter.
type sharedTurns struct {
	mu sync.Mutex        // guards n
	n  map[string]uint64 // by "$share/<group>/<filter>"
}

// next returns the turn of the group with filter.
func (t *sharedTurns) next(filter string) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == nil || len(t.n) >= maxSharedGroups {
		t.n = make(map[string]uint64)
	}
	n := t.n[filter]
	t.n[filter] = n + 1
	return n
}

// OnSelectSubscribers picks the member of each shared subscription group
// that receives the message (see above).
func (h *hook) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	h.s.relaySelect(subs, pk)
	for filter, members := range subs.Shared {
		id, ok := h.pickShared(filter, members)
		if !ok {
			continue
		}
		sub := members[id]
		if had, ok := subs.SharedSelected[id]; ok {
			sub = had.Merge(sub) // as mochi's SelectShared
		}
		subs.SharedSelected[id] = sub
	}
	return subs
}

// pickShared returns the client ID of the group member whose turn it is,
// among the connected members if there are any.
func (h *hook) pickShared(filter string, members map[string]packets.Subscription) (string, bool) {
	ids := make([]string, 0, len(members))
	for id := range members {
		if cl, ok := h.s.mq.Clients.Get(id); ok && !cl.Closed() {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		for id := range members {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return "", false
	}
	slices.Sort(ids)
	return ids[h.shared.next(filter)%uint64(len(ids))], true
}
