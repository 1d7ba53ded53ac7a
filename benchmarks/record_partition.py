"""A PostgreSQL record whose server's host drops off the network: how long the writer is held
before it knows, and how long it takes to catch up once the network is back.

    sudo python -m benchmarks.record_partition [--cut-s 90] [--no-timeouts]

Needs root and iptables: a throwaway cluster listens on a loopback TCP port, results are handed
to a RecordWriter at 100 a second, and after 5 s every packet to and from that port is dropped
for --cut-s seconds, as when the server's host is switched off or its cable pulled (no reset
ever comes). --no-timeouts connects without edge.record.store.SERVER_TIMEOUTS, as before them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
from typing import Any

PORT = 5441
RATE_HZ = 100
SETTLE_S = 5.0


def _drop(on: bool) -> None:
    """Drop (or stop dropping) every loopback packet to or from PORT."""
    for direction in ("--dport", "--sport"):
        rule = ["INPUT", "-i", "lo", "-p", "tcp", direction, str(PORT), "-j", "DROP"]
        subprocess.run(["iptables", "-A" if on else "-D", *rule], check=True)


def run(cut_s: float, timeouts: bool) -> dict[str, Any]:
    from benchmarks.postgres import throwaway_postgres
    from edge.protocol import result_header
    from edge.record import RecordWriter, store
    from edge.results import Result

    if not timeouts:
        store.SERVER_TIMEOUTS.clear()
    handed, stop = [0], threading.Event()
    with throwaway_postgres(port=PORT, tcp=True) as url:
        writer = RecordWriter(url).start()

        def feed() -> None:
            while not stop.wait(1 / RATE_HZ):
                header = result_header("cam", handed[0], time.time_ns(), "ok", 1.0, {"name": "m", "sha256": "ab" * 32},
                                       score=0.5, decision="pass", batch_size=1)  # fmt: skip
                writer.put(Result(header, recv_ns=time.time_ns()), time.time_ns())
                handed[0] += 1

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        time.sleep(SETTLE_S)
        errors = writer.metrics.record_errors._value.get
        _drop(True)
        cut, first_error = time.monotonic(), None
        try:
            while time.monotonic() - cut < cut_s:
                if first_error is None and errors() > 0:
                    first_error = time.monotonic() - cut
                time.sleep(0.1)
        finally:
            _drop(False)
        back = time.monotonic()
        while len(writer.buffer) > RATE_HZ and time.monotonic() - back < 30 * 60:
            time.sleep(0.1)
        caught_up = time.monotonic() - back
        stop.set()
        feeder.join()
        writer.close()
    return {
        "timeouts": timeouts, "cut_s": cut_s,
        "first_error_after_s": None if first_error is None else round(first_error, 1),
        "caught_up_after_s": round(caught_up, 1),
        "handed": handed[0], "recorded": writer.recorded, "unrecorded": writer.unrecorded,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cut-s", type=float, default=90.0, help="how long the network is cut")
    parser.add_argument("--no-timeouts", action="store_true", help="connect without SERVER_TIMEOUTS")
    args = parser.parse_args()
    print(json.dumps(run(args.cut_s, not args.no_timeouts), indent=1))


if __name__ == "__main__":
    main()
