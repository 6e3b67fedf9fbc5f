"""How stages use the hardware: device and precision (compute.py), several processes under torchrun
(distributed.py), and the ceilings throughput is judged against (throughput.py)."""
