"""An unseeded job: global and unseeded generators, a subprocess, fork and spawn children; prints what it drew."""

import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile

import numpy as np

CHILD = "import random, numpy; print(random.random(), numpy.random.rand(), numpy.random.default_rng().random())"


def draw(queue):
    queue.put([random.random(), float(np.random.rand()), np.random.default_rng().random()])


def fork_child(queue):
    draw(queue)
    os._exit(0)  # as DataLoader fork workers leave: no atexit, no flush; the report must already be there


if __name__ == "__main__":
    out = {
        "random": [random.random() for _ in range(3)],
        "Random()": [random.Random().random(), random.Random().random()],
        "np.legacy": np.random.rand(3).tolist(),
        "default_rng()": [np.random.default_rng().random(), np.random.default_rng().random()],
        "hash": hash("envkit"),
        "tempfile": os.path.basename(tempfile.mktemp()),
    }
    random.seed()  # a reseed from "entropy"
    out["random.seed()"] = random.random()
    out["subprocess"] = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                                       check=True).stdout.split()
    for method, target in (("fork", fork_child), ("spawn", draw)):
        ctx = mp.get_context(method)
        queue = ctx.SimpleQueue()  # writes synchronously: the fork child leaves through os._exit
        proc = ctx.Process(target=target, args=(queue,))
        proc.start()
        out[method] = queue.get()
        proc.join()
    print(json.dumps(out))
