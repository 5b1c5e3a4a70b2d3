"""Shared by the scripts that tests run under mpiexec."""

import argparse
import json
import os


def parser():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    return p


def write_result(out_dir, rank, **data):
    data["rank"] = rank
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"worker{rank}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)


def is_torn(weights, base):
    """The soak invariant: every published snapshot has w[i] - base[i] equal for all i."""
    d = weights - base
    return not bool((d == d[0]).all())
