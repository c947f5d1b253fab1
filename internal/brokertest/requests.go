package brokertest

import (
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// RequestReplies subscribes c to replyTopic and then publishes n requests
// on topic at QoS 1, one at a time; each must get its PUBACK and a message
// on replyTopic within timeout of being sent. payload returns the i-th
// request. It returns the first failure instead of failing a test, so it
// may run on a goroutine of its own.
func RequestReplies(c mqtt.Client, topic, replyTopic string, n int, payload func(i int) []byte, timeout time.Duration) error {
	replied := make(chan struct{}, 1)
	if tok := c.Subscribe(replyTopic, 1, func(mqtt.Client, mqtt.Message) {
		select {
		case replied <- struct{}{}:
		default:
		}
	}); !tok.WaitTimeout(timeout) || tok.Error() != nil {
		return fmt.Errorf("subscribe %s: no SUBACK within %v (%v)", replyTopic, timeout, tok.Error())
	}
	for i := range n {
		deadline := time.NewTimer(timeout)
		if tok := c.Publish(topic, 1, false, payload(i)); !tok.WaitTimeout(timeout) || tok.Error() != nil {
			deadline.Stop()
			return fmt.Errorf("%s request %d: no PUBACK within %v (%v)", topic, i, timeout, tok.Error())
		}
		select {
		case <-replied:
			deadline.Stop()
		case <-deadline.C:
			return fmt.Errorf("%s request %d: no reply on %s within %v", topic, i, replyTopic, timeout)
		}
	}
	return nil
}
