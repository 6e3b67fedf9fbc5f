"""Where images come from: files and built-in sets decoded one way (images.py), the unlabeled pool (pool.py)
and labeled evaluation sets (labeled.py)."""
