"""The official AWS IoT Device SDK v2 for Python running the Jobs flow against fleetkit's
local hub (AWS dialect): notify-next, start-next, update to SUCCEEDED, a stale update refused
with VersionMismatch, and an empty queue at the end. One JSON line per step on stdout.

Usage: python aws_sdk_jobs.py HOST PORT THING CERT KEY CA
"""

import json
import sys
import threading

from awscrt import mqtt
from awsiot import iotjobs, mqtt_connection_builder

TIMEOUT = 10


def emit(step, **fields):
    fields["step"] = step
    print(json.dumps(fields, default=str), flush=True)


class Waiter:
    def __init__(self):
        self.cond = threading.Condition()
        self.items = []

    def put(self, item):
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def take(self, pred=lambda _: True):
        with self.cond:
            if not self.cond.wait_for(lambda: any(pred(i) for i in self.items), TIMEOUT):
                raise TimeoutError("no matching message within %ss" % TIMEOUT)
            for i, item in enumerate(self.items):
                if pred(item):
                    return self.items.pop(i)


def main():
    host, port, thing, cert, key, ca = sys.argv[1:7]
    conn = mqtt_connection_builder.mtls_from_path(
        endpoint=host, port=int(port), cert_filepath=cert, pri_key_filepath=key,
        ca_filepath=ca, client_id=thing, clean_session=True, keep_alive_secs=30)
    conn.connect().result(TIMEOUT)
    jobs = iotjobs.IotJobsClient(conn)
    qos = mqtt.QoS.AT_LEAST_ONCE
    nxt, started, start_err, updated, update_err = (Waiter() for _ in range(5))
    subs = [
        jobs.subscribe_to_next_job_execution_changed_events(
            iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing), qos, nxt.put),
        jobs.subscribe_to_start_next_pending_job_execution_accepted(
            iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=thing), qos,
            started.put),
        jobs.subscribe_to_start_next_pending_job_execution_rejected(
            iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=thing), qos,
            start_err.put),
        jobs.subscribe_to_update_job_execution_accepted(
            iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=thing, job_id="+"), qos,
            updated.put),
        jobs.subscribe_to_update_job_execution_rejected(
            iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=thing, job_id="+"), qos,
            update_err.put),
    ]
    for future, _ in subs:
        future.result(TIMEOUT)
    emit("ready")
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("expected 'go' on stdin")

    event = nxt.take(lambda e: e.execution is not None)
    emit("notify_next", job_id=event.execution.job_id, status=event.execution.status)

    jobs.publish_start_next_pending_job_execution(
        iotjobs.StartNextPendingJobExecutionRequest(thing_name=thing, client_token="s1",
                                                    status_details={"step": "download"}),
        qos).result(TIMEOUT)
    got = started.take(lambda r: r.client_token == "s1")
    ex = got.execution
    emit("started", job_id=ex.job_id, status=ex.status, version=ex.version_number,
         document=ex.job_document, details=ex.status_details)

    jobs.publish_update_job_execution(
        iotjobs.UpdateJobExecutionRequest(thing_name=thing, job_id=ex.job_id, client_token="u1",
                                          status="SUCCEEDED", expected_version=ex.version_number,
                                          status_details={"step": "done"},
                                          include_job_execution_state=True),
        qos).result(TIMEOUT)
    up = updated.take(lambda r: r.client_token == "u1")
    emit("succeeded", status=up.execution_state.status,
         version=up.execution_state.version_number)

    jobs.publish_update_job_execution(
        iotjobs.UpdateJobExecutionRequest(thing_name=thing, job_id=ex.job_id, client_token="u2",
                                          status="IN_PROGRESS", expected_version=1),
        qos).result(TIMEOUT)
    err = update_err.take(lambda r: r.client_token == "u2")
    emit("stale", code=err.code)

    jobs.publish_start_next_pending_job_execution(
        iotjobs.StartNextPendingJobExecutionRequest(thing_name=thing, client_token="s2"),
        qos).result(TIMEOUT)
    got = started.take(lambda r: r.client_token == "s2")
    emit("empty", execution=got.execution is not None)

    conn.disconnect().result(TIMEOUT)
    emit("done")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        emit("error", error="%s: %s" % (type(e).__name__, e))
        sys.exit(1)
