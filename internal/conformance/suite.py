#!/usr/bin/env python3
"""Umbra's MQTT 3.1.1 interoperability suite.

Eleven behaviours every MQTT 3.1.1 broker is expected to show (the ones the
Eclipse Paho interoperability tests check), written from the behaviours with
Debian's python3-paho-mqtt (1.6). Each test prints one JSON line:
{"test": name, "passed": bool, "detail": text, "seconds": float}.

    python3 suite.py --host 127.0.0.1 --port 1883 [--username U --password P] [--test NAME]

The broker must refuse subscriptions to test/nosubscribe (the subscribe
failure test). Run by internal/conformance (go test ./cmd/umbra -run
Conformance); see docs/conformance.md.
"""

import argparse
import json
import queue
import socket
import sys
import time
import traceback

import paho.mqtt.client as mqtt

TOPICS = ["TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA"]
WAIT = 5.0  # seconds any one expected event may take
KEEPALIVE = 2  # seconds; the broker must act within 1.5 times that


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


class Conn:
    """One paho client with its events on queues."""

    def __init__(self, args, client_id, clean=True, will=None, keepalive=60):
        # paho refuses an empty client ID with a persistent session in its
        # constructor; the zero-length client ID test needs to send one.
        self.c = mqtt.Client(client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
        self.c._clean_session = clean
        if args.username:
            self.c.username_pw_set(args.username, args.password)
        if will:
            self.c.will_set(*will)
        self.args, self.keepalive = args, keepalive
        self.connacks, self.messages, self.subacks, self.unsubacks = (queue.Queue() for _ in range(4))
        self.c.on_connect = lambda c, u, flags, rc: self.connacks.put(rc)
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, granted: self.subacks.put(list(granted))
        self.c.on_unsubscribe = lambda c, u, mid: self.unsubacks.put(mid)

    def connect(self, loop=True):
        """Connects and returns the CONNACK return code. Without loop, no
        background thread runs: nothing is sent unless the test says so."""
        self.c.connect(self.args.host, self.args.port, self.keepalive)
        if loop:
            self.c.loop_start()
            return get(self.connacks, "CONNACK")
        deadline = time.monotonic() + WAIT
        while self.connacks.empty():
            check(time.monotonic() < deadline, "no CONNACK")
            self.c.loop(timeout=0.1)
        return self.connacks.get()

    def subscribe(self, filters):
        self.c.subscribe(filters)
        return get(self.subacks, "SUBACK")

    def unsubscribe(self, filters):
        self.c.unsubscribe(filters)
        get(self.unsubacks, "UNSUBACK")

    def publish(self, topic, payload, qos=0, retain=False):
        info = self.c.publish(topic, payload, qos, retain)
        info.wait_for_publish(WAIT)
        check(info.is_published(), "publish %s not acknowledged" % topic)

    def disconnect(self):
        self.c.disconnect()
        self.c.loop_stop()

    def kill(self):
        """Ends the connection without DISCONNECT, as a crashed client."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def mark(self, marker):
        """Publishes a marker on topic marker, which this client receives
        through a QoS 2 subscription, and returns the messages received
        before it: a client's messages are delivered in order, and paho
        hands a QoS 2 message over only after PUBREL, which comes after
        the messages sent before it, whatever their QoS."""
        self.publish(marker, b"marker", 2)
        got = []
        while True:
            m = get(self.messages, "message on " + marker)
            if m.topic == marker:
                return got
            got.append(m)


# FENCE: a publisher's last message before another client subscribes is
# QoS 2. A broker may deliver a QoS 1 message to subscribers after it sent
# the PUBACK (Umbra does; see "PUBACK means received" in broker/doc.go), so
# a client that subscribes right after that PUBACK can receive the message
# live: the empty message that cleared a retained topic, say. A broker
# handles a client's packets in order, and sends PUBCOMP only after the
# PUBREL that follows the QoS 2 message, so once the publisher has its
# PUBCOMP every message it sent has been delivered to the subscriptions
# that existed then.


def get(q, what, timeout=WAIT):
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise Failure("no %s within %gs" % (what, timeout))


def clean_up(args):
    """Clears retained messages and the persistent sessions of the suite.
    The clearing messages are QoS 2 so that none can reach the next test's
    subscribers live (see FENCE)."""
    c = Conn(args, "clean-up")
    check(c.connect() == 0, "clean-up: connect refused")
    for t in TOPICS:
        c.publish(t, b"", 2, retain=True)
    c.disconnect()
    for cid in ("myclientid", "myclientid2", "myclientid3"):
        s = Conn(args, cid, clean=True)
        check(s.connect() == 0, "clean-up %s: connect refused" % cid)
        s.disconnect()


def test_basic(args):
    c = Conn(args, "myclientid")
    check(c.connect() == 0, "connect refused")
    check(c.subscribe((TOPICS[0], 2)) == [2], "SUBACK not QoS 2")
    for qos in (0, 1, 2):
        c.publish(TOPICS[0], b"qos %d" % qos, qos)
    got = [get(c.messages, "message %d" % i) for i in range(3)]
    c.disconnect()
    check(sorted((m.payload, m.qos) for m in got) == [(b"qos 0", 0), (b"qos 1", 1), (b"qos 2", 2)],
          "received %s" % [(m.payload, m.qos) for m in got])


def test_retained_messages(args):
    p = Conn(args, "myclientid")
    check(p.connect() == 0, "connect refused")
    for qos, t in enumerate(TOPICS[1:4]):
        p.publish(t, b"qos %d" % qos, qos, retain=True)
    p.disconnect()
    s = Conn(args, "myclientid2")
    check(s.connect() == 0, "connect refused")
    s.subscribe(("+/+", 2))
    got = s.mark("TopicA/marker")
    s.disconnect()
    check(sorted(m.topic for m in got) == sorted(TOPICS[1:4]) and all(m.retain for m in got),
          "retained messages: %s" % [(m.topic, m.retain) for m in got])
    # Empty retained messages clear them, at each QoS; the last is QoS 2,
    # so that none reaches the subscriber below live (see FENCE).
    p = Conn(args, "myclientid")
    p.connect()
    for qos, t in enumerate(TOPICS[1:4]):
        p.publish(t, b"", qos, retain=True)
    p.disconnect()
    s = Conn(args, "myclientid2")
    s.connect()
    s.subscribe(("+/+", 2))
    got = s.mark("TopicA/marker")
    s.disconnect()
    check(not got, "after clearing: %s" % [m.topic for m in got])


def raw_connack(args, client_id, clean):
    """Sends one MQTT 3.1.1 CONNECT over a plain socket and returns the
    CONNACK return code. paho hides this one: refused an empty client ID,
    it reconnects at once with an ID of its own."""
    cid = client_id.encode()
    flags = 0x02 if clean else 0
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    if args.username:
        body = body[:7] + bytes([flags | 0xC0]) + body[8:]
        for field in (args.username, args.password or ""):
            f = field.encode()
            body += len(f).to_bytes(2, "big") + f
    with socket.create_connection((args.host, args.port), timeout=WAIT) as sock:
        n, length = len(body), b""
        while True:  # the remaining length, base 128
            n, digit = n >> 7, n & 0x7F
            length += bytes([digit | (0x80 if n else 0)])
            if not n:
                break
        sock.sendall(b"\x10" + length + body)
        ack = b""
        while len(ack) < 4:
            chunk = sock.recv(4 - len(ack))
            check(chunk, "connection closed before CONNACK")
            ack += chunk
    check(ack[:2] == b"\x20\x02", "not a CONNACK: %s" % ack.hex())
    return ack[3]


def test_zero_length_clientid(args):
    rc = raw_connack(args, "", clean=False)
    check(rc == 2, "empty client ID with a persistent session: CONNACK %d, want 2 (identifier rejected)" % rc)
    c = Conn(args, "", clean=True)
    rc = c.connect()
    check(rc == 0, "empty client ID with a clean session: CONNACK %d, want 0" % rc)
    c.disconnect()


def test_will_message(args):
    a = Conn(args, "myclientid", will=(TOPICS[2], b"client not disconnected", 2, False), keepalive=KEEPALIVE)
    check(a.connect() == 0, "connect refused")
    b = Conn(args, "myclientid2")
    check(b.connect() == 0, "connect refused")
    b.subscribe((TOPICS[2], 2))
    a.kill()
    m = get(b.messages, "will", WAIT)
    b.disconnect()
    check(m.topic == TOPICS[2] and m.payload == b"client not disconnected", "got %s %r" % (m.topic, m.payload))


def test_offline_message_queueing(args):
    a = Conn(args, "myclientid", clean=False)
    check(a.connect() == 0, "connect refused")
    a.subscribe(("+/+", 2))
    a.disconnect()
    b = Conn(args, "myclientid2")
    check(b.connect() == 0, "connect refused")
    for qos, t in enumerate(TOPICS[1:4]):
        b.publish(t, b"qos %d" % qos, qos)
    b.disconnect()
    a = Conn(args, "myclientid", clean=False)
    check(a.connect() == 0, "reconnect refused")
    got = a.mark("TopicA/marker")
    a.disconnect()
    a = Conn(args, "myclientid", clean=True)  # end the session
    a.connect()
    a.disconnect()
    topics = sorted(m.topic for m in got)
    check(TOPICS[2] in topics and TOPICS[3] in topics, "queued messages received: %s (QoS 1 and 2 wanted)" % topics)


def test_overlapping_subscriptions(args):
    c = Conn(args, "myclientid")
    check(c.connect() == 0, "connect refused")
    c.subscribe([("TopicA/#", 2), ("TopicA/+", 1)])
    c.publish(TOPICS[3], b"overlapping topic filters", 2)
    got = c.mark("TopicA/marker/x")  # matches TopicA/# (QoS 2) only
    c.disconnect()
    qos = sorted(m.qos for m in got if m.topic == TOPICS[3])
    check(qos in ([2], [1, 2]), "copies received with QoS %s: want one at QoS 2, or one at 1 and one at 2" % qos)


def test_keepalive(args):
    a = Conn(args, "myclientid", will=(TOPICS[4], b"keepalive expiry", 2, False), keepalive=KEEPALIVE)
    check(a.connect(loop=False) == 0, "connect refused")  # and then silent: no PINGREQ
    b = Conn(args, "myclientid2")
    check(b.connect() == 0, "connect refused")
    b.subscribe((TOPICS[4], 2))
    try:
        m = get(b.messages, "will after keepalive expiry", 3 * KEEPALIVE + WAIT)
    finally:
        b.disconnect()
        a.c.socket().close()
    check(m.topic == TOPICS[4] and m.payload == b"keepalive expiry", "got %s %r" % (m.topic, m.payload))


def test_redelivery_on_reconnect(args):
    a = Conn(args, "myclientid", clean=False)
    unacked = queue.Queue()
    a.c._send_puback = lambda mid: mqtt.MQTT_ERR_SUCCESS  # take messages, acknowledge none
    a.c._send_pubrec = lambda mid: unacked.put(mid) or mqtt.MQTT_ERR_SUCCESS
    check(a.connect() == 0, "connect refused")
    a.subscribe(("TopicA/#", 2))
    b = Conn(args, "myclientid2")
    check(b.connect() == 0, "connect refused")
    b.publish(TOPICS[1], b"qos 1", 1)
    b.publish(TOPICS[3], b"qos 2", 2)
    b.disconnect()
    get(a.messages, "QoS 1 message")
    get(unacked, "QoS 2 message")
    a.kill()
    a = Conn(args, "myclientid", clean=False)
    check(a.connect() == 0, "reconnect refused")
    got = [get(a.messages, "redelivered message %d" % i) for i in range(2)]
    a.disconnect()
    a = Conn(args, "myclientid", clean=True)
    a.connect()
    a.disconnect()
    check(sorted(m.topic for m in got) == sorted([TOPICS[1], TOPICS[3]]), "redelivered: %s" % [m.topic for m in got])


def test_dollar_topics(args):
    c = Conn(args, "myclientid")
    check(c.connect() == 0, "connect refused")
    c.subscribe([("#", 2), ("+/+", 2)])
    # A publish to a $ topic may be refused (it is acknowledged either way);
    # neither it nor the broker's $SYS topics may reach "#" or "+/+".
    c.publish("$" + TOPICS[1], b"", 1)
    got = c.mark("TopicA/marker")
    c.disconnect()
    dollars = [m.topic for m in got if m.topic.startswith("$")]
    check(not dollars, "wildcards at the first level matched %s" % dollars)


def test_unsubscribe(args):
    c = Conn(args, "myclientid")
    check(c.connect() == 0, "connect refused")
    c.subscribe([(TOPICS[1], 2), (TOPICS[2], 2), (TOPICS[3], 2)])
    c.unsubscribe([TOPICS[1], TOPICS[3]])
    for t in (TOPICS[1], TOPICS[3], TOPICS[2]):
        c.publish(t, b"after unsubscribe", 1)
    c.publish(TOPICS[2], b"marker", 1)
    got = []
    while True:
        m = get(c.messages, "message on " + TOPICS[2])
        got.append(m.topic)
        if m.payload == b"marker":
            break
    c.disconnect()
    check(got == [TOPICS[2], TOPICS[2]], "received %s, want only %s" % (got, TOPICS[2]))


def test_subscribe_failure(args):
    c = Conn(args, "myclientid")
    check(c.connect() == 0, "connect refused")
    granted = c.subscribe(("test/nosubscribe", 2))
    c.disconnect()
    check(granted == [0x80], "SUBACK %s, want [128] (failure)" % granted)


TESTS = [
    test_basic, test_retained_messages, test_zero_length_clientid, test_will_message,
    test_offline_message_queueing, test_overlapping_subscriptions, test_keepalive,
    test_redelivery_on_reconnect, test_dollar_topics, test_unsubscribe, test_subscribe_failure,
]


def parser():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--username")
    ap.add_argument("--password")
    ap.add_argument("--test", action="append", help="run only these tests (name without test_)")
    return ap


def main():
    args = parser().parse_args()
    for t in TESTS:
        name = t.__name__[len("test_"):]
        if args.test and name not in args.test:
            continue
        start = time.monotonic()
        try:
            clean_up(args)
            t(args)
            passed, detail = True, ""
        except Failure as e:
            passed, detail = False, str(e)
        except Exception as e:  # a client error is a failure of the test, not of the suite
            passed, detail = False, "%s: %s" % (type(e).__name__, e)
            traceback.print_exc(file=sys.stderr)
        print(json.dumps({"test": name, "passed": passed, "detail": detail,
                          "seconds": round(time.monotonic() - start, 3)}), flush=True)


if __name__ == "__main__":
    main()
