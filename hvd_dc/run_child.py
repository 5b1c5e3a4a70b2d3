"""What every rank of an :func:`hvd_dc.run` job runs: ``python -m hvd_dc.run_child PAYLOAD DIR``.

It starts hvd_dc (rank 0 serves there and exits when the workers are done), loads the
function, runs it on each worker and writes ``DIR/result.<worker rank>.pkl``:
``("ok", value)`` or ``("error", traceback)``.
"""

from __future__ import annotations

import os
import pickle
import runpy
import sys
import traceback
import types

from .runtime import init, rank, shutdown


def _load(ref: tuple):
    kind, where, qualname = ref
    if kind == "script":
        namespace = runpy.run_path(where, run_name="__hvd_dc_run__")
        module = types.ModuleType("__main__")
        module.__dict__.update(namespace)
        sys.modules["__main__"] = module  # objects pickled from the parent's __main__ resolve here
        obj = module
    else:
        __import__(where)
        obj = sys.modules[where]
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def main() -> int:
    payload, out_dir = sys.argv[1], sys.argv[2]
    init()  # world rank 0 becomes the server here and never returns
    me = rank()
    try:
        with open(payload, "rb") as f:
            ref, call = pickle.load(f)
        func = _load(ref)
        args, kwargs = pickle.loads(call)
        result = ("ok", func(*args, **kwargs))
        status = 0
    except BaseException:
        result = ("error", traceback.format_exc())
        status = 1
    path = os.path.join(out_dir, f"result.{me}.pkl")
    try:
        data = pickle.dumps(result)
    except Exception:
        data = pickle.dumps(("error", f"the return value of worker {me} cannot be pickled:\n{traceback.format_exc()}"))
        status = 1
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)
    shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
