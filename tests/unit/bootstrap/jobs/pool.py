"""pool.map over a function that draws random numbers, with a given pool size and start method."""

import json
import multiprocessing as mp
import random
import sys

import numpy as np


def task(i):
    return [i, random.random(), float(np.random.rand()), np.random.default_rng().random()]


if __name__ == "__main__":
    method, processes = sys.argv[1], int(sys.argv[2])
    with mp.get_context(method).Pool(processes) as pool:
        first = pool.map(task, range(6), chunksize=1)
        second = pool.map(task, range(6), chunksize=2)
    print(json.dumps({"first": first, "second": second, "main": random.random()}))
