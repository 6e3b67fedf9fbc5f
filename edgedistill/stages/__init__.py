"""The pipeline's stages, in the order they run: select (select.py) -> class-drop (class_drop.py) and distill
(distill.py, losses.py) -> export (export.py, quantize.py) -> validate (validate.py)."""
