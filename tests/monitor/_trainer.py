"""A stand-in training process for the lifecycle tests: starts the monitor the way hpc.init will.

    python _trainer.py RUN_DIR MODE SAMPLE_S AVERAGE_S [LOCAL_RANK]

MODE: ``sleep`` (wait to be killed), ``exit`` (leave without stopping the monitor), ``stop`` (stop it and
print its exit code), ``thread`` (start it from a thread that then exits, then wait to be killed).
Prints one JSON line with the monitor's pid as soon as it has started.
"""
import json
import os
import sys
import threading
import time

from hpc._monitor_control import start_monitor
from hpc._settings import Settings


def main() -> None:
    run_dir, mode, sample_s, average_s = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    local_rank = int(sys.argv[5]) if len(sys.argv) > 5 else None
    # stats=True explicitly: the test suite sets HPCSYNC_STATS=off for every other test
    settings = Settings.resolve({"stats": True, "stats_sample_s": sample_s, "stats_average_s": average_s})
    handles = []

    def start() -> None:
        handles.append(start_monitor(run_dir, parent_pid=os.getpid(), settings=settings, local_rank=local_rank))

    if mode == "thread":
        worker = threading.Thread(target=start)
        worker.start()
        worker.join()  # the thread that created the monitor is gone now
    else:
        start()
    handle = handles[0]
    print(json.dumps({"monitor_pid": handle.pid if handle else None}), flush=True)
    if mode in ("exit", "stop"):
        # a few samples into the monitor's life (on a loaded machine its start alone can take a second)
        while handle is not None and not os.path.exists(os.path.join(run_dir, "hardware.json")):
            time.sleep(0.05)
        time.sleep(float(sys.argv[3]) * 3)
    if mode == "exit":
        os._exit(0)
    if mode == "stop":
        print(json.dumps({"exit_code": handle.stop(timeout_s=10)}), flush=True)
        return
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
