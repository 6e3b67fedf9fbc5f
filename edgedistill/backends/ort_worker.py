"""ONNX Runtime on a device, run by the device's own Python (3.6+, numpy and onnxruntime): edgedistill uploads this
file and calls it once per step. Prints one JSON line.

argv: MODE MODEL THREADS PROVIDERS [mode arguments]; modes: check, infer SOURCE TARGET [BATCH], time BATCH WARMUP
ITERATIONS [ROUNDS] (worker.py). Exit codes: 3 a module is missing, 4 the model is rejected, 5 an execution provider is
missing.
"""

import json
import os
import platform
import sys
import time

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as exc:
    sys.stderr.write("missing module: %s\n" % exc)
    sys.exit(3)


def session(model, threads, providers):
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        sys.stderr.write(
            "onnxruntime %s on the target lacks %s (available: %s)\n" % (ort.__version__, ", ".join(missing), ", ".join(available))
        )
        sys.exit(5)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model, options, providers=providers)
    except Exception as exc:
        sys.stderr.write("onnxruntime %s cannot load the model: %s\n" % (ort.__version__, str(exc).splitlines()[0]))
        sys.exit(4)


def main(mode, model, threads, providers, *rest):
    sess = session(model, int(threads), providers.split(","))
    inp = sess.get_inputs()[0]
    if mode == "check":
        result = {
            "version": ort.__version__,
            "providers": sess.get_providers(),
            "available_providers": ort.get_available_providers(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        }
    elif mode == "infer":
        source, target, batch = rest[0], rest[1], int(rest[2]) if len(rest) > 2 else 256
        x = np.load(source)
        out = [sess.run(None, {inp.name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
        np.save(target, np.concatenate(out))
        result = {"outputs": target}
    else:
        batch, warmup, iterations = int(rest[0]), int(rest[1]), int(rest[2])
        rounds = int(rest[3]) if len(rest) > 3 else 1  # each round after its own warmup
        shape = [batch] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
        feed = {inp.name: np.random.RandomState(0).standard_normal(shape).astype(np.float32)}
        per_round = []
        for _ in range(rounds):
            for _ in range(warmup):
                sess.run(None, feed)
            samples = []
            for _ in range(iterations):
                start = time.perf_counter()
                sess.run(None, feed)
                samples.append((time.perf_counter() - start) * 1000.0)
            per_round.append(samples)
        result = {"samples_ms": [v for r in per_round for v in r], "rounds_ms": per_round}
    print(json.dumps(result))


main(*sys.argv[1:])
