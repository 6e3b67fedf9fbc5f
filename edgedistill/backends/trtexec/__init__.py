"""TensorRT through trtexec: its command lines and log/JSON parsers (log.py), and the runner on any host (runner.py)."""
