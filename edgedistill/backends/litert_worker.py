"""LiteRT on a device, run by the device's own Python (3.6+, numpy and ai-edge-litert, or the older tflite-runtime):
edgedistill uploads this file and calls it once per step; it prints one JSON line. backends/litert.py imports the
same `Model` to run LiteRT on this machine, so both sides feed and read the model the same way.

argv: MODE MODEL THREADS [mode arguments]; modes: check, infer SOURCE TARGET, time BATCH WARMUP ITERATIONS [ROUNDS]
(worker.py). Exit codes: 3 a module is missing, 4 the model is rejected.
"""

import json
import os
import platform
import sys
import time

MISSING_MODULE_EXIT = 3
MODEL_REJECTED_EXIT = 4


def interpreter_class():
    """(Interpreter, the package it came from): ai-edge-litert, else tflite-runtime (what older board images have)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"


def package_version(package):
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:
        return None


class Model(object):
    """One .tflite model opened in the LiteRT interpreter (its XNNPACK CPU delegate by default).

    `infer` takes normalized float32 NCHW batches and returns float32 logits: an input the converter laid out as NHWC
    is transposed, a full-integer model's int8/uint8 input is quantized and its output dequantized with the scale and
    zero point the file records, and a batch larger than the model's fixed batch runs as consecutive calls."""

    def __init__(self, path, threads):
        import numpy as np

        self.np = np
        interpreter, self.package = interpreter_class()
        self.threads = int(threads)
        self.interpreter = interpreter(model_path=str(path), num_threads=self.threads or None)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.shape = [int(d) for d in self.input["shape"]]
        self.batch = self.shape[0] if self.shape and self.shape[0] > 0 else 1
        self.version = package_version(self.package)

    def _feed(self, x):
        np = self.np
        if x.ndim == 4 and list(x.shape[1:]) != self.shape[1:] and list(x.shape[2:]) + [x.shape[1]] == self.shape[1:]:
            x = x.transpose(0, 2, 3, 1)  # NCHW in, the model takes NHWC
        dtype = self.input["dtype"]
        if dtype != np.float32:
            scale, zero = self.input["quantization"]
            limits = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zero, limits.min, limits.max)
        return np.ascontiguousarray(x, dtype=dtype)

    def _read(self):
        np = self.np
        y = self.interpreter.get_tensor(self.output["index"])
        if y.dtype != np.float32:
            scale, zero = self.output["quantization"]
            return (y.astype(np.float32) - zero) * np.float32(scale)
        return y.copy()

    def run(self, x):
        """One call of the model on exactly its batch."""
        self.interpreter.set_tensor(self.input["index"], self._feed(x))
        self.interpreter.invoke()
        return self._read()

    def infer(self, x):
        np = self.np
        x = np.asarray(x, dtype=np.float32)
        out = []
        for i in range(0, len(x), self.batch):
            part = x[i : i + self.batch]
            short = self.batch - len(part)
            if short:  # the last, partial batch of a fixed-batch model: padded, and the padding dropped again
                part = np.concatenate([part, np.zeros((short,) + part.shape[1:], np.float32)])
            out.append(self.run(part)[: self.batch - short])
        return np.concatenate(out)

    def sample(self, batch):
        """Seeded normalized input of `batch` images, NCHW as infer takes it."""
        item = self.shape[1:]
        if len(item) == 3 and item[2] in (1, 3) and item[0] not in (1, 3):
            item = [item[2], item[0], item[1]]
        return self.np.random.RandomState(0).standard_normal([batch] + item).astype(self.np.float32)

    def facts(self):
        np = self.np
        quantized = self.input["dtype"] != np.float32
        return {
            "version": self.version,
            "package": self.package,
            "threads": self.threads or "default",
            "input": "%s %s" % (np.dtype(self.input["dtype"]).name, self.shape),
            "integer_io": bool(quantized),
            "model_batch": self.batch,
        }


def timed_rounds(model, batch, warmup, iterations, rounds):
    """Milliseconds per call of `batch` images, per round, each round after its own warmup."""
    x = model.sample(batch)
    per_round = []
    for _ in range(rounds):
        for _ in range(warmup):
            model.infer(x)
        samples = []
        for _ in range(iterations):
            start = time.perf_counter()
            model.infer(x)
            samples.append((time.perf_counter() - start) * 1000.0)
        per_round.append(samples)
    return per_round


def main(mode, path, threads, *rest):
    try:
        import numpy as np

        interpreter_class()
    except ImportError as exc:
        sys.stderr.write("missing module: %s\n" % exc)
        sys.exit(MISSING_MODULE_EXIT)
    try:
        model = Model(path, threads)
    except Exception as exc:
        sys.stderr.write("LiteRT cannot load the model: %s\n" % (str(exc).strip().splitlines() or [type(exc).__name__])[0])
        sys.exit(MODEL_REJECTED_EXIT)
    if mode == "check":
        result = dict(model.facts(), python=platform.python_version(), machine=platform.machine(), cpus=os.cpu_count())
    elif mode == "infer":
        np.save(rest[1], model.infer(np.load(rest[0])))
        result = {"outputs": rest[1]}
    else:
        rounds = int(rest[3]) if len(rest) > 3 else 1
        per_round = timed_rounds(model, int(rest[0]), int(rest[1]), int(rest[2]), rounds)
        result = {"samples_ms": [v for r in per_round for v in r], "rounds_ms": per_round}
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
