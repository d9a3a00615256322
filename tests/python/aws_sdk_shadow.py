"""The official AWS IoT Device SDK v2 for Python against fleetkit's local hub (AWS dialect).

Run by tests/aws_sdk_interop.rs: connects with mutual TLS, drives the classic and a named
shadow through the SDK's own request/response helpers, and prints one JSON line per step
on stdout. The Rust side reads them, acts between steps (the line "ready" asks it to change
the desired state from the cloud side), and checks every answer.

Usage: python aws_sdk_shadow.py HOST PORT THING CERT KEY CA
"""

import json
import sys
import threading

from awscrt import mqtt
from awsiot import iotshadow, mqtt_connection_builder

TIMEOUT = 10


def emit(step, **fields):
    fields["step"] = step
    print(json.dumps(fields), flush=True)


class Waiter:
    """Collects messages a callback delivers, and waits for one matching a predicate."""

    def __init__(self):
        self.cond = threading.Condition()
        self.items = []

    def put(self, item):
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def take(self, pred=lambda _: True):
        with self.cond:
            ok = self.cond.wait_for(lambda: any(pred(i) for i in self.items), TIMEOUT)
            if not ok:
                raise TimeoutError("no matching message within %ss" % TIMEOUT)
            for i, item in enumerate(self.items):
                if pred(item):
                    return self.items.pop(i)


def main():
    host, port, thing, cert, key, ca = sys.argv[1:7]
    conn = mqtt_connection_builder.mtls_from_path(
        endpoint=host,
        port=int(port),
        cert_filepath=cert,
        pri_key_filepath=key,
        ca_filepath=ca,
        client_id=thing,
        clean_session=True,
        keep_alive_secs=30,
    )
    conn.connect().result(TIMEOUT)
    emit("connected")
    shadow = iotshadow.IotShadowClient(conn)
    qos = mqtt.QoS.AT_LEAST_ONCE

    accepted, rejected, delta, get_ok, get_err, documents = (Waiter() for _ in range(6))
    subs = [
        shadow.subscribe_to_update_shadow_accepted(
            iotshadow.UpdateShadowSubscriptionRequest(thing_name=thing), qos, accepted.put),
        shadow.subscribe_to_update_shadow_rejected(
            iotshadow.UpdateShadowSubscriptionRequest(thing_name=thing), qos, rejected.put),
        shadow.subscribe_to_shadow_delta_updated_events(
            iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=thing), qos, delta.put),
        shadow.subscribe_to_get_shadow_accepted(
            iotshadow.GetShadowSubscriptionRequest(thing_name=thing), qos, get_ok.put),
        shadow.subscribe_to_get_shadow_rejected(
            iotshadow.GetShadowSubscriptionRequest(thing_name=thing), qos, get_err.put),
        shadow.subscribe_to_shadow_updated_events(
            iotshadow.ShadowUpdatedSubscriptionRequest(thing_name=thing), qos, documents.put),
    ]
    for future, _ in subs:
        future.result(TIMEOUT)
    emit("subscribed", count=len(subs))

    # A shadow that does not exist yet: 404.
    shadow.publish_get_shadow(
        iotshadow.GetShadowRequest(thing_name=thing, client_token="get-0"), qos).result(TIMEOUT)
    err = get_err.take(lambda e: e.client_token == "get-0")
    emit("get_missing", code=err.code, message=err.message)

    # Report, then desire something else: the delta names the difference.
    shadow.publish_update_shadow(iotshadow.UpdateShadowRequest(
        thing_name=thing, client_token="up-1",
        state=iotshadow.ShadowState(reported={"color": "red", "fw": "1.0"})), qos).result(TIMEOUT)
    acc = accepted.take(lambda a: a.client_token == "up-1")
    emit("reported", version=acc.version, reported=acc.state.reported)
    doc = documents.take(lambda d: d.current.version == acc.version)
    emit("documents", previous=doc.previous is not None and doc.previous.version,
         current=doc.current.state.reported)

    shadow.publish_update_shadow(iotshadow.UpdateShadowRequest(
        thing_name=thing, client_token="up-2",
        state=iotshadow.ShadowState(desired={"color": "green", "fw": "1.0"})), qos).result(TIMEOUT)
    acc2 = accepted.take(lambda a: a.client_token == "up-2")
    d = delta.take(lambda e: e.version == acc2.version)
    emit("delta", version=d.version, state=d.state)

    # A stale version is refused with 409 and changes nothing.
    shadow.publish_update_shadow(iotshadow.UpdateShadowRequest(
        thing_name=thing, client_token="up-stale", version=1,
        state=iotshadow.ShadowState(reported={"color": "blue"})), qos).result(TIMEOUT)
    err = rejected.take(lambda e: e.client_token == "up-stale")
    emit("stale", code=err.code, message=err.message)

    # Malformed JSON, published raw on the SDK's connection.
    conn.publish(topic="$aws/things/%s/shadow/update" % thing, payload=b"{not json",
                 qos=qos)[0].result(TIMEOUT)
    err = rejected.take(lambda e: e.client_token is None)
    emit("malformed", code=err.code, message=err.message)

    # The cloud side changes desired; the device hears it as a delta.
    emit("ready")
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("expected 'go' on stdin")
    d = delta.take(lambda e: e.state is not None and "interval" in e.state)
    emit("cloud_delta", version=d.version, state=d.state)

    shadow.publish_get_shadow(
        iotshadow.GetShadowRequest(thing_name=thing, client_token="get-1"), qos).result(TIMEOUT)
    got = get_ok.take(lambda g: g.client_token == "get-1")
    emit("get", version=got.version, desired=got.state.desired, reported=got.state.reported,
         delta=got.state.delta)

    # A named shadow is separate from the classic one.
    named = Waiter()
    f, _ = shadow.subscribe_to_update_named_shadow_accepted(
        iotshadow.UpdateNamedShadowSubscriptionRequest(thing_name=thing, shadow_name="config"),
        qos, named.put)
    f.result(TIMEOUT)
    shadow.publish_update_named_shadow(iotshadow.UpdateNamedShadowRequest(
        thing_name=thing, shadow_name="config", client_token="named-1",
        state=iotshadow.ShadowState(reported={"mode": "eco"})), qos).result(TIMEOUT)
    acc = named.take(lambda a: a.client_token == "named-1")
    emit("named", version=acc.version, reported=acc.state.reported)

    conn.disconnect().result(TIMEOUT)
    emit("done")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # report, so the Rust side shows why
        emit("error", error="%s: %s" % (type(e).__name__, e))
        sys.exit(1)
